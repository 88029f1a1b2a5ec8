//! PIN checking, failed-attempt backoff, and signed voice tokens.
//!
//! Nothing here logs a PIN, a token or a key; `Debug` on these types shows no secret.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::PasswordHash;
use argon2::{Argon2, PasswordVerifier};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
    /// A plain PIN.
    pub fn plain(pin: &str) -> Pin {
        Pin::Digest(Sha256::digest(pin.as_bytes()).into())
    }

    /// An Argon2 hash in PHC format; `None` if it does not parse.
    pub fn argon2(phc: &str) -> Option<Pin> {
        PasswordHash::new(phc).ok()?;
        Some(Pin::Argon2(phc.to_owned()))
    }

    /// A random 6-digit PIN, and the PIN to check it.
    pub fn generate() -> (String, Pin) {
        let pin = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
        let checker = Pin::plain(&pin);
        (pin, checker)
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

/// Backoff settings for failed PIN attempts.
#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    /// Failures allowed before any wait. Default 3.
    pub free_attempts: u32,
    /// The first wait; each further failure doubles it. Default 1 s.
    pub base: Duration,
    /// The longest wait. Default 5 min.
    pub max: Duration,
    /// How long failures are remembered without a new one. Default 15 min.
    pub window: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            free_attempts: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            window: Duration::from_secs(900),
        }
    }
}

impl BackoffPolicy {
    /// The wait after the `failures`-th failure in a row.
    pub fn wait_after(&self, failures: u32) -> Duration {
        if failures <= self.free_attempts {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free_attempts - 1).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

/// One client's failed attempts (per connection, and per address in memory).
#[derive(Debug, Clone, Copy, Default)]
pub struct Backoff {
    failures: u32,
    locked_until: Option<Instant>,
    last_failure: Option<Instant>,
}

impl Backoff {
    /// How long to wait before the next attempt is even checked, if at all.
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Records a failure; returns the wait it imposes (zero while attempts are free).
    pub fn fail(&mut self, policy: &BackoffPolicy, now: Instant) -> Duration {
        if self
            .last_failure
            .is_some_and(|last| now.duration_since(last) > policy.window)
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(now);
        let wait = policy.wait_after(self.failures);
        self.locked_until = (!wait.is_zero()).then(|| now + wait);
        wait
    }

    fn expired(&self, policy: &BackoffPolicy, now: Instant) -> bool {
        self.retry_after(now).is_none()
            && self
                .last_failure
                .is_none_or(|last| now.duration_since(last) > policy.window)
    }
}

/// Why an attempt was not even checked, or could not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures: wait this long.
    Backoff(Duration),
    /// The attempt store (Redis) is unreachable: try again later.
    Unavailable,
}

/// Failed attempts per client address, in memory (one process) or in Redis (every node), so
/// the limit survives reconnects.
#[derive(Clone)]
pub enum AttemptLimiter {
    /// In this process; at most `capacity` addresses are tracked (expired ones are evicted
    /// first, then the oldest).
    Memory {
        policy: BackoffPolicy,
        state: Arc<Mutex<HashMap<String, Backoff>>>,
        capacity: usize,
    },
    /// In Redis, shared by every node.
    Redis {
        policy: BackoffPolicy,
        connection: redis::aio::ConnectionManager,
        timeout: Duration,
    },
}

/// Records a failure atomically: counts it, and sets the lock key with the backoff's TTL.
const FAIL_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local free = tonumber(ARGV[1])
if n > free then
  local exp = n - free - 1
  if exp > 30 then exp = 30 end
  local ms = math.min(tonumber(ARGV[2]) * (2 ^ exp), tonumber(ARGV[3]))
  ms = math.floor(ms)
  redis.call('SET', KEYS[2], '1', 'PX', ms)
  return ms
end
return 0
";

impl AttemptLimiter {
    /// An in-memory limiter.
    pub fn memory(policy: BackoffPolicy) -> AttemptLimiter {
        AttemptLimiter::Memory {
            policy,
            state: Arc::new(Mutex::new(HashMap::new())),
            capacity: 100_000,
        }
    }

