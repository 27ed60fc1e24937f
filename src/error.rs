//! Error codes sent to clients (`dialogue:error`, ack errors, HTTP API bodies) and the
//! crate's error type.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The codes of SPEC §5, sent as `{code, message}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    RoomNotFound,
    RoomFull,
    JoinDenied,
    NotInRoom,
    EventNotAllowed,
    ValidationFailed,
    RateLimited,
    InvalidRequest,
    PayloadTooLarge,
    RoomExists,
    PermissionDenied,
    StorageUnavailable,
}

impl ErrorCode {
    /// The wire spelling, e.g. `ROOM_NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RoomNotFound => "ROOM_NOT_FOUND",
            ErrorCode::RoomFull => "ROOM_FULL",
            ErrorCode::JoinDenied => "JOIN_DENIED",
            ErrorCode::NotInRoom => "NOT_IN_ROOM",
            ErrorCode::EventNotAllowed => "EVENT_NOT_ALLOWED",
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::RoomExists => "ROOM_EXISTS",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::StorageUnavailable => "STORAGE_UNAVAILABLE",
        }
    }
}

/// An application-level error answered to one request; the connection stays up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DialogueError {
    pub code: ErrorCode,
    pub message: String,
}

impl DialogueError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        DialogueError {
            code,
            message: message.into(),
        }
    }

    pub fn room_not_found(room_id: &str) -> Self {
        Self::new(
            ErrorCode::RoomNotFound,
            format!("room '{room_id}' does not exist"),
        )
    }

    pub fn not_in_room(room_id: &str) -> Self {
        Self::new(ErrorCode::NotInRoom, format!("join room '{room_id}' first"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
