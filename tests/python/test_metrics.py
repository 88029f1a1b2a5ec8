"""/metrics, /readyz and /healthz of the voxio app, read the way Prometheus and a load balancer
read them: the text format is parsed by prometheus_client's own parser, and the counters must
move as python-socketio clients drive traffic on every transport."""

import time
import urllib.error
import urllib.request

import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from conftest import APP_PIN

TIMEOUT = 10
MODES = {
    "polling": ["polling"],
    "websocket": ["websocket"],
    "upgrade": ["polling", "websocket"],
}


def scrape(url):
    with urllib.request.urlopen(f"{url}/metrics", timeout=TIMEOUT) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def stream_audio(url, transports, chunks=20):
    """Authenticates on /voice and sends `chunks` audio chunks with acks; returns the acks."""
    client = socketio.Client(reconnection=False)
    try:
        client.connect(
            url,
            namespaces=["/voice"],
            auth={"pin": APP_PIN},
            transports=transports,
            wait_timeout=TIMEOUT,
        )
        if len(transports) > 1:
            deadline = time.monotonic() + TIMEOUT
            while client.transport() != "websocket":
                assert time.monotonic() < deadline, "no upgrade to websocket"
                time.sleep(0.02)
        chunk = bytes(640)
        return [
            client.call("audio", chunk, namespace="/voice", timeout=TIMEOUT) for _ in range(chunks)
        ]
    finally:
        client.disconnect()


def test_metrics_parse_and_count_every_transport(voxio_app):
    url = voxio_app.url
    before = scrape(url)
    for mode, transports in MODES.items():
        acks = stream_audio(url, transports)
        assert [a["seq"] for a in acks] == list(range(1, 21)), mode
    # A wrong PIN is refused and counted.
    bad = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        bad.connect(
            url,
            namespaces=["/voice"],
            auth={"pin": "000000"},
            transports=["websocket"],
            wait_timeout=TIMEOUT,
        )
    bad.disconnect()

    # Sessions close asynchronously after the clients leave; a polling client that left
    # without its CLOSE is ended by the (short, see conftest) ping timeout.
    deadline = time.monotonic() + TIMEOUT
    while True:
        after = scrape(url)
        open_now = sum(
            value(after, "voxio_engine_sessions", transport=t) for t in ("polling", "websocket")
        )
        if open_now == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert open_now == 0, {t: value(after, "voxio_engine_sessions", transport=t) for t in ("polling", "websocket")}

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("voxio_engine_sessions_opened_total", transport="polling") >= 2
    assert moved("voxio_engine_sessions_opened_total", transport="websocket") >= 2
    assert moved("voxio_engine_upgrades_total") >= 1
    for transport in ("polling", "websocket"):
        for direction in ("in", "out"):
            assert moved("voxio_engine_packets_total", direction=direction, transport=transport) > 0
            assert moved("voxio_engine_bytes_total", direction=direction, transport=transport) > 0
    # 60 chunks of 640 bytes arrived (binary attachments are packets of their own).
    assert moved("voxio_engine_bytes_total", direction="in", transport="websocket") >= 40 * 640
    assert moved("voxio_auth_failures_total", kind="pin") >= 1
    assert moved("voxio_engine_closes_total", reason="transport close") >= 1


def test_readyz_and_healthz(voxio_app):
    with urllib.request.urlopen(f"{voxio_app.url}/healthz", timeout=TIMEOUT) as r:
        assert r.status == 200 and r.read() == b"ok"
    import json

    with urllib.request.urlopen(f"{voxio_app.url}/readyz", timeout=TIMEOUT) as r:
        assert r.status == 200
        body = json.loads(r.read())
    assert body["ready"] is True
    assert body["draining"] is False
    assert body["redis"] == "not configured"


def test_metrics_refuses_other_methods(voxio_app):
    request = urllib.request.Request(f"{voxio_app.url}/metrics", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    assert e.value.code in (404, 405)
