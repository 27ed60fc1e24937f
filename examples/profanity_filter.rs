//! Embedding Dialogue with custom hooks: a profanity filter in `before_each` that masks
//! words in a chat message's `text`, on top of the built-in (YAML-driven) hooks.
//!
//! `cargo run --example profanity_filter [config.yaml]`

use dialogue::error::DialogueError;
use dialogue::protocol::dialogue::RoomInfo;
use dialogue::{ConfigHooks, Hooks, Identity, Settings};
use serde_json::Value;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

/// Masks listed words; everything else is decided by the configuration's hooks.
struct ProfanityFilter {
    inner: ConfigHooks,
    words: Vec<&'static str>,
}

impl ProfanityFilter {
    fn clean(&self, text: &str) -> String {
        text.split(' ')
            .map(|word| {
                let bare = word
                    .trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase();
                if self.words.contains(&bare.as_str()) {
                    "*".repeat(word.chars().count())
                } else {
                    word.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Hooks for ProfanityFilter {
    fn authenticate(&self, auth: Option<&Value>, connection_id: &str) -> Result<Identity, String> {
        self.inner.authenticate(auth, connection_id)
    }

    fn before_join(&self, who: &Identity, room: &RoomInfo) -> Result<(), DialogueError> {
        self.inner.before_join(who, room)
    }

    fn before_each(
        &self,
        who: &Identity,
        room_id: &str,
        event: &str,
        data: Value,
    ) -> Result<Value, DialogueError> {
        let mut data = self.inner.before_each(who, room_id, event, data)?;
        if let Some(Value::String(text)) = data.get_mut("text") {
            *text = self.clean(text);
        }
        Ok(data)
    }

    fn may_create_room(&self, who: &Identity) -> Result<(), DialogueError> {
        self.inner.may_create_room(who)
    }

    fn may_delete_room(&self, who: &Identity, room: &RoomInfo) -> Result<(), DialogueError> {
        self.inner.may_delete_room(who, room)
    }

    fn on_joined(&self, who: &Identity, room_id: &str) {
        log::info!("{} joined {room_id}", who.user_id);
    }
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config.yaml"));
    let settings = Settings::load(&path).map_err(|e| std::io::Error::other(e.to_string()))?;
    let hooks = ProfanityFilter {
        inner: ConfigHooks::new(&settings).map_err(std::io::Error::other)?,
        words: vec!["darn", "heck"],
    };
    let server = &settings.config.server;
    let listener = TcpListener::bind((server.host.as_str(), server.port))?;
    actix_rt::System::new().block_on(dialogue::run_with_hooks(
        settings,
        listener,
        Arc::new(hooks),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_listed_words_only() {
        let settings = Settings::parse("", std::path::Path::new("x.yaml")).unwrap();
        let f = ProfanityFilter {
            inner: ConfigHooks::new(&settings).unwrap(),
            words: vec!["darn"],
        };
        assert_eq!(f.clean("well darn it, Darn!"), "well **** it, *****");
        let who = Identity::user("u");
        let out = f
            .before_each(
                &who,
                "r",
                "message",
                serde_json::json!({"text": "darn", "n": 1}),
            )
            .unwrap();
        assert_eq!(out, serde_json::json!({"text": "****", "n": 1}));
    }
}
