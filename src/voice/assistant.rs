//! The assistant: what to answer to a transcript.
//!
//! The offline default keeps a spoken to-do list per authenticated user: add, list, remove,
//! clear. It understands commands from the *text* of a transcript, so "add <any words> to my
//! list" adds those words, and anything that is not a command changes nothing: it gets a short
//! answer saying what the assistant can do. A removal or a clearing heard with low confidence
//! is asked back ("Did you say ...? Say yes or no.") before it is carried out. The lists live
//! in a [`TodoStore`]: this process's memory, or Redis (so a list outlives its node).
//! For the classic pocketsphinx fallback it also hands speech-to-text the JSGF grammar of its
//! commands.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};

use super::todos::{MemoryTodos, Pending, TodoState, TodoStore};

/// The assistant's answer to one turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// What to say.
    pub text: String,
    /// The user's list after the turn (for the page), when the assistant keeps one.
    pub todos: Option<Vec<String>>,
}

/// Who said a line of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user.
    User,
    /// The assistant (only what the user heard of it).
    Assistant,
}

/// One line of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub text: String,
}

/// What an answer streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssistantEvent {
    /// More of the answer's text.
    Delta(String),
    /// The user's to-do list changed.
    Todos(Vec<String>),
}

/// An answer in progress (polled on the pipeline's worker thread).
pub type AnswerStream = Pin<Box<dyn Stream<Item = Result<AssistantEvent, String>>>>;

/// What the user said in one turn.
#[derive(Debug, Clone, Copy)]
pub struct Said<'a> {
    /// The words.
    pub text: &'a str,
    /// How sure speech-to-text is of them, 0 to 1 (1 for typed text).
    pub confidence: f32,
}

impl<'a> Said<'a> {
    /// Words the user typed, or that no engine scored.
    pub fn certain(text: &'a str) -> Said<'a> {
        Said {
            text,
            confidence: 1.0,
        }
    }
}

/// An assistant.
pub trait Assistant: Send + Sync {
    /// Answers what `user` said, after the conversation `history`.
    fn answer(&self, user: &str, history: &[Line], said: &Said<'_>) -> AnswerStream;
    /// The user's list, when the assistant keeps one.
    fn todos(&self, user: &str) -> Option<BoxFuture<'static, Vec<String>>>;
}

/// Everyday words the grammar accepts as list items (kept to those in the decoder's
/// dictionary at start).
pub const ITEM_WORDS: &[&str] = &[
    "milk",
    "bread",
    "eggs",
    "butter",
    "cheese",
    "apples",
    "apple",
    "bananas",
    "banana",
    "oranges",
    "coffee",
    "tea",
    "sugar",
    "salt",
    "pepper",
    "rice",
    "pasta",
    "beans",
    "soup",
    "water",
    "juice",
    "beer",
    "wine",
    "chicken",
    "beef",
    "fish",
    "pork",
    "ham",
    "bacon",
    "onions",
    "potatoes",
    "tomatoes",
    "carrots",
    "lettuce",
    "garlic",
    "flour",
    "oil",
    "cereal",
    "yogurt",
    "cream",
    "honey",
    "jam",
    "chocolate",
    "cookies",
    "cake",
    "pizza",
    "lemons",
    "grapes",
    "berries",
    "soap",
    "shampoo",
    "toothpaste",
    "paper",
    "towels",
    "batteries",
    "stamps",
    "flowers",
    "buy",
    "call",
    "mom",
    "dad",
    "dog",
    "cat",
    "food",
    "laundry",
    "dishes",
    "groceries",
    "gift",
    "book",
    "tickets",
    "car",
    "wash",
    "bills",
    "clean",
    "kitchen",
    "fix",
    "bike",
    "walk",
    "doctor",
    "dentist",
    "meeting",
    "plan",
    "plants",
    "letter",
    "package",
    "kids",
    "homework",
];

/// The built-in to-do assistant.
pub struct TodoAssistant {
    store: Arc<dyn TodoStore>,
    rules: Rules,
}

/// How the assistant changes a list.
#[derive(Debug, Clone, Copy)]
struct Rules {
    /// Most items per list.
    max_items: usize,
    /// Below this confidence a transcript that would remove or clear asks first.
    confirm_below: f32,
}

/// Users whose lists the in-process store keeps.
const MEMORY_USERS: usize = 10_000;

impl Default for TodoAssistant {
    fn default() -> Self {
        TodoAssistant::new(0.6)
    }
}

/// Words of a transcript: lower case, punctuation gone (apostrophes and inner hyphens kept).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .map(|w| w.trim_matches(|c| c == '\'' || c == '-'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A command, as understood.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Add(String),
    Remove(String),
    List,
    Clear,
}

/// What a transcript asks of the assistant.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Intent {
    Command(Command),
    Yes,
    No,
    /// Not something the list understands.
    Other,
}

