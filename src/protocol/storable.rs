//! What the database can store, checked at the door: every room id, event name, user id and
//! JSON value that enters (socket requests, the CONNECT identity, the HTTP API, the
//! configuration) passes these checks, so that nothing accepted can later fail a batch write.
//!
//! - Room ids: 1 to [`MAX_ROOM_ID`] bytes of UTF-8, no control characters, no leading or
//!   trailing whitespace.
//! - Event names: 1 to [`MAX_EVENT_NAME`] bytes, the same alphabet.
//! - User ids (an event's `from`): 1 to [`MAX_USER_ID`] bytes, no control characters.
//! - JSON (`data`, `meta`): no NUL character (`\u0000`) in any string or object key, at any
//!   depth (PostgreSQL `jsonb` cannot hold one).
//!
//! Every refusal is an `INVALID_REQUEST` whose message names the field, the rule and shows
//! the offending value escaped and truncated.

use crate::error::DialogueError;
use serde_json::Value;
use std::fmt::Write as _;

/// Longest room id, in bytes of UTF-8 (the `messages.room_id` column).
pub const MAX_ROOM_ID: usize = 255;
/// Longest event name, in bytes of UTF-8 (the `messages.event_name` column).
pub const MAX_EVENT_NAME: usize = 100;
/// Longest user id (an event's `from`), in bytes of UTF-8 (the `messages.from_user` column).
pub const MAX_USER_ID: usize = 255;
/// Shortest id of any kind, in bytes.
pub const MIN_ID_LEN: usize = 1;

/// How a JSON text spells a NUL character: the only way one can reach a parsed value
/// (JSON forbids raw control characters in strings). A frame without these 6 bytes cannot
/// carry a NUL, so its values need not be walked.
pub const NUL_ESCAPE: &str = "\\u0000";

/// Characters of an offending value shown in a message.
const SHOWN_CHARS: usize = 40;

/// The rules of one kind of id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRule {
    /// What it is, with its article, for messages ("a room id").
    pub what: &'static str,
    /// Longest, in bytes of UTF-8.
    pub max_bytes: usize,
    /// Leading or trailing whitespace is refused.
    pub trimmed: bool,
}

/// Room ids.
pub const ROOM_ID: IdRule = IdRule {
    what: "a room id",
    max_bytes: MAX_ROOM_ID,
    trimmed: true,
};
/// Event names.
pub const EVENT_NAME: IdRule = IdRule {
    what: "an event name",
    max_bytes: MAX_EVENT_NAME,
    trimmed: true,
};
/// User ids.
pub const USER_ID: IdRule = IdRule {
    what: "a user id",
    max_bytes: MAX_USER_ID,
    trimmed: false,
};

impl IdRule {
    /// Checks `value`, naming it `field` in the error (e.g. `roomId`, `from`).
    pub fn check(&self, field: &str, value: &str) -> Result<(), DialogueError> {
        self.problem(value).map_or(Ok(()), |rule| {
            Err(DialogueError::invalid(format!("{field} {rule}")))
        })
    }

    /// What is wrong with `value`, as the end of a sentence starting with the field name;
    /// `None` if it passes. Also used for configuration keys.
    pub fn problem(&self, value: &str) -> Option<String> {
        let len = value.len();
        if len < MIN_ID_LEN {
            return Some(format!(
                "must not be empty ({} is {MIN_ID_LEN} to {} bytes of UTF-8)",
                self.what, self.max_bytes
            ));
        }
        if len > self.max_bytes {
            return Some(format!(
                "is {len} bytes, {}; {} is {MIN_ID_LEN} to {} bytes of UTF-8",
                shown(value),
                self.what,
                self.max_bytes
            ));
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Some(format!(
                "{} contains the control character U+{:04X}{}; {} may not contain control characters",
                shown(value),
                c as u32,
                if c == '\0' { " (NUL)" } else { "" },
                self.what
            ));
        }
        if self.trimmed && value.trim() != value {
            return Some(format!(
                "{} has leading or trailing whitespace, which {} may not have",
                shown(value),
                self.what
            ));
        }
        None
    }
}

/// A room id from a request's `roomId`.
pub fn check_room_id(value: &str) -> Result<(), DialogueError> {
    ROOM_ID.check("roomId", value)
}

/// An event name from a request's `event`.
pub fn check_event_name(value: &str) -> Result<(), DialogueError> {
    EVENT_NAME.check("event", value)
}

/// A user id: an event's `from`.
pub fn check_user_id(value: &str) -> Result<(), DialogueError> {
    USER_ID.check("userId", value)
}

/// Free text stored or shown with a room (a name, a description): no NUL character.
pub fn check_text(field: &str, value: &str) -> Result<(), DialogueError> {
    if value.as_bytes().contains(&0) {
        return Err(DialogueError::invalid(format!(
            "{field} {} contains a NUL character (\\u0000), which cannot be stored",
            shown(value)
        )));
    }
    Ok(())
}

