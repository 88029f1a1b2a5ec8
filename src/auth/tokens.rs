//! Signed voice tokens: a logged-in page passes one in CONNECT auth, so the socket never needs
//! the cookie store. `Debug` shows no key.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::unix_ms;

/// Signs and checks the short-lived tokens a logged-in page passes in CONNECT auth, so the
/// socket never needs the cookie store.
///
/// Format: `base64url(expiry_ms.login_id) . base64url(HMAC-SHA256)`.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
    ttl: Duration,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSigner(ttl {:?})", self.ttl)
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The page login the token was issued to (logout disconnects its sockets).
    pub login: String,
}

impl TokenSigner {
    /// A signer with a key derived from the server secret.
    pub fn new(secret: &[u8], ttl: Duration) -> TokenSigner {
        let mut hasher = Sha256::new();
        hasher.update(b"voxio voice token v1");
        hasher.update(secret);
        TokenSigner {
            key: hasher.finalize().into(),
            ttl,
        }
    }

    /// How long tokens last.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    /// A token for `login`, valid for the signer's TTL.
    pub fn issue(&self, login: &str) -> String {
        let claims = format!("{}.{login}", unix_ms() + self.ttl.as_millis() as u64);
        let mut mac = self.mac();
        mac.update(claims.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<TokenClaims> {
        let (claims, signature) = token.split_once('.')?;
        let claims = URL_SAFE_NO_PAD.decode(claims).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = self.mac();
        mac.update(&claims);
        mac.verify_slice(&signature).ok()?;
        let claims = String::from_utf8(claims).ok()?;
        let (expiry, login) = claims.split_once('.')?;
        (expiry.parse::<u64>().ok()? > unix_ms()).then(|| TokenClaims {
            login: login.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_expire() {
        let signer = TokenSigner::new(b"secret", Duration::from_secs(60));
        let token = signer.issue("login-1");
        assert_eq!(
            signer.verify(&token),
            Some(TokenClaims {
                login: "login-1".into()
            })
        );
        let other = TokenSigner::new(b"other secret", Duration::from_secs(60));
        assert_eq!(other.verify(&token), None);
        let mut tampered = token.clone();
        tampered.insert(3, 'x');
        assert_eq!(signer.verify(&tampered), None);
        assert_eq!(signer.verify("garbage"), None);
        let expired = TokenSigner::new(b"secret", Duration::ZERO).issue("x");
        assert_eq!(signer.verify(&expired), None);
    }
}