    /// Whether `key` may try now.
    pub async fn check(&self, key: &str) -> Result<(), Refusal> {
        match self {
            AttemptLimiter::Memory { state, .. } => {
                let state = state.lock().unwrap_or_else(|e| e.into_inner());
                match state.get(key).and_then(|b| b.retry_after(Instant::now())) {
                    Some(wait) => Err(Refusal::Backoff(wait)),
                    None => Ok(()),
                }
            }
            AttemptLimiter::Redis {
                connection,
                timeout,
                ..
            } => {
                let mut conn = connection.clone();
                let ttl: i64 = tokio::time::timeout(
                    *timeout,
                    redis::cmd("PTTL").arg(lock_key(key)).query_async(&mut conn),
                )
                .await
                .map_err(|_| Refusal::Unavailable)?
                .map_err(|_| Refusal::Unavailable)?;
                if ttl > 0 {
                    Err(Refusal::Backoff(Duration::from_millis(ttl as u64)))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Records a failure for `key`; returns the wait it imposes.
    pub async fn fail(&self, key: &str) -> Result<Duration, Refusal> {
        match self {
            AttemptLimiter::Memory {
                policy,
                state,
                capacity,
            } => {
                let now = Instant::now();
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                if state.len() >= *capacity && !state.contains_key(key) {
                    state.retain(|_, b| !b.expired(policy, now));
                    if state.len() >= *capacity {
                        let oldest = state
                            .iter()
                            .min_by_key(|(_, b)| b.last_failure)
                            .map(|(k, _)| k.clone());
                        if let Some(oldest) = oldest {
                            state.remove(&oldest);
                        }
                    }
                }
                Ok(state.entry(key.to_owned()).or_default().fail(policy, now))
            }
            AttemptLimiter::Redis {
                policy,
                connection,
                timeout,
            } => {
                let mut conn = connection.clone();
                let script = redis::Script::new(FAIL_SCRIPT);
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(fail_key(key))
                    .key(lock_key(key))
                    .arg(policy.free_attempts)
                    .arg(policy.base.as_millis() as u64)
                    .arg(policy.max.as_millis() as u64)
                    .arg(policy.window.as_millis() as u64);
                let ms: u64 = tokio::time::timeout(*timeout, invocation.invoke_async(&mut conn))
                    .await
                    .map_err(|_| Refusal::Unavailable)?
                    .map_err(|_| Refusal::Unavailable)?;
                Ok(Duration::from_millis(ms))
            }
        }
    }

    /// Forgets `key`'s failures (after a success).
    pub async fn succeed(&self, key: &str) {
        match self {
            AttemptLimiter::Memory { state, .. } => {
                state.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
            }
            AttemptLimiter::Redis {
                connection,
                timeout,
                ..
            } => {
                let mut conn = connection.clone();
                let _ = tokio::time::timeout(
                    *timeout,
                    redis::cmd("DEL")
                        .arg(fail_key(key))
                        .arg(lock_key(key))
                        .query_async::<()>(&mut conn),
                )
                .await;
            }
        }
    }
}

fn fail_key(key: &str) -> String {
    format!("voxio:pin:fail:{key}")
}

fn lock_key(key: &str) -> String {
    format!("voxio:pin:lock:{key}")
}

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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    fn plain_and_argon2_pins() {
        let pin = Pin::plain("123456");
        assert!(pin.verify("123456"));
        assert!(!pin.verify("123457"));
        assert!(!pin.verify(""));
        let (text, generated) = Pin::generate();
        assert_eq!(text.len(), 6);
        assert!(generated.verify(&text));
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"voxio test salt").unwrap();
        let phc = Argon2::default()
            .hash_password(b"2468", &salt)
            .unwrap()
            .to_string();
        let hashed = Pin::argon2(&phc).unwrap();
        assert!(hashed.verify("2468"));
        assert!(!hashed.verify("2469"));
        assert!(Pin::argon2("not a hash").is_none());
        assert_eq!(format!("{pin:?}"), "Pin(digest)");
    }

    #[test]
    fn backoff_doubles_after_free_attempts_and_caps() {
        let policy = BackoffPolicy {
            free_attempts: 2,
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
            window: Duration::from_secs(60),
        };
        let waits: Vec<u64> = (1..=7).map(|n| policy.wait_after(n).as_secs()).collect();
        assert_eq!(waits, [0, 0, 1, 2, 4, 5, 5]);
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.fail(&policy, t0), Duration::ZERO);
        assert_eq!(b.fail(&policy, t0), Duration::ZERO);
        assert_eq!(b.retry_after(t0), None);
        assert_eq!(b.fail(&policy, t0), Duration::from_secs(1));
        assert_eq!(b.retry_after(t0), Some(Duration::from_secs(1)));
        assert_eq!(b.retry_after(t0 + Duration::from_secs(1)), None);
        // Failures are forgotten after the window.
        assert_eq!(
            b.fail(&policy, t0 + Duration::from_secs(120)),
            Duration::ZERO
        );
    }

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

    #[actix_rt::test]
    async fn memory_limiter_backs_off_per_key() {
        let limiter = AttemptLimiter::memory(BackoffPolicy {
            free_attempts: 1,
            ..BackoffPolicy::default()
        });
        assert_eq!(limiter.check("a").await, Ok(()));
        assert_eq!(limiter.fail("a").await, Ok(Duration::ZERO));
        assert_eq!(limiter.fail("a").await, Ok(Duration::from_secs(1)));
        assert!(matches!(limiter.check("a").await, Err(Refusal::Backoff(_))));
        assert_eq!(limiter.check("b").await, Ok(()));
        limiter.succeed("a").await;
        assert_eq!(limiter.check("a").await, Ok(()));
    }
}

/// Page logins that logged out, remembered for as long as their cookie could live: a copy of a
/// logged-out cookie (the cookie store cannot take it back) gets no new voice token, and a
/// token issued before the logout no longer connects. In Redis when configured (every node
/// sees a logout), else in this process.
#[derive(Clone)]
pub enum Revocations {
    /// In this process; expired entries are dropped as new ones come.
    Memory(Arc<Mutex<HashMap<String, Instant>>>),
    /// In Redis, as keys that expire by themselves.
    Redis {
        connection: redis::aio::ConnectionManager,
        timeout: Duration,
    },
}

fn revoked_key(login: &str) -> String {
    format!("voxio:logout:{login}")
}

impl Revocations {
    /// An in-process list.
    pub fn memory() -> Revocations {
        Revocations::Memory(Arc::new(Mutex::new(HashMap::new())))
    }

