#!/usr/bin/env bash
# Runs the Flask-SocketIO benchmark peer: gunicorn with one eventlet worker on
# 127.0.0.1:PORT (first argument, else $PORT, else 8080). Creates bench/peers/flask/.venv
# if needed and installs requirements.txt into it only when the file changed since the
# last install. The PID to measure is the worker's: `pgrep -P <this script's pid>`
# (the script execs into the gunicorn master).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
STAMP="$VENV/.requirements.txt"
PORT="${1:-${PORT:-8080}}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "flask peer: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if ! cmp -s "$HERE/requirements.txt" "$STAMP"; then
  echo "flask peer: installing requirements.txt" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$STAMP"
fi

cd "$HERE"
# gunicorn and eventlet warn at start that they deprecate this worker: it is the stack
# being measured.
exec "$VENV/bin/gunicorn" -k eventlet -w 1 -b "127.0.0.1:$PORT" \
  --log-level warning app:app