/// Words said around a command that change nothing in it.
const POLITE_START: &[&str] = &[
    "please", "ok", "okay", "hey", "so", "now", "um", "uh", "could", "can", "would", "will", "you",
];
const POLITE_END: &[&str] = &["please", "thanks", "now"];

fn trim_polite(mut w: &[String]) -> &[String] {
    while w
        .first()
        .is_some_and(|x| POLITE_START.contains(&x.as_str()))
    {
        w = &w[1..];
    }
    while w.last().is_some_and(|x| POLITE_END.contains(&x.as_str())) {
        w = &w[..w.len() - 1];
    }
    if w.len() >= 2 && w[w.len() - 2] == "thank" && w[w.len() - 1] == "you" {
        w = &w[..w.len() - 2];
    }
    w
}

/// `w` ends with "(to|on|from|off|onto) (my|the) [to-do|todo|shopping] list": the words
/// before that, and the preposition.
fn before_list<'a>(w: &'a [String], prepositions: &[&str]) -> Option<(&'a [String], &'a str)> {
    let n = w.len();
    if n < 3 || w[n - 1] != "list" {
        return None;
    }
    let mut i = n - 1;
    if matches!(w[i - 1].as_str(), "to-do" | "todo" | "shopping") {
        i -= 1;
    } else if i >= 3 && w[i - 2] == "to" && w[i - 1] == "do" {
        i -= 2;
    }
    if i < 2 || !matches!(w[i - 1].as_str(), "my" | "the") {
        return None;
    }
    let prep = w[i - 2].as_str();
    prepositions.contains(&prep).then(|| (&w[..i - 2], prep))
}

const ITEM_BOUNDARIES: &[&str] = &["to", "on", "onto", "into", "in", "from", "off", "for"];