    /// Remembers that `login` logged out, for `ttl`.
    pub async fn revoke(&self, login: &str, ttl: Duration) -> Result<(), Refusal> {
        match self {
            Revocations::Memory(map) => {
                let now = Instant::now();
                let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
                map.retain(|_, until| *until > now);
                map.insert(login.to_owned(), now + ttl);
                Ok(())
            }
            Revocations::Redis {
                connection,
                timeout,
            } => {
                let mut conn = connection.clone();
                tokio::time::timeout(
                    *timeout,
                    redis::cmd("SET")
                        .arg(revoked_key(login))
                        .arg(1)
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64)
                        .query_async::<()>(&mut conn),
                )
                .await
                .map_err(|_| Refusal::Unavailable)?
                .map_err(|_| Refusal::Unavailable)
            }
        }
    }

    /// Whether `login` logged out.
    pub async fn is_revoked(&self, login: &str) -> Result<bool, Refusal> {
        match self {
            Revocations::Memory(map) => {
                let map = map.lock().unwrap_or_else(|e| e.into_inner());
                Ok(map.get(login).is_some_and(|until| *until > Instant::now()))
            }
            Revocations::Redis {
                connection,
                timeout,
            } => {
                let mut conn = connection.clone();
                let exists: bool = tokio::time::timeout(
                    *timeout,
                    redis::cmd("EXISTS")
                        .arg(revoked_key(login))
                        .query_async(&mut conn),
                )
                .await
                .map_err(|_| Refusal::Unavailable)?
                .map_err(|_| Refusal::Unavailable)?;
                Ok(exists)
            }
        }
    }
}
