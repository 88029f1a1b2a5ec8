//! The assistant: what to answer to a transcript.
//!
//! The offline default keeps a spoken to-do list per authenticated user: add, list, remove,
//! clear. It understands commands from the *text* of a transcript, so "add <any words> to my
//! list" adds those words, and anything that is not a command changes nothing: it gets a short
//! answer saying what the assistant can do. A removal or a clearing heard with low confidence
//! is asked back ("Did you say ...? Say yes or no.") before it is carried out.
//! For the classic pocketsphinx fallback it also hands speech-to-text the JSGF grammar of its
//! commands.

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
    users: Mutex<HashMap<String, UserState>>,
    /// Most items per list, and users kept.
    max_items: usize,
    max_users: usize,
    /// Below this confidence a transcript that would remove or clear asks first.
    confirm_below: f32,
}

/// One user's list, and a change waiting for their yes.
#[derive(Debug, Default)]
struct UserState {
    items: Vec<String>,
    pending: Option<Command>,
}

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

impl Assistant for TodoAssistant {
    fn answer(&self, user: &str, _history: &[Line], said: &Said<'_>) -> AnswerStream {
        let reply = self.reply(user, said);
        let mut events = vec![Ok(AssistantEvent::Delta(reply.text))];
        if let Some(items) = reply.todos {
            events.push(Ok(AssistantEvent::Todos(items)));
        }
        Box::pin(futures_util::stream::iter(events))
    }

    fn todos(&self, user: &str) -> Option<Vec<String>> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Some(users.get(user).map(|u| u.items.clone()).unwrap_or_default())
    }
}

impl TodoAssistant {
    /// An assistant that asks before removing or clearing on a transcript less sure than
    /// `confirm_below` (0 to 1).
    pub fn new(confirm_below: f32) -> TodoAssistant {
        TodoAssistant {
            users: Mutex::new(HashMap::new()),
            max_items: 100,
            max_users: 10_000,
            confirm_below,
        }
    }

    /// Answers one turn at once. Only a command changes the list; a removal or a clearing
    /// heard with low confidence waits for a yes.
    pub fn reply(&self, user: &str, said: &Said<'_>) -> Reply {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if !users.contains_key(user) && users.len() >= self.max_users {
            if let Some(evict) = users.keys().next().cloned() {
                users.remove(&evict);
            }
        }
        let state = users.entry(user.to_owned()).or_default();
        let pending = state.pending.take();
        let text = match (parse(said.text), pending) {
            (Intent::Yes, Some(command)) => self.carry_out(&mut state.items, command),
            (Intent::No, Some(_)) => "Okay, I left your list as it is.".to_owned(),
            (Intent::Command(command), _) => {
                let destructive = matches!(command, Command::Remove(_) | Command::Clear);
                if destructive && said.confidence < self.confirm_below {
                    let question = match &command {
                        Command::Remove(item) => {
                            format!("Did you say remove {item}? Say yes or no.")
                        }
                        _ => "Did you say clear your list? Say yes or no.".to_owned(),
                    };
                    state.pending = Some(command);
                    question
                } else {
                    self.carry_out(&mut state.items, command)
                }
            }
            _ if said.text.trim().is_empty() => NOT_HEARD.to_owned(),
            _ => CAPABILITIES.to_owned(),
        };
        Reply {
            text,
            todos: Some(state.items.clone()),
        }
    }

    fn carry_out(&self, list: &mut Vec<String>, command: Command) -> String {
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

    fn say(a: &TodoAssistant, text: &str) -> String {
        a.reply("u", &Said::certain(text)).text
    }

    #[test]
    fn todo_commands() {
        let a = TodoAssistant::default();
        assert_eq!(
            say(&a, "Add buy milk to my list."),
            "Added buy milk to your list."
        );
        assert_eq!(say(&a, "put bread on my list"), "Added bread to your list.");
        assert_eq!(
            say(&a, "What's on my list?"),
            "Your list has buy milk, and bread."
        );
        assert_eq!(say(&a, "Remove milk."), "Removed buy milk from your list.");
        assert_eq!(say(&a, "remove eggs"), "eggs is not on your list.");
        assert_eq!(a.todos("u"), Some(vec!["bread".to_owned()]));
        assert_eq!(
            a.reply("other", &Said::certain("read my list")).text,
            "Your list is empty."
        );
        assert_eq!(say(&a, "Clear my list."), "Your list is now empty.");
        assert_eq!(say(&a, "hello there"), CAPABILITIES);
    }

    #[test]
    fn free_form_items_land_word_for_word() {
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
            assert_eq!(say(&a, said), format!("Added {item} to your list."));
        }
        // "add" heard as a word that sounds like it, with "to my list" after it.
        assert_eq!(
            say(&a, "I'd pick up the dry cleaning to my list."),
            "Added pick up the dry cleaning to your list."
        );
        assert_eq!(
            say(&a, "at all the plumber about the sink to my list."),
            "Added all the plumber about the sink to your list."
        );
        assert_eq!(say(&a, "And then we went home."), CAPABILITIES);
        assert_eq!(
            say(&a, "And add tea to my list."),
            "Added tea to your list."
        );
        assert_eq!(
            say(&a, "Take oat milk off my list."),
            "Removed oat milk from your list."
        );
        assert_eq!(
            say(&a, "Remove the plumber from my list."),
            "Removed call the plumber about the sink from your list."
        );
    }

    #[test]
    fn what_is_not_a_command_changes_nothing() {
        let a = TodoAssistant::default();
        say(&a, "add milk to my list");
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
            assert_eq!(say(&a, said), CAPABILITIES, "{said}");
        }
        assert_eq!(a.todos("u"), Some(vec!["milk".to_owned()]));
    }

    #[test]
    fn uncertain_removals_and_clears_ask_first() {
        let a = TodoAssistant::new(0.6);
        say(&a, "add milk to my list");
        say(&a, "add eggs to my list");
        let unsure = |text| {
            a.reply(
                "u",
                &Said {
                    text,
                    confidence: 0.4,
                },
            )
            .text
        };
        assert_eq!(
            unsure("clear my list"),
            "Did you say clear your list? Say yes or no."
        );
        assert_eq!(say(&a, "no"), "Okay, I left your list as it is.");
        assert_eq!(a.todos("u").unwrap().len(), 2);
        assert_eq!(
            unsure("remove milk"),
            "Did you say remove milk? Say yes or no."
        );
        assert_eq!(say(&a, "Yes."), "Removed milk from your list.");
        // A question left unanswered is dropped by the next command.
        assert_eq!(
            unsure("clear my list"),
            "Did you say clear your list? Say yes or no."
        );
        assert_eq!(say(&a, "what is on my list"), "Your list has eggs.");
        assert_eq!(say(&a, "yes"), CAPABILITIES);
        assert_eq!(a.todos("u"), Some(vec!["eggs".to_owned()]));
        // Adding is never asked back: it is undone by saying so.
        assert_eq!(
            a.reply(
                "u",
                &Said {
                    text: "add tea to my list",
                    confidence: 0.2
                }
            )
            .text,
            "Added tea to your list."
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
