//! Socket.IO v5 against the real server: the limits, the malformed inputs, and replays of the
//! inputs from the published advisories against engine.io, socket.io-parser and ws. Each must
//! get its documented answer and leave the server up with nothing leaked.

mod common;

use std::time::Duration;

use awc::ws;
use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voxio::engineio::{EngineConfig, OriginPolicy};
use voxio::socketio::SocketIoConfig;

fn engine_config() -> EngineConfig {
    EngineConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        origins: OriginPolicy::Any,
        ..EngineConfig::default()
    }
}

fn sio_config() -> SocketIoConfig {
    SocketIoConfig {
        connect_timeout: Duration::from_millis(1000),
        attachment_timeout: Duration::from_millis(300),
        ..SocketIoConfig::default()
    }
}

fn server() -> TestServer {
    TestServer::socketio(engine_config(), sio_config())
}

/// A WebSocket connection joined to `/`, past the `auth` event.
async fn joined(server: &TestServer) -> WsConn {
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    assert!(ws_text(&mut conn).await.starts_with("0{"));
    ws_send(&mut conn, "40").await;
    let connect = ws_data(&mut conn).await;
    assert!(connect.starts_with("40{\"sid\":\""), "{connect}");
    assert_eq!(ws_data(&mut conn).await, r#"42["auth",{}]"#);
    conn
}

/// The next text frame that is not a heartbeat (pings are answered).
async fn ws_data(conn: &mut WsConn) -> String {
    loop {
        let text = ws_text(conn).await;
        if text == "2" {
            ws_send(conn, "3").await;
            continue;
        }
        return text;
    }
}

/// Reads until the server closes the connection, answering pings; any other frame fails the
/// test (`what` says what was sent).
async fn until_closed(conn: &mut WsConn, what: &str) {
    loop {
        match ws_next(conn).await {
            Some(ws::Frame::Close(_)) | None => break,
            Some(ws::Frame::Text(t)) if &t[..] == b"2" => ws_send(conn, "3").await,
            Some(ws::Frame::Text(t)) if &t[..] == b"1" => {}
            Some(other) => panic!("{what}: expected a close, got {other:?}"),
        }
    }
}

/// Sends `bad` after joining and expects the connection to be closed.
async fn closes<const N: usize>(server: &TestServer, frames: [ws::Message; N]) {
    let what = format!("{frames:?}");
    let mut conn = joined(server).await;
    for frame in frames {
        conn.send(frame).await.expect("send");
    }
    until_closed(&mut conn, &what).await;
    server.wait_sessions(0).await;
}

fn text(t: &str) -> ws::Message {
    ws::Message::Text(t.to_owned().into())
}

fn binary(b: &'static [u8]) -> ws::Message {
    ws::Message::Binary(Bytes::from_static(b))
}

/// After an ignored or accepted input, the connection still answers.
async fn still_answers(conn: &mut WsConn) {
    ws_send(conn, r#"42["message","still here"]"#).await;
    assert_eq!(ws_data(conn).await, r#"42["message-back","still here"]"#);
}

#[actix_rt::test]
async fn events_acks_and_binary_over_websocket() {
    let server = server();
    let mut conn = joined(&server).await;
    ws_send(&mut conn, r#"42["message",1,"two",{"three":[3]}]"#).await;
    assert_eq!(
        ws_data(&mut conn).await,
        r#"42["message-back",1,"two",{"three":[3]}]"#
    );
    ws_send(&mut conn, r#"4217["message-with-ack","a",null]"#).await;
    assert_eq!(ws_data(&mut conn).await, r#"4317["a",null]"#);
    ws_send(
        &mut conn,
        r#"451-["message",{"audio":{"_placeholder":true,"num":0}}]"#,
    )
    .await;
    conn.send(binary(&[1, 2, 3])).await.unwrap();
    assert_eq!(
        ws_data(&mut conn).await,
        r#"451-["message-back",{"audio":{"_placeholder":true,"num":0}}]"#
    );
    match ws_next(&mut conn).await {
        Some(ws::Frame::Binary(b)) => assert_eq!(&b[..], &[1, 2, 3]),
        other => panic!("{other:?}"),
    }
    ws_send(
        &mut conn,
        r#"452-9["message-with-ack",{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]"#,
    )
    .await;
    conn.send(binary(b"zero")).await.unwrap();
    conn.send(binary(b"one")).await.unwrap();
    assert_eq!(
        ws_data(&mut conn).await,
        r#"462-9[{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]"#
    );
    for want in [&b"zero"[..], b"one"] {
        match ws_next(&mut conn).await {
            Some(ws::Frame::Binary(b)) => assert_eq!(&b[..], want),
            other => panic!("{other:?}"),
        }
    }
}

#[actix_rt::test]
async fn server_to_client_ack() {
    let server = server();
    let mut conn = joined(&server).await;
    ws_send(&mut conn, r#"42["ask","q?"]"#).await;
    assert_eq!(ws_data(&mut conn).await, r#"420["question","q?"]"#);
    ws_send(&mut conn, r#"430["yes",42]"#).await;
    assert_eq!(ws_data(&mut conn).await, r#"42["answer","yes",42]"#);
}

#[actix_rt::test]
async fn unknown_namespace_is_answered_invalid_namespace() {
    let server = server();
    let mut conn = joined(&server).await;
    ws_send(&mut conn, "40/nope,").await;
    assert_eq!(
        ws_data(&mut conn).await,
        r#"44/nope,{"message":"Invalid namespace"}"#
    );
    still_answers(&mut conn).await;
}

#[actix_rt::test]
async fn middleware_refusal_carries_data() {
    let server = server();
    let mut conn = joined(&server).await;
    ws_send(&mut conn, r#"40/refused,{"token":"x"}"#).await;
    assert_eq!(
        ws_data(&mut conn).await,
        r#"44/refused,{"data":{"reason":"test"},"message":"refused"}"#
    );
}

#[actix_rt::test]
async fn session_stays_open_after_last_namespace_leaves() {
    let server = server();
    let mut conn = joined(&server).await;
    ws_send(&mut conn, "41").await;
    // Heartbeats go on, and the client may join again.
    assert_eq!(ws_text(&mut conn).await, "2");
    ws_send(&mut conn, "3").await;
    ws_send(&mut conn, "40").await;
    assert!(ws_data(&mut conn).await.starts_with("40{"));
    assert_eq!(server.engine.session_count(), 1);
}

#[actix_rt::test]
async fn server_side_disconnect_sends_disconnect_packet() {
    let server = server();
    let mut conn = joined(&server).await;
    ws_send(&mut conn, r#"42["server-disconnect"]"#).await;
    assert_eq!(ws_data(&mut conn).await, "41");
    // Events for the namespace left are ignored; the connection stays.
    ws_send(&mut conn, r#"42["message","x"]"#).await;
    ws_send(&mut conn, "40").await;
    assert!(ws_data(&mut conn).await.starts_with("40{"));
}

#[actix_rt::test]
async fn connect_timeout_closes_a_connection_that_joins_nothing() {
    let server = server();
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    ws_text(&mut conn).await;
    // Answer pings so only connectTimeout (1 s) can close it.
    until_closed(&mut conn, "").await;
    server.wait_sessions(0).await;
}

#[actix_rt::test]
async fn client_event_named_error_is_an_ordinary_event() {
    let server = server();
    let mut conn = joined(&server).await;
    ws_send(&mut conn, r#"42["error","boom"]"#).await;
    still_answers(&mut conn).await;
}

#[actix_rt::test]
async fn malformed_packets_close_the_connection() {
    let server = server();
    for bad in [
        "42{}",
        "4abc",
        "42abc[\"message\"]",
        "4",
        "49",
        "42[]",
        "42[\"message\"",
        "44{\"message\":\"x\"}",
        "43[]",
        "4218446744073709551616[\"message\"]",
        "40[]",
    ] {
        closes(&server, [text(bad)]).await;
    }
}

#[actix_rt::test]
async fn advisory_engine_io_transport_proto() {
    let server = server();
    let answer = get(&client(), &server.url("transport=__proto__")).await;
    assert_eq!((answer.status, answer.code()), (400, 0));
}

#[actix_rt::test]
async fn advisory_socket_io_parser_huge_attachment_count() {
    let server = server();
    closes(
        &server,
        [text(
            r#"451000000-["message",{"_placeholder":true,"num":0}]"#,
        )],
    )
    .await;
    closes(&server, [text(r#"4511-["message"]"#)]).await;
}

#[actix_rt::test]
async fn advisory_socket_io_parser_zero_attachments() {
    // `50-[...]` is a binary event with no attachments: a complete, ordinary event.
    let server = server();
    let mut conn = joined(&server).await;
    ws_send(&mut conn, r#"450-["message","zero"]"#).await;
    assert_eq!(ws_data(&mut conn).await, r#"42["message-back","zero"]"#);
}

#[actix_rt::test]
async fn advisory_socket_io_parser_placeholder_num() {
    let server = server();
    closes(
        &server,
        [text(
            r#"451-["message",{"_placeholder":true,"num":"splice"}]"#,
        )],
    )
    .await;
    closes(
        &server,
        [text(r#"451-["message",{"_placeholder":true,"num":1}]"#)],
    )
    .await;
    closes(
        &server,
        [text(r#"452-["message",{"_placeholder":true,"num":1e300}]"#)],
    )
    .await;
}

#[actix_rt::test]
async fn advisory_socket_io_parser_event_names() {
    let server = server();
    for name in [r#"{"toString":"foo"}"#, "true", "null", "1", "[]"] {
        closes(&server, [text(&format!("42[{name},\"x\"]"))]).await;
    }
}

#[actix_rt::test]
async fn attachments_limits() {
    let server = server();
    // A text packet while attachments are pending.
    closes(
        &server,
        [
            text(r#"451-["message",{"_placeholder":true,"num":0}]"#),
            text("42[\"message\"]"),
        ],
    )
    .await;
    // A binary packet when none is expected.
    closes(&server, [binary(b"stray")]).await;
    // More bytes of attachments than allowed.
    let server_small = TestServer::socketio(
        engine_config(),
        SocketIoConfig {
            max_attachment_bytes: 10,
            ..sio_config()
        },
    );
    closes(
        &server_small,
        [
            text(r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#),
            binary(b"123456"),
            binary(b"789012"),
        ],
    )
    .await;
}

#[actix_rt::test]
async fn advisory_binary_header_without_attachments() {
    // An unauthenticated client announces attachments and never sends them: closed after
    // the attachment timeout, nothing kept.
    let server = server();
    let mut conn = joined(&server).await;
    ws_send(
        &mut conn,
        r#"451-["message",{"_placeholder":true,"num":0}]"#,
    )
    .await;
    until_closed(&mut conn, "").await;
    server.wait_sessions(0).await;
}

#[actix_rt::test]
async fn advisory_ws_tiny_fragment_flood() {
    let server = server();
    let mut conn = joined(&server).await;
    conn.send(ws::Message::Continuation(actix_http::ws::Item::FirstText(
        Bytes::from_static(b"4"),
    )))
    .await
    .unwrap();
    for _ in 0..1000 {
        if conn
            .send(ws::Message::Continuation(actix_http::ws::Item::Continue(
                Bytes::from_static(b"2"),
            )))
            .await
            .is_err()
        {
            break;
        }
    }
    loop {
        match ws_next(&mut conn).await {
            Some(ws::Frame::Close(reason)) => {
                assert_eq!(reason.map(|r| u16::from(r.code)), Some(1009));
                break;
            }
            None => break,
            Some(_) => {}
        }
    }
    server.wait_sessions(0).await;
}

/// Reads what the server answers on a raw connection until it closes it (bounded).
async fn raw_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection left open: {:?}", String::from_utf8_lossy(&all)),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path}?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[actix_rt::test]
async fn advisory_ws_garbage_after_upgrade_headers() {
    let server = server();
    let mut request = upgrade_request(server.path, "").into_bytes();
    request.extend_from_slice(b"\xff\xfe\x00garbage that is not a websocket frame\x81\x7f\xff");
    let mut stream = raw_connect(server.addr, &request).await;
    let answer = raw_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    server.wait_sessions(0).await;
    still_up(&server).await;
}

#[actix_rt::test]
async fn advisory_ws_protocol_header_of_spaces() {
    let server = server();
    let spaces = " ".repeat(30_000);
    let request = upgrade_request(
        server.path,
        &format!("Sec-WebSocket-Protocol: {spaces}x\r\n"),
    );
    let mut stream = raw_connect(server.addr, request.as_bytes()).await;
    let answer = raw_until_closed(&mut stream).await;
    // Either refused as too large, or accepted without choosing that protocol; never a hang.
    assert!(
        answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 101") || answer.is_empty(),
        "{answer}"
    );
    still_up(&server).await;
}

#[actix_rt::test]
async fn advisory_too_many_request_headers() {
    let server = server();
    let extra: String = (0..500).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let request = upgrade_request(server.path, &extra);
    let mut stream = raw_connect(server.addr, request.as_bytes()).await;
    let answer = raw_until_closed(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 4") || answer.is_empty(),
        "{answer}"
    );
    drop(stream.shutdown().await);
    still_up(&server).await;
}

async fn still_up(server: &TestServer) {
    let mut conn = joined(server).await;
    still_answers(&mut conn).await;
}

#[actix_rt::test]
async fn polling_binary_event_with_attachment() {
    let server = server();
    let client = client();
    let (sid, _) = open_polling(&client, &server).await;
    let url = server.url(&format!("transport=polling&sid={sid}"));
    post(&client, &url, "40").await;
    let joined = get(&client, &url).await;
    assert!(joined.text().starts_with("40{\"sid\""), "{}", joined.text());
    let payload = "451-[\"message\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID";
    assert_eq!(post(&client, &url, payload).await.status, 200);
    let mut seen = String::new();
    while !seen.contains("bAQID") {
        seen.push_str(get(&client, &url).await.text());
        seen.push('\x1e');
    }
    assert!(
        seen.contains("451-[\"message-back\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID"),
        "{seen}"
    );
}