/// Refuses a NUL character in any string or object key of `value`, at any depth; the error
/// names the JSON pointer below `field` (`data/items/3/text`). Allocates nothing when the
/// value passes.
pub fn check_json(field: &str, value: &Value) -> Result<(), DialogueError> {
    let Some(found) = find_nul(value) else {
        return Ok(());
    };
    let mut pointer = String::from(field);
    // Segments were collected from the innermost outwards.
    for segment in found.path.iter().rev() {
        pointer.push('/');
        match segment {
            Segment::Index(i) => {
                let _ = write!(pointer, "{i}");
            }
            Segment::Key(key) => {
                pointer.push_str(&escape(&key.replace('~', "~0").replace('/', "~1")))
            }
        }
    }
    let message = match found.at {
        Found::Value => {
            format!("{pointer} contains a NUL character (\\u0000), which cannot be stored")
        }
        Found::Key(key) => format!(
            "{pointer}: the object key {} contains a NUL character (\\u0000), which cannot be stored",
            shown(key)
        ),
    };
    Err(DialogueError::invalid(message))
}

/// True if `raw` (a JSON text) may hold a NUL character in some string.
pub fn may_hold_nul(raw: &str) -> bool {
    raw.contains(NUL_ESCAPE)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

enum Found<'a> {
    /// A string value holds the NUL.
    Value,
    /// An object key (inside the object the path leads to) holds it.
    Key(&'a str),
}

struct NulAt<'a> {
    /// From the innermost segment outwards.
    path: Vec<Segment<'a>>,
    at: Found<'a>,
}

fn has_nul(s: &str) -> bool {
    // `<[u8]>::contains` on bytes is a memchr.
    s.as_bytes().contains(&0)
}

/// The first NUL in `value`, depth first. Parsed JSON is at most 128 levels deep (serde_json's
/// recursion limit), so recursing is safe.
fn find_nul(value: &Value) -> Option<NulAt<'_>> {
    match value {
        Value::String(s) if has_nul(s) => Some(NulAt {
            path: Vec::new(),
            at: Found::Value,
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            find_nul(item).map(|mut found| {
                found.path.push(Segment::Index(i));
                found
            })
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if has_nul(key) {
                return Some(NulAt {
                    path: Vec::new(),
                    at: Found::Key(key),
                });
            }
            find_nul(item).map(|mut found| {
                found.path.push(Segment::Key(key));
                found
            })
        }),
        _ => None,
    }
}

