//! The assistant: what to answer to a transcript.
//!
//! The offline default keeps a spoken to-do list per authenticated user: add, list, remove,
//! clear; it answers in one sentence, and repeats what it heard when it understands nothing.
//! It also hands speech-to-text the JSGF grammar of what it understands, which is what makes
//! offline recognition of its commands reliable.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::Stream;

/// The assistant's answer to one turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// What to say.
    pub text: String,
    /// The user's list after the turn (for the page), when the assistant keeps one.
    pub todos: Option<Vec<String>>,
}

/// Who said a line of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The user.
    User,
    /// The assistant (only what the user heard of it).
    Assistant,
}

/// One line of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// An assistant.
pub trait Assistant: Send + Sync {
    /// Answers `text`, said by `user`, after the conversation `history`.
    fn answer(&self, user: &str, history: &[Line], text: &str) -> AnswerStream;
    /// The user's list, when the assistant keeps one.
    fn todos(&self, user: &str) -> Option<Vec<String>>;
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
    lists: Mutex<HashMap<String, Vec<String>>>,
    /// Most items per list, and users kept.
    max_items: usize,
    max_users: usize,
}

impl Default for TodoAssistant {
    fn default() -> Self {
        TodoAssistant {
            lists: Mutex::new(HashMap::new()),
            max_items: 100,
            max_users: 10_000,
        }
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
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

fn strip_list_words(mut w: &[String]) -> &[String] {
    let filler = [
        "to", "on", "from", "off", "my", "the", "list", "todo", "to-do",
    ];
    while w.last().is_some_and(|x| filler.contains(&x.as_str())) {
        w = &w[..w.len() - 1];
    }
    w
}

fn parse(text: &str) -> Option<Command> {
    let w = words(text);
    let first = w.first()?.as_str();
    let joined = w.join(" ");
    if joined.contains("clear") || joined.contains("empty my list") {
        return Some(Command::Clear);
    }
    if matches!(first, "add" | "put") {
        let item = strip_list_words(&w[1..]).join(" ");
        return (!item.is_empty()).then_some(Command::Add(item));
    }
    if matches!(first, "remove" | "delete" | "drop") {
        let item = strip_list_words(&w[1..]).join(" ");
        return (!item.is_empty()).then_some(Command::Remove(item));
    }
    if joined.contains("on my list")
        || joined.contains("read my list")
        || joined == "list"
        || joined.contains("what is on")
    {
        return Some(Command::List);
    }
    None
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

impl Assistant for TodoAssistant {
    fn answer(&self, user: &str, _history: &[Line], text: &str) -> AnswerStream {
        let reply = self.reply(user, text);
        let mut events = vec![Ok(AssistantEvent::Delta(reply.text))];
        if let Some(items) = reply.todos {
            events.push(Ok(AssistantEvent::Todos(items)));
        }
        Box::pin(futures_util::stream::iter(events))
    }

    fn todos(&self, user: &str) -> Option<Vec<String>> {
        let lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        Some(lists.get(user).cloned().unwrap_or_default())
    }
}

impl TodoAssistant {
    /// Answers one command at once.
    pub fn reply(&self, user: &str, text: &str) -> Reply {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        if !lists.contains_key(user) && lists.len() >= self.max_users {
            if let Some(evict) = lists.keys().next().cloned() {
                lists.remove(&evict);
            }
        }
        let list = lists.entry(user.to_owned()).or_default();
        let text = match parse(text) {
            Some(Command::Add(item)) => {
                if list.len() >= self.max_items {
                    "Your list is full; remove something first.".to_owned()
                } else {
                    let said = format!("Added {item} to your list.");
                    list.push(item);
                    said
                }
            }
            Some(Command::Remove(item)) => {
                let wanted: HashSet<String> = words(&item).into_iter().collect();
                let found = list.iter().position(|x| *x == item).or_else(|| {
                    list.iter()
                        .position(|x| words(x).iter().any(|w| wanted.contains(w)))
                });
                match found {
                    Some(i) => format!("Removed {} from your list.", list.remove(i)),
                    None => format!("{item} is not on your list."),
                }
            }
            Some(Command::List) => say_list(list),
            Some(Command::Clear) => {
                list.clear();
                "Your list is now empty.".to_owned()
            }
            None if text.trim().is_empty() => "I did not catch that.".to_owned(),
            None => format!(
                "I heard: {}. Try add, remove, read or clear my list.",
                text.trim()
            ),
        };
        Reply {
            text,
            todos: Some(list.clone()),
        }
    }

    /// The JSGF grammar of the commands, with items made of `known` words only.
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
             <item> = <word> [<word>] [<word>];\n\
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

    #[test]
    fn todo_commands() {
        let a = TodoAssistant::default();
        assert_eq!(
            a.reply("u", "add buy milk to my list").text,
            "Added buy milk to your list."
        );
        assert_eq!(
            a.reply("u", "put bread on my list").text,
            "Added bread to your list."
        );
        assert_eq!(
            a.reply("u", "what is on my list").text,
            "Your list has buy milk, and bread."
        );
        assert_eq!(
            a.reply("u", "remove milk").text,
            "Removed buy milk from your list."
        );
        assert_eq!(
            a.reply("u", "remove eggs").text,
            "eggs is not on your list."
        );
        assert_eq!(a.todos("u"), Some(vec!["bread".to_owned()]));
        assert_eq!(a.reply("other", "read my list").text, "Your list is empty.");
        assert_eq!(
            a.reply("u", "clear my list").text,
            "Your list is now empty."
        );
        assert_eq!(
            a.reply("u", "hello there").text,
            "I heard: hello there. Try add, remove, read or clear my list."
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
    fn grammar_keeps_known_words() {
        let known: HashSet<String> = ["milk", "bread"].iter().map(|s| s.to_string()).collect();
        let g = TodoAssistant::grammar(&known);
        assert!(g.contains("<word> = bread | milk;"), "{g}");
        assert!(g.starts_with("#JSGF V1.0;"));
    }
}