fn parse(text: &str) -> Intent {
    let all = words(text);
    let w = trim_polite(&all);
    let joined = w.join(" ");
    match joined.as_str() {
        "yes" | "yeah" | "yep" | "sure" | "yes do it" | "do it" | "correct" | "confirm"
        | "yes please" | "that's right" | "go ahead" => return Intent::Yes,
        "no" | "nope" | "cancel" | "don't" | "no thanks" | "no don't" | "never mind" | "stop" => {
            return Intent::No
        }
        "what's on my list"
        | "what is on my list"
        | "what's on the list"
        | "what is on the list"
        | "read my list"
        | "read me my list"
        | "read the list"
        | "read out my list"
        | "show my list"
        | "list"
        | "my list"
        | "what do i have on my list"
        | "what's on my to-do list"
        | "what is on my to-do list"
        | "what's on my shopping list"
        | "what is on my shopping list" => return Intent::Command(Command::List),
        _ => {}
    }
    let Some(first) = w.first().map(String::as_str) else {
        return Intent::Other;
    };
    let rest = &w[1..];
    let item = |words: &[String]| {
        let item = words.join(" ");
        if item.is_empty() {
            Intent::Other
        } else {
            Intent::Command(match first {
                "add" | "put" => Command::Add(item),
                _ => Command::Remove(item),
            })
        }
    };
    match first {
        "clear" | "empty" | "erase" | "wipe" => {
            // "clear my list", "clear the shopping list", "clear everything on my list"
            let target = rest.join(" ");
            let list = before_list(w, &["on", "from"]).is_some()
                || matches!(rest, [a, b] if matches!(a.as_str(), "my" | "the") && b == "list")
                || matches!(rest, [a, b, c] if matches!(a.as_str(), "my" | "the")
                    && matches!(b.as_str(), "to-do" | "todo" | "shopping") && c == "list")
                || target == "list"
                || target == "everything";
            if list {
                Intent::Command(Command::Clear)
            } else {
                Intent::Other
            }
        }
        // "add" said quickly at the start of an utterance is often heard as one of these;
        // with "... to my list" after it, nothing else was meant.
        // ("and add milk to my list" is "add milk to my list".)
        "and" if rest.first().is_some_and(|w| w == "add" || w == "put") => parse(&rest.join(" ")),
        "at" | "and" | "i'd" | "ad" | "had" | "odd" => match before_list(rest, &["to"]) {
            Some((words, _)) if !words.is_empty() => Intent::Command(Command::Add(words.join(" "))),
            _ => Intent::Other,
        },
        "add" | "put" => match before_list(rest, &["to", "on", "onto"]) {
            Some((words, _)) => item(words),
            // "add milk": nothing says where, so the list; "add salt to the soup" is not
            // about the list.
            None if first == "add"
                && !rest.iter().any(|x| ITEM_BOUNDARIES.contains(&x.as_str())) =>
            {
                item(rest)
            }
            None => Intent::Other,
        },
        "remove" | "delete" | "take" | "cross" | "scratch" => {
            match before_list(rest, &["from", "off", "on"]) {
                Some((words, _)) => {
                    let words = match words.last().map(String::as_str) {
                        // "take milk off my list", "cross milk off the list"
                        Some("off") | Some("out") => &words[..words.len() - 1],
                        _ => words,
                    };
                    item(words)
                }
                None if matches!(first, "remove" | "delete")
                    && !rest.iter().any(|x| ITEM_BOUNDARIES.contains(&x.as_str())) =>
                {
                    item(rest)
                }
                None => Intent::Other,
            }
        }
        _ => Intent::Other,
    }
}

fn say_list(items: &[String]) -> String {
    match items {
        [] => "Your list is empty.".to_owned(),
        [one] => format!("Your list has {one}."),
        more => {
            let (last, rest) = more.split_last().unwrap_or((&more[0], &[]));
            format!("Your list has {}, and {last}.", rest.join(", "))
        }
    }
}

/// Words that say nothing about which item is meant.
const NOT_ITEM_WORDS: &[&str] = &["the", "a", "an", "some", "my", "of", "and", "to", "for"];

/// The item of `items` that `wanted` names: the same words, or failing that the first that
/// shares a meaningful word with it.
fn find_item(items: &[String], wanted: &str) -> Option<usize> {
    let strip = |w: Vec<String>| -> Vec<String> {
        w.into_iter()
            .filter(|x| !NOT_ITEM_WORDS.contains(&x.as_str()))
            .collect()
    };
    let want = strip(words(wanted));
    items
        .iter()
        .position(|x| strip(words(x)) == want)
        .or_else(|| {
            items
                .iter()
                .position(|x| strip(words(x)).iter().any(|w| want.contains(w)))
        })
}

/// What the assistant says when speech recognition heard nothing it could trust.
pub const NOT_HEARD: &str = "Sorry, I did not catch that.";

/// What the assistant says when the words are not a command.
pub const CAPABILITIES: &str =
    "I keep your list. Say add, then what to add, to my list; what is on my list; remove, then \
     the item; or clear my list.";

