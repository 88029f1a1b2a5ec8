//! Engine.IO v4 against the real server over real HTTP and WebSocket: one test per rule.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use awc::ws;
use bytes::Bytes;
use bytestring::ByteString;
use common::*;
use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use voxio::engineio::{
    CloseReason, EngineConfig, EngineHandler, Handshake, OriginPolicy, SessionHandle,
    SessionHandler,
};

fn fast() -> EngineConfig {
    EngineConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        origins: OriginPolicy::Any,
        ..EngineConfig::default()
    }
}

#[actix_rt::test]
async fn polling_handshake_sends_open_packet() {
    let server = TestServer::echo(fast());
    let client = client();
    let (sid, open) = open_polling(&client, &server).await;
    assert_eq!(sid.len(), 20);
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["pingTimeout"], 200);
    assert_eq!(open["maxPayload"], 1_000_000);
    let (other, _) = open_polling(&client, &server).await;
    assert_ne!(sid, other);
    server.wait_sessions(2).await;
}

#[actix_rt::test]
async fn websocket_handshake_sends_open_packet_first() {
    let server = TestServer::echo(fast());
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    let open = ws_text(&mut conn).await;
    assert!(open.starts_with("0{"), "{open}");
    let json: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    assert_eq!(json["upgrades"], serde_json::json!([]));
    assert_eq!(json["sid"].as_str().unwrap().len(), 20);
}

#[actix_rt::test]
async fn bad_requests_get_the_protocol_error_codes() {
    let server = TestServer::echo(fast());
    let client = client();
    let base = format!("http://{}/engine.io/", server.addr);
    let cases = [
        ("?EIO=4&transport=__proto__", 0),
        ("?EIO=4&transport=flashsocket", 0),
        ("?EIO=4", 0),
        ("?EIO=3&transport=polling", 5),
        ("?transport=polling", 5),
        ("?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA", 1),
        ("?EIO=4&transport=polling&sid=not-a-sid", 1),
        // A WebSocket transport without the Upgrade header.
        ("?EIO=4&transport=websocket", 3),
    ];
    for (query, code) in cases {
        let answer = get(&client, &format!("{base}{query}")).await;
        assert_eq!(answer.status, 400, "{query}");
        assert_eq!(answer.code(), code, "{query}: {}", answer.text());
    }
    // A handshake must be a GET.
    let answer = post(&client, &server.url("transport=polling"), "4x").await;
    assert_eq!((answer.status, answer.code()), (400, 2));
    // Other methods on a session are bad requests.
    let (sid, _) = open_polling(&client, &server).await;
    let mut res = client
        .put(server.url(&format!("transport=polling&sid={sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], 3);
    assert_eq!(body["message"], "Bad request");
}

#[actix_rt::test]
async fn polling_echoes_text_and_binary_batched_in_one_get() {
    let server = TestServer::echo(fast());
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    let answer = post(&client, &url, "4hello\x1ebAQID\x1e4é").await;
    assert_eq!((answer.status, answer.text()), (200, "ok"));
    let answer = get(&client, &url).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "4hello\x1ebAQID\x1e4é");
}

#[actix_rt::test]
async fn get_answers_respect_max_payload() {
    let server = TestServer::echo(EngineConfig {
        max_payload: 100,
        ..fast()
    });
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    let message = format!("4{}", "x".repeat(30)); // 31 bytes
    let body = [message.as_str(); 3].join("\x1e"); // 95 bytes
    assert_eq!(post(&client, &url, body.clone()).await.status, 200);
    assert_eq!(post(&client, &url, body).await.status, 200);
    let mut received = 0;
    while received < 6 {
        let answer = get(&client, &url).await;
        assert!(answer.body.len() <= 100, "{} bytes", answer.body.len());
        received += answer
            .text()
            .split('\x1e')
            .filter(|p| *p == message)
            .count();
    }
    assert_eq!(received, 6);
}

/// An echo server with pings 10 s apart, a polling session on it, its URL, and a GET of that
/// session already waiting.
async fn waiting_poll() -> (
    TestServer,
    awc::Client,
    String,
    actix_rt::task::JoinHandle<common::Answer>,
) {
    let server = TestServer::echo(EngineConfig {
        ping_interval: Duration::from_secs(10),
        ..fast()
    });
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    let waiting = actix_rt::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url).await }
    });
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    (server, client, url, waiting)
}

