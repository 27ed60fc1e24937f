//! The event catalog: every event type of the configuration with its JSON Schema compiled
//! once at start-up, and the check of a triggered event's `data` against it.

use crate::config::Durability;
use crate::error::{DialogueError, ErrorCode};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Default `history.maxBytes`: bytes of events kept in memory per (room, event).
pub const DEFAULT_WINDOW_BYTES: usize = 1024 * 1024;

/// One event type, ready to validate.
#[derive(Debug)]
pub struct EventDef {
    pub name: String,
    pub description: Option<String>,
    /// Compiled `schema`; `None` accepts any data.
    validator: Option<jsonschema::Validator>,
    /// Events kept in memory per room; `None` = history disabled.
    pub history_limit: Option<usize>,
    /// Bytes of events kept in memory per room (`history.maxBytes`).
    pub history_max_bytes: usize,
    /// When a trigger of this event is acknowledged and fanned out.
    pub durability: Durability,
    /// Declared in the configuration (not an ad-hoc name in a `"*"` room): its metric
    /// series carry its name.
    pub declared: bool,
}

impl EventDef {
    /// Compiles `schema` as JSON Schema draft 2020-12.
    pub fn new(
        name: &str,
        description: Option<String>,
        schema: Option<&Value>,
        history_limit: Option<usize>,
    ) -> Result<Self, String> {
        let validator = match schema {
            Some(schema) => Some(
                jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(schema)
                    .map_err(|e| format!("invalid JSON Schema: {e}"))?,
            ),
            None => None,
        };
        Ok(EventDef {
            name: name.to_owned(),
            description,
            validator,
            history_limit,
            history_max_bytes: DEFAULT_WINDOW_BYTES,
            durability: Durability::Stored,
            declared: true,
        })
    }

    /// An event with no schema and no history (an undeclared event in a `"*"` room).
    pub fn untyped(name: &str, durability: Durability) -> Self {
        EventDef {
            name: name.to_owned(),
            description: None,
            validator: None,
            history_limit: None,
            history_max_bytes: DEFAULT_WINDOW_BYTES,
            durability,
            declared: false,
        }
    }

    /// Checks `data`; the error names each failing JSON pointer.
    pub fn validate(&self, data: &Value) -> Result<(), DialogueError> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let problems: Vec<String> = validator
            .iter_errors(data)
            .take(10)
            .map(|e| {
                let pointer = e.instance_path().to_string();
                let pointer = if pointer.is_empty() {
                    "/".to_owned()
                } else {
                    pointer
                };
                shorten(format!("{pointer}: {e}"))
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DialogueError::new(
                ErrorCode::ValidationFailed,
                format!(
                    "data for event '{}' is invalid: {}",
                    self.name,
                    problems.join("; ")
                ),
            ))
        }
    }
}

/// The longest description of one validation problem, in characters: the validator quotes
/// the failing value, which may be the whole event.
const MAX_PROBLEM_CHARS: usize = 200;

/// `text` cut to [`MAX_PROBLEM_CHARS`] characters, marked with `…` when cut.
fn shorten(text: String) -> String {
    match text.char_indices().nth(MAX_PROBLEM_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// All declared event types, by name. Shared read-only by every room.
#[derive(Debug, Default)]
pub struct EventCatalog {
    defs: HashMap<String, Arc<EventDef>>,
    /// Durability of events no configuration declares (in `"*"` rooms).
    pub default_durability: Durability,
    /// Distinct event names a `"*"` room keeps state for (`limits.maxEventTypesPerRoom`;
    /// 0 = unlimited).
    pub max_event_types_per_room: usize,
    /// Bytes of events one history page or join history holds (`limits.maxPageBytes`).
    pub max_page_bytes: usize,
    /// Events a join with `since` replays at most (`limits.maxResumeEvents`).
    pub max_resume_events: usize,
}

impl EventCatalog {
    pub fn insert(&mut self, def: EventDef) {
        self.defs.insert(def.name.clone(), Arc::new(def));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<EventDef>> {
        self.defs.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.defs.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_names_each_failing_pointer() {
        let schema = json!({
            "type": "object",
            "required": ["text", "username"],
            "properties": {"text": {"type": "string", "minLength": 1}, "username": {"type": "string"}}
        });
        let def = EventDef::new("message", None, Some(&schema), Some(100)).unwrap();
        assert!(def
            .validate(&json!({"text": "hi", "username": "a"}))
            .is_ok());
        let err = def
            .validate(&json!({"text": "", "username": 5}))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationFailed);
        assert!(err.message.contains("/text"), "{}", err.message);
        assert!(err.message.contains("/username"), "{}", err.message);
        let err = def.validate(&json!({"text": "x"})).unwrap_err();
        assert!(err.message.contains("username"), "{}", err.message);
        // The validator quotes the failing value: each problem is cut short, so a large
        // event does not come back many times over in its error.
        let big = "é".repeat(100_000);
        let err = def
            .validate(&json!({"text": 1, "username": [big]}))
            .unwrap_err();
        assert!(err.message.len() < 1000, "{} bytes", err.message.len());
        assert!(err.message.contains("/username") && err.message.contains('…'));
    }

    #[test]
    fn invalid_schema_is_refused() {
        assert!(EventDef::new("e", None, Some(&json!({"type": "strng"})), None).is_err());
        assert!(EventDef::new("e", None, Some(&json!({"minLength": -1})), None).is_err());
    }
}
