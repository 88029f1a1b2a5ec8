//! PIN attempts per client, counted *before* the PIN is checked.
//!
//! [`AttemptStore::reserve`] is one atomic step (one Lua script in Redis, one lock in memory):
//! it refuses a client that must wait, that has an attempt in flight, or that would exceed the
//! global failure budget, and otherwise counts the attempt and sets the wait the count
//! imposes. Only then is the PIN verified; [`AttemptStore::settle`] releases the in-flight mark
//! and, after a right PIN, forgets the client's count. A burst of guesses therefore gets at
//! most `free_attempts` checked, however many arrive at once and on however many nodes, and a
//! reservation that timed out was never checked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::unix_ms;

/// The limits on guessing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Attempts a client may make in a row without waiting (`VOXIO_PIN_FREE_ATTEMPTS`, 3); a
    /// wrong one beyond starts the backoff.
    pub free_attempts: u32,
    /// The first wait; each further attempt doubles it (`VOXIO_PIN_BACKOFF_MS`, 1 s).
    pub base: Duration,
    /// The longest wait (`VOXIO_PIN_BACKOFF_MAX_MS`, 5 min).
    pub max: Duration,
    /// How long a client's count is remembered without a new attempt (15 min).
    pub window: Duration,
    /// How long an attempt may stay in flight if it is never settled (10 s).
    pub in_flight: Duration,
    /// Failed attempts a minute across all clients, then everyone waits for the next minute
    /// (`VOXIO_PIN_GLOBAL_FAILURES_PER_MIN`, 30); 0 turns the budget off.
    pub global_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            free_attempts: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            window: Duration::from_secs(900),
            in_flight: Duration::from_secs(10),
            global_per_minute: 30,
        }
    }
}

impl Limits {
    /// The wait before the next attempt, after `attempts` in a row: none while they are free,
    /// then the base, doubling, up to the longest.
    pub fn wait_after(&self, attempts: u32) -> Duration {
        if attempts < self.free_attempts.max(1) {
            return Duration::ZERO;
        }
        let doublings = (attempts - self.free_attempts.max(1)).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

/// Why an attempt was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This client must wait this long.
    Backoff(Duration),
    /// This client already has an attempt being checked.
    InFlight,
    /// Every client has spent the minute's failure budget: wait this long.
    Budget(Duration),
    /// The store (Redis) did not answer in time; nothing was checked.
    Unavailable,
}

/// Where attempts are counted.
pub trait AttemptStore: Send + Sync {
    /// Reserves one attempt for `client` (see the module): the wait its failure would impose.
    fn reserve<'a>(&'a self, client: &'a str) -> BoxFuture<'a, Result<Duration, Refusal>>;

    /// Ends a reserved attempt; `granted` forgets the client's count and gives its share of
    /// the global budget back.
    fn settle<'a>(&'a self, client: &'a str, granted: bool) -> BoxFuture<'a, ()>;
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    attempts: u32,
    last: Instant,
    locked_until: Option<Instant>,
    in_flight_until: Option<Instant>,
}

impl Entry {
    fn idle(&self, limits: &Limits, now: Instant) -> bool {
        self.locked_until.is_none_or(|t| t <= now)
            && self.in_flight_until.is_none_or(|t| t <= now)
            && now.duration_since(self.last) > limits.window
    }
}

#[derive(Debug)]
struct MemoryState {
    clients: HashMap<String, Entry>,
    /// The budget's minute (since `epoch`) and the failures counted in it.
    minute: u64,
    spent: u32,
}

/// Attempts in this process, under one lock. At most `capacity` clients are tracked: idle ones
/// are evicted first, then the least recent (the global budget bounds how fast new ones come).
#[derive(Debug)]
pub struct MemoryAttempts {
    limits: Limits,
    capacity: usize,
    epoch: Instant,
    state: Mutex<MemoryState>,
}

impl MemoryAttempts {
    /// A store with these limits.
    pub fn new(limits: Limits) -> MemoryAttempts {
        MemoryAttempts {
            limits,
            capacity: 100_000,
            epoch: Instant::now(),
            state: Mutex::new(MemoryState {
                clients: HashMap::new(),
                minute: 0,
                spent: 0,
            }),
        }
    }