#[actix_rt::test]
async fn concurrent_get_closes_the_session() {
    let (server, client, url, first) = waiting_poll().await;
    let second = get(&client, &url).await;
    assert_eq!((second.status, second.code()), (400, 3));
    let first = first.await.unwrap();
    assert_eq!(
        (first.status, first.text()),
        (200, "1"),
        "the waiting poll gets a close packet"
    );
    let after = get(&client, &url).await;
    assert_eq!((after.status, after.code()), (400, 1));
    server.wait_sessions(0).await;
}

#[actix_rt::test]
async fn concurrent_post_closes_the_session() {
    let server = TestServer::echo(fast());
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let path = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    // A POST whose body is announced but not sent yet.
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n4par");
    let mut slow = raw_connect(server.addr, head.as_bytes()).await;
    actix_rt::time::sleep(Duration::from_millis(150)).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    let second = post(&client, &url, "4x").await;
    assert_eq!(second.status, 400, "{}", second.text());
    assert_eq!(second.code(), 3);
    let after = get(&client, &url).await;
    assert_eq!((after.status, after.code()), (400, 1));
    drop(slow.shutdown().await);
}

#[actix_rt::test]
async fn octet_stream_post_is_refused_at_once() {
    let server = TestServer::echo(fast());
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let head = format!(
        "POST /engine.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
    );
    // The body never comes; the answer must not wait for it.
    let mut stream = raw_connect(server.addr, head.as_bytes()).await;
    let (status, text) = raw_response(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(r#""code":3"#), "{text}");
}

#[actix_rt::test]
async fn oversized_post_gets_413() {
    let server = TestServer::echo(EngineConfig {
        max_payload: 1000,
        ..fast()
    });
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    let big = format!("4{}", "y".repeat(1000));
    let answer = post(&client, &url, big.clone()).await;
    assert_eq!((answer.status, answer.code()), (413, 3));
    // The same without a Content-Length: the limit holds while reading.
    let chunks = futures_util::stream::iter(
        big.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let res = client.post(url.clone()).send_stream(chunks).await.unwrap();
    assert_eq!(res.status().as_u16(), 413);
    // The session is still usable: nothing was lost.
    assert_eq!(post(&client, &url, "4small").await.status, 200);
    assert_eq!(get(&client, &url).await.text(), "4small");
}

#[actix_rt::test]
async fn bad_payload_closes_the_session() {
    let server = TestServer::echo(fast());
    let client = client();
    for bad in ["", "9nope", "b!!!", "4ok\x1e"] {
        let (sid, _) = open_polling(&client, &server).await;
        let url = server.url(&format!("transport=polling&sid={sid}"));
        let answer = post(&client, &url, bad).await;
        assert_eq!(answer.status, 400, "{bad:?}");
        let after = get(&client, &url).await;
        assert_eq!(after.status, 400, "{bad:?} closes the session");
    }
    server.wait_sessions(0).await;
}

#[actix_rt::test]
async fn close_packet_ends_a_polling_session() {
    let server = TestServer::echo(fast());
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    assert_eq!(post(&client, &url, "1").await.status, 200);
    server.wait_sessions(0).await;
    assert_eq!(get(&client, &url).await.code(), 1);
}

#[actix_rt::test]
async fn close_packet_answers_the_waiting_poll_with_noop() {
    let (server, client, url, waiting) = waiting_poll().await;
    assert_eq!(post(&client, &url, "1").await.status, 200);
    let waiting = waiting.await.unwrap();
    assert_eq!(
        (waiting.status, waiting.text()),
        (200, "6"),
        "the poll waiting when the client closed gets noop, as from the reference server"
    );
    server.wait_sessions(0).await;
    let after = get(&client, &url).await;
    assert_eq!((after.status, after.code()), (400, 1));
}

#[actix_rt::test]
async fn polling_heartbeat_first_ping_after_interval_then_timeout() {
    let server = TestServer::echo(fast());
    let client = client();
    let started = Instant::now();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    let answer = get(&client, &url).await;
    assert_eq!(answer.text(), "2");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(post(&client, &url, "3").await.status, 200);
    assert_eq!(
        get(&client, &url).await.text(),
        "2",
        "pings go on after a pong"
    );
    // No pong now: the session dies after pingTimeout.
    server.wait_sessions(0).await;
}

#[actix_rt::test]
async fn websocket_echoes_text_and_binary() {
    let server = TestServer::echo(fast());
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    ws_text(&mut conn).await;
    ws_send(&mut conn, "4hello").await;
    assert_eq!(ws_text(&mut conn).await, "4hello");
    let audio: Vec<u8> = (0..640u32).map(|i| i as u8).collect();
    conn.send(ws::Message::Binary(Bytes::from(audio.clone())))
        .await
        .unwrap();
    match ws_next(&mut conn).await {
        Some(ws::Frame::Binary(data)) => assert_eq!(&data[..], &audio[..]),
        other => panic!("{other:?}"),
    }
}

#[actix_rt::test]
async fn websocket_heartbeat_and_ping_timeout() {
    let server = TestServer::echo(fast());
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    let started = Instant::now();
    ws_text(&mut conn).await;
    assert_eq!(ws_text(&mut conn).await, "2");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    ws_send(&mut conn, "3").await;
    assert_eq!(ws_text(&mut conn).await, "2");
    // No pong: closed after pingTimeout, with a bare close frame (no close packet, so that
    // clients reconnect).
    assert_eq!(ws_closed(&mut conn).await, Some(1000));
    server.wait_sessions(0).await;
}

#[actix_rt::test]
async fn websocket_max_payload_closes_with_1009() {
    let server = TestServer::echo(EngineConfig {
        max_payload: 1000,
        ..fast()
    });
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    ws_text(&mut conn).await;
    ws_send(&mut conn, &format!("4{}", "z".repeat(1000))).await;
    assert_eq!(ws_closed(&mut conn).await, Some(1009));
    server.wait_sessions(0).await;
}

/// A frame whose header declares more than the limit is refused at its header, before its
/// payload arrives: the server does not buffer a declared 10 MB (it used to buffer all of it).
#[actix_rt::test]
async fn websocket_oversized_frame_is_refused_at_its_header() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::echo(EngineConfig {
        max_payload: 1000,
        ..fast()
    });
    let request = format!(
        "GET /engine.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    let mut stream = raw_connect(server.addr, request.as_bytes()).await;
    // A masked binary frame declaring 10 MB, and 1 KB of it.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend(10_000_000u64.to_be_bytes());
    frame.extend([1, 2, 3, 4]);
    frame.extend([0u8; 1024]);
    stream.write_all(&frame).await.unwrap();
    // The close frame, 1009, comes now (not after 10 MB).
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let closed = loop {
        if got
            .windows(4)
            .any(|w| w[0] == 0x88 && w[2..] == [0x03, 0xf1])
        {
            break true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 4096];
        match actix_rt::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break false,
        }
    };
    assert!(closed, "no close 1009 within 3 s; got {} bytes", got.len());
    server.wait_sessions(0).await;
}

/// A client that sends its first frames in the same write as the upgrade request (no wait for
/// the 101): what the HTTP layer read past the request is handed over with the socket and
/// read first, and the reply comes without anything more from the client.
#[actix_rt::test]
async fn frames_sent_with_the_upgrade_request_are_read() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::echo(fast());
    let mut request = format!(
        "GET /engine.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .into_bytes();
    // Two masked text frames (a zero mask leaves the payload as it is).
    for text in ["4early", "4bird"] {
        request.extend([0x81, 0x80 | text.len() as u8, 0, 0, 0, 0]);
        request.extend(text.as_bytes());
    }
    let mut stream = raw_connect(server.addr, &request).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let echoed = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        text.contains("4early") && text.contains("4bird")
    };
    while !echoed(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 4096];
        match actix_rt::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text:?}");
    assert!(echoed(&got), "no echo of the early frames: {text:?}");
}

