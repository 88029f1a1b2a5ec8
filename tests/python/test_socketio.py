"""Interop tests: the python-socketio client (sync `socketio.Client` and `socketio.AsyncClient`)
against `voxio protocol-test`, over WebSocket only, HTTP long-polling only, and the default
(polling, then upgrade to WebSocket).

Every wait is bounded by TIMEOUT; every client is disconnected at the end of its test.
"""

import asyncio
import contextlib
import queue
import time

import pytest
import socketio

TIMEOUT = 5.0  # bound of any single wait
QUIET = 0.5  # how long "nothing arrives" is watched for
ASYNC_TEST_BOUND = 30.0  # backstop for a whole async test

# client transports of each mode; None is the client's default: polling, then upgrade.
MODES = {"websocket": ["websocket"], "polling": ["polling"], "upgrade": None}
EXPECTED_TRANSPORT = {"websocket": "websocket", "polling": "polling", "upgrade": "websocket"}

# Over HTTP long-polling, binaries travel base64-encoded ("b" + base64) in the POST body and
# the GET response: 999,000 bytes encode to 1,332,000 characters, over maxPayload (1,000,000),
# so polling-only uses 700,000 bytes (933,336 characters). Over WebSocket they travel raw.
BIG = {"websocket": 999_000, "upgrade": 999_000, "polling": 700_000}

MIXED = (
    "text",
    "üñíçødé ✓",
    42,
    -1.5,
    True,
    False,
    None,
    [1, "two", [3, None]],
    {"a": {"b": [1, 2]}, "c": None, "d": ""},
)


