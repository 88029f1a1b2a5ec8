//! Socket.IO v5 packets: `<type>[<attachments>-][<nsp>,][<ack id>][JSON]`, with binary
//! attachments sent as separate Engine.IO binary messages and referenced from the JSON by
//! `{"_placeholder":true,"num":N}`.
//!
//! The decoder is strict where the reference parser is (every advisory against it is a test
//! here) and never panics on any input; the encoder writes straight into an Engine.IO frame.

use std::io::Write as _;

use bytes::Bytes;
use bytestring::ByteString;
use serde::Serialize;
use serde_json::Value;

/// The seven packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// `0`: join a namespace (client), or the answer with the socket id (server).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event: `["name", ...args]`.
    Event,
    /// `3`: the answer to an event sent with an ack id.
    Ack,
    /// `4`: the server refuses a CONNECT.
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

impl PacketType {
    fn from_digit(b: u8) -> Option<PacketType> {
        Some(match b {
            b'0' => PacketType::Connect,
            b'1' => PacketType::Disconnect,
            b'2' => PacketType::Event,
            b'3' => PacketType::Ack,
            b'4' => PacketType::ConnectError,
            b'5' => PacketType::BinaryEvent,
            b'6' => PacketType::BinaryAck,
            _ => return None,
        })
    }

    fn digit(self) -> u8 {
        match self {
            PacketType::Connect => b'0',
            PacketType::Disconnect => b'1',
            PacketType::Event => b'2',
            PacketType::Ack => b'3',
            PacketType::ConnectError => b'4',
            PacketType::BinaryEvent => b'5',
            PacketType::BinaryAck => b'6',
        }
    }

    /// Whether attachments follow packets of this type.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }
}

/// A decoded packet (attachments, if any, not yet collected).
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The type.
    pub kind: PacketType,
    /// The namespace, `/` when the packet names none.
    pub nsp: ByteString,
    /// The ack id, if the sender wants an answer (or this is one).
    pub id: Option<u64>,
    /// How many binary attachments follow.
    pub attachments: usize,
    /// The JSON payload.
    pub data: Option<Value>,
}

/// Why a packet was refused. Each closes the connection: the stream cannot be trusted after.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An empty message.
    #[error("empty packet")]
    Empty,
    /// The first character is not a type `0`..`6`.
    #[error("unknown packet type")]
    UnknownType,
    /// A binary packet without a well-formed `<count>-`.
    #[error("illegal attachments")]
    IllegalAttachments,
    /// More attachments than the limit.
    #[error("too many attachments ({0})")]
    TooManyAttachments(u64),
    /// An ack id that is not a u64.
    #[error("invalid ack id")]
    InvalidAckId,
    /// The payload is not JSON.
    #[error("invalid payload")]
    InvalidJson,
    /// The payload does not fit the packet type (an event that is not a non-empty array whose
    /// first element is a string, a CONNECT payload that is not an object, …).
    #[error("invalid payload for {0:?}")]
    InvalidPayload(PacketType),
    /// A placeholder whose `num` is not an integer below the attachment count.
    #[error("invalid placeholder")]
    InvalidPlaceholder,
    /// A packet type clients may not send.
    #[error("packet type not allowed from a client")]
    NotFromClient,
}

/// Decodes one packet sent by a client. `max_attachments` bounds the attachment count.
pub fn decode(text: &ByteString, max_attachments: usize) -> Result<Packet, ParseError> {
    let b = text.as_bytes();
    let kind = PacketType::from_digit(*b.first().ok_or(ParseError::Empty)?)
        .ok_or(ParseError::UnknownType)?;
    if kind == PacketType::ConnectError {
        return Err(ParseError::NotFromClient);
    }
    let mut i = 1;
    let mut attachments = 0;
    if kind.is_binary() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || b.get(i) != Some(&b'-') {
            return Err(ParseError::IllegalAttachments);
        }
        let count: u64 = text[start..i]
            .parse()
            .map_err(|_| ParseError::IllegalAttachments)?;
        if count > max_attachments as u64 {
            return Err(ParseError::TooManyAttachments(count));
        }
        attachments = count as usize;
        i += 1;
    }
    let mut nsp = ByteString::from_static("/");
    if b.get(i) == Some(&b'/') {
        let start = i;
        while i < b.len() && b[i] != b',' {
            i += 1;
        }
        nsp = text.slice_ref(&text[start..i]);
        if i < b.len() {
            i += 1;
        }
    }
    let mut id = None;
    if b.get(i).is_some_and(u8::is_ascii_digit) {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        id = Some(
            text[start..i]
                .parse::<u64>()
                .map_err(|_| ParseError::InvalidAckId)?,
        );
    }
    let data = if i < b.len() {
        Some(serde_json::from_str::<Value>(&text[i..]).map_err(|_| ParseError::InvalidJson)?)
    } else {
        None
    };
    let valid = match (kind, &data) {
        (PacketType::Connect, None | Some(Value::Object(_))) => true,
        (PacketType::Disconnect, None) => true,
        (PacketType::Event | PacketType::BinaryEvent, Some(Value::Array(args))) => {
            matches!(args.first(), Some(Value::String(_)))
        }
        (PacketType::Ack | PacketType::BinaryAck, Some(Value::Array(_))) => id.is_some(),
        _ => false,
    };
    if !valid {
        return Err(ParseError::InvalidPayload(kind));
    }
    if let Some(data) = &data {
        check_placeholders(data, attachments)?;
    }
    Ok(Packet {
        kind,
        nsp,
        id,
        attachments,
        data,
    })
}