/// actix-http hands every request that asks for a WebSocket to the upgrade hook, whatever its
/// path: one for a path with no engine is answered 404, and the connection ends.
#[actix_rt::test]
async fn a_websocket_for_a_path_without_an_engine_is_not_found() {
    let server = TestServer::echo(fast());
    let request = format!(
        "GET /elsewhere HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    let mut stream = raw_connect(server.addr, request.as_bytes()).await;
    let (status, text) = raw_response(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(status, 404, "{text:?}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text:?}"
    );
}

#[actix_rt::test]
async fn websocket_fragments_are_bounded() {
    let server = TestServer::echo(EngineConfig {
        max_fragments: 4,
        ..fast()
    });
    // Within the limit: reassembled and echoed.
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    ws_text(&mut conn).await;
    for item in [
        actix_http::ws::Item::FirstText(Bytes::from_static(b"4fr")),
        actix_http::ws::Item::Continue(Bytes::from_static(b"ag")),
        actix_http::ws::Item::Last(Bytes::from_static(b"ment")),
    ] {
        conn.send(ws::Message::Continuation(item)).await.unwrap();
    }
    assert_eq!(ws_text(&mut conn).await, "4fragment");
    // A flood of tiny fragments: closed with 1009.
    conn.send(ws::Message::Continuation(actix_http::ws::Item::FirstText(
        Bytes::from_static(b"4"),
    )))
    .await
    .unwrap();
    for _ in 0..10 {
        if conn
            .send(ws::Message::Continuation(actix_http::ws::Item::Continue(
                Bytes::from_static(b"x"),
            )))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(ws_closed(&mut conn).await, Some(1009));
    server.wait_sessions(0).await;
}

#[actix_rt::test]
async fn websocket_bad_packet_closes() {
    let server = TestServer::echo(fast());
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    ws_text(&mut conn).await;
    ws_send(&mut conn, "x").await;
    assert_eq!(ws_closed(&mut conn).await, Some(1002));
    server.wait_sessions(0).await;
}

#[actix_rt::test]
async fn upgrade_from_polling_to_websocket() {
    let server = TestServer::echo(EngineConfig {
        ping_interval: Duration::from_secs(10),
        ..fast()
    });
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    // A poll waits while the WebSocket probes.
    let waiting = actix_rt::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url).await }
    });
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    let mut conn = ws_connect(&server.ws_url(&format!("transport=websocket&sid={sid}"))).await;
    ws_send(&mut conn, "2probe").await;
    assert_eq!(ws_text(&mut conn).await, "3probe");
    let waiting = waiting.await.unwrap();
    assert_eq!((waiting.status, waiting.text()), (200, "6"));
    // Polls during the upgrade get noop at once.
    assert_eq!(get(&client, &url).await.text(), "6");
    // A message posted during the upgrade is answered on the new transport, in order.
    assert_eq!(post(&client, &url, "4before").await.status, 200);
    let noop_or_data = get(&client, &url).await;
    assert_eq!(noop_or_data.status, 200);
    ws_send(&mut conn, "5").await;
    ws_send(&mut conn, "4after").await;
    let mut echoed = Vec::new();
    if noop_or_data.text() == "4before" {
        echoed.push("4before".to_owned());
    }
    while echoed.len() < 2 {
        echoed.push(ws_text(&mut conn).await);
    }
    assert_eq!(echoed, ["4before", "4after"]);
    // Polling is refused from now on.
    let refused = get(&client, &url).await;
    assert_eq!((refused.status, refused.code()), (400, 3));
    let refused = post(&client, &url, "4x").await;
    assert_eq!((refused.status, refused.code()), (400, 3));
    // A second WebSocket for the session is closed.
    let mut second = ws_connect(&server.ws_url(&format!("transport=websocket&sid={sid}"))).await;
    assert!(ws_closed(&mut second).await.is_some());
    // The first one still works.
    ws_send(&mut conn, "4still").await;
    assert_eq!(ws_text(&mut conn).await, "4still");
    assert_eq!(server.engine.session_count(), 1);
}