def blob(size, seed=0):
    pattern = bytes((i * 7 + seed) % 256 for i in range(256))
    return (pattern * (size // 256 + 1))[:size]


@pytest.fixture(params=list(MODES))
def mode(request):
    return request.param


# ---------------------------------------------------------------------------------------------
# sync client


class SyncClient:
    """A `socketio.Client` whose received events are recorded, one queue per (event, ns)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("reconnection", False)
        self.sio = socketio.Client(**kwargs)
        self.queues = {}

    def record(self, event, namespace="/"):
        q = self.queues[(event, namespace)] = queue.Queue()
        self.sio.on(event, lambda *args: q.put(args), namespace=namespace)

    def next(self, event, namespace="/", timeout=TIMEOUT, hint=""):
        try:
            return self.queues[(event, namespace)].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {event!r} on {namespace} within {timeout} s{hint}") from None

    def nothing(self, event, namespace="/", within=QUIET):
        try:
            args = self.queues[(event, namespace)].get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected {event!r} on {namespace}: {args!r}")


def wait_until(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


@contextlib.contextmanager
def sync_client(url, mode, *, namespaces=("/",), auth=None, record=(), on=None, **kwargs):
    """A connected SyncClient that records `auth` (and `record`) on every namespace; `on` maps
    event names of `/` to handlers. In upgrade mode, waits for the upgrade to WebSocket."""
    client = SyncClient(**kwargs)
    for ns in namespaces:
        for event in ("auth", *record):
            client.record(event, ns)
    for event, handler in (on or {}).items():
        client.sio.on(event, handler)
    try:
        client.sio.connect(
            url,
            auth=auth,
            transports=MODES[mode],
            namespaces=list(namespaces),
            wait_timeout=TIMEOUT,
        )
        if mode == "upgrade":
            wait_until(lambda: client.sio.transport() == "websocket", "upgrade to websocket")
        yield client
    finally:
        client.sio.disconnect()


def test_sync_auth(voxio_url, mode):
    with sync_client(voxio_url, mode, namespaces=("/", "/custom"), auth={"token": "abc"}) as c:
        assert c.next("auth", "/") == ({"token": "abc"},)
        assert c.next("auth", "/custom") == ({"token": "abc"},)
        assert c.sio.transport() == EXPECTED_TRANSPORT[mode]
        if mode != "upgrade":
            time.sleep(QUIET)  # no upgrade happens when the client allows one transport only
            assert c.sio.transport() == EXPECTED_TRANSPORT[mode]


def test_sync_no_auth(voxio_url, mode):
    with sync_client(voxio_url, mode) as c:
        assert c.next("auth") == ({},)


def test_sync_refused(voxio_url, mode):
    sio = socketio.Client(reconnection=False)
    errors = queue.Queue()
    sio.on("connect_error", lambda *args: errors.put(args), namespace="/refused")
    try:
        with pytest.raises(socketio.exceptions.ConnectionError) as raised:
            sio.connect(
                voxio_url,
                transports=MODES[mode],
                namespaces=["/refused"],
                wait_timeout=TIMEOUT,
            )
        assert "refused" in str(raised.value)
        # python-socketio hands the CONNECT_ERROR payload to the connect_error handler.
        assert errors.get(timeout=TIMEOUT) == ({"message": "refused", "data": {"reason": "test"}},)
    finally:
        sio.disconnect()


def test_sync_message(voxio_url, mode):
    with sync_client(voxio_url, mode, record=("message-back",)) as c:
        c.sio.emit("message", MIXED)
        assert c.next("message-back") == MIXED
        c.sio.emit("message", "one")
        assert c.next("message-back") == ("one",)
        assert c.sio.call("message-with-ack", MIXED, timeout=TIMEOUT) == MIXED
        assert c.sio.call("message-with-ack", "one", timeout=TIMEOUT) == "one"


@pytest.mark.parametrize("size", ["small", "big"])
def test_sync_binary(voxio_url, mode, size):
    data = blob(640) if size == "small" else blob(BIG[mode])
    args = ("bin", data, {"nested": blob(10, 1), "list": [blob(3, 2)]}, 7)
    with sync_client(voxio_url, mode, record=("message-back",)) as c:
        c.sio.emit("message", args)
        assert c.next("message-back") == args
        assert c.sio.call("message-with-ack", args, timeout=TIMEOUT) == args
        assert c.sio.call("message-with-ack", data, timeout=TIMEOUT) == data


def test_sync_server_ack(voxio_url, mode):
    reply = ("yes", 7, {"k": b"\x01\x02\x03"})

    questions = queue.Queue()

    def question(*args):
        questions.put(args)
        return reply

    with sync_client(voxio_url, mode, record=("answer",), on={"question": question}) as c:
        c.sio.emit("ask", ("q", 1, b"\xff"))
        assert questions.get(timeout=TIMEOUT) == ("q", 1, b"\xff")
        assert c.next("answer") == reply


def test_sync_rooms(voxio_url, mode):
    with contextlib.ExitStack() as stack:
        a, b, outsider = (
            stack.enter_context(sync_client(voxio_url, mode, record=("room-message",)))
            for _ in range(3)
        )
        assert a.sio.call("join", "r1", timeout=TIMEOUT) is None
        assert b.sio.call("join", "r1", timeout=TIMEOUT) is None
        a.sio.emit("to-room", ("r1", "hi", {"n": 1}, b"\x00bin"))
        assert a.next("room-message") == ("hi", {"n": 1}, b"\x00bin")
        assert b.next("room-message") == ("hi", {"n": 1}, b"\x00bin")
        outsider.nothing("room-message")
        a.nothing("room-message", within=0.05)
        b.nothing("room-message", within=0.05)


def test_sync_server_disconnect(voxio_url, mode):
    with sync_client(voxio_url, mode, record=("disconnect",)) as c:
        c.next("auth")
        c.sio.emit("server-disconnect")
        assert c.next("disconnect") == (c.sio.reason.SERVER_DISCONNECT,)
        wait_until(lambda: not c.sio.connected, "client disconnected")


def test_sync_reconnect_after_close_transport(voxio_url, mode):
    with sync_client(
        voxio_url,
        mode,
        record=("connect", "disconnect", "message-back"),
        auth={"token": "again"},
        reconnection=True,
        reconnection_attempts=20,
        reconnection_delay=0.1,
        reconnection_delay_max=0.5,
        randomization_factor=0,
    ) as c:
        assert c.next("auth") == ({"token": "again"},)
        c.next("connect")
        first_sid = c.sio.get_sid()
        c.sio.emit("close-transport")
        if mode == "polling":
            # Over polling, the reference server (engine.io) closes with a close packet, and
            # python-socketio takes a close packet for a deliberate disconnect: it never
            # reconnects by itself then. So check that, and reconnect by hand.
            assert c.next("disconnect") == (c.sio.reason.SERVER_DISCONNECT,)
            wait_until(lambda: not c.sio.connected, "client disconnected")
            c.sio.connect(
                voxio_url,
                auth={"token": "again"},
                transports=MODES[mode],
                namespaces=["/"],
                wait_timeout=TIMEOUT,
            )
            c.next("connect")
        else:
            # Over WebSocket, the reference server just closes the WebSocket (no close
            # packet): python-socketio sees a transport error and reconnects. After a close
            # packet (disconnect reason "server disconnect") it would not.
            (reason,) = c.next("disconnect")
            c.next("connect", timeout=10, hint=f" (no reconnect; disconnect reason {reason!r})")
        assert c.next("auth") == ({"token": "again"},)
        assert c.sio.get_sid() != first_sid
        c.sio.emit("message", "after reconnect")
        assert c.next("message-back") == ("after reconnect",)


# ---------------------------------------------------------------------------------------------
# asyncio client


def run_async(coro):
    asyncio.run(asyncio.wait_for(coro, ASYNC_TEST_BOUND))


class AsyncClient:
    """A `socketio.AsyncClient` whose received events are recorded, one queue per (event, ns)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("reconnection", False)
        self.sio = socketio.AsyncClient(**kwargs)
        self.queues = {}

    def record(self, event, namespace="/"):
        q = self.queues[(event, namespace)] = asyncio.Queue()

        async def handler(*args):
            q.put_nowait(args)

        self.sio.on(event, handler, namespace=namespace)

    async def next(self, event, namespace="/", timeout=TIMEOUT, hint=""):
        try:
            return await asyncio.wait_for(self.queues[(event, namespace)].get(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {event!r} on {namespace} within {timeout} s{hint}") from None

    async def nothing(self, event, namespace="/", within=QUIET):
        try:
            args = await asyncio.wait_for(self.queues[(event, namespace)].get(), within)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected {event!r} on {namespace}: {args!r}")


async def async_wait_until(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def async_client(url, mode, *, namespaces=("/",), auth=None, record=(), on=None, **kwargs):
    """Like sync_client, with socketio.AsyncClient."""
    client = AsyncClient(**kwargs)
    for ns in namespaces:
        for event in ("auth", *record):
            client.record(event, ns)
    for event, handler in (on or {}).items():
        client.sio.on(event, handler)
    try:
        await client.sio.connect(
            url,
            auth=auth,
            transports=MODES[mode],
            namespaces=list(namespaces),
            wait_timeout=TIMEOUT,
        )
        if mode == "upgrade":
            await async_wait_until(
                lambda: client.sio.transport() == "websocket", "upgrade to websocket"
            )
        yield client
    finally:
        await client.sio.disconnect()


def test_async_auth(voxio_url, mode):
    async def body():
        async with async_client(
            voxio_url, mode, namespaces=("/", "/custom"), auth={"token": "abc"}
        ) as c:
            assert await c.next("auth", "/") == ({"token": "abc"},)
            assert await c.next("auth", "/custom") == ({"token": "abc"},)
            assert c.sio.transport() == EXPECTED_TRANSPORT[mode]
            if mode != "upgrade":
                await asyncio.sleep(QUIET)
                assert c.sio.transport() == EXPECTED_TRANSPORT[mode]

    run_async(body())


def test_async_no_auth(voxio_url, mode):
    async def body():
        async with async_client(voxio_url, mode) as c:
            assert await c.next("auth") == ({},)

    run_async(body())


def test_async_refused(voxio_url, mode):
    async def body():
        sio = socketio.AsyncClient(reconnection=False)
        errors = asyncio.Queue()

        async def on_error(*args):
            errors.put_nowait(args)

        sio.on("connect_error", on_error, namespace="/refused")
        try:
            with pytest.raises(socketio.exceptions.ConnectionError) as raised:
                await sio.connect(
                    voxio_url,
                    transports=MODES[mode],
                    namespaces=["/refused"],
                    wait_timeout=TIMEOUT,
                )
            assert "refused" in str(raised.value)
            assert await asyncio.wait_for(errors.get(), TIMEOUT) == (
                {"message": "refused", "data": {"reason": "test"}},
            )
        finally:
            await sio.disconnect()

    run_async(body())


def test_async_message(voxio_url, mode):
    async def body():
        async with async_client(voxio_url, mode, record=("message-back",)) as c:
            await c.sio.emit("message", MIXED)
            assert await c.next("message-back") == MIXED
            await c.sio.emit("message", "one")
            assert await c.next("message-back") == ("one",)
            assert await c.sio.call("message-with-ack", MIXED, timeout=TIMEOUT) == MIXED
            assert await c.sio.call("message-with-ack", "one", timeout=TIMEOUT) == "one"

    run_async(body())


@pytest.mark.parametrize("size", ["small", "big"])
def test_async_binary(voxio_url, mode, size):
    data = blob(640) if size == "small" else blob(BIG[mode])
    args = ("bin", data, {"nested": blob(10, 1), "list": [blob(3, 2)]}, 7)

    async def body():
        async with async_client(voxio_url, mode, record=("message-back",)) as c:
            await c.sio.emit("message", args)
            assert await c.next("message-back") == args
            assert await c.sio.call("message-with-ack", args, timeout=TIMEOUT) == args
            assert await c.sio.call("message-with-ack", data, timeout=TIMEOUT) == data

    run_async(body())


def test_async_server_ack(voxio_url, mode):
    reply = ("yes", 7, {"k": b"\x01\x02\x03"})

    async def body():
        questions = asyncio.Queue()

        async def question(*args):
            questions.put_nowait(args)
            return reply

        async with async_client(
            voxio_url, mode, record=("answer",), on={"question": question}
        ) as c:
            await c.sio.emit("ask", ("q", 1, b"\xff"))
            assert await asyncio.wait_for(questions.get(), TIMEOUT) == ("q", 1, b"\xff")
            assert await c.next("answer") == reply

    run_async(body())


def test_async_rooms(voxio_url, mode):
    async def body():
        async with contextlib.AsyncExitStack() as stack:
            a, b, outsider = [
                await stack.enter_async_context(
                    async_client(voxio_url, mode, record=("room-message",))
                )
                for _ in range(3)
            ]
            assert await a.sio.call("join", "r1", timeout=TIMEOUT) is None
            assert await b.sio.call("join", "r1", timeout=TIMEOUT) is None
            await b.sio.emit("to-room", ("r1", "hi", {"n": 1}, b"\x00bin"))
            assert await a.next("room-message") == ("hi", {"n": 1}, b"\x00bin")
            assert await b.next("room-message") == ("hi", {"n": 1}, b"\x00bin")
            await outsider.nothing("room-message")
            await a.nothing("room-message", within=0.05)
            await b.nothing("room-message", within=0.05)

    run_async(body())


def test_async_server_disconnect(voxio_url, mode):
    async def body():
        async with async_client(voxio_url, mode, record=("disconnect",)) as c:
            await c.next("auth")
            await c.sio.emit("server-disconnect")
            assert await c.next("disconnect") == (c.sio.reason.SERVER_DISCONNECT,)
            await async_wait_until(lambda: not c.sio.connected, "client disconnected")

    run_async(body())


def test_async_reconnect_after_close_transport(voxio_url, mode):
    async def body():
        async with async_client(
            voxio_url,
            mode,
            record=("connect", "disconnect", "message-back"),
            auth={"token": "again"},
            reconnection=True,
            reconnection_attempts=20,
            reconnection_delay=0.1,
            reconnection_delay_max=0.5,
            randomization_factor=0,
        ) as c:
            assert await c.next("auth") == ({"token": "again"},)
            await c.next("connect")
            first_sid = c.sio.get_sid()
            await c.sio.emit("close-transport")
            if mode == "polling":
                # See test_sync_reconnect_after_close_transport.
                assert await c.next("disconnect") == (c.sio.reason.SERVER_DISCONNECT,)
                await async_wait_until(lambda: not c.sio.connected, "client disconnected")
                await c.sio.connect(
                    voxio_url,
                    auth={"token": "again"},
                    transports=MODES[mode],
                    namespaces=["/"],
                    wait_timeout=TIMEOUT,
                )
                await c.next("connect")
            else:
                (reason,) = await c.next("disconnect")
                await c.next(
                    "connect", timeout=10, hint=f" (no reconnect; disconnect reason {reason!r})"
                )
            assert await c.next("auth") == ({"token": "again"},)
            assert c.sio.get_sid() != first_sid
            await c.sio.emit("message", "after reconnect")
            assert await c.next("message-back") == ("after reconnect",)

    run_async(body())
