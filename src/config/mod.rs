//! Configuration: `config.yaml` parsed into typed structs, validated at start-up, with
//! environment overrides. Every error names the file, the line and the key.

mod types;

pub use types::*;

use crate::events::{EventCatalog, EventDef};
use crate::protocol::storable;
use serde_saphyr::{Location, Spanned};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A validated configuration with its compiled event catalog.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub events: Arc<EventCatalog>,
    /// The file it was read from (for messages).
    pub path: PathBuf,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based; 0 when the position is unknown.
    pub line: u64,
    pub column: u64,
    /// Dotted path of the offending key, e.g. `rooms.general.events[1]`.
    pub key: String,
    pub message: String,
}

/// Why a configuration file was refused.
#[derive(Debug)]
pub enum ConfigError {
    Io {
        file: PathBuf,
        error: std::io::Error,
    },
    Invalid {
        file: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { file, error } => {
                write!(f, "{}: cannot read configuration: {error}", file.display())
            }
            ConfigError::Invalid { file, problems } => {
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    if p.line == 0 {
                        write!(f, "{}: {}: {}", file.display(), p.key, p.message)?;
                    } else {
                        write!(
                            f,
                            "{}:{}:{}: {}: {}",
                            file.display(),
                            p.line,
                            p.column,
                            p.key,
                            p.message
                        )?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// What is valid but probably not meant: access rules that open mode cannot enforce
    /// (there, clients assert their own user id and carry no claims).
    pub fn warnings(&self) -> Vec<String> {
        let c = &self.config;
        let mut out = Vec::new();
        if c.server.workers > 0 {
            out.push(
                "server.workers is no longer used: every room thread accepts and serves \
                 connections (server.roomThreads)"
                    .to_owned(),
            );
        }
        // A page goes out twice (event and ack), and holds at least one event.
        let outbound = c.server.max_outbound_bytes;
        if c.max_page_bytes() > outbound / 2 {
            out.push(format!(
                "limits.maxPageBytes ({}) is over half of server.maxOutboundBytes ({outbound}): a full history page disconnects its reader as not reading",
                c.max_page_bytes()
            ));
        }
        if c.limits.max_payload_bytes.saturating_add(4096) > outbound / 2 {
            out.push(format!(
                "limits.maxPayloadBytes ({}) is over a quarter of server.maxOutboundBytes ({outbound}): a page of one such event may disconnect its reader",
                c.limits.max_payload_bytes
            ));
        }
        if c.auth.mode != AuthMode::Open {
            return out;
        }
        let ruled = |rule: &Option<AccessRule>| rule.is_some();
        if ruled(&c.auth.admin) {
            out.push(
                "auth.admin: in open mode user ids are self-asserted and carry no claims, so \
                 anyone can claim to be an admin listed by id (use auth.mode: jwt)"
                    .to_owned(),
            );
        }
        if ruled(&c.auth.create_rooms) {
            out.push(
                "auth.createRooms: in open mode user ids are self-asserted (use auth.mode: jwt)"
                    .to_owned(),
            );
        }
        for (id, room) in &c.rooms {
            if room.access.join.is_some() || !room.access.trigger.is_empty() {
                out.push(format!(
                    "rooms.{id}.access: in open mode user ids are self-asserted, so these rules \
                     do not keep anyone out (use auth.mode: jwt)"
                ));
            }
        }
        out
    }

    /// Reads, parses and validates `path`, then applies `PORT` and `DATABASE_URL`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            file: path.to_owned(),
            error,
        })?;
        let mut settings = Settings::parse(&text, path)?;
        settings.apply_env();
        Ok(settings)
    }

    /// Parses and validates YAML text; `path` only labels the messages.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            file: path.to_owned(),
            problems,
        };
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| invalid(vec![parse_problem(&e, text)]))?
        };
        let events = validate(&config, text).map_err(invalid)?;
        Ok(Settings {
            config,
            events: Arc::new(events),
            path: path.to_owned(),
        })
    }

    fn apply_env(&mut self) {
        if let Ok(port) = std::env::var("PORT") {
            match port.parse() {
                Ok(port) => self.config.server.port = port,
                Err(_) => log::warn!("ignoring PORT={port:?}: not a port number"),
            }
        }
        if let Ok(keys) = std::env::var("DIALOGUE_API_KEYS") {
            self.config.api.keys.extend(
                keys.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
            );
        }
        if let Ok(key) = std::env::var("DIALOGUE_METRICS_KEY") {
            if !key.is_empty() {
                self.config.metrics.key = Some(key);
            }
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.is_empty() {
                self.config.database.url = url;
            }
        }
        if let Ok(url) = std::env::var("DIALOGUE_REDIS_URL") {
            if !url.is_empty() {
                self.config.cluster.redis =
                    Some(Spanned::new(url, Location::UNKNOWN, Location::UNKNOWN));
            }
        }
    }
}

