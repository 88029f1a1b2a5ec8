//! Where each user's to-do list lives: in this process by default, in Redis when configured,
//! so that a list outlives the node that heard it (a socket that reconnects to another node
//! finds it there).
//!
//! A change is a function of the user's state that the store applies atomically: in memory
//! under one lock; in Redis as a compare-and-set (one Lua script compares the stored value
//! with the one the change was computed from) tried again on the fresh state when another
//! node changed it first. So two nodes changing one list at once lose neither change.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::auth::Unavailable;

/// One user's to-do state: the list, and a change that waits for their yes.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TodoState {
    /// The items, oldest first.
    pub items: Vec<String>,
    /// A removal or clearing asked back, carried out on "yes".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// A change asked back before it is carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    /// Remove the item named so.
    Remove(String),
    /// Clear the list.
    Clear,
}

/// A change to a user's state, returning what to say about it. It may run more than once,
/// each time on the latest state, so it must depend on nothing but its argument.
pub type Change<'a> = &'a (dyn Fn(&mut TodoState) -> String + Sync);

/// Where to-do lists are kept.
pub trait TodoStore: Send + Sync {
    /// Applies `change` to `user`'s state atomically; returns what it said and the items
    /// after it.
    fn update<'a>(
        &'a self,
        user: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<(String, Vec<String>), Unavailable>>;

    /// `user`'s items.
    fn items<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, Unavailable>>;
}

/// Lists in this process, for at most `max_users` users (a new user beyond that evicts one).
pub struct MemoryTodos {
    users: Mutex<HashMap<String, TodoState>>,
    max_users: usize,
}

impl MemoryTodos {
    /// Lists for at most `max_users` users.
    pub fn new(max_users: usize) -> MemoryTodos {
        MemoryTodos {
            users: Mutex::new(HashMap::new()),
            max_users: max_users.max(1),
        }
    }
}

/// `user`'s entry in a map of at most `max` users: a new user beyond that evicts one.
pub(crate) fn bounded_entry<'m, V: Default>(
    users: &'m mut HashMap<String, V>,
    user: &str,
    max: usize,
) -> &'m mut V {
    if !users.contains_key(user) && users.len() >= max {
        if let Some(evict) = users.keys().next().cloned() {
            users.remove(&evict);
        }
    }
    users.entry(user.to_owned()).or_default()
}

impl TodoStore for MemoryTodos {
    fn update<'a>(
        &'a self,
        user: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<(String, Vec<String>), Unavailable>> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let state = bounded_entry(&mut users, user, self.max_users);
        let said = change(state);
        let items = state.items.clone();
        Box::pin(std::future::ready(Ok((said, items))))
    }

    fn items<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, Unavailable>> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let items = users.get(user).map(|s| s.items.clone()).unwrap_or_default();
        Box::pin(std::future::ready(Ok(items)))
    }
}

/// Lists in Redis: one JSON value per user, `voxio:todos:<user>`, that expires `ttl` after
/// its last change.
#[derive(Clone)]
pub struct RedisTodos {
    /// The shared connection.
    pub connection: redis::aio::ConnectionManager,
    /// How long one command may take.
    pub timeout: Duration,
    /// How long a list is kept after its last change.
    pub ttl: Duration,
}

/// Times a change is computed again after another change to the same list came first; each
/// time after a random wait of up to 2^try ms (at most [`CAS_MAX_WAIT_MS`]), so that changes
/// racing for one list spread out instead of colliding again.
const CAS_TRIES: u32 = 16;
const CAS_MAX_WAIT_MS: u64 = 64;

/// Sets KEYS[1] to ARGV[2] (expiring in ARGV[3] ms) if it still holds ARGV[1] ("" for none);
/// 1 if it did.
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

fn todos_key(user: &str) -> String {
    format!("voxio:todos:{user}")
}

impl RedisTodos {
    async fn get(&self, key: &str) -> Result<Option<String>, Unavailable> {
        let mut conn = self.connection.clone();
        let mut command = redis::cmd("GET");
        command.arg(key);
        tokio::time::timeout(self.timeout, command.query_async(&mut conn))
            .await
            .map_err(|_| Unavailable)?
            .map_err(|_| Unavailable)
    }
}

/// A stored value as state: what cannot be read is an empty list (it is then overwritten).
fn parse(stored: Option<&str>) -> TodoState {
    stored
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

impl TodoStore for RedisTodos {
    fn update<'a>(
        &'a self,
        user: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<(String, Vec<String>), Unavailable>> {
        Box::pin(async move {
            let key = todos_key(user);
            let script = redis::Script::new(COMPARE_AND_SET);
            for attempt in 0..CAS_TRIES {
                if attempt > 0 {
                    let most = (1u64 << attempt.min(6)).min(CAS_MAX_WAIT_MS);
                    let wait = rand::random_range(0..=most);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                let stored = self.get(&key).await?;
                let mut state = parse(stored.as_deref());
                let said = change(&mut state);
                let value = serde_json::to_string(&state).map_err(|_| Unavailable)?;
                let mut conn = self.connection.clone();
                let mut invocation = script.key(&key);
                invocation
                    .arg(stored.as_deref().unwrap_or(""))
                    .arg(&value)
                    .arg(self.ttl.as_millis().max(1) as u64);
                let set: i64 =
                    tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                        .await
                        .map_err(|_| Unavailable)?
                        .map_err(|_| Unavailable)?;
                if set == 1 {
                    return Ok((said, state.items));
                }
            }
            // Changed by others every time: as good as unreachable for this turn.
            Err(Unavailable)
        })
    }

    fn items<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, Unavailable>> {
        Box::pin(async move {
            let stored = self.get(&todos_key(user)).await?;
            Ok(parse(stored.as_deref()).items)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn memory_changes_apply_and_users_are_bounded() {
        let store = MemoryTodos::new(2);
        let add = |item: &'static str| {
            move |s: &mut TodoState| {
                s.items.push(item.into());
                format!("added {item}")
            }
        };
        let milk = add("milk");
        assert_eq!(
            store.update("a", &milk).await,
            Ok(("added milk".into(), vec!["milk".into()]))
        );
        assert_eq!(store.items("a").await, Ok(vec!["milk".to_owned()]));
        assert_eq!(store.items("nobody").await, Ok(vec![]));
        let eggs = add("eggs");
        store.update("b", &eggs).await.unwrap();
        store.update("c", &eggs).await.unwrap();
        assert_eq!(store.users.lock().unwrap().len(), 2);
    }

    #[test]
    fn state_round_trips_and_bad_values_are_empty() {
        let state = TodoState {
            items: vec!["milk".into()],
            pending: Some(Pending::Remove("milk".into())),
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(parse(Some(&json)), state);
        assert_eq!(parse(Some("not json")), TodoState::default());
        assert_eq!(parse(None), TodoState::default());
        assert_eq!(
            serde_json::to_string(&TodoState::default()).unwrap(),
            r#"{"items":[]}"#
        );
    }
}