/// What the assistant says when the store of lists does not answer.
pub const UNREACHABLE: &str = "Sorry, I cannot reach your list right now. Please try again.";

impl Assistant for TodoAssistant {
    fn answer(&self, user: &str, _history: &[Line], said: &Said<'_>) -> AnswerStream {
        let (store, rules) = (self.store.clone(), self.rules);
        let (user, text, confidence) = (user.to_owned(), said.text.to_owned(), said.confidence);
        // What the user asked for happens whether or not its answer is heard (a newer answer
        // may replace this one before it is spoken, and a replaced answer's stream is
        // dropped): the change runs on a task of its own, started now, in the order the turns
        // came in.
        let (done, result) = tokio::sync::oneshot::channel();
        actix_rt::spawn(async move {
            let _ = done.send(reply(store.as_ref(), rules, &user, &text, confidence).await);
        });
        let reply = async move {
            result.await.unwrap_or_else(|_| Reply {
                text: UNREACHABLE.to_owned(),
                todos: None,
            })
        };
        Box::pin(futures_util::stream::once(reply).flat_map(|reply| {
            let mut events = vec![Ok(AssistantEvent::Delta(reply.text))];
            if let Some(items) = reply.todos {
                events.push(Ok(AssistantEvent::Todos(items)));
            }
            futures_util::stream::iter(events)
        }))
    }

    fn todos(&self, user: &str) -> Option<BoxFuture<'static, Vec<String>>> {
        let (store, user) = (self.store.clone(), user.to_owned());
        Some(Box::pin(async move {
            store.items(&user).await.unwrap_or_default()
        }))
    }
}

/// Answers one turn: only a command changes the list; a removal or a clearing heard with low
/// confidence waits for a yes. The change is applied by the store, atomically.
async fn reply(
    store: &dyn TodoStore,
    rules: Rules,
    user: &str,
    text: &str,
    confidence: f32,
) -> Reply {
    let intent = parse(text);
    let change = |state: &mut TodoState| rules.decide(state, &intent, text, confidence);
    match store.update(user, &change).await {
        Ok((text, items)) => Reply {
            text,
            todos: Some(items),
        },
        Err(_) => Reply {
            text: UNREACHABLE.to_owned(),
            todos: None,
        },
    }
}

impl Rules {
    /// What the turn does to `state`, and what to say about it.
    fn decide(self, state: &mut TodoState, intent: &Intent, text: &str, confidence: f32) -> String {
        let pending = state.pending.take();
        match (intent, pending) {
            (Intent::Yes, Some(pending)) => {
                let command = match pending {
                    Pending::Remove(item) => Command::Remove(item),
                    Pending::Clear => Command::Clear,
                };
                self.carry_out(&mut state.items, command)
            }
            (Intent::No, Some(_)) => "Okay, I left your list as it is.".to_owned(),
            (Intent::Command(command), _) => {
                let ask = match command {
                    Command::Remove(item) => Some(Pending::Remove(item.clone())),
                    Command::Clear => Some(Pending::Clear),
                    _ => None,
                };
                match ask {
                    Some(pending) if confidence < self.confirm_below => {
                        let question = match &pending {
                            Pending::Remove(item) => {
                                format!("Did you say remove {item}? Say yes or no.")
                            }
                            Pending::Clear => {
                                "Did you say clear your list? Say yes or no.".to_owned()
                            }
                        };
                        state.pending = Some(pending);
                        question
                    }
                    _ => self.carry_out(&mut state.items, command.clone()),
                }
            }
            _ if text.trim().is_empty() => NOT_HEARD.to_owned(),
            _ => CAPABILITIES.to_owned(),
        }
    }

