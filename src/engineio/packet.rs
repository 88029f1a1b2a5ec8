//! Engine.IO v4 packets and the HTTP long-polling payload codec.
//!
//! Incoming text is kept as [`ByteString`] slices of the frame or request body it came in, so
//! decoding a message copies nothing. Outgoing packets are encoded once, into an [`OutFrame`]
//! that is already in wire form: a WebSocket text frame (`4hello`), or raw bytes for a binary
//! message. The polling encoder joins such frames; the WebSocket writer sends them as they are.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use bytestring::ByteString;

/// The record separator that joins packets in a polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// One Engine.IO packet as received from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0`: only the server sends it; a client sending it is a protocol error.
    Open,
    /// `1`: the peer closes the session.
    Close,
    /// `2` with an optional payload (`2probe` during an upgrade).
    Ping(ByteString),
    /// `3` with an optional payload (`3probe` during an upgrade).
    Pong(ByteString),
    /// `4<text>`: a text message for the layer above.
    Message(ByteString),
    /// A binary message: a raw binary WebSocket frame, or `b<base64>` in a polling payload.
    Binary(Bytes),
    /// `5`: the client completes an upgrade.
    Upgrade,
    /// `6`: nothing; used to flush a poll during an upgrade.
    Noop,
}

/// Why bytes could not be decoded as Engine.IO packets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An empty packet: no type character.
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet type `0`..`6`.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A `b` packet whose payload is not valid base64.
    #[error("invalid base64 in binary packet")]
    Base64,
    /// A polling payload that is not valid UTF-8.
    #[error("payload is not valid UTF-8")]
    Utf8,
}

impl Packet {
    /// Decodes one text packet (a WebSocket text frame, or one record of a polling payload that
    /// does not start with `b`). The payload is a zero-copy slice of `text`.
    pub fn decode_text(text: ByteString) -> Result<Packet, DecodeError> {
        let first = *text.as_bytes().first().ok_or(DecodeError::Empty)?;
        // The type is one ASCII character, so the rest starts on a char boundary.
        let rest = || text.slice_ref(&text[1..]);
        Ok(match first {
            b'0' => Packet::Open,
            b'1' => Packet::Close,
            b'2' => Packet::Ping(rest()),
            b'3' => Packet::Pong(rest()),
            b'4' => Packet::Message(rest()),
            b'5' => Packet::Upgrade,
            b'6' => Packet::Noop,
            _ => {
                let c = text.chars().next().unwrap_or('\u{fffd}');
                return Err(DecodeError::UnknownType(c));
            }
        })
    }

    /// The packet's name in the protocol, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Open => "open",
            Packet::Close => "close",
            Packet::Ping(_) => "ping",
            Packet::Pong(_) => "pong",
            Packet::Message(_) => "message",
            Packet::Binary(_) => "binary message",
            Packet::Upgrade => "upgrade",
            Packet::Noop => "noop",
        }
    }
}

/// Decodes a polling POST body: packets joined by `\x1e`, binary ones as `b<base64>`.
///
/// Each packet is handed to `each` in order; decoding stops at the first bad packet. The body is
/// validated as UTF-8 once and text packets are slices of it.
pub fn decode_payload(
    body: Bytes,
    mut each: impl FnMut(Packet) -> std::ops::ControlFlow<()>,
) -> Result<(), DecodeError> {
    let text = ByteString::try_from(body).map_err(|_| DecodeError::Utf8)?;
    for record in text.split('\u{1e}') {
        let packet = if let Some(b64) = record.strip_prefix('b') {
            Packet::Binary(Bytes::from(
                BASE64.decode(b64).map_err(|_| DecodeError::Base64)?,
            ))
        } else {
            Packet::decode_text(text.slice_ref(record))?
        };
        if each(packet).is_break() {
            break;
        }
    }
    Ok(())
}

/// An outgoing packet in wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// A complete text packet, type character included (`4hello`, `2`, `0{...}`).
    Text(ByteString),
    /// The data of a binary message (sent as a raw binary frame, or `b<base64>` when polling).
    Binary(Bytes),
}

impl OutFrame {
    /// `2`: the server's heartbeat ping.
    pub const PING: OutFrame = OutFrame::Text(ByteString::from_static("2"));
    /// `1`: the server closes the session.
    pub const CLOSE: OutFrame = OutFrame::Text(ByteString::from_static("1"));
    /// `6`: nothing; answers a poll during an upgrade.
    pub const NOOP: OutFrame = OutFrame::Text(ByteString::from_static("6"));

    /// A `4<text>` message frame; this is the one copy of the text on its way out.
    pub fn message(text: &str) -> OutFrame {
        let mut frame = String::with_capacity(text.len() + 1);
        frame.push('4');
        frame.push_str(text);
        OutFrame::Text(frame.into())
    }

    /// How many bytes this frame takes in a WebSocket message (its payload).
    pub fn message_len(&self) -> usize {
        match self {
            OutFrame::Text(text) => text.len(),
            OutFrame::Binary(data) => data.len(),
        }
    }