/// Every `{"_placeholder":true,...}` object must carry an integer `num` below `count`.
fn check_placeholders(value: &Value, count: usize) -> Result<(), ParseError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| check_placeholders(v, count)),
        Value::Object(map) => {
            if map.get("_placeholder") == Some(&Value::Bool(true)) {
                match map.get("num").and_then(Value::as_u64) {
                    Some(num) if num < count as u64 => Ok(()),
                    _ => Err(ParseError::InvalidPlaceholder),
                }
            } else {
                map.values().try_for_each(|v| check_placeholders(v, count))
            }
        }
        _ => Ok(()),
    }
}

/// The JSON that stands for attachment `num`.
pub fn placeholder(num: usize) -> Value {
    serde_json::json!({ "_placeholder": true, "num": num })
}

/// Arguments of an event or an ack: JSON values, and the binary attachments their placeholders
/// refer to (kept as placeholders in `args`; `bins[n]` is attachment `n`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// The arguments (without the event name).
    pub args: Vec<Value>,
    /// The binary attachments, in placeholder order.
    pub bins: Vec<Bytes>,
}

impl Payload {
    /// No arguments.
    pub fn new() -> Payload {
        Payload::default()
    }

    /// Adds an argument. A value that cannot be serialized becomes `null`.
    pub fn arg(mut self, value: impl Serialize) -> Payload {
        self.args
            .push(serde_json::to_value(value).unwrap_or(Value::Null));
        self
    }

    /// Adds a binary argument (a placeholder in the JSON, the bytes as an attachment).
    pub fn bin(mut self, data: Bytes) -> Payload {
        self.args.push(placeholder(self.bins.len()));
        self.bins.push(data);
        self
    }

    /// Argument `index`, deserialized.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        index: usize,
    ) -> Result<T, serde_json::Error> {
        T::deserialize(self.args.get(index).unwrap_or(&Value::Null))
    }

    /// The attachment argument `index` stands for, if it is a placeholder.
    pub fn bin_at(&self, index: usize) -> Option<&Bytes> {
        let num = self.args.get(index)?.as_object()?.get("num")?.as_u64()?;
        self.bins.get(usize::try_from(num).ok()?)
    }
}

impl<T: Serialize> From<T> for Payload {
    /// One argument.
    fn from(value: T) -> Payload {
        Payload::new().arg(value)
    }
}

/// Writes a packet's text part (the Engine.IO `4` prefix is the caller's). `event` is put in
/// front of the arguments (events); acks have none.
pub fn encode<T: Serialize>(
    buf: &mut Vec<u8>,
    kind: PacketType,
    nsp: &str,
    id: Option<u64>,
    attachments: usize,
    event: Option<&str>,
    args: &[T],
) {
    buf.push(kind.digit());
    if kind.is_binary() {
        let _ = write!(buf, "{attachments}-");
    }
    if nsp != "/" {
        buf.extend_from_slice(nsp.as_bytes());
        buf.push(b',');
    }
    if let Some(id) = id {
        let _ = write!(buf, "{id}");
    }
    buf.push(b'[');
    let mut first = true;
    if let Some(event) = event {
        let _ = serde_json::to_writer(&mut *buf, event);
        first = false;
    }
    for arg in args {
        if !first {
            buf.push(b',');
        }
        first = false;
        let _ = serde_json::to_writer(&mut *buf, arg);
    }
    buf.push(b']');
}