    fn carry_out(self, list: &mut Vec<String>, command: Command) -> String {
        match command {
            Command::Add(item) => {
                if list.len() >= self.max_items {
                    "Your list is full; remove something first.".to_owned()
                } else {
                    let said = format!("Added {item} to your list.");
                    list.push(item);
                    said
                }
            }
            Command::Remove(item) => match find_item(list, &item) {
                Some(i) => format!("Removed {} from your list.", list.remove(i)),
                None => format!("{item} is not on your list."),
            },
            Command::List => say_list(list),
            Command::Clear => {
                list.clear();
                "Your list is now empty.".to_owned()
            }
        }
    }
}

impl TodoAssistant {
    /// An assistant with its lists in this process, that asks before removing or clearing on
    /// a transcript less sure than `confirm_below` (0 to 1).
    pub fn new(confirm_below: f32) -> TodoAssistant {
        TodoAssistant::with_store(confirm_below, Arc::new(MemoryTodos::new(MEMORY_USERS)))
    }

    /// The same, with its lists in `store`.
    pub fn with_store(confirm_below: f32, store: Arc<dyn TodoStore>) -> TodoAssistant {
        TodoAssistant {
            store,
            rules: Rules {
                max_items: 100,
                confirm_below,
            },
        }
    }

    /// Answers one turn (what [`Assistant::answer`] streams).
    pub async fn reply(&self, user: &str, said: &Said<'_>) -> Reply {
        reply(
            self.store.as_ref(),
            self.rules,
            user,
            said.text,
            said.confidence,
        )
        .await
    }

    /// Readings close to `reading` (a command in [`TodoAssistant::grammar`]) that the
    /// grammar's decoder tends to pass over: the same command with one of its item's words
    /// left out. pocketsphinx slips a short word into an item more often than it drops one
    /// (kal16's "add buy milk" decoded as "add buy eggs milk", the words said not among its
    /// next readings). None for a command without an item of two words or more.
    pub fn shorter_readings(reading: &str) -> Vec<String> {
        let words: Vec<&str> = reading.split_whitespace().collect();
        if !matches!(words.first(), Some(&"add" | &"remove")) {
            return Vec::new();
        }
        let end = words
            .iter()
            .position(|w| matches!(*w, "to" | "from"))
            .unwrap_or(words.len());
        if end < 3 {
            return Vec::new();
        }
        (1..end)
            .filter_map(|left_out| {
                let shorter: Vec<&str> = words
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != left_out)
                    .map(|(_, w)| *w)
                    .collect();
                // An item starts and ends with a word, not "and".
                let item = &shorter[1..end - 1];
                (item.first() != Some(&"and") && item.last() != Some(&"and"))
                    .then(|| shorter.join(" "))
            })
            .collect()
    }

    /// The JSGF grammar of the commands, with items made of `known` words only: one to
    /// three words, "and" between two of them ("add milk and eggs").
    pub fn grammar(known: &HashSet<String>) -> String {
        let mut items: Vec<&str> = ITEM_WORDS
            .iter()
            .copied()
            .filter(|w| known.contains(*w))
            .collect();
        items.sort_unstable();
        items.dedup();
        let item_words = if items.is_empty() {
            "milk".to_owned()
        } else {
            items.join(" | ")
        };
        format!(
            "#JSGF V1.0;\ngrammar commands;\n\
             public <command> = <add> | <remove> | <list> | <clear>;\n\
             <item> = <word> [[and] <word>] [[and] <word>];\n\
             <word> = {item_words};\n\
             <add> = add <item> [to [my] list];\n\
             <remove> = remove <item> [from [my] list];\n\
             <list> = what is on my list | read my list;\n\
             <clear> = clear [my] list;\n"
        )
    }
}

/// A shared assistant.
pub type SharedAssistant = Arc<dyn Assistant>;

/// Splits streamed text into sentences as they complete, so speech can start with the first.
#[derive(Debug, Default)]
pub struct Sentences {
    pending: String,
}

