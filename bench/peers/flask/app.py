"""Benchmark peer: Flask-SocketIO on gunicorn's eventlet worker, doing what voxio's /voice
namespace does in transport-benchmark mode (VOXIO_PIPELINE=none): CONNECT auth {pin}
checked against $PIN, and every `audio` chunk acknowledged with {seq, bytes}, seq counting
the socket's audio events from 1. Nothing else.

Start: ./run.sh PORT   (gunicorn -k eventlet -w 1 -b 127.0.0.1:$PORT app:app; PIN defaults
to 246810)
"""

import os

from flask import Flask, request
from flask_socketio import ConnectionRefusedError, SocketIO

PIN = os.environ.get("PIN", "246810")

app = Flask(__name__)
socketio = SocketIO(
    app,
    async_mode="eventlet",
    cors_allowed_origins="*",
    max_http_buffer_size=1_000_000,
    ping_interval=25,
    ping_timeout=20,
    transports=["polling", "websocket"],
    allow_upgrades=True,
)

# Audio events seen per socket (request.sid), for the ack's seq.
seqs: dict[str, int] = {}


@socketio.on("connect", namespace="/voice")
def connect(auth):
    if not isinstance(auth, dict) or auth.get("pin") != PIN:
        raise ConnectionRefusedError(
            "Wrong PIN.",
            {"code": "invalid_pin", "message": "Wrong PIN.", "retryAfterMs": 0},
        )
    seqs[request.sid] = 0


@socketio.on("disconnect", namespace="/voice")
def disconnect(reason=None):
    seqs.pop(request.sid, None)


@socketio.on("audio", namespace="/voice")
def audio(chunk):
    seq = seqs.get(request.sid, 0) + 1
    seqs[request.sid] = seq
    size = len(chunk) if isinstance(chunk, (bytes, bytearray, str)) else 0
    # The handler's return value is the ack.
    return {"seq": seq, "bytes": size}


if __name__ == "__main__":
    socketio.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
