//! Session ids: 120 random bits from a CSPRNG, as 20 URL-safe base64 characters.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;

/// Length of a session id in characters.
pub const SID_LEN: usize = 20;

/// An Engine.IO session id. `Copy`, and stored inline: looking one up allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid([u8; SID_LEN]);

impl Sid {
    /// A fresh id from the operating system's CSPRNG (through `rand`'s thread-local generator,
    /// a ChaCha stream seeded and periodically reseeded from the OS).
    pub fn generate() -> Sid {
        let mut random = [0u8; 15];
        rand::rng().fill_bytes(&mut random);
        let mut sid = [0u8; SID_LEN];
        // 15 bytes encode to exactly 20 characters, so this cannot fail.
        let _ = URL_SAFE_NO_PAD.encode_slice(random, &mut sid);
        Sid(sid)
    }

    /// A fresh id whose first four characters are `tag` (a node's, so that any node can tell
    /// whose session it is); the other sixteen are random (96 bits). A tag that is not four
    /// URL-safe base64 characters is ignored.
    pub fn generate_tagged(tag: Option<&str>) -> Sid {
        let mut sid = Sid::generate();
        if let Some(tag) = tag.filter(|t| is_tag(t)) {
            sid.0[..TAG_LEN].copy_from_slice(tag.as_bytes());
        }
        sid
    }

    /// The first four characters: the tag of the node that made it, for a tagged id.
    pub fn tag(&self) -> &str {
        &self.as_str()[..TAG_LEN]
    }

    /// Parses an id from a query string; anything but 20 URL-safe base64 characters is `None`.
    pub fn parse(text: &str) -> Option<Sid> {
        let bytes: [u8; SID_LEN] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            .then_some(Sid(bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `generate` and `parse`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Length of a node's tag at the start of its session ids.
pub const TAG_LEN: usize = 4;

/// Whether `tag` can be a node's tag: four URL-safe base64 characters.
pub fn is_tag(tag: &str) -> bool {
    tag.len() == TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_id_starts_with_its_node_tag() {
        let sid = Sid::generate_tagged(Some("n0_-"));
        assert_eq!(sid.tag(), "n0_-");
        assert_eq!(Sid::parse(sid.as_str()), Some(sid));
        assert_ne!(Sid::generate_tagged(Some("n0_-")), sid);
        // Not a tag: the id is all random.
        assert_ne!(Sid::generate_tagged(Some("n0/")).tag(), "n0/");
    }

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = Sid::generate();
        let b = Sid::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), SID_LEN);
        assert_eq!(Sid::parse(a.as_str()), Some(a));
    }

    #[test]
    fn parse_rejects_bad_ids() {
        assert_eq!(Sid::parse(""), None);
        assert_eq!(Sid::parse("short"), None);
        assert_eq!(Sid::parse("aaaaaaaaaaaaaaaaaaa="), None);
        assert_eq!(Sid::parse("aaaaaaaaaaaaaaaaaaaaa"), None);
        assert!(Sid::parse("aaaaaaaaaaaaaaaaa-_9").is_some());
    }
}
