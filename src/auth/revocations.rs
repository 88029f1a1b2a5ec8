//! Page logins that logged out, remembered for as long as their cookie could live: a copy of a
//! logged-out cookie (the cookie store cannot take it back) gets no new voice token, and a
//! token issued before the logout no longer connects. In Redis when configured (every node
//! sees a logout), else in this process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::Unavailable;

/// Where logouts are remembered.
pub trait Revocations: Send + Sync {
    /// Remembers that `login` logged out, for `ttl`.
    fn revoke<'a>(
        &'a self,
        login: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Unavailable>>;

    /// Whether `login` logged out.
    fn is_revoked<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<bool, Unavailable>>;
}

/// Logouts in this process; expired entries are dropped as new ones come.
#[derive(Debug, Default)]
pub struct MemoryRevocations(Mutex<HashMap<String, Instant>>);

impl Revocations for MemoryRevocations {
    fn revoke<'a>(
        &'a self,
        login: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, until| *until > now);
        map.insert(login.to_owned(), now + ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_revoked<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<bool, Unavailable>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let revoked = map.get(login).is_some_and(|until| *until > Instant::now());
        Box::pin(std::future::ready(Ok(revoked)))
    }
}

/// Logouts in Redis, as keys that expire by themselves.
#[derive(Clone)]
pub struct RedisRevocations {
    /// The shared connection.
    pub connection: redis::aio::ConnectionManager,
    /// How long one command may take.
    pub timeout: Duration,
}

fn revoked_key(login: &str) -> String {
    format!("voxio:logout:{login}")
}

impl Revocations for RedisRevocations {
    fn revoke<'a>(
        &'a self,
        login: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async move {
            let mut conn = self.connection.clone();
            let mut command = redis::cmd("SET");
            command
                .arg(revoked_key(login))
                .arg(1)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            tokio::time::timeout(self.timeout, command.query_async::<()>(&mut conn))
                .await
                .map_err(|_| Unavailable)?
                .map_err(|_| Unavailable)
        })
    }

    fn is_revoked<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<bool, Unavailable>> {
        Box::pin(async move {
            let mut conn = self.connection.clone();
            let mut command = redis::cmd("EXISTS");
            command.arg(revoked_key(login));
            tokio::time::timeout(self.timeout, command.query_async::<bool>(&mut conn))
                .await
                .map_err(|_| Unavailable)?
                .map_err(|_| Unavailable)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn memory_revocations_expire() {
        let list = MemoryRevocations::default();
        assert_eq!(list.is_revoked("a").await, Ok(false));
        list.revoke("a", Duration::from_secs(60)).await.unwrap();
        list.revoke("b", Duration::ZERO).await.unwrap();
        assert_eq!(list.is_revoked("a").await, Ok(true));
        assert_eq!(list.is_revoked("b").await, Ok(false));
    }
}
