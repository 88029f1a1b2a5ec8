//! The HTTP application through the full app (sessions, login, tokens) against a real
//! `redis-server` each test starts on its own port, stops and pauses by its PID.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use awc::ws;
use common::{free_port, ws_send, ws_text, AppServer, Redis, WsConn};
use futures_util::SinkExt;

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
}

/// Logs in; returns the `name=value` of the session cookie.
async fn login(app: &AppServer, cookie: Option<&str>) -> String {
    let mut req = client().post(app.url("/login"));
    if let Some(cookie) = cookie {
        req = req.insert_header(("Cookie", cookie));
    }
    let res = req
        .send_json(&serde_json::json!({"pin": "246810"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let set = res
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

async fn token_status(app: &AppServer, cookie: &str, extra: Option<(&str, &str)>) -> u16 {
    let mut req = client()
        .get(app.url("/api/voice-token"))
        .insert_header(("Cookie", cookie));
    if let Some(header) = extra {
        req = req.insert_header(header);
    }
    req.send().await.unwrap().status().as_u16()
}

/// A WebSocket Engine.IO session on the app, past its open packet (101, no Set-Cookie).
async fn engine_socket(app: &AppServer) -> WsConn {
    let (res, mut conn) = client()
        .ws(format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket",
            app.addr
        ))
        .connect()
        .await
        .expect("websocket");
    assert_eq!(res.status().as_u16(), 101);
    assert!(res.headers().get("set-cookie").is_none());
    assert!(ws_text(&mut conn).await.starts_with("0{"));
    conn
}

/// A `/voice` socket over WebSocket, authenticated with the PIN in CONNECT.
async fn voice_socket(app: &AppServer) -> WsConn {
    let mut conn = engine_socket(app).await;
    ws_send(&mut conn, r#"40/voice,{"pin":"246810"}"#).await;
    // The CONNECT answer carries the socket's private id for recovery, and every event an
    // offset as its last argument.
    assert!(data(&mut conn).await.starts_with("40/voice,{\"sid\""));
    assert_eq!(
        data(&mut conn).await,
        r#"42/voice,["authenticated",{"via":"pin"},"1"]"#
    );
    assert_eq!(
        data(&mut conn).await,
        r#"42/voice,["session.ready",{"pipeline":false},"2"]"#
    );
    conn
}

async fn data(conn: &mut WsConn) -> String {
    loop {
        let text = ws_text(conn).await;
        if text != "2" {
            return text;
        }
        ws_send(conn, "3").await;
    }
}

/// Sends one audio chunk with an ack; returns the ack.
async fn audio(conn: &mut WsConn, id: u32) -> String {
    ws_send(
        conn,
        &format!(r#"451-/voice,{id}["audio",{{"_placeholder":true,"num":0}}]"#),
    )
    .await;
    conn.send(ws::Message::Binary(vec![0u8; 640].into()))
        .await
        .unwrap();
    data(conn).await
}

#[actix_rt::test]
async fn realtime_traffic_never_touches_the_redis_session_store() {
    let redis = Redis::start();
    let app = AppServer::start(&["--redis-url", &redis.url()]);
    let cookie = login(&app, None).await;
    let client = client();
    let before = redis.commands();
    let mut requests = 0;
    while requests < 100 {
        // Handshake, a POST and a poll, all with the session cookie.
        let mut res = client
            .get(app.url("/socket.io/?EIO=4&transport=polling"))
            .insert_header(("Cookie", cookie.as_str()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert!(res.headers().get("set-cookie").is_none());
        let body = res.body().await.unwrap();
        let open: serde_json::Value = serde_json::from_slice(&body[1..]).unwrap();
        let sid = open["sid"].as_str().unwrap().to_owned();
        let url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
        let res = client
            .post(url.clone())
            .insert_header(("Cookie", cookie.as_str()))
            .send_body("40")
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert!(res.headers().get("set-cookie").is_none());
        let res = client
            .get(url.clone())
            .insert_header(("Cookie", cookie.as_str()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert!(res.headers().get("set-cookie").is_none());
        // The upgrade, with the cookie: 101, no Set-Cookie.
        let (res, mut conn) = client
            .ws(format!(
                "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
                app.addr
            ))
            .set_header("Cookie", cookie.as_str())
            .connect()
            .await
            .expect("upgrade");
        assert_eq!(res.status().as_u16(), 101);
        assert!(res.headers().get("set-cookie").is_none());
        ws_send(&mut conn, "2probe").await;
        assert_eq!(ws_text(&mut conn).await, "3probe");
        ws_send(&mut conn, "5").await;
        drop(conn);
        requests += 4;
    }
    assert_eq!(
        redis.commands(),
        before,
        "Engine.IO requests caused Redis commands"
    );
}

#[actix_rt::test]
async fn spoofed_upgrade_header_does_not_get_into_a_protected_route() {
    let app = AppServer::start(&[]);
    let cookie = login(&app, None).await;
    assert_eq!(token_status(&app, &cookie, None).await, 200);
    // A request asking for a WebSocket never reaches the App and its routes: the upgrade hook
    // takes it, and a path with no engine mounted is not found.
    assert_eq!(
        token_status(&app, &cookie, Some(("Upgrade", "websocket"))).await,
        404
    );
}

#[actix_rt::test]
async fn login_renews_the_session_id() {
    let redis = Redis::start();
    let app = AppServer::start(&["--redis-url", &redis.url()]);
    let first = login(&app, None).await;
    // Logging in again with a session id someone else may know yields a new one; the old one
    // stops working.
    let second = login(&app, Some(&first)).await;
    assert_ne!(first, second);
    assert_eq!(token_status(&app, &second, None).await, 200);
    assert_eq!(token_status(&app, &first, None).await, 401);
}

#[actix_rt::test]
async fn logout_revokes_cookie_copies_and_earlier_tokens() {
    for redis in [None, Some(Redis::start())] {
        let url = redis.as_ref().map(Redis::url);
        let extra: Vec<&str> = match &url {
            Some(url) => vec!["--redis-url", url],
            None => vec![],
        };
        let app = AppServer::start(&extra);
        let cookie = login(&app, None).await;
        let mut res = client()
            .get(app.url("/api/voice-token"))
            .insert_header(("Cookie", cookie.as_str()))
            .send()
            .await
            .unwrap();
        let token: serde_json::Value = res.json().await.unwrap();
        let token = token["token"].as_str().unwrap().to_owned();
        let res = client()
            .post(app.url("/logout"))
            .insert_header(("Cookie", cookie.as_str()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 204);
        // A copy of the cookie from before the logout gets no token.
        assert_eq!(token_status(&app, &cookie, None).await, 401, "{url:?}");
        // A token from before the logout no longer connects.
        let mut conn = engine_socket(&app).await;
        ws_send(&mut conn, &format!(r#"40/voice,{{"token":"{token}"}}"#)).await;
        let refused = data(&mut conn).await;
        assert!(
            refused.starts_with(r#"44/voice,{"data":{"code":"invalid_token""#),
            "{refused}"
        );
    }
}

#[actix_rt::test]
async fn logout_purges_the_session() {
    let app = AppServer::start(&[]);
    let cookie = login(&app, None).await;
    let res = client()
        .post(app.url("/logout"))
        .insert_header(("Cookie", cookie.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let cleared = res.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        cleared.contains("voxio_session=;") || cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[actix_rt::test]
async fn the_page_is_served_with_security_headers() {
    let app = AppServer::start(&[]);
    for path in ["/", "/app.js", "/healthz"] {
        let res = client().get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            res.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} in {csp:?}");
        }
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
    }
}

#[actix_rt::test]
async fn a_session_older_than_its_ttl_gets_no_token_even_from_a_kept_cookie() {
    let app = AppServer::start(&["--session-ttl-s", "1"]);
    let cookie = login(&app, None).await;
    assert_eq!(token_status(&app, &cookie, None).await, 200);
    // The cookie store cannot expire a copy of the cookie; the session's issue time can.
    actix_rt::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(token_status(&app, &cookie, None).await, 401);
}

#[actix_rt::test]
async fn metrics_on_their_own_address_are_not_on_the_main_one() {
    let app = AppServer::start(&["--metrics-bind", "127.0.0.1:9"]);
    let res = client().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let shared = AppServer::start(&[]);
    let res = client().get(shared.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

#[actix_rt::test]
async fn cross_site_posts_are_refused() {
    let app = AppServer::start(&[]);
    for header in [
        ("Origin", "http://evil.test"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let res = client()
            .post(app.url("/login"))
            .insert_header(header)
            .send_json(&serde_json::json!({"pin": "246810"}))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 403, "{header:?}");
    }
    let res = client()
        .ws(format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket",
            app.addr
        ))
        .origin("http://evil.test")
        .connect()
        .await;
    assert!(
        matches!(res, Err(awc::error::WsClientError::InvalidResponseStatus(s)) if s.as_u16() == 403)
    );
}

#[actix_rt::test]
async fn wrong_pins_back_off_per_address() {
    let app = AppServer::start(&["--pin-free-attempts", "1", "--pin-backoff-ms", "500"]);
    let attempt = |pin: &'static str| {
        let url = app.url("/login");
        async move {
            client()
                .post(url)
                .send_json(&serde_json::json!({ "pin": pin }))
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The one free attempt is checked; its failure starts the backoff.
    assert_eq!(attempt("0000").await, 401);
    assert_eq!(attempt("0000").await, 429);
    // Locked now, even for the right PIN.
    assert_eq!(attempt("246810").await, 429);
    actix_rt::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(attempt("246810").await, 200);
}

async fn session_route_within(app: &AppServer, limit: Duration) -> (u16, Option<String>) {
    let started = Instant::now();
    let res = client()
        .post(app.url("/login"))
        .send_json(&serde_json::json!({"pin": "246810"}))
        .await
        .unwrap();
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status().as_u16(), retry)
}

#[actix_rt::test]
async fn redis_stopped_or_paused_gives_503_and_recovers() {
    let mut redis = Redis::start();
    let app = AppServer::start(&["--redis-url", &redis.url(), "--redis-timeout-ms", "300"]);
    let mut voice = voice_socket(&app).await;
    assert_eq!(
        audio(&mut voice, 1).await,
        r#"43/voice,1[{"bytes":640,"seq":1}]"#
    );

    // Stopped.
    redis.stop();
    let (status, retry) = session_route_within(&app, Duration::from_secs(2)).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    assert_eq!(
        audio(&mut voice, 2).await,
        r#"43/voice,2[{"bytes":640,"seq":2}]"#
    );
    redis.restart();
    let mut recovered = false;
    for _ in 0..50 {
        if session_route_within(&app, Duration::from_secs(2)).await.0 == 200 {
            recovered = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "no recovery after Redis came back");

    // Paused: commands hang; answers still come within the timeout.
    redis.signal("-STOP");
    let (status, retry) = session_route_within(&app, Duration::from_secs(2)).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    assert_eq!(
        audio(&mut voice, 3).await,
        r#"43/voice,3[{"bytes":640,"seq":3}]"#
    );
    redis.signal("-CONT");
    let mut recovered = false;
    for _ in 0..50 {
        if session_route_within(&app, Duration::from_secs(2)).await.0 == 200 {
            recovered = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "no recovery after Redis resumed");
    assert_eq!(
        audio(&mut voice, 4).await,
        r#"43/voice,4[{"bytes":640,"seq":4}]"#
    );
}

#[actix_rt::test]
async fn audio_before_authentication_is_refused() {
    let app = AppServer::start(&[]);
    let mut conn = engine_socket(&app).await;
    ws_send(&mut conn, "40/voice,").await;
    assert!(data(&mut conn).await.starts_with("40/voice,{"));
    let refused = audio(&mut conn, 7).await;
    assert_eq!(
        refused,
        r#"43/voice,7[{"error":{"code":"unauthenticated","event":"audio","message":"Authenticate before sending audio."}}]"#
    );
    assert!(data(&mut conn)
        .await
        .starts_with(r#"42/voice,["error",{"code":"unauthenticated""#));
    ws_send(&mut conn, r#"42/voice,["authenticate",{"pin":"246810"}]"#).await;
    assert_eq!(
        data(&mut conn).await,
        r#"42/voice,["authenticated",{"via":"pin"},"2"]"#
    );
    assert_eq!(
        data(&mut conn).await,
        r#"42/voice,["session.ready",{"pipeline":false},"3"]"#
    );
    assert_eq!(
        audio(&mut conn, 8).await,
        r#"43/voice,8[{"bytes":640,"seq":1}]"#
    );
}

#[test]
fn the_pin_never_reaches_the_log() {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_voxio"))
        .env("VOXIO_BIND", format!("127.0.0.1:{port}"))
        .env("VOXIO_PIN", "975310")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The binary loads its speech models before it listens: with the other tests starting
    // servers on the same two cores that took over 10 s once (CI of 476b349).
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    actix_rt::System::new().block_on(async {
        let url = format!("http://127.0.0.1:{port}/login");
        for pin in ["975310", "864209"] {
            let _ = client()
                .post(url.clone())
                .send_json(&serde_json::json!({"pin": pin}))
                .await;
        }
        let (_, mut conn) = client()
            .ws(format!(
                "ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
            ))
            .connect()
            .await
            .unwrap();
        ws_text(&mut conn).await;
        ws_send(&mut conn, r#"40/voice,{"pin":"975310"}"#).await;
        ws_send(&mut conn, r#"42/voice,["authenticate",{"pin":"864209"}]"#).await;
        actix_rt::time::sleep(Duration::from_millis(300)).await;
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("voxio listening"), "{log}");
    assert!(!log.contains("975310"), "the PIN is in the log");
    assert!(!log.contains("864209"), "a PIN attempt is in the log");
}

#[actix_rt::test]
async fn the_official_client_bundle_is_served_from_the_npm_package() {
    let app = AppServer::start(&[]);
    let mut res = client()
        .get(app.url("/socket.io/socket.io.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        200,
        "run scripts/test (npm ci in client/) first"
    );
    assert!(res.headers().get("set-cookie").is_none());
    let body = res.body().limit(1_000_000).await.unwrap();
    assert!(std::str::from_utf8(&body).unwrap().contains("Socket.IO"));
    let missing = AppServer::start(&["--client-js", "/nonexistent/socket.io.js"]);
    let res = client()
        .get(missing.url("/socket.io/socket.io.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
}