/// `value` quoted, escaped (control characters as `\uXXXX`, quotes and backslashes with a
/// backslash) and cut to about 40 characters.
pub fn shown(value: &str) -> String {
    let mut out = String::with_capacity(SHOWN_CHARS + 8);
    out.push('"');
    let mut chars = value.chars();
    for c in chars.by_ref().take(SHOWN_CHARS) {
        push_escaped(&mut out, c);
    }
    out.push('"');
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// `value` with control characters escaped, not truncated (short pointer segments).
fn escape(value: &str) -> String {
    if value.chars().any(|c| c.is_control()) {
        let mut out = String::with_capacity(value.len() + 8);
        value.chars().for_each(|c| push_escaped(&mut out, c));
        out
    } else {
        value.to_owned()
    }
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        c if c.is_control() => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn message(r: Result<(), DialogueError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        e.message
    }

    #[test]
    fn room_ids() {
        assert!(check_room_id("general").is_ok());
        assert!(check_room_id("a").is_ok());
        assert!(check_room_id("salle de séjour 😀").is_ok());
        assert!(check_room_id(&"r".repeat(MAX_ROOM_ID)).is_ok());
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        let m = message(check_room_id(&"é".repeat(128)));
        assert!(m.starts_with("roomId is 256 bytes"), "{m}");
        assert!(m.contains("1 to 255 bytes"), "{m}");
        assert!(
            m.ends_with("…; a room id is 1 to 255 bytes of UTF-8"),
            "{m}"
        );
        let m = message(check_room_id(""));
        assert!(m.contains("roomId must not be empty"), "{m}");
        let m = message(check_room_id("x\0"));
        assert_eq!(
            m,
            "roomId \"x\\u0000\" contains the control character U+0000 (NUL); \
             a room id may not contain control characters"
        );
        let m = message(check_room_id("tab\there"));
        assert!(m.contains("U+0009") && !m.contains('\t'), "{m}");
        assert!(message(check_room_id("bell\u{7}")).contains("U+0007"));
        assert!(message(check_room_id("c1\u{85}")).contains("U+0085"));
        let m = message(check_room_id(" general"));
        assert!(m.contains("leading or trailing whitespace"), "{m}");
        assert!(check_room_id("general ").is_err());
        assert!(check_room_id("general\u{3000}").is_err());
    }

    #[test]
    fn event_names() {
        assert!(check_event_name("message").is_ok());
        assert!(check_event_name("chat:typing.v2").is_ok());
        assert!(check_event_name(&"e".repeat(MAX_EVENT_NAME)).is_ok());
        let m = message(check_event_name(&"e".repeat(MAX_EVENT_NAME + 1)));
        assert!(m.starts_with("event is 101 bytes"), "{m}");
        assert!(m.contains("an event name is 1 to 100 bytes"), "{m}");
        assert!(message(check_event_name("")).contains("must not be empty"));
        assert!(message(check_event_name("mes\0sage")).contains("NUL"));
        assert!(message(check_event_name("message\n")).contains("U+000A"));
        assert!(message(check_event_name(" message")).contains("whitespace"));
        let m = message(EVENT_NAME.check("eventName", "a\0"));
        assert!(m.starts_with("eventName "), "{m}");
    }

    #[test]
    fn user_ids() {
        assert!(check_user_id("alice").is_ok());
        assert!(check_user_id(&"u".repeat(MAX_USER_ID)).is_ok());
        // Whitespace around a user id is allowed; control characters are not.
        assert!(check_user_id(" alice ").is_ok());
        let m = message(check_user_id(&"u".repeat(MAX_USER_ID + 1)));
        assert!(m.starts_with("userId is 256 bytes"), "{m}");
        // The value is shown cut to 40 characters.
        assert!(m.contains(&format!("\"{}\"…", "u".repeat(40))), "{m}");
        assert!(!m.contains(&"u".repeat(41)), "{m}");
        assert!(message(check_user_id("")).contains("must not be empty"));
        assert!(message(check_user_id("al\0ice")).contains("\\u0000"));
        let m = message(USER_ID.check("from", "\u{1b}[31m"));
        assert!(m.starts_with("from \"\\u001b[31m\" contains"), "{m}");
    }

    #[test]
    fn text() {
        assert!(check_text("name", "General chat\n(with newlines)").is_ok());
        let m = message(check_text("name", "Gen\0eral"));
        assert_eq!(
            m,
            "name \"Gen\\u0000eral\" contains a NUL character (\\u0000), which cannot be stored"
        );
    }

    #[test]
    fn json_values() {
        let good = json!({
            "text": "hello \\u0000 is six characters, not a NUL",
            "n": [1, 2.5, null, true, {"deep": ["x", {"y": "z"}]}],
            "é😀": "unicode is fine",
        });
        assert!(check_json("data", &good).is_ok());
        assert!(check_json("data", &json!(null)).is_ok());
        assert!(check_json("data", &json!(42)).is_ok());

        assert_eq!(
            message(check_json("data", &json!({"text": "a\u{0}b"}))),
            "data/text contains a NUL character (\\u0000), which cannot be stored"
        );
        assert_eq!(
            message(check_json("data", &json!("\u{0}"))),
            "data contains a NUL character (\\u0000), which cannot be stored"
        );
        assert_eq!(
            message(check_json(
                "meta",
                &json!({"a": [0, {"b/c~d": ["ok", "x\u{0}"]}]})
            )),
            "meta/a/1/b~1c~0d/1 contains a NUL character (\\u0000), which cannot be stored"
        );
        let m = message(check_json("data", &json!({"outer": {"k\u{0}ey": 1}})));
        assert_eq!(
            m,
            "data/outer: the object key \"k\\u0000ey\" contains a NUL character (\\u0000), \
             which cannot be stored"
        );
        // A NUL under a key that itself has control characters: the pointer stays printable.
        let m = message(check_json("data", &json!({"t\tab": "\u{0}"})));
        assert!(m.starts_with("data/t\\u0009ab contains"), "{m}");
    }

    #[test]
    fn raw_frames() {
        assert!(may_hold_nul(r#"42["dialogue:trigger",{"data":"\u0000"}]"#));
        // An escaped backslash before u0000 also matches: a harmless extra walk.
        assert!(may_hold_nul(r#"{"data":"\\u0000"}"#));
        assert!(!may_hold_nul(r#"{"data":"\u0001 \u000"}"#));
        let parsed: Value = serde_json::from_str(r#"{"data":"\\u0000"}"#).unwrap();
        assert!(check_json("data", &parsed).is_ok());
    }

    #[test]
    fn shown_values_are_escaped_and_cut() {
        assert_eq!(shown("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(shown(&"x".repeat(40)), format!("\"{}\"", "x".repeat(40)));
        assert_eq!(shown(&"x".repeat(41)), format!("\"{}\"…", "x".repeat(40)));
    }
}
