//! Connection state recovery, as Socket.IO v4.6 defines it.
//!
//! In a namespace that has it, the CONNECT answer carries a private id (`pid`) besides the
//! socket id, and every event the server sends without an ack (and not volatile) carries an
//! offset as its last argument: a decimal string, 1, 2, 3, … per socket. The official client
//! remembers both; when its connection drops and it connects again, its CONNECT auth carries
//! `{pid, offset}`. If that socket is still waiting within the window, it takes the new
//! connection: same id, same rooms, same state, and every packet after `offset` sent again,
//! in order, before anything new; the client sees `socket.recovered === true`.
//!
//! What a socket keeps for that is bounded three ways: packets, bytes, and age (the window).
//! A client whose offset is older than what was let go is not recovered (it would miss
//! packets silently): it gets a fresh socket, as without recovery.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engineio::{MessageFrame, Sid};

/// A namespace's recovery settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// How long a socket whose connection dropped waits for its client to come back, and how
    /// long a sent packet is kept for it.
    pub window: Duration,
    /// Most packets kept per socket.
    pub max_packets: usize,
    /// Most bytes of packets kept per socket.
    pub max_bytes: usize,
    /// Most sockets of the namespace waiting at once; a connection that drops beyond it ends
    /// its sockets at once, as without recovery.
    pub max_waiting: usize,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            window: Duration::from_secs(30),
            max_packets: 1024,
            max_bytes: 2 << 20,
            max_waiting: 10_000,
        }
    }
}

/// One packet kept for a possible recovery.
#[derive(Debug)]
struct Sent {
    offset: u64,
    at: Instant,
    frames: Vec<MessageFrame>,
    bytes: usize,
}

/// The packets lately sent to one socket, by offset.
#[derive(Debug)]
pub(crate) struct SentLog {
    /// The offset the next packet gets.
    next: u64,
    kept: VecDeque<Sent>,
    bytes: usize,
    /// The highest offset let go (by a bound), 0 if none: a client that has not seen it
    /// cannot be recovered.
    let_go: u64,
}

impl SentLog {
    /// A log whose first packet gets offset `next` (1 for a new socket).
    pub(crate) fn new(next: u64) -> SentLog {
        SentLog {
            next: next.max(1),
            kept: VecDeque::new(),
            bytes: 0,
            let_go: next.max(1) - 1,
        }
    }

    /// Takes the next offset.
    pub(crate) fn next_offset(&mut self) -> u64 {
        let offset = self.next;
        self.next += 1;
        offset
    }

    /// Keeps the packet sent with `offset`, letting go of what the bounds no longer allow;
    /// returns it as kept. A packet bigger than the bounds on its own is not kept, and
    /// everything before it is let go with it (a client that missed it cannot be recovered):
    /// its frames come back, to be sent all the same.
    pub(crate) fn record(
        &mut self,
        offset: u64,
        frames: Vec<MessageFrame>,
        now: Instant,
        config: &RecoveryConfig,
    ) -> Result<&[MessageFrame], Vec<MessageFrame>> {
        let bytes: usize = frames.iter().map(MessageFrame::len).sum();
        if bytes > config.max_bytes || config.max_packets == 0 {
            self.kept.clear();
            self.bytes = 0;
            self.let_go = offset;
            return Err(frames);
        }
        self.bytes += bytes;
        self.kept.push_back(Sent {
            offset,
            at: now,
            frames,
            bytes,
        });
        self.prune(now, config);
        // Within the bounds on its own, the newest packet is never the one let go.
        Ok(self.kept.back().map_or(&[], |sent| sent.frames.as_slice()))
    }

    /// Lets go of packets past the bounds.
    pub(crate) fn prune(&mut self, now: Instant, config: &RecoveryConfig) {
        while let Some(front) = self.kept.front() {
            let old = now.saturating_duration_since(front.at) > config.window;
            if !old && self.kept.len() <= config.max_packets && self.bytes <= config.max_bytes {
                break;
            }
            self.bytes -= front.bytes;
            self.let_go = front.offset;
            self.kept.pop_front();
        }
    }

