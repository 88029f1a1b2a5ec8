//! The per-session outbound queue and the handle the layer above sends through.
//!
//! One bounded queue per session, shared by whoever produces packets (the layer above, from any
//! thread) and the one actor that currently drains it (the polling session, or after an upgrade
//! the WebSocket connection). The queue stays put across an upgrade: only who drains it changes,
//! so packet order survives the transport switch. The lock is held only to push or to swap the
//! queue out, never across an await.
//!
//! Policy when full (more than `capacity` packets, or more than `max_bytes` bytes, waiting): a
//! reliable packet beyond it is refused and the session is closed
//! with [`CloseReason::OutboundOverflow`]; a volatile packet is dropped and counted, the session
//! goes on. Control packets (ping, noop, close) are tiny, at most a few at a time, and always
//! accepted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use super::packet::OutFrame;
use super::sid::Sid;
use super::CloseReason;

/// Why a packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session's outbound queue is full.
    #[error("outbound queue full")]
    Full,
    /// The session is closed or closing.
    #[error("session closed")]
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<OutFrame>,
    /// The payload bytes of `frames`.
    bytes: usize,
    /// Set once the session is closing; nothing more is queued after it.
    closing: Option<CloseReason>,
}

/// The bounded outbound queue of one session.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// The one drainer's waker, and whether something changed since it last looked.
    waker: AtomicWaker,
    changed: AtomicBool,
    capacity: usize,
    max_bytes: usize,
    volatile_dropped: AtomicU64,
}