    /// How many bytes this frame takes in a polling payload (separator not included).
    pub fn payload_len(&self) -> usize {
        match self {
            OutFrame::Text(text) => text.len(),
            OutFrame::Binary(data) => 1 + data.len().div_ceil(3) * 4,
        }
    }
}

/// Encodes frames as one polling payload: joined by `\x1e`, binary ones as `b<base64>`.
pub fn encode_payload<'a>(frames: impl IntoIterator<Item = &'a OutFrame>) -> Bytes {
    let mut out = Vec::new();
    for (i, frame) in frames.into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match frame {
            OutFrame::Text(text) => out.extend_from_slice(text.as_bytes()),
            OutFrame::Binary(data) => {
                out.push(b'b');
                let start = out.len();
                out.resize(start + data.len().div_ceil(3) * 4, 0);
                // The buffer was sized for the padded encoding, so this cannot fail.
                let written = BASE64.encode_slice(data, &mut out[start..]).unwrap_or(0);
                out.truncate(start + written);
            }
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow;

    fn decode_all(body: &[u8]) -> Result<Vec<Packet>, DecodeError> {
        let mut packets = Vec::new();
        decode_payload(Bytes::copy_from_slice(body), |p| {
            packets.push(p);
            ControlFlow::Continue(())
        })?;
        Ok(packets)
    }

    #[test]
    fn decodes_every_text_packet_type() {
        let cases = [
            ("0", Packet::Open),
            ("1", Packet::Close),
            ("2", Packet::Ping("".into())),
            ("2probe", Packet::Ping("probe".into())),
            ("3probe", Packet::Pong("probe".into())),
            ("4hello é", Packet::Message("hello é".into())),
            ("4", Packet::Message("".into())),
            ("5", Packet::Upgrade),
            ("6", Packet::Noop),
        ];
        for (text, want) in cases {
            assert_eq!(Packet::decode_text(text.into()), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_empty_and_unknown_types() {
        assert_eq!(Packet::decode_text("".into()), Err(DecodeError::Empty));
        assert_eq!(
            Packet::decode_text("7".into()),
            Err(DecodeError::UnknownType('7'))
        );
        assert_eq!(
            Packet::decode_text("élan".into()),
            Err(DecodeError::UnknownType('é'))
        );
    }

    #[test]
    fn payload_round_trip_with_binary() {
        let frames = [
            OutFrame::message("hello"),
            OutFrame::Binary(Bytes::from_static(&[1, 2, 3, 4])),
            OutFrame::PING,
            OutFrame::Binary(Bytes::new()),
        ];
        let body = encode_payload(&frames);
        assert_eq!(&body[..], b"4hello\x1ebAQIDBA==\x1e2\x1eb");
        let total: usize = frames.iter().map(OutFrame::payload_len).sum::<usize>() + 3;
        assert_eq!(total, body.len());
        assert_eq!(
            decode_all(&body).unwrap(),
            vec![
                Packet::Message("hello".into()),
                Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
                Packet::Ping("".into()),
                Packet::Binary(Bytes::new()),
            ]
        );
    }

    #[test]
    fn payload_errors() {
        assert_eq!(decode_all(b""), Err(DecodeError::Empty));
        assert_eq!(decode_all(b"4a\x1e"), Err(DecodeError::Empty));
        assert_eq!(decode_all(b"b!!!"), Err(DecodeError::Base64));
        assert_eq!(decode_all(b"4\xff"), Err(DecodeError::Utf8));
        assert_eq!(decode_all(b"9"), Err(DecodeError::UnknownType('9')));
    }

    #[test]
    fn payload_len_matches_base64() {
        for n in 0..10 {
            let frame = OutFrame::Binary(Bytes::from(vec![7u8; n]));
            assert_eq!(frame.payload_len(), encode_payload([&frame]).len(), "{n}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_all(&body);
        }

        #[test]
        fn message_frames_round_trip(texts in proptest::collection::vec("[^\u{1e}]{0,40}", 1..8)) {
            let frames: Vec<OutFrame> = texts.iter().map(|t| OutFrame::message(t)).collect();
            let decoded = decode_all(&encode_payload(&frames)).unwrap();
            let want: Vec<Packet> = texts.iter().map(|t| Packet::Message(t.as_str().into())).collect();
            proptest::prop_assert_eq!(decoded, want);
        }

        #[test]
        fn binary_frames_round_trip(blobs in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 1..8)) {
            let frames: Vec<OutFrame> = blobs.iter().map(|b| OutFrame::Binary(Bytes::from(b.clone()))).collect();
            let decoded = decode_all(&encode_payload(&frames)).unwrap();
            let want: Vec<Packet> = blobs.iter().map(|b| Packet::Binary(Bytes::from(b.clone()))).collect();
            proptest::prop_assert_eq!(decoded, want);
        }
    }
}