#[actix_rt::test]
async fn second_probe_while_upgrading_is_closed() {
    let server = TestServer::echo(fast());
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let ws_url = server.ws_url(&format!("transport=websocket&sid={sid}"));
    let mut first = ws_connect(&ws_url).await;
    ws_send(&mut first, "2probe").await;
    assert_eq!(ws_text(&mut first).await, "3probe");
    let mut second = ws_connect(&ws_url).await;
    assert_eq!(ws_closed(&mut second).await, Some(1008));
}

#[actix_rt::test]
async fn unfinished_upgrade_is_torn_down_after_upgrade_timeout() {
    let server = TestServer::echo(EngineConfig {
        upgrade_timeout: Duration::from_millis(200),
        ping_interval: Duration::from_secs(10),
        ..fast()
    });
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    let ws_url = server.ws_url(&format!("transport=websocket&sid={sid}"));
    let mut probe = ws_connect(&ws_url).await;
    ws_send(&mut probe, "2probe").await;
    assert_eq!(ws_text(&mut probe).await, "3probe");
    assert_eq!(ws_closed(&mut probe).await, Some(1008));
    // The session carries on polling, and may upgrade again.
    assert_eq!(post(&client, &url, "4still polling").await.status, 200);
    assert_eq!(get(&client, &url).await.text(), "4still polling");
    let mut again = ws_connect(&ws_url).await;
    ws_send(&mut again, "2probe").await;
    assert_eq!(ws_text(&mut again).await, "3probe");
    ws_send(&mut again, "5").await;
    ws_send(&mut again, "4upgraded").await;
    assert_eq!(ws_text(&mut again).await, "4upgraded");
    assert_eq!(server.engine.session_count(), 1);
}

