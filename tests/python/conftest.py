"""Starts `voxio protocol-test` (and, for the metrics tests, the voxio app) for the
python-socketio interop tests.

The binary is $VOXIO_BIN, or ../../target/debug/voxio relative to this file. The server runs
once per test session on a free port of 127.0.0.1; its output goes to a temporary file whose
tail is attached to the report of every failing test.
"""

import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
VOXIO_BIN = os.path.abspath(
    os.environ.get("VOXIO_BIN") or os.path.join(HERE, "..", "..", "target", "debug", "voxio")
)
STARTUP_DEADLINE_S = 10.0
STOP_DEADLINE_S = 3.0
LOG_TAIL_BYTES = 64 * 1024

_server = None  # the running Server, for the failure reports


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


APP_PIN = "482915"


class Server:
    def __init__(self, port, app=False):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix="voxio-py-", suffix=".log", delete=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXIO_")}
        env["NO_COLOR"] = "1"
        if app:
            # The voxio app itself, with the voice pipeline off: audio is acked and dropped.
            args = [VOXIO_BIN]
            env.update(
                VOXIO_BIND=f"127.0.0.1:{port}",
                VOXIO_PIN=APP_PIN,
                VOXIO_PIPELINE="none",
                VOXIO_STATIC_DIR=os.path.join(HERE, "..", "..", "static"),
                VOXIO_WORKERS="2",
                # Short heartbeats: python-engineio's polling client can leave without sending
                # its Engine.IO CLOSE (its write loop stops once disconnect() flips its state,
                # even with the CLOSE still queued), and such a session is ended by the ping
                # timeout; the metrics test waits for every session to end.
                VOXIO_PING_INTERVAL_MS="1000",
                VOXIO_PING_TIMEOUT_MS="1000",
            )
        else:
            args = [VOXIO_BIN, "protocol-test", "--port", str(port)]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def tail(self):
        self.log.flush()
        with open(self.log.name, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")

    def wait_ready(self):
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"voxio exited during startup (code {self.proc.returncode}) on port "
                    f"{self.port}; output:\n{self.tail()}"
                )
            if _accepts(self.port):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"voxio did not accept connections on port {self.port} within "
                    f"{STARTUP_DEADLINE_S:.0f} s; output:\n{self.tail()}"
                )
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_DEADLINE_S)
        self.log.close()
        os.unlink(self.log.name)


def _start(attempts=3, app=False):
    if not os.access(VOXIO_BIN, os.X_OK):
        raise RuntimeError(f"voxio binary not found at {VOXIO_BIN} (build it, or set VOXIO_BIN)")
    error = None
    for _ in range(attempts):
        # A port taken between the probe and the bind, or the binary being replaced by a
        # build ("Text file busy"), fails one attempt only.
        try:
            server = Server(_free_port(), app=app)
        except OSError as e:
            error = e
            time.sleep(0.5)
            continue
        try:
            server.wait_ready()
            return server
        except RuntimeError as e:
            error = e
            server.stop()
    raise error


@pytest.fixture(scope="session")
def voxio_url():
    """Base URL (http://127.0.0.1:PORT) of a running `voxio protocol-test`."""
    global _server
    server = _start()
    _server = server
    try:
        yield server.url
    finally:
        _server = None
        server.stop()


@pytest.fixture(scope="module")
def voxio_app():
    """A running voxio app (pipeline off, PIN `APP_PIN`), one per test module."""
    global _server
    server = _start(app=True)
    _server = server
    try:
        yield server
    finally:
        _server = None
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _server is not None:
        report.sections.append(("voxio output (tail)", _server.tail()))