fn parse_problem(e: &serde_saphyr::Error, text: &str) -> ConfigProblem {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = e.to_string();
    // Drop the position prefix: the problem already carries it.
    let message = match message
        .strip_prefix("error: line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((_, rest)) => rest.to_owned(),
        None => message,
    };
    // serde reports unknown and missing keys as "unknown field `x`" / "missing field `x`".
    let key = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field `"))
        .map(str::to_owned)
        .or_else(|| key_before(text, line, column))
        .unwrap_or_else(|| "-".to_owned());
    ConfigProblem {
        line,
        column,
        key,
        message: first_line(&message),
    }
}

/// The mapping key written last before `line:column` on that line (`limit` in
/// `history: { enabled: true, limit: lots }`), to name the key a bad value belongs to.
fn key_before(text: &str, line: u64, column: u64) -> Option<String> {
    let src = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let upto: String = src
        .chars()
        .take(column.saturating_sub(1) as usize)
        .collect();
    let colon = upto.trim_end().trim_end_matches(':').len();
    let before_colon = &upto[..colon];
    let key: String = before_colon
        .chars()
        .rev()
        .skip_while(|c| c.is_whitespace())
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then_some(key)
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}

fn problem(at: Location, key: String, message: String) -> ConfigProblem {
    ConfigProblem {
        line: at.line(),
        column: at.column(),
        key,
        message,
    }
}

/// Checks what the types cannot express and compiles the event schemas; `text` is the YAML
/// the configuration was parsed from (for the positions of map keys).
fn validate(config: &Config, text: &str) -> Result<EventCatalog, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    check_ids(config, text, &mut problems);
    let mut catalog = EventCatalog::default();
    catalog.default_durability = config.database.durability;
    catalog.max_event_types_per_room = config.limits.max_event_types_per_room;
    catalog.max_page_bytes = config.max_page_bytes();
    catalog.max_resume_events = config.limits.max_resume_events;

    for (name, event) in &config.events {
        let mut limit = None;
        if let Some(history) = &event.history {
            if history.limit.value == 0 {
                problems.push(problem(
                    history.limit.referenced,
                    format!("events.{name}.history.limit"),
                    "must be at least 1 (set enabled: false to keep no history)".into(),
                ));
            }
            if history.enabled {
                limit = Some(history.limit.value as usize);
            }
        }
        let schema = event.schema.as_ref();
        match EventDef::new(
            name,
            event.description.clone(),
            schema.map(|s| &s.value),
            limit,
        ) {
            Ok(mut def) => {
                def.durability = event
                    .history
                    .as_ref()
                    .and_then(|h| h.durability)
                    .unwrap_or(config.database.durability);
                if let Some(history) = &event.history {
                    def.history_max_bytes = history.max_bytes;
                }
                catalog.insert(def)
            }
            Err(message) => problems.push(problem(
                schema.map(|s| s.referenced).unwrap_or(Location::UNKNOWN),
                format!("events.{name}.schema"),
                message,
            )),
        }
    }

    if let Some(url) = &config.cluster.redis {
        if !["redis://", "rediss://", "unix://"]
            .iter()
            .any(|scheme| url.value.starts_with(scheme))
        {
            problems.push(problem(
                url.referenced,
                "cluster.redis".into(),
                format!("'{}' is not a Redis URL (redis://host:port)", url.value),
            ));
        }
    }
    if config.cluster.lease_timeout < 100 {
        problems.push(problem(
            Location::UNKNOWN,
            "cluster.leaseTimeout".into(),
            "must be at least 100 ms".into(),
        ));
    }

    for (id, room) in &config.rooms {
        let wildcard = room.events.iter().any(|e| e.value == "*");
        for (i, event) in room.events.iter().enumerate() {
            let key = format!("rooms.{id}.events[{i}]");
            if event.value == "*" {
                if room.events.len() > 1 {
                    problems.push(problem(
                        event.referenced,
                        key,
                        "\"*\" must be the only entry".into(),
                    ));
                }
            } else if !config.events.contains_key(&event.value) {
                problems.push(undefined_event(event, key, config));
            }
        }
        for (i, sub) in room.default_subscriptions.iter().flatten().enumerate() {
            let carried = wildcard || room.events.iter().any(|e| e.value == sub.value);
            if !carried {
                problems.push(problem(
                    sub.referenced,
                    format!("rooms.{id}.defaultSubscriptions[{i}]"),
                    format!("room '{id}' does not carry event '{}'", sub.value),
                ));
            }
        }
        if room.max_size == Some(0) {
            problems.push(problem(
                Location::UNKNOWN,
                format!("rooms.{id}.maxSize"),
                "must be at least 1".into(),
            ));
        }
    }

    if let Err((key, message)) = crate::auth::Authenticator::from_config(&config.auth) {
        problems.push(problem(Location::UNKNOWN, key, message));
    }
    for (id, room) in &config.rooms {
        for event in room.access.trigger.keys() {
            let carried = room
                .events
                .iter()
                .any(|e| e.value == "*" || e.value == *event);
            if !carried {
                problems.push(problem(
                    Location::UNKNOWN,
                    format!("rooms.{id}.access.trigger.{event}"),
                    format!("room '{id}' does not carry event '{event}'"),
                ));
            }
        }
    }

    let server = &config.server;
    for (key, value) in [
        ("pingInterval", server.ping_interval),
        ("pingTimeout", server.ping_timeout),
        ("maxPayload", server.max_payload),
        ("connectTimeout", server.connect_timeout),
    ] {
        if value == 0 {
            problems.push(problem(
                Location::UNKNOWN,
                format!("server.{key}"),
                "must be greater than 0".into(),
            ));
        }
    }

    if problems.is_empty() {
        Ok(catalog)
    } else {
        Err(problems)
    }
}

/// Room ids and event names the database could not store (see [`storable`]). They are map
/// keys, which the typed configuration holds without a position, so the positions come from
/// a second parse of the keys alone, made only when one is refused.
fn check_ids(config: &Config, text: &str, problems: &mut Vec<ConfigProblem>) {
    let events = config
        .events
        .keys()
        .map(|name| ("events", name, storable::EVENT_NAME));
    let rooms = config
        .rooms
        .keys()
        .map(|id| ("rooms", id, storable::ROOM_ID));
    let found: Vec<_> = events
        .chain(rooms)
        .filter_map(|(section, name, rule)| {
            rule.problem(name).map(|why| (section, name, rule, why))
        })
        .collect();
    if found.is_empty() {
        return;
    }
    let spans: KeySpans = serde_saphyr::from_str(text).unwrap_or_default();
    for (section, name, rule, why) in found {
        let keys = match section {
            "events" => &spans.events,
            _ => &spans.rooms,
        };
        let at = keys
            .iter()
            .find(|k| k.value == *name)
            .map_or(Location::UNKNOWN, |k| k.referenced);
        // "a room id" → "room id …"
        let what = rule
            .what
            .split_once(' ')
            .map_or(rule.what, |(_, what)| what);
        problems.push(problem(
            at,
            format!("{section}.{}", storable::shown(name)),
            format!("{what} {why}"),
        ));
    }
}

/// The keys of `events` and `rooms` with their positions.
#[derive(Default, serde::Deserialize)]
struct KeySpans {
    #[serde(default, deserialize_with = "spanned_keys")]
    events: Vec<Spanned<String>>,
    #[serde(default, deserialize_with = "spanned_keys")]
    rooms: Vec<Spanned<String>>,
}

fn spanned_keys<'de, D>(d: D) -> Result<Vec<Spanned<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<Spanned<String>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping")
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_map<A>(self, mut map: A) -> Result<Self::Value, A::Error>
        where
            A: serde::de::MapAccess<'de>,
        {
            let mut keys = Vec::new();
            while let Some(key) = map.next_key::<Spanned<String>>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                keys.push(key);
            }
            Ok(keys)
        }
    }
    d.deserialize_any(Keys)
}

fn undefined_event(event: &Spanned<String>, key: String, config: &Config) -> ConfigProblem {
    let known: Vec<&str> = config.events.keys().map(String::as_str).collect();
    problem(
        event.referenced,
        key,
        format!(
            "event '{}' is not defined under `events` (defined: {})",
            event.value,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ),
    )
}

/// The JSON Schema of the configuration file, for editors.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<ConfigProblem> {
        match Settings::parse(yaml, Path::new("test.yaml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    const GOOD: &str = "\
events:
  message:
    schema:
      type: object
      required: [text]
    history: { enabled: true, limit: 100 }
rooms:
  general:
    name: General
    events: [message]
    syncHistoryOnJoin: 50
";

    #[test]
    fn accepts_a_good_file() {
        let s = Settings::parse(GOOD, Path::new("x.yaml")).unwrap();
        assert_eq!(s.config.rooms["general"].name.as_deref(), Some("General"));
        assert_eq!(
            s.config.rooms["general"].sync_history_on_join,
            Some(SyncHistory::Newest(50))
        );
        assert_eq!(s.events.get("message").unwrap().history_limit, Some(100));
        assert_eq!(s.config.server.port, 3000);
    }

    #[test]
    fn undefined_event_names_line_and_key() {
        let p = problems(&GOOD.replace("events: [message]", "events: [message, mesage]"));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 10);
        assert_eq!(p[0].key, "rooms.general.events[1]");
        assert!(p[0].message.contains("mesage"));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let p = problems(&GOOD.replace(
            "    name: General\n",
            "    name: General\n    colour: red\n",
        ));
        assert_eq!(p[0].line, 10, "{p:?}");
        assert_eq!(p[0].key, "colour");
    }

    #[test]
    fn wrong_type_names_line() {
        let p = problems(&GOOD.replace("limit: 100", "limit: lots"));
        assert_eq!(p[0].line, 6, "{p:?}");
        assert_eq!(p[0].key, "limit", "{p:?}");
    }

    #[test]
    fn zero_limit_bad_schema_and_bad_subscription() {
        let yaml = GOOD
            .replace("limit: 100", "limit: 0")
            .replace("required: [text]", "required: text")
            .replace("syncHistoryOnJoin: 50", "defaultSubscriptions: [typing]");
        let p = problems(&yaml);
        let keys: Vec<(&str, u64)> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert!(
            keys.contains(&("events.message.history.limit", 6)),
            "{keys:?}"
        );
        assert!(keys.contains(&("events.message.schema", 4)), "{keys:?}");
        assert!(
            keys.contains(&("rooms.general.defaultSubscriptions[0]", 11)),
            "{keys:?}"
        );
    }

    #[test]
    fn ids_the_database_cannot_store_name_line_and_key() {
        let yaml = GOOD
            .replace("  general:\n", "  \"gen\\0eral\":\n")
            .replace("  message:\n", "  \" message\":\n")
            .replace("[message]", "[\" message\"]")
            + &format!("  {}:\n    events: []\n", "r".repeat(256));
        let p = problems(&yaml);
        let find = |key: &str| {
            p.iter()
                .find(|p| p.key.starts_with(key))
                .unwrap_or_else(|| panic!("no {key} in {p:?}"))
        };
        let room = find("rooms.\"gen\\u0000eral\"");
        assert_eq!(room.line, 8, "{p:?}");
        assert!(
            room.message
                .starts_with("room id \"gen\\u0000eral\" contains the control character U+0000"),
            "{p:?}"
        );
        let event = find("events.\" message\"");
        assert_eq!(event.line, 2, "{p:?}");
        assert!(
            event.message.contains("leading or trailing whitespace"),
            "{p:?}"
        );
        let long = find("rooms.\"rrrr");
        assert_eq!(long.line, 12, "{p:?}");
        assert!(long.message.contains("is 256 bytes"), "{p:?}");
        let empty = problems(&GOOD.replace("  general:\n", "  \"\":\n"));
        assert_eq!(empty[0].key, "rooms.\"\"", "{empty:?}");
        assert_eq!(empty[0].line, 8, "{empty:?}");
        assert!(empty[0].message.contains("must not be empty"), "{empty:?}");
    }

    #[test]
    fn schema_is_generated() {
        let schema = json_schema();
        assert!(schema.contains("syncHistoryOnJoin"));
        assert!(schema.contains("pingInterval"));
    }
}
