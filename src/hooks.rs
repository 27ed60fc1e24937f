//! Extension points, mirroring dialogue-ts's hooks. A Rust program can start the service with
//! its own [`Hooks`] (see `examples/`); the YAML-configured binary uses [`ConfigHooks`]: the
//! configured auth mode and access rules.

use crate::auth::{Authenticator, Identity};
use crate::config::{AccessRule, RoomAccess, Settings};
use crate::error::{DialogueError, ErrorCode};
use crate::protocol::dialogue::RoomInfo;
use serde_json::Value;
use std::collections::HashMap;

/// Called by the service at each step of a client's life. Every method but `authenticate`
/// has a default that allows and does nothing. Hooks run inside actors: keep them quick.
pub trait Hooks: Send + Sync + 'static {
    /// The identity for a Socket.IO CONNECT `auth` payload; `Err` is the CONNECT_ERROR message.
    fn authenticate(&self, auth: Option<&Value>, connection_id: &str) -> Result<Identity, String>;

    /// May `who` join `room`? Refuse with JOIN_DENIED.
    fn before_join(&self, _who: &Identity, _room: &RoomInfo) -> Result<(), DialogueError> {
        Ok(())
    }

    /// Runs before validation of every triggered event: return the data to store (possibly
    /// transformed), or refuse the event (e.g. PERMISSION_DENIED).
    fn before_each(
        &self,
        _who: &Identity,
        _room_id: &str,
        _event: &str,
        data: Value,
    ) -> Result<Value, DialogueError> {
        Ok(data)
    }

    /// Runs after an event was stored and fanned out; `message_json` is the `EventMessage`.
    fn after_each(&self, _room_id: &str, _event: &str, _message_json: &str) {}

    /// May `who` create rooms at run time?
    fn may_create_room(&self, _who: &Identity) -> Result<(), DialogueError> {
        Ok(())
    }

    /// May `who` delete `room`? By default only its creator.
    fn may_delete_room(&self, who: &Identity, room: &RoomInfo) -> Result<(), DialogueError> {
        if who.trusted || room.created_by.as_deref() == Some(&*who.user_id) {
            Ok(())
        } else {
            Err(DialogueError::new(
                ErrorCode::PermissionDenied,
                format!("only the creator may delete room '{}'", room.id),
            ))
        }
    }

    fn on_connected(&self, _who: &Identity) {}
    fn on_disconnected(&self, _who: &Identity) {}
    fn on_joined(&self, _who: &Identity, _room_id: &str) {}
    fn on_left(&self, _who: &Identity, _room_id: &str) {}
    fn on_room_created(&self, _room: &RoomInfo) {}
    fn on_room_deleted(&self, _room_id: &str) {}
}

/// The built-in hooks: `auth` and the rooms' `access` rules from the configuration.
pub struct ConfigHooks {
    authenticator: Authenticator,
    rooms: HashMap<String, RoomAccess>,
    create_rooms: Option<AccessRule>,
    admin: Option<AccessRule>,
}

impl ConfigHooks {
    /// Builds them from validated settings (the configuration check already built the
    /// authenticator once, so this does not fail for a validated configuration).
    pub fn new(settings: &Settings) -> Result<ConfigHooks, String> {
        let auth = &settings.config.auth;
        let authenticator = Authenticator::from_config(auth)
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        Ok(ConfigHooks {
            authenticator,
            rooms: settings
                .config
                .rooms
                .iter()
                .map(|(id, room)| (id.clone(), room.access.clone()))
                .collect(),
            create_rooms: auth.create_rooms.clone(),
            admin: auth.admin.clone(),
        })
    }

    fn is_admin(&self, who: &Identity) -> bool {
        who.trusted || self.admin.as_ref().is_some_and(|rule| rule.allows(who))
    }
}

impl Hooks for ConfigHooks {
    fn authenticate(&self, auth: Option<&Value>, connection_id: &str) -> Result<Identity, String> {
        self.authenticator.authenticate(auth, connection_id)
    }

    fn before_join(&self, who: &Identity, room: &RoomInfo) -> Result<(), DialogueError> {
        let rule = self.rooms.get(&room.id).and_then(|a| a.join.as_ref());
        match rule {
            Some(rule) if !who.trusted && !rule.allows(who) => Err(DialogueError::new(
                ErrorCode::JoinDenied,
                format!("{} may not join room '{}'", who.user_id, room.id),
            )),
            _ => Ok(()),
        }
    }

    fn before_each(
        &self,
        who: &Identity,
        room_id: &str,
        event: &str,
        data: Value,
    ) -> Result<Value, DialogueError> {
        let rule = self.rooms.get(room_id).and_then(|a| a.trigger.get(event));
        match rule {
            Some(rule) if !who.trusted && !rule.allows(who) => Err(DialogueError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "{} may not trigger '{event}' in room '{room_id}'",
                    who.user_id
                ),
            )),
            _ => Ok(data),
        }
    }

    fn may_create_room(&self, who: &Identity) -> Result<(), DialogueError> {
        match &self.create_rooms {
            Some(rule) if !self.is_admin(who) && !rule.allows(who) => Err(DialogueError::new(
                ErrorCode::PermissionDenied,
                format!("{} may not create rooms", who.user_id),
            )),
            _ => Ok(()),
        }
    }

    fn may_delete_room(&self, who: &Identity, room: &RoomInfo) -> Result<(), DialogueError> {
        let own = room.created_by.as_deref() == Some(&*who.user_id);
        if own || self.is_admin(who) {
            Ok(())
        } else if room.created_by.is_none() {
            Err(DialogueError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "room '{}' was not created by a client; only an admin may delete it",
                    room.id
                ),
            ))
        } else {
            Err(DialogueError::new(
                ErrorCode::PermissionDenied,
                format!("only the creator or an admin may delete room '{}'", room.id),
            ))
        }
    }
}