    /// The packets after `offset` (`None`: the client saw none), oldest first; `None` when
    /// some of them were let go or `offset` was never given out.
    pub(crate) fn after(
        &self,
        offset: Option<u64>,
    ) -> Option<impl Iterator<Item = &[MessageFrame]>> {
        let seen = offset.unwrap_or(0);
        if seen < self.let_go || seen >= self.next {
            return None;
        }
        Some(
            self.kept
                .iter()
                .filter(move |sent| sent.offset > seen)
                .map(|sent| sent.frames.as_slice()),
        )
    }
}

/// An offset as the client sends it back (the decimal string it was given).
pub(crate) fn parse_offset(value: Option<&serde_json::Value>) -> Result<Option<u64>, ()> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => text.parse().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

/// What a recovery store keeps of one socket besides its packets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketRecord {
    /// The socket's id.
    pub id: String,
    /// Its namespace.
    pub nsp: String,
    /// The rooms it joined (besides its own).
    pub rooms: Vec<String>,
    /// What the application keeps with it ([`Socket::set_data`](super::Socket::set_data)).
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// A socket brought back from a store: its record, the packets after the client's offset,
/// and the offset its next packet gets.
#[derive(Debug)]
pub struct Restored {
    /// The socket's record.
    pub record: SocketRecord,
    /// What the client missed, oldest first.
    pub missed: Vec<Vec<MessageFrame>>,
    /// The offset of the next packet.
    pub next_offset: u64,
}

/// Keeps recoverable sockets and their packets where another node (or a restarted
/// process) finds them, so that a client whose node went away recovers on another. Writes
/// never wait (they are queued and may be lost when the store is away: a recovery then
/// fails and the client gets a fresh socket); a restore waits.
pub trait RecoveryStore: Send + Sync {
    /// The socket with private id `pid` is (still) this: written when it joins and when its
    /// rooms or data change.
    fn save(&self, pid: Sid, record: &SocketRecord);
    /// The packet sent to `pid` with `offset`; with `record`, the socket's record as it is
    /// after that packet, written with it (both or neither, so that a node that restores the
    /// socket never sees a record ahead of or behind its log).
    fn append(&self, pid: Sid, offset: u64, frames: &[MessageFrame], record: Option<&SocketRecord>);
    /// These sockets are alive: their records are kept another window.
    fn touch(&self, pids: Vec<Sid>);
    /// The socket left for good.
    fn forget(&self, pid: Sid);
    /// The socket `pid` of `nsp` with what follows `offset`; `None` when the store does not
    /// have it, or cannot bring the client up to date from `offset`.
    fn restore(
        &self,
        nsp: &str,
        pid: Sid,
        offset: Option<u64>,
    ) -> futures_util::future::BoxFuture<'static, Option<Restored>>;
}