    fn reserve_at(&self, client: &str, now: Instant) -> Result<Duration, Refusal> {
        let limits = &self.limits;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = state.clients.get(client) {
            if let Some(wait) = entry
                .locked_until
                .and_then(|t| t.checked_duration_since(now))
                .filter(|d| !d.is_zero())
            {
                return Err(Refusal::Backoff(wait));
            }
            if entry.in_flight_until.is_some_and(|t| t > now) {
                return Err(Refusal::InFlight);
            }
        }
        if limits.global_per_minute > 0 {
            let elapsed = now.duration_since(self.epoch);
            let minute = elapsed.as_secs() / 60;
            if state.minute != minute {
                state.minute = minute;
                state.spent = 0;
            }
            if state.spent >= limits.global_per_minute {
                let into = Duration::from_millis((elapsed.as_millis() % 60_000) as u64);
                return Err(Refusal::Budget(Duration::from_secs(60) - into));
            }
            state.spent += 1;
        }
        if state.clients.len() >= self.capacity && !state.clients.contains_key(client) {
            state.clients.retain(|_, e| !e.idle(limits, now));
            if state.clients.len() >= self.capacity {
                let oldest = state
                    .clients
                    .iter()
                    .min_by_key(|(_, e)| e.last)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    state.clients.remove(&oldest);
                }
            }
        }
        let entry = state.clients.entry(client.to_owned()).or_insert(Entry {
            attempts: 0,
            last: now,
            locked_until: None,
            in_flight_until: None,
        });
        if now.duration_since(entry.last) > limits.window {
            entry.attempts = 0;
        }
        entry.attempts = entry.attempts.saturating_add(1);
        entry.last = now;
        entry.in_flight_until = Some(now + limits.in_flight);
        let wait = limits.wait_after(entry.attempts);
        entry.locked_until = (!wait.is_zero()).then(|| now + wait);
        Ok(wait)
    }

    fn settle_now(&self, client: &str, granted: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if granted {
            if state.clients.remove(client).is_some() {
                state.spent = state.spent.saturating_sub(1);
            }
        } else if let Some(entry) = state.clients.get_mut(client) {
            entry.in_flight_until = None;
        }
    }
}

impl AttemptStore for MemoryAttempts {
    fn reserve<'a>(&'a self, client: &'a str) -> BoxFuture<'a, Result<Duration, Refusal>> {
        Box::pin(std::future::ready(self.reserve_at(client, Instant::now())))
    }

    fn settle<'a>(&'a self, client: &'a str, granted: bool) -> BoxFuture<'a, ()> {
        self.settle_now(client, granted);
        Box::pin(std::future::ready(()))
    }
}

/// Attempts in Redis, shared by every node.
#[derive(Clone)]
pub struct RedisAttempts {
    /// The limits.
    pub limits: Limits,
    /// The shared connection.
    pub connection: redis::aio::ConnectionManager,
    /// How long one script may take; past it the attempt is refused unchecked.
    pub timeout: Duration,
}

/// KEYS: count, lock, in-flight, this minute's global failures.
/// ARGV: free attempts, base ms, max ms, window ms, in-flight ms, global budget, ms left in
/// the minute. Returns {0, wait if wrong} or {1 backoff | 2 in flight | 3 budget, wait}.
const RESERVE_SCRIPT: &str = r"
local locked = redis.call('PTTL', KEYS[2])
if locked > 0 then return {1, locked} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {2, 0} end
local budget = tonumber(ARGV[6])
if budget > 0 then
  local spent = tonumber(redis.call('GET', KEYS[4]) or '0')
  if spent >= budget then return {3, tonumber(ARGV[7])} end
  redis.call('INCR', KEYS[4])
  redis.call('PEXPIRE', KEYS[4], 120000)
end
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
local free = math.max(tonumber(ARGV[1]), 1)
if n >= free then
  local ms = math.floor(math.min(tonumber(ARGV[2]) * (2 ^ math.min(n - free, 30)), tonumber(ARGV[3])))
  if ms > 0 then
    redis.call('SET', KEYS[2], '1', 'PX', ms)
    return {0, ms}
  end
end
return {0, 0}
";

/// KEYS: count, lock, in-flight, this minute's global failures. ARGV: 1 when granted.
const SETTLE_SCRIPT: &str = r"
redis.call('DEL', KEYS[3])
if ARGV[1] == '1' then
  if redis.call('DEL', KEYS[1], KEYS[2]) > 0 and redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('DECR', KEYS[4])
  end
end
return 0
";

impl RedisAttempts {
    fn keys(client: &str, minute: u64) -> [String; 4] {
        [
            format!("voxio:pin:count:{client}"),
            format!("voxio:pin:lock:{client}"),
            format!("voxio:pin:inflight:{client}"),
            format!("voxio:pin:global:{minute}"),
        ]
    }
}

impl AttemptStore for RedisAttempts {
    fn reserve<'a>(&'a self, client: &'a str) -> BoxFuture<'a, Result<Duration, Refusal>> {
        Box::pin(async move {
            let now = unix_ms();
            let limits = &self.limits;
            let script = redis::Script::new(RESERVE_SCRIPT);
            let mut invocation = script.prepare_invoke();
            for key in Self::keys(client, now / 60_000) {
                invocation.key(key);
            }
            invocation
                .arg(limits.free_attempts)
                .arg(limits.base.as_millis() as u64)
                .arg(limits.max.as_millis() as u64)
                .arg(limits.window.as_millis().max(1) as u64)
                .arg(limits.in_flight.as_millis().max(1) as u64)
                .arg(limits.global_per_minute)
                .arg(60_000 - now % 60_000);
            let mut conn = self.connection.clone();
            let (verdict, ms): (u8, u64) =
                tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                    .await
                    .map_err(|_| Refusal::Unavailable)?
                    .map_err(|_| Refusal::Unavailable)?;
            let ms = Duration::from_millis(ms);
            match verdict {
                0 => Ok(ms),
                1 => Err(Refusal::Backoff(ms)),
                2 => Err(Refusal::InFlight),
                _ => Err(Refusal::Budget(ms)),
            }
        })
    }