impl Outbox {
    /// A queue of at most `capacity` packets and `max_bytes` payload bytes (one packet alone
    /// may be larger).
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            changed: AtomicBool::new(false),
            capacity: capacity.max(1),
            max_bytes,
            volatile_dropped: AtomicU64::new(0),
        }
    }

    /// Whether `count` more packets of `bytes` fit; if not, a reliable send closes the session
    /// and a volatile one is counted as dropped.
    fn admit(
        &self,
        state: &mut State,
        count: usize,
        bytes: usize,
        volatile: bool,
    ) -> Result<(), SendError> {
        if state.closing.is_some() {
            return Err(SendError::Closed);
        }
        let too_many = state.frames.len() + count > self.capacity;
        let too_big = !state.frames.is_empty() && state.bytes + bytes > self.max_bytes;
        if !(too_many || too_big) {
            return Ok(());
        }
        if volatile {
            self.volatile_dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            state.closing = Some(CloseReason::OutboundOverflow);
        }
        Err(SendError::Full)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a single push, pop or swap), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a packet from the layer above.
    pub(crate) fn push(&self, frame: OutFrame, volatile: bool) -> Result<(), SendError> {
        let mut state = self.lock();
        let bytes = frame.payload_len();
        let admitted = self.admit(&mut state, 1, bytes, volatile);
        if admitted.is_ok() {
            state.frames.push_back(frame);
            state.bytes += bytes;
        }
        drop(state);
        self.wake();
        admitted
    }

    /// Queues several packets as one unit (a Socket.IO binary packet and its attachments): all
    /// of them, contiguous, or none.
    pub(crate) fn push_all(
        &self,
        frames: &[MessageFrame],
        volatile: bool,
    ) -> Result<(), SendError> {
        let mut state = self.lock();
        let bytes = frames.iter().map(|f| f.0.payload_len()).sum();
        let admitted = self.admit(&mut state, frames.len(), bytes, volatile);
        if admitted.is_ok() {
            state.frames.extend(frames.iter().map(|f| f.0.clone()));
            state.bytes += bytes;
        }
        drop(state);
        self.wake();
        admitted
    }

    /// Queues a control packet of the protocol itself; refused only once closing.
    pub(crate) fn push_control(&self, frame: OutFrame) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.bytes += frame.payload_len();
            state.frames.push_back(frame);
            drop(state);
            self.wake();
        }
    }

    /// Marks the session closing (the first reason wins) and wakes the drainer. Frames already
    /// queued are still delivered where the transport allows.
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.closing = Some(reason);
        }
        drop(state);
        self.wake();
    }

    /// The reason the session is closing, if it is.
    pub(crate) fn closing(&self) -> Option<CloseReason> {
        self.lock().closing
    }

    /// Moves every queued frame into `out` (kept allocated by the caller between calls).
    pub(crate) fn drain_into(&self, out: &mut Vec<OutFrame>) -> Option<CloseReason> {
        let mut state = self.lock();
        out.extend(state.frames.drain(..));
        state.bytes = 0;
        state.closing
    }

    /// Takes queued frames for one polling response: as many as fit in `max_bytes`, and always
    /// at least one so that an oversized packet cannot wedge the queue.
    pub(crate) fn drain_payload(&self, max_bytes: usize) -> Vec<OutFrame> {
        let mut state = self.lock();
        let mut size = 0;
        let mut count = 0;
        for frame in state.frames.iter() {
            let len = frame.payload_len() + usize::from(count > 0);
            if count > 0 && size + len > max_bytes {
                break;
            }
            size += len;
            count += 1;
        }
        let taken: Vec<OutFrame> = state.frames.drain(..count).collect();
        state.bytes -= taken.iter().map(OutFrame::payload_len).sum::<usize>();
        taken
    }

    /// Puts frames back at the head of the queue (a poll whose client went away).
    pub(crate) fn requeue_front(&self, frames: Vec<OutFrame>) {
        let mut state = self.lock();
        for frame in frames.into_iter().rev() {
            state.bytes += frame.payload_len();
            state.frames.push_front(frame);
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().frames.is_empty()
    }

    fn wake(&self) {
        self.changed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once a push or a close happened since the last time it was ready (at once if
    /// one did). One drainer at a time: a later caller's waker replaces the earlier one's.
    pub(crate) fn poll_changed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.changed.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.changed.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Resolves after the next push or close (at once if one happened since the last wait).
    pub(crate) async fn changed(&self) {
        std::future::poll_fn(|cx| self.poll_changed(cx)).await
    }

    pub(crate) fn volatile_dropped(&self) -> u64 {
        self.volatile_dropped.load(Ordering::Relaxed)
    }
}

/// A message ready to send: encoded once, cheap to clone, so one broadcast packet is shared by
/// every session it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFrame(OutFrame);

impl MessageFrame {
    /// A text message.
    pub fn text(text: &str) -> MessageFrame {
        MessageFrame(OutFrame::message(text))
    }

    /// A text message written by `write` straight into the frame's buffer (no second copy).
    /// `capacity` is a size hint. Bytes that are not UTF-8 are replaced (U+FFFD).
    pub fn build(capacity: usize, write: impl FnOnce(&mut Vec<u8>)) -> MessageFrame {
        let mut frame = Vec::with_capacity(capacity + 1);
        frame.push(b'4');
        write(&mut frame);
        let text = match String::from_utf8(frame) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        MessageFrame(OutFrame::Text(text.into()))
    }

    /// A binary message.
    pub fn binary(data: Bytes) -> MessageFrame {
        MessageFrame(OutFrame::Binary(data))
    }

    /// Its size in bytes as queued (a text message's type character included).
    pub fn len(&self) -> usize {
        match &self.0 {
            OutFrame::Text(text) => text.len(),
            OutFrame::Binary(data) => data.len(),
        }
    }

    /// Whether it holds no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message's bytes, for a binary message.
    pub fn as_binary(&self) -> Option<&Bytes> {
        match &self.0 {
            OutFrame::Text(_) => None,
            OutFrame::Binary(data) => Some(data),
        }
    }

    /// The message's text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match &self.0 {
            OutFrame::Text(text) => Some(&text[1..]),
            OutFrame::Binary(_) => None,
        }
    }
}

/// The layer above's handle on one Engine.IO session: `Clone`, `Send`, usable from any thread.
///
/// Sending never blocks and never waits for the client: packets go to the session's bounded
/// queue (see the module docs for what happens when it is full).
#[derive(Debug, Clone)]
pub struct SessionHandle {
    sid: Sid,
    outbox: Arc<Outbox>,
}

impl SessionHandle {
    pub(crate) fn new(sid: Sid, outbox: Arc<Outbox>) -> SessionHandle {
        SessionHandle { sid, outbox }
    }

    /// The session id.
    pub fn sid(&self) -> Sid {
        self.sid
    }

