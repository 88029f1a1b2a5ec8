#!/usr/bin/env bash
# Runs the python-socketio interop tests against the voxio binary ($VOXIO_BIN, or
# ../../target/debug/voxio). Creates tests/python/.venv if needed and installs
# requirements.txt into it only when the file changed since the last install.
# Extra arguments go to pytest; the exit code is pytest's.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
STAMP="$VENV/.requirements.txt"

if [ ! -x "$VENV/bin/python" ]; then
  echo "python: creating $VENV"
  python3 -m venv "$VENV"
fi
if ! cmp -s "$HERE/requirements.txt" "$STAMP"; then
  echo "python: installing requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$STAMP"
fi

cd "$HERE"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