impl Sentences {
    /// Adds text; returns the sentences it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.pending.push_str(text);
        let mut done = Vec::new();
        loop {
            let end = self.pending.char_indices().find_map(|(i, c)| {
                let next = self.pending[i + c.len_utf8()..].chars().next();
                (matches!(c, '.' | '!' | '?') && next.is_some_and(char::is_whitespace))
                    .then_some(i + c.len_utf8())
            });
            let Some(end) = end else { break };
            let sentence: String = self.pending.drain(..end).collect();
            if !sentence.trim().is_empty() {
                done.push(sentence.trim().to_owned());
            }
        }
        done
    }

    /// The rest, at the end of the answer.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        (!rest.trim().is_empty()).then(|| rest.trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn say(a: &TodoAssistant, text: &str) -> String {
        a.reply("u", &Said::certain(text)).await.text
    }

    async fn todos(a: &TodoAssistant, user: &str) -> Vec<String> {
        a.todos(user).expect("a list").await
    }

    #[actix_rt::test]
    async fn todo_commands() {
        let a = TodoAssistant::default();
        assert_eq!(
            say(&a, "Add buy milk to my list.").await,
            "Added buy milk to your list."
        );
        assert_eq!(
            say(&a, "put bread on my list").await,
            "Added bread to your list."
        );
        assert_eq!(
            say(&a, "What's on my list?").await,
            "Your list has buy milk, and bread."
        );
        assert_eq!(
            say(&a, "Remove milk.").await,
            "Removed buy milk from your list."
        );
        assert_eq!(say(&a, "remove eggs").await, "eggs is not on your list.");
        assert_eq!(todos(&a, "u").await, vec!["bread".to_owned()]);
        assert_eq!(
            a.reply("other", &Said::certain("read my list")).await.text,
            "Your list is empty."
        );
        assert_eq!(say(&a, "Clear my list.").await, "Your list is now empty.");
        assert_eq!(say(&a, "hello there").await, CAPABILITIES);
    }

    #[actix_rt::test]
    async fn free_form_items_land_word_for_word() {
        let a = TodoAssistant::default();
        for (said, item) in [
            (
                "Add call the plumber about the sink to my list.",
                "call the plumber about the sink",
            ),
            (
                "Please add renew my passport to my to-do list.",
                "renew my passport",
            ),
            ("add pick up the dry cleaning", "pick up the dry cleaning"),
            ("Put oat milk on the shopping list, please.", "oat milk"),
        ] {
            assert_eq!(say(&a, said).await, format!("Added {item} to your list."));
        }
        // "add" heard as a word that sounds like it, with "to my list" after it.
        assert_eq!(
            say(&a, "I'd pick up the dry cleaning to my list.").await,
            "Added pick up the dry cleaning to your list."
        );
        assert_eq!(
            say(&a, "at all the plumber about the sink to my list.").await,
            "Added all the plumber about the sink to your list."
        );
        assert_eq!(say(&a, "And then we went home.").await, CAPABILITIES);
        assert_eq!(
            say(&a, "And add tea to my list.").await,
            "Added tea to your list."
        );
        assert_eq!(
            say(&a, "Take oat milk off my list.").await,
            "Removed oat milk from your list."
        );
        assert_eq!(
            say(&a, "Remove the plumber from my list.").await,
            "Removed call the plumber about the sink from your list."
        );
    }

    #[actix_rt::test]
    async fn what_is_not_a_command_changes_nothing() {
        let a = TodoAssistant::default();
        say(&a, "add milk to my list").await;
        for said in [
            "The train to the airport leaves every twenty minutes.",
            "Please turn the music down a little.",
            "The sky is clear today.",
            "Add some salt to the soup.",
            "I need to remove the stain from my shirt.",
            "Delete that email from my boss.",
            "Put the kettle on.",
            "What is the weather like?",
            "My list of reasons is long.",
            "Yes.",
        ] {
            assert_eq!(say(&a, said).await, CAPABILITIES, "{said}");
        }
        assert_eq!(todos(&a, "u").await, vec!["milk".to_owned()]);
    }

    #[actix_rt::test]
    async fn uncertain_removals_and_clears_ask_first() {
        let a = TodoAssistant::new(0.6);
        say(&a, "add milk to my list").await;
        say(&a, "add eggs to my list").await;
        let unsure = |text| {
            let a = &a;
            async move {
                a.reply(
                    "u",
                    &Said {
                        text,
                        confidence: 0.4,
                    },
                )
                .await
                .text
            }
        };
        assert_eq!(
            unsure("clear my list").await,
            "Did you say clear your list? Say yes or no."
        );
        assert_eq!(say(&a, "no").await, "Okay, I left your list as it is.");
        assert_eq!(todos(&a, "u").await.len(), 2);
        assert_eq!(
            unsure("remove milk").await,
            "Did you say remove milk? Say yes or no."
        );
        assert_eq!(say(&a, "Yes.").await, "Removed milk from your list.");
        // A question left unanswered is dropped by the next command.
        assert_eq!(
            unsure("clear my list").await,
            "Did you say clear your list? Say yes or no."
        );
        assert_eq!(say(&a, "what is on my list").await, "Your list has eggs.");
        assert_eq!(say(&a, "yes").await, CAPABILITIES);
        assert_eq!(todos(&a, "u").await, vec!["eggs".to_owned()]);
        // Adding is never asked back: it is undone by saying so.
        assert_eq!(
            a.reply(
                "u",
                &Said {
                    text: "add tea to my list",
                    confidence: 0.2
                }
            )
            .await
            .text,
            "Added tea to your list."
        );
    }

    #[actix_rt::test]
    async fn a_command_lands_even_when_its_answer_is_dropped_unheard() {
        let a = TodoAssistant::default();
        let mut streams: Vec<AnswerStream> = ["add milk to my list", "add eggs to my list"]
            .into_iter()
            .map(|text| a.answer("u", &[], &Said::certain(text)))
            .collect();
        let last = streams.pop().unwrap();
        // The first answer is replaced before it is ever polled.
        drop(streams);
        let events: Vec<_> = last.collect().await;
        assert_eq!(
            events.last(),
            Some(&Ok(AssistantEvent::Todos(vec![
                "milk".into(),
                "eggs".into()
            ])))
        );
    }

    #[test]
    fn sentences_complete_as_text_streams() {
        let mut s = Sentences::default();
        assert!(s.push("Hello the").is_empty());
        assert_eq!(s.push("re. How are"), vec!["Hello there."]);
        assert_eq!(s.push(" you? Fine! 3.5 is"), vec!["How are you?", "Fine!"]);
        assert_eq!(s.finish(), Some("3.5 is".to_owned()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn shorter_readings_leave_out_one_item_word() {
        assert_eq!(
            TodoAssistant::shorter_readings("add buy eggs milk to my list"),
            [
                "add eggs milk to my list",
                "add buy milk to my list",
                "add buy eggs to my list"
            ]
        );
        assert_eq!(
            TodoAssistant::shorter_readings("remove milk and eggs"),
            ["remove milk eggs"]
        );
        assert!(TodoAssistant::shorter_readings("add milk to my list").is_empty());
        assert!(TodoAssistant::shorter_readings("clear my list").is_empty());
        assert!(TodoAssistant::shorter_readings("what is on my list").is_empty());
        assert!(TodoAssistant::shorter_readings("").is_empty());
    }

    #[test]
    fn grammar_keeps_known_words() {
        let known: HashSet<String> = ["milk", "bread"].iter().map(|s| s.to_string()).collect();
        let g = TodoAssistant::grammar(&known);
        assert!(g.contains("<word> = bread | milk;"), "{g}");
        assert!(g.starts_with("#JSGF V1.0;"));
    }
}