    /// Sends a text message.
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.outbox.push(OutFrame::message(text), false)
    }

    /// Sends prepared messages as one unit: all of them, back to back, or none. With
    /// `volatile`, a full queue drops them instead of closing the session.
    pub fn send_frames(&self, frames: &[MessageFrame], volatile: bool) -> Result<(), SendError> {
        self.outbox.push_all(frames, volatile)
    }

    /// Sends a binary message.
    pub fn send_binary(&self, data: Bytes) -> Result<(), SendError> {
        self.outbox.push(OutFrame::Binary(data), false)
    }

    /// Sends a text message unless the queue is full, in which case it is dropped.
    pub fn send_text_volatile(&self, text: &str) -> Result<(), SendError> {
        self.outbox.push(OutFrame::message(text), true)
    }

    /// Sends a binary message unless the queue is full, in which case it is dropped.
    pub fn send_binary_volatile(&self, data: Bytes) -> Result<(), SendError> {
        self.outbox.push(OutFrame::Binary(data), true)
    }

    /// Closes the session: queued packets are still sent where the transport allows, then the
    /// client gets a close packet and `on_close` runs with [`CloseReason::ServerClose`].
    pub fn close(&self) {
        self.outbox.close(CloseReason::ServerClose);
    }

    /// Closes the session for `reason` (for example [`CloseReason::ParseError`] when the layer
    /// above could not make sense of what the client sent).
    pub fn close_with(&self, reason: CloseReason) {
        self.outbox.close(reason);
    }

    /// Whether the session is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.outbox.closing().is_some()
    }

    /// Volatile packets dropped so far because the queue was full.
    pub fn volatile_dropped(&self) -> u64 {
        self.outbox.volatile_dropped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_closes_on_reliable_and_drops_volatile() {
        let outbox = Arc::new(Outbox::new(2, usize::MAX));
        let handle = SessionHandle::new(Sid::generate(), outbox.clone());
        handle.send_text("a").unwrap();
        handle.send_text("b").unwrap();
        assert_eq!(handle.send_text_volatile("c"), Err(SendError::Full));
        assert_eq!(handle.volatile_dropped(), 1);
        assert!(!handle.is_closed());
        assert_eq!(handle.send_text("d"), Err(SendError::Full));
        assert_eq!(outbox.closing(), Some(CloseReason::OutboundOverflow));
        assert_eq!(handle.send_text("e"), Err(SendError::Closed));
        // What was queued before the overflow is still there to deliver.
        let mut frames = Vec::new();
        outbox.drain_into(&mut frames);
        assert_eq!(frames, vec![OutFrame::message("a"), OutFrame::message("b")]);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let outbox = Arc::new(Outbox::new(100, 8));
        let handle = SessionHandle::new(Sid::generate(), outbox.clone());
        // One packet alone may be larger than the bound: it must be deliverable.
        handle.send_text("a long message").unwrap();
        assert_eq!(handle.send_text_volatile("b"), Err(SendError::Full));
        assert!(!handle.is_closed());
        let mut frames = Vec::new();
        outbox.drain_into(&mut frames);
        // Drained: room again, counted in bytes (`4abc` is 4).
        handle.send_text("abc").unwrap();
        handle.send_text("def").unwrap();
        assert_eq!(handle.send_text("g"), Err(SendError::Full));
        assert_eq!(outbox.closing(), Some(CloseReason::OutboundOverflow));
    }

    #[test]
    fn frames_go_as_one_unit_or_not_at_all() {
        let outbox = Arc::new(Outbox::new(3, usize::MAX));
        let handle = SessionHandle::new(Sid::generate(), outbox.clone());
        let unit = [
            MessageFrame::text("51-[\"a\"]"),
            MessageFrame::binary(Bytes::from_static(b"x")),
        ];
        handle.send_frames(&unit, true).unwrap();
        assert_eq!(handle.send_frames(&unit, true), Err(SendError::Full));
        assert!(!handle.is_closed(), "volatile: dropped, not closed");
        let mut frames = Vec::new();
        outbox.drain_into(&mut frames);
        assert_eq!(frames.len(), 2);
        assert_eq!(
            MessageFrame::build(4, |b| b.extend_from_slice(b"hi")).as_text(),
            Some("hi")
        );
    }

    #[test]
    fn payload_drain_respects_max_bytes_but_takes_one() {
        let outbox = Outbox::new(10, usize::MAX);
        outbox.push(OutFrame::message("aaaa"), false).unwrap(); // 5 bytes
        outbox.push(OutFrame::message("bbbb"), false).unwrap(); // 1 + 5
        outbox.push(OutFrame::message("cccccccccc"), false).unwrap();
        assert_eq!(outbox.drain_payload(11).len(), 2);
        assert_eq!(
            outbox.drain_payload(3).len(),
            1,
            "an oversized packet still goes"
        );
        assert!(outbox.is_empty());
    }

    #[test]
    fn requeue_keeps_order() {
        let outbox = Outbox::new(10, usize::MAX);
        for t in ["a", "b", "c"] {
            outbox.push(OutFrame::message(t), false).unwrap();
        }
        let first = outbox.drain_payload(7);
        assert_eq!(first.len(), 2);
        outbox.requeue_front(first);
        let mut all = Vec::new();
        outbox.drain_into(&mut all);
        let want: Vec<_> = ["a", "b", "c"].map(OutFrame::message).into();
        assert_eq!(all, want);
    }
}
