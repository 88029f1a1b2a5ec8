//! The PIN itself: how it is kept, generated and compared.

use std::fmt;

use argon2::password_hash::PasswordHash;
use argon2::{Argon2, PasswordVerifier};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The fewest characters a configured `VOXIO_PIN` may have.
pub const MIN_PIN_LEN: usize = 6;

/// Digits in a generated PIN: with the global failure budget's default (30 failures a minute,
/// about 16 million a year), guessing one takes about 300 years on average.
pub const GENERATED_PIN_DIGITS: u32 = 10;

/// The PIN a user must know: kept as a SHA-256 digest (compared in constant time) or as an
/// Argon2 hash (verified by argon2, itself constant-time).
pub enum Pin {
    /// A plain PIN, from `VOXIO_PIN` or generated at start.
    Digest([u8; 32]),
    /// An Argon2 PHC string from `VOXIO_PIN_HASH`.
    Argon2(String),
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pin::Digest(_) => "Pin(digest)",
            Pin::Argon2(_) => "Pin(argon2)",
        })
    }
}

impl Pin {
    /// A plain PIN; refused when it is shorter than [`MIN_PIN_LEN`] characters.
    pub fn plain(pin: &str) -> Result<Pin, String> {
        let len = pin.chars().count();
        if len < MIN_PIN_LEN {
            return Err(format!(
                "VOXIO_PIN has {len} characters; at least {MIN_PIN_LEN} are needed \
                 (unset it to have a {GENERATED_PIN_DIGITS}-digit PIN generated)"
            ));
        }
        Ok(Pin::Digest(Sha256::digest(pin.as_bytes()).into()))
    }

    /// An Argon2 hash in PHC format; `None` if it does not parse.
    pub fn argon2(phc: &str) -> Option<Pin> {
        PasswordHash::new(phc).ok()?;
        Some(Pin::Argon2(phc.to_owned()))
    }

    /// A random [`GENERATED_PIN_DIGITS`]-digit PIN, and the PIN to check it.
    pub fn generate() -> (String, Pin) {
        let mut rng = rand::rng();
        let pin: String = (0..GENERATED_PIN_DIGITS)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect();
        let checker = Pin::Digest(Sha256::digest(pin.as_bytes()).into());
        (pin, checker)
    }

    /// Whether checking takes real CPU time (Argon2), so it belongs off the I/O threads.
    pub fn is_costly(&self) -> bool {
        matches!(self, Pin::Argon2(_))
    }

    /// Whether `attempt` is the PIN.
    pub fn verify(&self, attempt: &str) -> bool {
        match self {
            Pin::Digest(digest) => {
                let attempt: [u8; 32] = Sha256::digest(attempt.as_bytes()).into();
                attempt.ct_eq(digest).into()
            }
            Pin::Argon2(phc) => PasswordHash::new(phc)
                .map(|hash| {
                    Argon2::default()
                        .verify_password(attempt.as_bytes(), &hash)
                        .is_ok()
                })
                .unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_argon2_pins() {
        let pin = Pin::plain("123456").unwrap();
        assert!(pin.verify("123456"));
        assert!(!pin.verify("123457"));
        assert!(!pin.verify(""));
        assert!(!pin.is_costly());
        let (text, generated) = Pin::generate();
        assert_eq!(text.len(), GENERATED_PIN_DIGITS as usize);
        assert!(text.bytes().all(|b| b.is_ascii_digit()));
        assert!(generated.verify(&text));
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"voxio test salt").unwrap();
        let phc = Argon2::default()
            .hash_password(b"2468", &salt)
            .unwrap()
            .to_string();
        let hashed = Pin::argon2(&phc).unwrap();
        assert!(hashed.is_costly());
        assert!(hashed.verify("2468"));
        assert!(!hashed.verify("2469"));
        assert!(Pin::argon2("not a hash").is_none());
        assert_eq!(format!("{pin:?}"), "Pin(digest)");
    }

    #[test]
    fn short_pins_are_refused() {
        assert!(Pin::plain("").is_err());
        assert!(Pin::plain("12345").is_err());
        let message = Pin::plain("1234").unwrap_err();
        assert!(message.contains("at least 6"), "{message}");
        assert!(
            !message.contains("1234"),
            "the PIN is never echoed: {message}"
        );
    }
}
