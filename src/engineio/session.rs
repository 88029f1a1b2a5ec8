//! The Engine.IO session as a deterministic state machine: no sockets, no clock of its own.
//!
//! Drivers (the polling actor, the WebSocket actor) feed it what happened and when, and act on
//! what it hands back, in the manner of quinn-proto:
//! - getters (`&self`): [`Session::sid`], [`Session::transport`], [`Session::is_closed`], …
//! - `handle_*`: events from the network or the clock ([`Session::handle_packet`],
//!   [`Session::handle_timeout`], the upgrade steps);
//! - mutators for commands from the driver ([`Session::close`]);
//! - `poll_*`: what to do next ([`Session::poll_event`] for the layer above,
//!   [`Session::poll_timeout`] for the one timer to arm).
//!
//! Packets to send go straight into the session's [`Outbox`](super::outbox::Outbox), which the
//! driver drains.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;

use super::outbox::Outbox;
use super::packet::{OutFrame, Packet};
use super::sid::Sid;
use super::{CloseReason, EngineConfig, TransportKind};

/// What the session reports to the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A text message arrived.
    Message(ByteString),
    /// A binary message arrived.
    Binary(Bytes),
    /// The session closed; reported exactly once, last.
    Closed(CloseReason),
}

/// Where an upgrade from polling to WebSocket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    /// No WebSocket is probing this session.
    Idle,
    /// A WebSocket has connected with this sid; `probed` once it sent `2probe`, after which
    /// polls are answered with `6` so the client can pause polling.
    Probing { probed: bool },
}

/// Why an upgrade cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRefused {
    /// The session is already on WebSocket, or another WebSocket is probing it.
    #[error("session is already upgrading or upgraded")]
    AlreadyUpgrading,
    /// The session is closed.
    #[error("session is closed")]
    Closed,
}

/// One Engine.IO session's protocol state.
#[derive(Debug)]
pub struct Session {
    sid: Sid,
    ping_interval: Duration,
    ping_timeout: Duration,
    transport: TransportKind,
    upgrade: Upgrade,
    /// When to send the next ping; `None` while a ping awaits its pong.
    next_ping: Option<Instant>,
    /// When the session dies if no pong has come; `Some` only while a ping is out.
    pong_deadline: Option<Instant>,
    closed: Option<CloseReason>,
    events: VecDeque<Event>,
    outbox: Arc<Outbox>,
}

impl Session {
    /// Opens a session: queues the open packet and schedules the first ping one `ping_interval`
    /// from `now` (not at once: a client has just connected and needs no proof of life yet).
    pub(crate) fn new(
        sid: Sid,
        config: &EngineConfig,
        transport: TransportKind,
        now: Instant,
        outbox: Arc<Outbox>,
    ) -> Session {
        let upgrades = match transport {
            TransportKind::Polling if config.transports.websocket => r#"["websocket"]"#,
            _ => "[]",
        };
        let open = format!(
            r#"0{{"sid":"{sid}","upgrades":{upgrades},"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
            config.ping_interval.as_millis(),
            config.ping_timeout.as_millis(),
            config.max_payload
        );
        outbox.push_control(OutFrame::Text(open.into()));
        Session {
            sid,
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            transport,
            upgrade: Upgrade::Idle,
            next_ping: Some(now + config.ping_interval),
            pong_deadline: None,
            closed: None,
            events: VecDeque::new(),
            outbox,
        }
    }

    // ---- getters ----

    /// The session id.
    pub fn sid(&self) -> Sid {
        self.sid
    }

    /// The transport currently carrying the session.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// Whether the session has closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Whether a WebSocket is probing this session.
    pub fn is_upgrading(&self) -> bool {
        matches!(self.upgrade, Upgrade::Probing { .. })
    }

    /// Whether a poll must be answered with `noop` rather than wait for packets: true once the
    /// probe has succeeded, so the client can pause polling and finish the upgrade.
    pub fn polls_get_noop(&self) -> bool {
        self.upgrade == Upgrade::Probing { probed: true }
    }

    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    // ---- handle_*: events from the network and the clock ----

