//! Wire formats: the Engine.IO v4 and Socket.IO v5 packet codecs, the JSON shapes of the
//! dialogue events that travel inside them, and the door checks of what the database can store.

pub mod dialogue;
pub mod engineio;
pub mod socketio;
pub mod storable;

/// What a JSON text takes once parsed into `serde_json::Value`s, estimated from the text
/// without parsing it (an upper bound for usual shapes): the text itself twice (strings, and
/// slack), a `Value` per item or member, and a B-tree node per object — an object is the
/// costliest shape, about 640 bytes however few its members. Punctuation inside strings
/// counts as text.
pub fn parsed_json_weight(text: impl AsRef<[u8]>) -> usize {
    let text = text.as_ref();
    const VALUE: usize = 32;
    const OBJECT: usize = 640;
    let (mut items, mut objects) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b':' | b'[' => items += 1,
            b'{' => objects += 1,
            _ => {}
        }
    }
    2 * text.len() + VALUE * items + OBJECT * objects
}

#[cfg(test)]
mod tests {
    use super::parsed_json_weight;

    /// The estimate against what the parse really allocates (the counting allocator of
    /// tests/fuzz.rs measures the same): within a small factor for the costliest shapes.
    #[test]
    fn parsed_weight_grows_with_the_shapes_that_cost_memory() {
        let text = "x".repeat(1000);
        let plain = format!(r#"["message",{{"text":"{text}"}}]"#);
        assert!(parsed_json_weight(&plain) < 3 * plain.len());
        let objects = format!("[{}]", vec![r#"{"":0}"#; 1000].join(","));
        assert!(parsed_json_weight(&objects) > 600 * 1000);
        let numbers = format!("[{}]", vec!["0"; 1000].join(","));
        assert!(parsed_json_weight(&numbers) >= 32 * 1000);
        // JSON pasted as text is text: its braces cost nothing more.
        let pasted = serde_json::to_string(&objects).unwrap();
        let message = format!(r#"["message",{{"text":{pasted},"q":"a\"{{"}}]"#);
        assert!(parsed_json_weight(&message) < 3 * message.len());
    }
}