    fn settle<'a>(&'a self, client: &'a str, granted: bool) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let script = redis::Script::new(SETTLE_SCRIPT);
            let mut invocation = script.prepare_invoke();
            for key in Self::keys(client, unix_ms() / 60_000) {
                invocation.key(key);
            }
            invocation.arg(u8::from(granted));
            let mut conn = self.connection.clone();
            // Unsettled, the in-flight mark expires by itself and the count stays: safe.
            let _ =
                tokio::time::timeout(self.timeout, invocation.invoke_async::<()>(&mut conn)).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(free: u32) -> Limits {
        Limits {
            free_attempts: free,
            global_per_minute: 0,
            ..Limits::default()
        }
    }

    #[test]
    fn waits_start_at_the_last_free_attempt_double_and_cap() {
        let l = Limits {
            free_attempts: 2,
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
            ..Limits::default()
        };
        let waits: Vec<u64> = (1..=6).map(|n| l.wait_after(n).as_secs()).collect();
        assert_eq!(waits, [0, 1, 2, 4, 5, 5]);
    }

    #[test]
    fn a_burst_gets_only_the_free_attempts_checked() {
        let store = MemoryAttempts::new(limits(3));
        let t0 = Instant::now();
        let mut checked = 0;
        for _ in 0..300 {
            if let Ok(wait) = store.reserve_at("a", t0) {
                checked += 1;
                store.settle_now("a", false);
                assert_eq!(wait.is_zero(), checked < 3);
            }
        }
        assert_eq!(checked, 3);
        assert_eq!(
            store.reserve_at("a", t0),
            Err(Refusal::Backoff(Duration::from_secs(1)))
        );
        // Another client is not held back, and the wait passes.
        assert!(store.reserve_at("b", t0).is_ok());
        let later = t0 + Duration::from_secs(1);
        assert_eq!(store.reserve_at("a", later), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn one_attempt_in_flight_per_client() {
        let store = MemoryAttempts::new(limits(3));
        let t0 = Instant::now();
        assert_eq!(store.reserve_at("a", t0), Ok(Duration::ZERO));
        assert_eq!(store.reserve_at("a", t0), Err(Refusal::InFlight));
        // An attempt never settled stops counting as in flight after its limit.
        let later = t0 + Limits::default().in_flight;
        assert_eq!(store.reserve_at("a", later), Ok(Duration::ZERO));
        store.settle_now("a", true);
        assert!(store.reserve_at("a", later).is_ok());
    }

    #[test]
    fn a_right_pin_forgets_the_count() {
        let store = MemoryAttempts::new(limits(2));
        let t0 = Instant::now();
        assert!(store.reserve_at("a", t0).is_ok());
        store.settle_now("a", false);
        assert!(store.reserve_at("a", t0).is_ok());
        store.settle_now("a", true);
        assert_eq!(store.reserve_at("a", t0), Ok(Duration::ZERO));
    }

    #[test]
    fn the_global_budget_holds_back_many_clients() {
        let store = MemoryAttempts::new(Limits {
            global_per_minute: 5,
            ..limits(3)
        });
        let t0 = store.epoch;
        let mut checked = 0;
        for i in 0..100 {
            let client = format!("ip:10.0.0.{i}");
            match store.reserve_at(&client, t0) {
                Ok(_) => {
                    checked += 1;
                    store.settle_now(&client, false);
                }
                Err(refusal) => assert_eq!(refusal, Refusal::Budget(Duration::from_secs(60))),
            }
        }
        assert_eq!(checked, 5);
        // A right PIN gives its share back; the next minute starts afresh.
        store.settle_now("ip:10.0.0.0", true);
        assert!(store.reserve_at("ip:10.0.1.1", t0).is_ok());
        let next = t0 + Duration::from_secs(60);
        assert!(store.reserve_at("ip:10.0.1.2", next).is_ok());
    }

    #[test]
    fn counts_are_forgotten_after_the_window() {
        let store = MemoryAttempts::new(limits(1));
        let t0 = Instant::now();
        assert_eq!(store.reserve_at("a", t0), Ok(Duration::from_secs(1)));
        store.settle_now("a", false);
        let later = t0 + Limits::default().window + Duration::from_secs(1);
        assert_eq!(store.reserve_at("a", later), Ok(Duration::from_secs(1)));
    }
}