#[actix_rt::test]
async fn websocket_with_unknown_sid_is_refused() {
    let server = TestServer::echo(fast());
    let res = client()
        .ws(server.ws_url("transport=websocket&sid=AAAAAAAAAAAAAAAAAAAA"))
        .connect()
        .await;
    match res {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 400)
        }
        other => panic!("expected 400, got {:?}", other.map(|(r, _)| r.status())),
    }
}

#[actix_rt::test]
async fn origin_is_checked_on_both_transports() {
    let server = TestServer::echo(EngineConfig {
        origins: OriginPolicy::List(vec!["http://good.test".into()]),
        ..fast()
    });
    let client = client();
    let polling = client
        .get(server.url("transport=polling"))
        .insert_header(("Origin", "http://evil.test"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(polling.as_u16(), 403);
    let mut ok = client
        .get(server.url("transport=polling"))
        .insert_header(("Origin", "http://good.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(
        ok.headers().get("access-control-allow-origin").unwrap(),
        "http://good.test"
    );
    let body = ok.body().await.unwrap();
    let open: serde_json::Value = serde_json::from_slice(&body[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap();
    // A poll and an upgrade from the wrong origin on an existing session.
    let poll = client
        .get(server.url(&format!("transport=polling&sid={sid}")))
        .insert_header(("Origin", "http://evil.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status().as_u16(), 403);
    for query in [
        "transport=websocket".to_owned(),
        format!("transport=websocket&sid={sid}"),
    ] {
        let res = client
            .ws(server.ws_url(&query))
            .origin("http://evil.test")
            .connect()
            .await;
        match res {
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                assert_eq!(status.as_u16(), 403, "{query}")
            }
            other => panic!("expected 403, got {:?}", other.map(|(r, _)| r.status())),
        }
    }
}

#[actix_rt::test]
async fn session_limit_answers_503() {
    let server = TestServer::echo(EngineConfig {
        max_sessions: 2,
        ..fast()
    });
    let client = client();
    open_polling(&client, &server).await;
    open_polling(&client, &server).await;
    let third = get(&client, &server.url("transport=polling")).await;
    assert_eq!((third.status, third.code()), (503, 3));
    let res = client
        .ws(server.ws_url("transport=websocket"))
        .connect()
        .await;
    assert!(res.is_err(), "a WebSocket handshake is refused too");
}

#[actix_rt::test]
async fn a_slow_client_overflows_its_queue_and_is_closed() {
    let server = TestServer::echo(EngineConfig {
        outbound_queue: 4,
        ping_interval: Duration::from_secs(10),
        ..fast()
    });
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    // Ten echoes queued for a client that does not poll.
    let body = ["4m"; 10].join("\x1e");
    post(&client, &url, body).await;
    let answer = get(&client, &url).await;
    assert_eq!(
        answer.text(),
        "4m\x1e4m\x1e4m\x1e4m\x1e1",
        "what fit, then a close packet"
    );
    server.wait_sessions(0).await;
}

/// Echo that also records which threads opened sessions.
struct ThreadRecorder(Arc<Mutex<HashSet<std::thread::ThreadId>>>);

impl EngineHandler for ThreadRecorder {
    fn on_open(&self, session: SessionHandle, h: &Handshake) -> Box<dyn SessionHandler> {
        self.0.lock().unwrap().insert(std::thread::current().id());
        voxio::protocol_test::Echo.on_open(session, h)
    }
}

/// Counts closes and their reasons.
struct CloseCounter(Arc<Mutex<Vec<CloseReason>>>, SessionHandle);

impl SessionHandler for CloseCounter {
    fn on_message(&mut self, text: ByteString) {
        let _ = self.1.send_text(&text);
    }
    fn on_binary(&mut self, data: Bytes) {
        let _ = self.1.send_binary(data);
    }
    fn on_close(&mut self, reason: CloseReason) {
        self.0.lock().unwrap().push(reason);
    }
}

struct Closes(Arc<Mutex<Vec<CloseReason>>>);

impl EngineHandler for Closes {
    fn on_open(&self, session: SessionHandle, _: &Handshake) -> Box<dyn SessionHandler> {
        Box::new(CloseCounter(self.0.clone(), session))
    }
}

#[actix_rt::test]
async fn close_reasons_reach_the_layer_above() {
    let closes = Arc::new(Mutex::new(Vec::new()));
    let server = TestServer::start(fast(), Arc::new(Closes(closes.clone())));
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    post(
        &client,
        &server.url(&format!("transport=polling&sid={sid}")),
        "1",
    )
    .await;
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    ws_text(&mut conn).await;
    ws_send(&mut conn, "x").await;
    ws_closed(&mut conn).await;
    open_polling(&client, &server).await; // left to time out
    server.wait_sessions(0).await;
    let mut seen = closes.lock().unwrap().clone();
    seen.sort_by_key(|r| r.as_str());
    assert_eq!(
        seen,
        [
            CloseReason::ParseError,
            CloseReason::PingTimeout,
            CloseReason::TransportClose
        ]
    );
}

#[actix_rt::test]
async fn two_hundred_polling_sessions_across_workers() {
    let threads = Arc::new(Mutex::new(HashSet::new()));
    // One client task answers 200 sessions' pings: on two loaded cores a pong can take longer
    // than fast()'s 200 ms, which is not what this test is about.
    let server = Arc::new(TestServer::start(
        EngineConfig {
            ping_timeout: Duration::from_secs(2),
            ..fast()
        },
        Arc::new(ThreadRecorder(threads.clone())),
    ));
    let client = client();
    let mut tasks = Vec::new();
    for n in 0..200 {
        let (client, server) = (client.clone(), server.clone());
        tasks.push(actix_rt::spawn(async move {
            let (sid, _) = open_polling(&client, &server).await;
            let url = server.url(&format!("transport=polling&sid={sid}"));
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut echoes = 0;
            let mut pings = 0;
            let mut round = 0;
            while Instant::now() < deadline {
                let message = format!("4s{n}r{round}");
                assert_eq!(post(&client, &url, message.clone()).await.status, 200);
                round += 1;
                // Read until our echo is back, answering pings on the way.
                loop {
                    let answer = get(&client, &url).await;
                    assert_eq!(answer.status, 200, "session {n}: {}", answer.text());
                    let mut got = false;
                    for packet in answer.text().split('\x1e') {
                        if packet == "2" {
                            pings += 1;
                            let pong = post(&client, &url, "3").await;
                            assert_eq!(pong.status, 200, "pong: {}", pong.text());
                        } else {
                            assert_eq!(packet, message, "session {n}");
                            echoes += 1;
                            got = true;
                        }
                    }
                    if got {
                        break;
                    }
                }
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(post(&client, &url, "1").await.status, 200);
            (echoes, pings)
        }));
    }
    let mut total_pings = 0;
    for task in tasks {
        let (echoes, pings) = task.await.expect("session task");
        assert!(echoes > 5);
        total_pings += pings;
    }
    assert!(total_pings >= 200, "every session saw pings: {total_pings}");
    server.wait_sessions(0).await;
    assert_eq!(
        threads.lock().unwrap().len(),
        2,
        "sessions opened on both workers"
    );
}

#[actix_rt::test]
async fn a_draining_engine_refuses_handshakes_and_closes_sessions_on_request() {
    use voxio::engineio::CloseReason;
    let server = TestServer::echo(fast());
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    assert!(ws_text(&mut conn).await.starts_with("0{"));
    server.wait_sessions(2).await;

    server.engine.begin_shutdown();
    assert!(server.engine.is_draining());
    let refused = get(&client, &server.url("transport=polling")).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.code(), 3);
    match client
        .ws(server.ws_url("transport=websocket"))
        .connect()
        .await
    {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 503)
        }
        other => panic!(
            "a WebSocket handshake while draining: {:?}",
            other.map(|_| ())
        ),
    }
    // Open sessions go on until closed.
    let pending = client
        .get(server.url(&format!("transport=polling&sid={sid}")))
        .send();
    let handles = server.engine.sessions();
    assert_eq!(handles.len(), 2);
    for handle in handles {
        handle.close_with(CloseReason::ServerShutdown);
    }
    // The pending poll gets the close packet; the WebSocket a close frame "service restart".
    let mut answer = pending.await.expect("poll");
    assert_eq!(answer.body().await.unwrap().as_ref(), b"1");
    assert_eq!(ws_closed(&mut conn).await, Some(1012));
    server.wait_sessions(0).await;
}

/// Writes down what the engine tells its observer.
#[derive(Default)]
struct Told(Mutex<Vec<String>>);

impl Told {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl voxio::engineio::EngineObserver for Told {
    fn opened(&self, transport: voxio::engineio::TransportKind) {
        self.push(format!("opened {}", transport.as_str()));
    }
    fn upgraded(&self) {
        self.push("upgraded".into());
    }
    fn ended(&self, transport: voxio::engineio::TransportKind) {
        self.push(format!("ended {}", transport.as_str()));
    }
    fn closed(&self, reason: CloseReason) {
        self.push(format!("closed {reason}"));
    }
    fn refused(&self, reason: &'static str) {
        self.push(format!("refused {reason}"));
    }
    fn received(&self, transport: voxio::engineio::TransportKind, packets: u64, bytes: u64) {
        self.push(format!("in {} {packets} {bytes}", transport.as_str()));
    }
    fn sent(&self, transport: voxio::engineio::TransportKind, packets: u64, _bytes: u64) {
        self.push(format!("out {} {packets}", transport.as_str()));
    }
}

#[actix_rt::test]
async fn the_observer_is_told_of_sessions_and_packets_on_both_transports() {
    let told = Arc::new(Told::default());
    let server = TestServer::echo(EngineConfig {
        ping_interval: Duration::from_secs(10),
        max_sessions: 1,
        observer: voxio::engineio::Observer(told.clone()),
        ..fast()
    });
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    // The one session allowed is open: the next handshake is refused.
    assert_eq!(
        get(&client, &server.url("transport=polling")).await.status,
        503
    );
    let url = server.url(&format!("transport=polling&sid={sid}"));
    assert_eq!(post(&client, &url, "4hello\x1e4world").await.status, 200);
    assert_eq!(get(&client, &url).await.text(), "4hello\x1e4world");
    let mut conn = ws_connect(&server.ws_url(&format!("transport=websocket&sid={sid}"))).await;
    ws_send(&mut conn, "2probe").await;
    assert_eq!(ws_text(&mut conn).await, "3probe");
    ws_send(&mut conn, "5").await;
    ws_send(&mut conn, "4again").await;
    assert_eq!(ws_text(&mut conn).await, "4again");
    ws_send(&mut conn, "1").await;
    server.wait_sessions(0).await;
    let lines = told.lines();
    let expected = [
        "opened polling",
        "out polling 1",
        "refused too many sessions",
        "in polling 2 13",
        "out polling 2",
        "upgraded",
        "in websocket 1 6",
        "out websocket 1",
        "in websocket 1 1",
        "closed transport close",
        "ended websocket",
    ];
    // In this order, with the probe's own packets (which the session does not see) around them.
    let mut at = 0;
    for line in &lines {
        if expected.get(at) == Some(&line.as_str()) {
            at += 1;
        }
    }
    assert_eq!(at, expected.len(), "told {lines:?}");
}
