//! A bound on incoming WebSocket frames that holds before their payload arrives.
//!
//! actix-http's WebSocket codec compares a frame's declared length with its limit only once the
//! whole frame is buffered, so a client declaring a 400 MiB frame and sending it slowly made
//! the server buffer all of it before refusing it (measured: +200 MiB of RSS for 200 MiB sent).
//! This guard sits between the socket and the codec: it follows the frame headers in the byte
//! stream (2 to 14 bytes each; it never copies payload) and ends the reading with an error as
//! soon as a header declares more than the limit. The connection then closes with 1009
//! (message too big), having buffered at most one read.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Where the guard is in the stream of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Reading a header: `have` of its bytes so far.
    Header { have: usize },
    /// Skipping a payload: this many bytes left.
    Payload(u64),
}

/// Follows frame headers and refuses a frame longer than `max` bytes.
#[derive(Debug)]
pub(crate) struct FrameGuard {
    max: u64,
    header: [u8; 14],
    at: At,
    refused: bool,
}

impl FrameGuard {
    /// A guard refusing frames whose payload is over `max` bytes.
    pub(crate) fn new(max: usize) -> FrameGuard {
        FrameGuard {
            max: max as u64,
            header: [0; 14],
            at: At::Header { have: 0 },
            refused: false,
        }
    }

    /// The length of the header whose first two bytes are `b0, b1`.
    fn header_len(b1: u8) -> usize {
        let extended = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// The payload length a complete header declares.
    fn declared(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut b = [0; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }

    /// Follows `chunk`; `false` when a header in it declares a frame over the limit.
    pub(crate) fn check(&mut self, mut chunk: &[u8]) -> bool {
        if self.refused {
            return false;
        }
        while !chunk.is_empty() {
            match self.at {
                At::Payload(left) => {
                    let skip = left.min(chunk.len() as u64);
                    chunk = &chunk[skip as usize..];
                    self.at = if skip == left {
                        At::Header { have: 0 }
                    } else {
                        At::Payload(left - skip)
                    };
                }
                At::Header { have } => {
                    let need = if have < 2 {
                        2
                    } else {
                        Self::header_len(self.header[1])
                    };
                    let take = (need - have).min(chunk.len());
                    self.header[have..have + take].copy_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    let have = have + take;
                    if have < need {
                        self.at = At::Header { have };
                    } else if have == 2 && Self::header_len(self.header[1]) > 2 {
                        // The first two bytes say how long the rest of the header is.
                        self.at = At::Header { have };
                    } else {
                        let length = self.declared();
                        if length > self.max {
                            self.refused = true;
                            return false;
                        }
                        self.at = if length == 0 {
                            At::Header { have: 0 }
                        } else {
                            At::Payload(length)
                        };
                    }
                }
            }
        }
        true
    }
}

/// A socket's read half with a [`FrameGuard`] on it: the bytes it reads are followed, and a
/// header over the limit ends the reading with an error that [`is_refusal`] recognises.
pub(crate) struct GuardedRead<R> {
    inner: R,
    guard: FrameGuard,
}

impl<R> GuardedRead<R> {
    /// `inner`, refusing frames over `max` bytes.
    pub(crate) fn new(inner: R, max: usize) -> GuardedRead<R> {
        GuardedRead {
            inner,
            guard: FrameGuard::new(max),
        }
    }
}

/// The error a refused frame ends the reading with.
#[derive(Debug, thiserror::Error)]
#[error("a WebSocket frame longer than the payload limit")]
struct Refused;

impl<R: AsyncRead + Unpin> AsyncRead for GuardedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.guard.refused {
            return Poll::Ready(Err(std::io::Error::other(Refused)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.guard.check(&buf.filled()[before..]) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(std::io::Error::other(Refused)))
        }
    }
}

/// Whether an error from the WebSocket stream is this guard's refusal.
pub(crate) fn is_refusal(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<Refused>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header declaring `len` bytes.
    fn header(len: u64) -> Vec<u8> {
        let mut h = vec![0x82];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend((len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend(len.to_be_bytes());
            }
        }
        h.extend([1, 2, 3, 4]);
        h
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f = header(len as u64);
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn frames_within_the_limit_pass_in_any_chunking() {
        let mut stream = Vec::new();
        for len in [0, 1, 125, 126, 1000, 65_535, 65_536, 100_000] {
            stream.extend(frame(len));
        }
        for size in [1, 2, 3, 7, 13, 500, 70_000, stream.len()] {
            let mut g = FrameGuard::new(100_000);
            for chunk in stream.chunks(size) {
                assert!(g.check(chunk), "chunks of {size}");
            }
            assert_eq!(g.at, At::Header { have: 0 }, "chunks of {size}");
        }
    }

    #[test]
    fn a_header_over_the_limit_is_refused_before_its_payload() {
        for len in [100_001u64, 1 << 20, 400 << 20, u64::MAX] {
            let mut g = FrameGuard::new(100_000);
            assert!(g.check(&frame(10)));
            let h = header(len);
            // Byte by byte: refused on the header's last byte, not later.
            let (last, head) = h.split_last().unwrap();
            for b in head {
                assert!(g.check(&[*b]), "{len}");
            }
            assert!(!g.check(&[*last]), "{len}");
            assert!(!g.check(&[0; 16]), "stays refused");
        }
    }
}