/// Whether a client that saw up to `seen` (0: nothing) can be brought up to date from kept
/// offsets `first..=last` (`None`: nothing kept); returns the next offset to give out.
///
/// A client can have seen more than the store kept: a node sends an event, then queues its
/// write, and a node killed in between takes its last writes with it. Such a client misses
/// nothing the store has; the numbering goes on after what it saw. (What a killed node had
/// queued but neither sent nor written is gone either way.) Only a client whose next event
/// was trimmed away cannot be brought up to date.
pub fn next_after(seen: u64, kept: Option<(u64, u64)>) -> Option<u64> {
    match kept {
        None => seen.checked_add(1),
        Some((first, last)) if seen.saturating_add(1) >= first => last.max(seen).checked_add(1),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_packets: usize, max_bytes: usize) -> RecoveryConfig {
        RecoveryConfig {
            window: Duration::from_secs(10),
            max_packets,
            max_bytes,
            max_waiting: 10,
        }
    }

    fn texts<'a>(packets: impl Iterator<Item = &'a [MessageFrame]>) -> Vec<String> {
        packets
            .map(|frames| frames[0].as_text().unwrap_or_default().to_owned())
            .collect()
    }

    fn send(log: &mut SentLog, text: &str, now: Instant, config: &RecoveryConfig) -> u64 {
        let offset = log.next_offset();
        let _ = log.record(offset, vec![MessageFrame::text(text)], now, config);
        offset
    }

    #[test]
    fn what_follows_the_offset_is_replayed_in_order() {
        let (mut log, now, config) = (SentLog::new(1), Instant::now(), config(10, 1000));
        for text in ["a", "b", "c"] {
            send(&mut log, text, now, &config);
        }
        assert_eq!(texts(log.after(Some(1)).unwrap()), ["b", "c"]);
        assert_eq!(texts(log.after(None).unwrap()), ["a", "b", "c"]);
        assert_eq!(texts(log.after(Some(3)).unwrap()), Vec::<String>::new());
        // An offset never given out is not recovered.
        assert!(log.after(Some(4)).is_none());
    }

    #[test]
    fn a_client_behind_what_was_let_go_is_not_recovered() {
        let (mut log, now, config) = (SentLog::new(1), Instant::now(), config(2, 1000));
        for text in ["a", "b", "c"] {
            send(&mut log, text, now, &config);
        }
        // "a" was let go: a client that saw nothing, or nothing after it, would miss it.
        assert!(log.after(None).is_none());
        assert_eq!(texts(log.after(Some(1)).unwrap()), ["b", "c"]);
    }

    #[test]
    fn bytes_and_age_bound_the_log() {
        let (mut log, now, config) = (SentLog::new(1), Instant::now(), config(10, 4));
        send(&mut log, "aa", now, &config); // 3 bytes with the type
        send(&mut log, "bb", now, &config); // 6 in all: "aa" goes
        assert!(log.after(None).is_none());
        assert_eq!(texts(log.after(Some(1)).unwrap()), ["bb"]);
        let later = now + Duration::from_secs(11);
        log.prune(later, &config);
        assert!(log.after(Some(1)).is_none());
        assert_eq!(texts(log.after(Some(2)).unwrap()), Vec::<String>::new());
        // A packet bigger than the bounds on its own is sent and not kept.
        let offset = log.next_offset();
        let too_big = vec![MessageFrame::text("too big")];
        assert_eq!(
            log.record(offset, too_big.clone(), later, &config),
            Err(too_big)
        );
        assert!(log.after(Some(2)).is_none());
    }

    #[test]
    fn a_log_continued_elsewhere_starts_at_its_offset() {
        let (mut log, now, config) = (SentLog::new(8), Instant::now(), config(10, 100));
        assert!(log.after(Some(6)).is_none());
        assert_eq!(texts(log.after(Some(7)).unwrap()), Vec::<String>::new());
        assert_eq!(send(&mut log, "h", now, &config), 8);
        assert_eq!(texts(log.after(Some(7)).unwrap()), ["h"]);
    }

    #[test]
    fn a_store_recovers_only_a_client_it_can_bring_up_to_date() {
        assert_eq!(next_after(0, None), Some(1));
        assert_eq!(next_after(0, Some((1, 5))), Some(6));
        assert_eq!(next_after(5, Some((1, 5))), Some(6));
        // The store lost the last writes of a killed node: the client saw 6 and 7, or every
        // event, and gets nothing again; the next offset follows what it saw.
        assert_eq!(next_after(7, Some((1, 5))), Some(8));
        assert_eq!(next_after(3, None), Some(4));
        assert_eq!(next_after(u64::MAX, Some((1, 5))), None);
        assert_eq!(next_after(u64::MAX, None), None);
        // 1..=3 trimmed: a client that saw 3 misses nothing, one that saw 2 would.
        assert_eq!(next_after(3, Some((4, 9))), Some(10));
        assert_eq!(next_after(2, Some((4, 9))), None);
    }

    #[test]
    fn offsets_are_decimal_strings() {
        use serde_json::json;
        assert_eq!(parse_offset(None), Ok(None));
        assert_eq!(parse_offset(Some(&json!("12"))), Ok(Some(12)));
        assert!(parse_offset(Some(&json!(12))).is_err());
        assert!(parse_offset(Some(&json!("x"))).is_err());
    }
}