/// Writes a packet whose payload is one JSON value, or none (CONNECT, CONNECT_ERROR,
/// DISCONNECT).
pub fn encode_control(buf: &mut Vec<u8>, kind: PacketType, nsp: &str, data: Option<&Value>) {
    buf.push(kind.digit());
    if nsp != "/" {
        buf.extend_from_slice(nsp.as_bytes());
        buf.push(b',');
    }
    if let Some(data) = data {
        let _ = serde_json::to_writer(&mut *buf, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(text: &str) -> Result<Packet, ParseError> {
        decode(&ByteString::from(text), 10)
    }

    fn packet(
        kind: PacketType,
        nsp: &str,
        id: Option<u64>,
        n: usize,
        data: Option<Value>,
    ) -> Packet {
        Packet {
            kind,
            nsp: nsp.into(),
            id,
            attachments: n,
            data,
        }
    }

    #[test]
    fn decodes_every_client_packet_type() {
        use PacketType::*;
        let cases = [
            ("0", packet(Connect, "/", None, 0, None)),
            ("0/admin,", packet(Connect, "/admin", None, 0, None)),
            ("0/admin", packet(Connect, "/admin", None, 0, None)),
            (
                r#"0{"token":"x"}"#,
                packet(Connect, "/", None, 0, Some(json!({"token":"x"}))),
            ),
            (
                r#"0/voice,{"pin":"1"}"#,
                packet(Connect, "/voice", None, 0, Some(json!({"pin":"1"}))),
            ),
            ("1/admin,", packet(Disconnect, "/admin", None, 0, None)),
            ("1", packet(Disconnect, "/", None, 0, None)),
            (
                r#"2["hello",1]"#,
                packet(Event, "/", None, 0, Some(json!(["hello", 1]))),
            ),
            (
                r#"2/admin,12["a"]"#,
                packet(Event, "/admin", Some(12), 0, Some(json!(["a"]))),
            ),
            (
                r#"3/admin,12["ok"]"#,
                packet(Ack, "/admin", Some(12), 0, Some(json!(["ok"]))),
            ),
            (r#"313[]"#, packet(Ack, "/", Some(13), 0, Some(json!([])))),
            (
                r#"51-["audio",{"_placeholder":true,"num":0}]"#,
                packet(
                    BinaryEvent,
                    "/",
                    None,
                    1,
                    Some(json!(["audio", {"_placeholder":true,"num":0}])),
                ),
            ),
            (
                r#"52-/voice,7["a",{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]"#,
                packet(
                    BinaryEvent,
                    "/voice",
                    Some(7),
                    2,
                    Some(
                        json!(["a", {"_placeholder":true,"num":1}, {"_placeholder":true,"num":0}]),
                    ),
                ),
            ),
            (
                r#"61-/voice,3[{"_placeholder":true,"num":0}]"#,
                packet(
                    BinaryAck,
                    "/voice",
                    Some(3),
                    1,
                    Some(json!([{"_placeholder":true,"num":0}])),
                ),
            ),
            (
                r#"50-["a"]"#,
                packet(BinaryEvent, "/", None, 0, Some(json!(["a"]))),
            ),
            (
                r#"2["error"]"#,
                packet(Event, "/", None, 0, Some(json!(["error"]))),
            ),
            (
                "2[\"max\",1]",
                packet(Event, "/", None, 0, Some(json!(["max", 1]))),
            ),
            (
                "218446744073709551615[\"m\"]",
                packet(Event, "/", Some(u64::MAX), 0, Some(json!(["m"]))),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(d(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_packets_are_refused() {
        use ParseError::*;
        let cases = [
            ("", Empty),
            ("7", UnknownType),
            ("x", UnknownType),
            // CONNECT_ERROR: servers never accept it from a client.
            ("4abc", NotFromClient),
            ("42{}", NotFromClient),
            // The Engine.IO messages `4abc` and `42abc[...]` carry these.
            ("abc", UnknownType),
            ("2{}", InvalidPayload(PacketType::Event)),
            ("2abc[\"a\"]", InvalidJson),
            ("2[]", InvalidPayload(PacketType::Event)),
            ("2", InvalidPayload(PacketType::Event)),
            ("2[1]", InvalidPayload(PacketType::Event)),
            (
                r#"2[{"toString":"foo"}]"#,
                InvalidPayload(PacketType::Event),
            ),
            ("2[true]", InvalidPayload(PacketType::Event)),
            ("2[null]", InvalidPayload(PacketType::Event)),
            ("2[\"a\"", InvalidJson),
            ("0[]", InvalidPayload(PacketType::Connect)),
            ("0\"x\"", InvalidPayload(PacketType::Connect)),
            ("1{}", InvalidPayload(PacketType::Disconnect)),
            ("3[]", InvalidPayload(PacketType::Ack)),
            ("3{}", InvalidPayload(PacketType::Ack)),
            ("5[\"a\"]", IllegalAttachments),
            ("5-[\"a\"]", IllegalAttachments),
            ("5a-[\"a\"]", IllegalAttachments),
            ("51[\"a\"]", IllegalAttachments),
            ("51000000-[\"a\"]", TooManyAttachments(1_000_000)),
            ("599999999999999999999999-[\"a\"]", IllegalAttachments),
            ("511-[\"a\"]", TooManyAttachments(11)),
            ("218446744073709551616[\"m\"]", InvalidAckId),
            (
                r#"51-["a",{"_placeholder":true,"num":"splice"}]"#,
                InvalidPlaceholder,
            ),
            (
                r#"51-["a",{"_placeholder":true,"num":1}]"#,
                InvalidPlaceholder,
            ),
            (
                r#"51-["a",{"_placeholder":true,"num":-1}]"#,
                InvalidPlaceholder,
            ),
            (r#"51-["a",{"_placeholder":true}]"#, InvalidPlaceholder),
            (
                r#"51-["a",{"x":[{"_placeholder":true,"num":0.5}]}]"#,
                InvalidPlaceholder,
            ),
            (
                r#"2["a",{"_placeholder":true,"num":0}]"#,
                InvalidPlaceholder,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(d(text), Err(want), "{text}");
        }
    }

    fn encoded(
        kind: PacketType,
        nsp: &str,
        id: Option<u64>,
        n: usize,
        event: Option<&str>,
        args: &[Value],
    ) -> String {
        let mut buf = Vec::new();
        encode(&mut buf, kind, nsp, id, n, event, args);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn encodes_events_and_acks() {
        use PacketType::*;
        assert_eq!(
            encoded(Event, "/", None, 0, Some("hi"), &[json!(1)]),
            r#"2["hi",1]"#
        );
        assert_eq!(
            encoded(Event, "/voice", Some(4), 0, Some("hi"), &[]),
            r#"2/voice,4["hi"]"#
        );
        assert_eq!(
            encoded(Ack, "/voice", Some(4), 0, None, &[json!({"seq":1})]),
            r#"3/voice,4[{"seq":1}]"#
        );
        assert_eq!(encoded(Ack, "/", Some(0), 0, None, &[]), "30[]");
        assert_eq!(
            encoded(BinaryEvent, "/", None, 1, Some("b"), &[placeholder(0)]),
            r#"51-["b",{"_placeholder":true,"num":0}]"#
        );
        let mut buf = Vec::new();
        encode_control(&mut buf, Connect, "/voice", Some(&json!({"sid":"x"})));
        assert_eq!(buf, br#"0/voice,{"sid":"x"}"#);
        let mut buf = Vec::new();
        encode_control(&mut buf, Disconnect, "/", None);
        assert_eq!(buf, b"1");
    }

    #[test]
    fn payload_helpers() {
        let p = Payload::new()
            .arg(json!({"seq": 3}))
            .bin(Bytes::from_static(b"pcm"));
        assert_eq!(p.args[1], placeholder(0));
        assert_eq!(p.bin_at(1).unwrap(), &Bytes::from_static(b"pcm"));
        assert_eq!(p.bin_at(0), None);
        #[derive(serde::Deserialize)]
        struct Seq {
            seq: u32,
        }
        assert_eq!(p.get::<Seq>(0).unwrap().seq, 3);
        assert!(p.get::<Seq>(5).is_err());
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-zA-Z0-9 _/,\\-\"\\\\é]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn random_text_never_panics(text in "\\PC{0,64}") {
            let _ = d(&text);
        }

        #[test]
        fn random_prefixed_text_never_panics(kind in 0u8..7, rest in "[0-9/,\\-\\[\\]{}\"a-z:]{0,40}") {
            let _ = d(&format!("{kind}{rest}"));
        }

        #[test]
        fn encode_then_decode_is_identity(
            nsp in "(/|/[a-z]{1,8})",
            id in proptest::option::of(proptest::num::u64::ANY),
            event in "[a-zA-Z0-9 ._\\-é]{1,12}",
            args in proptest::collection::vec(arb_json(), 0..4),
            bins in 0usize..3,
        ) {
            let mut args = args;
            for n in 0..bins {
                args.push(placeholder(n));
            }
            let kind = if bins > 0 { PacketType::BinaryEvent } else { PacketType::Event };
            let mut buf = Vec::new();
            encode(&mut buf, kind, &nsp, id, bins, Some(&event), &args);
            let text = ByteString::from(String::from_utf8(buf).unwrap());
            let packet = decode(&text, 10).unwrap();
            let mut want = vec![Value::String(event)];
            want.extend(args);
            proptest::prop_assert_eq!(packet, Packet { kind, nsp: nsp.as_str().into(), id, attachments: bins, data: Some(Value::Array(want)) });
        }
    }
}
