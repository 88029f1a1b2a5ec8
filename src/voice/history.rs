//! Where each user's conversation history lives: the last lines said by the user and by the
//! assistant (what the user heard of it), which an OpenAI-compatible assistant answers with.
//! In this process by default (a user's next socket on this node picks it up), in Redis when
//! configured (on any node).
//!
//! Appends are fire-and-forget: a turn never waits on them, and a lost append costs one line
//! of context, never the answer. Lines are bounded in number and in length, and expire.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::assistant::Line;

/// The longest line kept, in bytes (cut at a character boundary).
pub const MAX_LINE_BYTES: usize = 2000;

/// Where conversation histories are kept.
pub trait HistoryStore: Send + Sync {
    /// `user`'s lines, oldest first (empty if the store does not answer).
    fn load(&self, user: &str) -> BoxFuture<'static, Vec<Line>>;

    /// Adds `line` to `user`'s history, dropping the oldest past the bound.
    fn append(&self, user: &str, line: Line) -> BoxFuture<'static, ()>;
}

/// `line` with its text cut to [`MAX_LINE_BYTES`].
fn bounded(mut line: Line) -> Line {
    if line.text.len() > MAX_LINE_BYTES {
        let mut end = MAX_LINE_BYTES;
        while !line.text.is_char_boundary(end) {
            end -= 1;
        }
        line.text.truncate(end);
    }
    line
}

/// Histories in this process: `lines` per user, for at most `max_users` users.
pub struct MemoryHistory {
    users: Mutex<HashMap<String, VecDeque<Line>>>,
    lines: usize,
    max_users: usize,
}

impl MemoryHistory {
    /// `lines` per user, for at most `max_users` users (a new one beyond that evicts one).
    pub fn new(lines: usize, max_users: usize) -> MemoryHistory {
        MemoryHistory {
            users: Mutex::new(HashMap::new()),
            lines: lines.max(1),
            max_users: max_users.max(1),
        }
    }
}

impl HistoryStore for MemoryHistory {
    fn load(&self, user: &str) -> BoxFuture<'static, Vec<Line>> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let lines = users
            .get(user)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        Box::pin(std::future::ready(lines))
    }

    fn append(&self, user: &str, line: Line) -> BoxFuture<'static, ()> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let history = super::todos::bounded_entry(&mut users, user, self.max_users);
        if history.len() >= self.lines {
            history.pop_front();
        }
        history.push_back(bounded(line));
        Box::pin(std::future::ready(()))
    }
}

/// Histories in Redis: a list of JSON lines per user, `voxio:history:<user>`, trimmed to
/// `lines` and expiring `ttl` after its last line.
#[derive(Clone)]
pub struct RedisHistory {
    /// The shared connection.
    pub connection: redis::aio::ConnectionManager,
    /// How long one command may take.
    pub timeout: Duration,
    /// How long a history is kept after its last line.
    pub ttl: Duration,
    /// Lines kept per user.
    pub lines: usize,
}

fn history_key(user: &str) -> String {
    format!("voxio:history:{user}")
}

impl HistoryStore for RedisHistory {
    fn load(&self, user: &str) -> BoxFuture<'static, Vec<Line>> {
        let (this, key) = (self.clone(), history_key(user));
        Box::pin(async move {
            let mut conn = this.connection.clone();
            let mut command = redis::cmd("LRANGE");
            command.arg(&key).arg(0).arg(-1);
            let stored: Vec<String> =
                match tokio::time::timeout(this.timeout, command.query_async(&mut conn)).await {
                    Ok(Ok(stored)) => stored,
                    _ => return Vec::new(),
                };
            stored
                .iter()
                .filter_map(|s| serde_json::from_str(s).ok())
                .collect()
        })
    }

    fn append(&self, user: &str, line: Line) -> BoxFuture<'static, ()> {
        let (this, key) = (self.clone(), history_key(user));
        let Ok(value) = serde_json::to_string(&bounded(line)) else {
            return Box::pin(std::future::ready(()));
        };
        Box::pin(async move {
            let mut conn = this.connection.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("RPUSH")
                .arg(&key)
                .arg(value)
                .ignore()
                .cmd("LTRIM")
                .arg(&key)
                .arg(-(this.lines.max(1) as i64))
                .arg(-1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(this.ttl.as_millis().max(1) as u64)
                .ignore();
            let sent = tokio::time::timeout(this.timeout, pipe.query_async::<()>(&mut conn)).await;
            if !matches!(sent, Ok(Ok(()))) {
                crate::telemetry::redis_error("history");
            }
        })
    }
}

/// A shared history store.
pub type SharedHistory = Arc<dyn HistoryStore>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::assistant::Role;

    fn line(text: &str) -> Line {
        Line {
            role: Role::User,
            text: text.into(),
        }
    }

    #[actix_rt::test]
    async fn memory_history_is_bounded_per_user_and_in_users() {
        let store = MemoryHistory::new(2, 2);
        for t in ["a", "b", "c"] {
            store.append("u", line(t)).await;
        }
        let texts: Vec<String> = store.load("u").await.into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["b", "c"]);
        assert!(store.load("nobody").await.is_empty());
        store.append("v", line("x")).await;
        store.append("w", line("y")).await;
        assert_eq!(store.users.lock().unwrap().len(), 2);
    }

    #[test]
    fn long_lines_are_cut_at_a_character() {
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = bounded(line(&long));
        assert!(cut.text.len() <= MAX_LINE_BYTES);
        assert!(cut.text.chars().all(|c| c == 'é'));
        let json = serde_json::to_string(&cut).unwrap();
        assert_eq!(serde_json::from_str::<Line>(&json).unwrap(), cut);
    }
}