    /// A packet arrived from the client on the session's current transport.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        match packet {
            Packet::Message(text) => self.events.push_back(Event::Message(text)),
            Packet::Binary(data) => self.events.push_back(Event::Binary(data)),
            Packet::Pong(_) => {
                if self.pong_deadline.take().is_some() {
                    self.next_ping = Some(now + self.ping_interval);
                }
            }
            Packet::Close => self.close(CloseReason::TransportClose),
            // In v4 only the server pings; a client ping outside an upgrade probe is an error.
            Packet::Ping(_) => self.close(CloseReason::TransportError),
            // A client never opens; the packet makes no sense and the stream is not to be trusted.
            Packet::Open => self.close(CloseReason::ParseError),
            // Leftovers of an upgrade (a late `5`, a `6` flushed by a client): harmless.
            Packet::Upgrade | Packet::Noop => {}
        }
    }

    /// Bytes from the client could not be decoded as packets.
    pub fn handle_parse_error(&mut self) {
        self.close(CloseReason::ParseError);
    }

    /// The transport failed or broke a rule (an overlapping poll, a bad frame, an overflow).
    pub fn handle_transport_error(&mut self) {
        self.close(CloseReason::TransportError);
    }

    /// The transport's connection went away without a close packet.
    pub fn handle_transport_closed(&mut self) {
        self.close(CloseReason::TransportClose);
    }

    /// The timer from [`Session::poll_timeout`] fired (or any time at or after it).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if let Some(deadline) = self.pong_deadline {
            if now >= deadline {
                self.close(CloseReason::PingTimeout);
            }
        } else if let Some(at) = self.next_ping {
            if now >= at {
                self.outbox.push_control(OutFrame::PING);
                self.next_ping = None;
                self.pong_deadline = Some(now + self.ping_timeout);
            }
        }
    }

    /// A WebSocket connected with this session's sid: it may probe. Only one may, and only while
    /// the session is on polling.
    pub fn handle_upgrade_start(&mut self) -> Result<(), UpgradeRefused> {
        if self.closed.is_some() {
            return Err(UpgradeRefused::Closed);
        }
        if self.transport != TransportKind::Polling || self.upgrade != Upgrade::Idle {
            return Err(UpgradeRefused::AlreadyUpgrading);
        }
        self.upgrade = Upgrade::Probing { probed: false };
        Ok(())
    }

    /// The probing WebSocket sent `2probe` and got `3probe`: from now on polls get `noop`.
    pub fn handle_probe(&mut self) {
        if self.upgrade == (Upgrade::Probing { probed: false }) {
            self.upgrade = Upgrade::Probing { probed: true };
        }
    }

    /// The client sent `5` on the probing WebSocket: the session now lives on it.
    pub fn handle_upgrade_complete(&mut self) -> Result<(), UpgradeRefused> {
        if self.closed.is_some() {
            return Err(UpgradeRefused::Closed);
        }
        if !self.is_upgrading() {
            return Err(UpgradeRefused::AlreadyUpgrading);
        }
        self.upgrade = Upgrade::Idle;
        self.transport = TransportKind::WebSocket;
        Ok(())
    }

    /// The probing WebSocket went away or timed out; the session carries on polling.
    pub fn handle_upgrade_abort(&mut self) {
        if self.transport == TransportKind::Polling {
            self.upgrade = Upgrade::Idle;
        }
    }

    // ---- mutators ----

    /// Closes the session for `reason` (the first reason wins); the layer above is told once.
    pub fn close(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            self.next_ping = None;
            self.pong_deadline = None;
            self.outbox.close(reason);
            self.events.push_back(Event::Closed(reason));
        }
    }

    // ---- poll_*: what the driver does next ----

    /// The next event for the layer above.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must next be called; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pong_deadline.or(self.next_ping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(300);
    const TIMEOUT: Duration = Duration::from_millis(200);

    fn config() -> EngineConfig {
        EngineConfig {
            ping_interval: INTERVAL,
            ping_timeout: TIMEOUT,
            ..EngineConfig::default()
        }
    }

    fn open(transport: TransportKind) -> (Session, Instant) {
        let now = Instant::now();
        let outbox = Arc::new(Outbox::new(16, usize::MAX));
        (
            Session::new(Sid::generate(), &config(), transport, now, outbox),
            now,
        )
    }

    fn sent(session: &Session) -> Vec<OutFrame> {
        let mut frames = Vec::new();
        session.outbox().drain_into(&mut frames);
        frames
    }

    fn text(frame: &OutFrame) -> &str {
        match frame {
            OutFrame::Text(t) => t,
            OutFrame::Binary(_) => panic!("binary frame"),
        }
    }

    #[test]
    fn open_packet_lists_settings_and_upgrades() {
        let (session, _) = open(TransportKind::Polling);
        let frames = sent(&session);
        let open_text = text(&frames[0]);
        let json: serde_json::Value = serde_json::from_str(&open_text[1..]).unwrap();
        assert!(open_text.starts_with('0'));
        assert_eq!(json["sid"], session.sid().as_str());
        assert_eq!(json["upgrades"], serde_json::json!(["websocket"]));
        assert_eq!(json["pingInterval"], 300);
        assert_eq!(json["pingTimeout"], 200);
        assert_eq!(json["maxPayload"], 1_000_000);

        let (ws, _) = open(TransportKind::WebSocket);
        let frames = sent(&ws);
        assert!(text(&frames[0]).contains(r#""upgrades":[]"#));
    }

    #[test]
    fn first_ping_after_interval_not_at_once() {
        let (mut s, t0) = open(TransportKind::WebSocket);
        sent(&s);
        assert_eq!(s.poll_timeout(), Some(t0 + INTERVAL));
        s.handle_timeout(t0);
        s.handle_timeout(t0 + INTERVAL - Duration::from_millis(1));
        assert!(sent(&s).is_empty(), "no ping before the interval");
        s.handle_timeout(t0 + INTERVAL);
        assert_eq!(sent(&s), vec![OutFrame::PING]);
        assert_eq!(s.poll_timeout(), Some(t0 + INTERVAL + TIMEOUT));
    }

    #[test]
    fn pong_schedules_next_ping_from_pong_time() {
        let (mut s, t0) = open(TransportKind::WebSocket);
        s.handle_timeout(t0 + INTERVAL);
        let t1 = t0 + INTERVAL + Duration::from_millis(50);
        s.handle_packet(Packet::Pong("".into()), t1);
        assert_eq!(s.poll_timeout(), Some(t1 + INTERVAL));
        s.handle_timeout(t0 + INTERVAL + TIMEOUT);
        assert!(!s.is_closed(), "the answered ping cannot time out");
    }

    #[test]
    fn no_pong_closes_with_ping_timeout() {
        let (mut s, t0) = open(TransportKind::WebSocket);
        s.handle_timeout(t0 + INTERVAL);
        s.handle_timeout(t0 + INTERVAL + TIMEOUT - Duration::from_millis(1));
        assert!(!s.is_closed());
        s.handle_timeout(t0 + INTERVAL + TIMEOUT);
        assert!(s.is_closed());
        assert_eq!(
            s.poll_event(),
            Some(Event::Closed(CloseReason::PingTimeout))
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn unsolicited_pong_changes_nothing() {
        let (mut s, t0) = open(TransportKind::WebSocket);
        s.handle_packet(Packet::Pong("".into()), t0 + Duration::from_millis(10));
        assert_eq!(s.poll_timeout(), Some(t0 + INTERVAL));
    }

    #[test]
    fn messages_become_events_in_order() {
        let (mut s, t0) = open(TransportKind::Polling);
        s.handle_packet(Packet::Message("a".into()), t0);
        s.handle_packet(Packet::Binary(Bytes::from_static(b"b")), t0);
        s.handle_packet(Packet::Noop, t0);
        assert_eq!(s.poll_event(), Some(Event::Message("a".into())));
        assert_eq!(
            s.poll_event(),
            Some(Event::Binary(Bytes::from_static(b"b")))
        );
        assert_eq!(s.poll_event(), None);
    }

    #[test]
    fn close_reasons() {
        let cases = [
            (Packet::Close, CloseReason::TransportClose),
            (Packet::Ping("".into()), CloseReason::TransportError),
            (Packet::Open, CloseReason::ParseError),
        ];
        for (packet, reason) in cases {
            let (mut s, t0) = open(TransportKind::WebSocket);
            s.handle_packet(packet, t0);
            assert_eq!(s.poll_event(), Some(Event::Closed(reason)));
            assert_eq!(s.outbox().closing(), Some(reason));
            // Nothing after the close is delivered, and it is reported once.
            s.handle_packet(Packet::Message("late".into()), t0);
            s.close(CloseReason::ServerClose);
            assert_eq!(s.poll_event(), None);
        }
    }

    #[test]
    fn upgrade_steps() {
        let (mut s, t0) = open(TransportKind::Polling);
        s.handle_upgrade_start().unwrap();
        assert_eq!(
            s.handle_upgrade_start(),
            Err(UpgradeRefused::AlreadyUpgrading),
            "a second WebSocket may not probe"
        );
        assert!(!s.polls_get_noop());
        s.handle_probe();
        assert!(s.polls_get_noop());
        // Heartbeat carries on through the upgrade.
        s.handle_timeout(t0 + INTERVAL);
        assert_eq!(sent(&s).last(), Some(&OutFrame::PING));
        s.handle_upgrade_complete().unwrap();
        assert_eq!(s.transport(), TransportKind::WebSocket);
        assert!(!s.polls_get_noop());
        assert_eq!(
            s.handle_upgrade_start(),
            Err(UpgradeRefused::AlreadyUpgrading),
            "no upgrade once on WebSocket"
        );
    }

    #[test]
    fn aborted_upgrade_returns_to_polling() {
        let (mut s, _) = open(TransportKind::Polling);
        s.handle_upgrade_start().unwrap();
        s.handle_probe();
        s.handle_upgrade_abort();
        assert!(!s.is_upgrading());
        assert_eq!(s.transport(), TransportKind::Polling);
        assert_eq!(
            s.handle_upgrade_complete(),
            Err(UpgradeRefused::AlreadyUpgrading)
        );
        s.handle_upgrade_start().unwrap();
    }

    #[test]
    fn websocket_sessions_cannot_be_upgraded() {
        let (mut s, _) = open(TransportKind::WebSocket);
        assert_eq!(
            s.handle_upgrade_start(),
            Err(UpgradeRefused::AlreadyUpgrading)
        );
        s.close(CloseReason::ServerClose);
        assert_eq!(s.handle_upgrade_start(), Err(UpgradeRefused::Closed));
    }
}
