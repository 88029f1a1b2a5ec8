//! The one way a PIN is tried: `/login`, the `authenticate` event and CONNECT auth all call
//! [`PinGate::attempt`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::attempts::{AttemptStore, Refusal};
use super::pin::Pin;

/// A right PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted;

/// Why a PIN attempt did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The PIN was checked and is wrong; the client's next attempt waits this long.
    WrongPin(Duration),
    /// The PIN was not checked: the client must wait (or has an attempt in flight).
    Limited(Duration),
    /// The PIN was not checked: the attempt store is unreachable.
    Unavailable,
}

impl Refused {
    /// The code clients see: `invalid_pin`, `rate_limited` or `unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::WrongPin(_) => "invalid_pin",
            Refused::Limited(_) => "rate_limited",
            Refused::Unavailable => "unavailable",
        }
    }

    /// A sentence for people.
    pub fn message(&self) -> &'static str {
        match self {
            Refused::WrongPin(_) => "Wrong PIN.",
            Refused::Limited(_) => "Too many PIN attempts; wait before trying again.",
            Refused::Unavailable => "Authentication is unavailable; try again shortly.",
        }
    }

    /// How long before trying again makes sense.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refused::WrongPin(wait) | Refused::Limited(wait) => *wait,
            Refused::Unavailable => Duration::from_secs(1),
        }
    }
}

/// Checks PINs: reserves the attempt, verifies (Argon2 on the blocking pool, a few at a time),
/// settles.
pub struct PinGate {
    pin: Arc<Pin>,
    attempts: Arc<dyn AttemptStore>,
    verifiers: Arc<Semaphore>,
}

impl std::fmt::Debug for PinGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinGate({:?})", self.pin)
    }
}

/// How long a reserved attempt backs off when it is refused while in flight.
const IN_FLIGHT_RETRY: Duration = Duration::from_millis(500);

impl PinGate {
    /// A gate for `pin`, counting in `attempts`, with at most `concurrency` costly (Argon2)
    /// verifications at once.
    pub fn new(pin: Pin, attempts: Arc<dyn AttemptStore>, concurrency: usize) -> PinGate {
        PinGate {
            pin: Arc::new(pin),
            attempts,
            verifiers: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Tries `pin` for `client` (see [`super::client_key`]).
    pub async fn attempt(&self, client: &str, pin: &str) -> Result<Granted, Refused> {
        let wait_if_wrong = match self.attempts.reserve(client).await {
            Ok(wait) => wait,
            Err(Refusal::Backoff(wait) | Refusal::Budget(wait)) => {
                return Err(Refused::Limited(wait))
            }
            Err(Refusal::InFlight) => return Err(Refused::Limited(IN_FLIGHT_RETRY)),
            Err(Refusal::Unavailable) => return Err(Refused::Unavailable),
        };
        let right = self.verify(pin).await;
        self.attempts.settle(client, right).await;
        if right {
            Ok(Granted)
        } else {
            Err(Refused::WrongPin(wait_if_wrong))
        }
    }

    async fn verify(&self, attempt: &str) -> bool {
        if !self.pin.is_costly() {
            return self.pin.verify(attempt);
        }
        let Ok(_permit) = self.verifiers.acquire().await else {
            return false;
        };
        let pin = self.pin.clone();
        let attempt = attempt.to_owned();
        tokio::task::spawn_blocking(move || pin.verify(&attempt))
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::attempts::{Limits, MemoryAttempts};
    use super::*;

    #[actix_rt::test]
    async fn concurrent_guesses_get_only_the_free_attempts_checked() {
        let store = Arc::new(MemoryAttempts::new(Limits {
            free_attempts: 3,
            global_per_minute: 0,
            ..Limits::default()
        }));
        let gate = Arc::new(PinGate::new(Pin::plain("424242").unwrap(), store, 2));
        let guesses = (0..300).map(|i| {
            let gate = gate.clone();
            async move { gate.attempt("ip:10.0.0.1", &format!("{i:06}")).await }
        });
        let results = futures_util::future::join_all(guesses).await;
        let wrong = results
            .iter()
            .filter(|r| matches!(r, Err(Refused::WrongPin(_))))
            .count();
        assert_eq!(wrong, 3);
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(Refused::WrongPin(_) | Refused::Limited(_)))));
        // The right PIN is refused too while the client waits.
        assert!(matches!(
            gate.attempt("ip:10.0.0.1", "424242").await,
            Err(Refused::Limited(_))
        ));
        assert_eq!(gate.attempt("ip:10.0.0.2", "424242").await, Ok(Granted));
    }

    #[actix_rt::test]
    async fn argon2_runs_off_the_caller_thread() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        use argon2::Argon2;
        let salt = SaltString::encode_b64(b"voxio test salt").unwrap();
        let phc = Argon2::default()
            .hash_password(b"24682468", &salt)
            .unwrap()
            .to_string();
        let store = Arc::new(MemoryAttempts::new(Limits::default()));
        let gate = PinGate::new(Pin::argon2(&phc).unwrap(), store, 1);
        assert_eq!(gate.attempt("ip:a", "24682468").await, Ok(Granted));
        assert!(matches!(
            gate.attempt("ip:a", "nope").await,
            Err(Refused::WrongPin(_))
        ));
    }
}
