//! Client identity: open mode (the CONNECT payload's `userId`, as dialogue-ts) or JWT mode
//! (`token` verified with an HS256 secret or an RS256/ES256 public key; `sub` is the user id),
//! and the access rules of the configuration evaluated against it.

use crate::config::{AccessRule, AuthConfig, AuthMode, JwtAlgorithm};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::sync::Arc;

/// Longest user id accepted, in bytes (see [`crate::protocol::storable`]).
pub use crate::protocol::storable::MAX_USER_ID;
use crate::protocol::storable::USER_ID;

/// Shortest HS256 secret accepted, in bytes.
pub const MIN_HS256_SECRET: usize = 32;
/// Clock skew allowed between the token's issuer and this server, for `exp` and `nbf`.
pub const JWT_LEEWAY_SECONDS: u64 = 5;

/// Who a connection is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: Arc<str>,
    /// JWT claims (empty object in open mode).
    pub claims: Value,
    /// The server API acting (trusted: access rules do not apply).
    pub trusted: bool,
}

impl Identity {
    /// A client identity without claims.
    pub fn user(user_id: &str) -> Identity {
        Identity {
            user_id: user_id.into(),
            claims: Value::Object(Default::default()),
            trusted: false,
        }
    }

    /// When the session must end: the token's `exp` (plus the allowed clock skew), in
    /// milliseconds since the Unix epoch; `None` without one (open mode).
    pub fn expires_at_ms(&self) -> Option<i64> {
        let exp = self.claims.get("exp")?.as_f64()?;
        // A float-to-int `as` saturates; the sum must too (an `exp` past year 292 million).
        Some(((exp * 1000.0) as i64).saturating_add(JWT_LEEWAY_SECONDS as i64 * 1000))
    }

    /// The identity of server-side callers (the HTTP API), recorded as `user_id`.
    pub fn server(user_id: &str) -> Identity {
        Identity {
            trusted: true,
            ..Identity::user(user_id)
        }
    }
}

/// Verifies CONNECT payloads.
pub enum Authenticator {
    Open,
    Jwt {
        key: Box<DecodingKey>,
        validation: Box<Validation>,
    },
}

impl Authenticator {
    /// Builds the verifier; the error names the offending key.
    pub fn from_config(auth: &AuthConfig) -> Result<Authenticator, (String, String)> {
        match auth.mode {
            AuthMode::Open => Ok(Authenticator::Open),
            AuthMode::Jwt => {
                let jwt = &auth.jwt;
                let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                let (algorithm, key) = match jwt.algorithm {
                    JwtAlgorithm::HS256 => {
                        let secret = env("DIALOGUE_JWT_SECRET")
                            .or_else(|| jwt.secret.clone())
                            .ok_or((
                                "auth.jwt.secret".to_owned(),
                                "HS256 needs a secret (or DIALOGUE_JWT_SECRET)".to_owned(),
                            ))?;
                        if secret.len() < MIN_HS256_SECRET {
                            return Err((
                                "auth.jwt.secret".to_owned(),
                                format!(
                                    "an HS256 secret must be at least {MIN_HS256_SECRET} bytes \
                                     (256 bits, RFC 7518 §3.2); this one is {}",
                                    secret.len()
                                ),
                            ));
                        }
                        (
                            Algorithm::HS256,
                            DecodingKey::from_secret(secret.as_bytes()),
                        )
                    }
                    JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                        let pem = env("DIALOGUE_JWT_PUBLIC_KEY")
                            .or_else(|| jwt.public_key.clone())
                            .ok_or((
                                "auth.jwt.publicKey".to_owned(),
                                "RS256/ES256 need a PEM public key (or DIALOGUE_JWT_PUBLIC_KEY)"
                                    .to_owned(),
                            ))?;
                        let bad = |e: jsonwebtoken::errors::Error| {
                            (
                                "auth.jwt.publicKey".to_owned(),
                                format!("not a usable PEM key: {e}"),
                            )
                        };
                        if jwt.algorithm == JwtAlgorithm::RS256 {
                            (
                                Algorithm::RS256,
                                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(bad)?,
                            )
                        } else {
                            (
                                Algorithm::ES256,
                                DecodingKey::from_ec_pem(pem.as_bytes()).map_err(bad)?,
                            )
                        }
                    }
                };
                let mut validation = Validation::new(algorithm);
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.leeway = JWT_LEEWAY_SECONDS;
                validation.validate_nbf = true;
                if let Some(issuer) = &jwt.issuer {
                    validation.set_issuer(&[issuer]);
                }
                if let Some(audience) = &jwt.audience {
                    validation.set_audience(&[audience]);
                } else {
                    validation.validate_aud = false;
                }
                Ok(Authenticator::Jwt {
                    key: Box::new(key),
                    validation: Box::new(validation),
                })
            }
        }
    }

    /// The identity for a CONNECT payload; `connection_id` is the open-mode fallback user id.
    /// The error is the CONNECT_ERROR message.
    pub fn authenticate(
        &self,
        auth: Option<&Value>,
        connection_id: &str,
    ) -> Result<Identity, String> {
        match self {
            Authenticator::Open => {
                let user_id = match auth.and_then(|a| a.get("userId")) {
                    None | Some(Value::Null) => connection_id.to_owned(),
                    Some(Value::String(s)) => {
                        USER_ID.check("auth.userId", s).map_err(|e| e.message)?;
                        s.clone()
                    }
                    Some(_) => {
                        return Err(format!(
                            "auth.userId must be a string of 1 to {MAX_USER_ID} bytes"
                        ))
                    }
                };
                Ok(Identity::user(&user_id))
            }
            Authenticator::Jwt { key, validation } => {
                let token = match auth.and_then(|a| a.get("token")) {
                    Some(Value::String(t)) => t,
                    _ => return Err("authentication required: auth.token must be a JWT".into()),
                };
                let data = decode::<Value>(token, key, validation)
                    .map_err(|e| format!("invalid token: {e}"))?;
                let user_id = match data.claims.get("sub") {
                    Some(Value::String(s)) => {
                        USER_ID
                            .check("`sub`", s)
                            .map_err(|e| format!("invalid token: {}", e.message))?;
                        s.clone()
                    }
                    _ => return Err("invalid token: `sub` must be a non-empty string".into()),
                };
                let identity = Identity {
                    user_id: user_id.into(),
                    claims: data.claims,
                    trusted: false,
                };
                // The library checks `exp` in whole seconds: refuse by the same millisecond
                // deadline that ends a session, so a token that just ended one cannot open
                // another.
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                if identity.expires_at_ms().is_some_and(|at| at <= now_ms) {
                    return Err("invalid token: ExpiredSignature".into());
                }
                Ok(identity)
            }
        }
    }
}

impl AccessRule {
    /// Whether `who` passes: listed (if `users` is given) and carrying every required claim
    /// value (if `claims` is given; a claim holding an array passes when any element matches).
    pub fn allows(&self, who: &Identity) -> bool {
        if let Some(users) = &self.users {
            if !users.iter().any(|u| **u == *who.user_id) {
                return false;
            }
        }
        self.claims
            .iter()
            .all(|(claim, allowed)| match who.claims.get(claim) {
                Some(Value::Array(values)) => values.iter().any(|v| allowed.contains(v)),
                Some(value) => allowed.contains(value),
                None => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expiry_of_a_far_future_exp_saturates() {
        // Regression (fuzzing): exp * 1000 saturated to i64::MAX, then adding the leeway
        // overflowed (a panic in debug builds, a session ended at once in release).
        let at = |exp: Value| {
            Identity {
                claims: json!({ "exp": exp }),
                ..Identity::user("u")
            }
            .expires_at_ms()
        };
        assert_eq!(at(json!(9_223_372_036_854_771u64)), Some(i64::MAX));
        assert_eq!(at(json!(u64::MAX)), Some(i64::MAX));
        assert_eq!(at(json!(1e300)), Some(i64::MAX));
        assert_eq!(at(json!(-1e300)), Some(i64::MIN + 5000));
        assert_eq!(at(json!(1_700_000_000)), Some(1_700_000_005_000));
        assert_eq!(at(json!("soon")), None);
    }

    #[test]
    fn open_mode_takes_user_id_or_falls_back() {
        let a = Authenticator::Open;
        let id = a
            .authenticate(Some(&json!({"userId": "alice"})), "c1")
            .unwrap();
        assert_eq!(&*id.user_id, "alice");
        assert_eq!(&*a.authenticate(None, "c1").unwrap().user_id, "c1");
        assert!(a.authenticate(Some(&json!({"userId": 5})), "c1").is_err());
    }

    #[test]
    fn open_mode_refuses_user_ids_the_database_cannot_store() {
        let a = Authenticator::Open;
        let long = "u".repeat(MAX_USER_ID + 1);
        let e = a
            .authenticate(Some(&json!({ "userId": long })), "c1")
            .unwrap_err();
        assert!(e.starts_with("auth.userId is 256 bytes"), "{e}");
        let e = a
            .authenticate(Some(&json!({"userId": "al\u{0}ice"})), "c1")
            .unwrap_err();
        assert!(e.contains("NUL"), "{e}");
        assert!(a.authenticate(Some(&json!({"userId": ""})), "c1").is_err());
        let max = "u".repeat(MAX_USER_ID);
        assert!(a
            .authenticate(Some(&json!({ "userId": max })), "c1")
            .is_ok());
    }

    #[test]
    fn jwt_sub_must_be_a_storable_user_id() {
        let auth: AuthConfig = serde_json::from_value(json!({
            "mode": "jwt",
            "jwt": { "algorithm": "HS256", "secret": "s3cret-0123456789-0123456789-0123" }
        }))
        .unwrap();
        let a = Authenticator::from_config(&auth).unwrap();
        let sign = |sub: &str| {
            let claims = json!({ "sub": sub, "exp": 4_000_000_000u64 });
            let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret-0123456789-0123456789-0123");
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
        };
        let id = a
            .authenticate(Some(&json!({ "token": sign("bob") })), "c")
            .unwrap();
        assert_eq!(&*id.user_id, "bob");
        let e = a
            .authenticate(Some(&json!({ "token": sign("b\u{0}b") })), "c")
            .unwrap_err();
        assert!(e.starts_with("invalid token: `sub` "), "{e}");
        let long = "b".repeat(MAX_USER_ID + 1);
        assert!(a
            .authenticate(Some(&json!({ "token": sign(&long) })), "c")
            .is_err());
    }

    #[test]
    fn rules_match_users_and_claims() {
        let rule: AccessRule =
            serde_json::from_value(json!({"claims": {"role": ["admin", "staff"]}})).unwrap();
        let with = |user: &str, claims| Identity {
            claims,
            ..Identity::user(user)
        };
        let staff = with("s", json!({"role": "staff"}));
        let multi = with("m", json!({"role": ["guest", "admin"]}));
        let guest = with("g", json!({"role": "guest"}));
        assert!(rule.allows(&staff) && rule.allows(&multi) && !rule.allows(&guest));
        let users: AccessRule = serde_json::from_value(json!({"users": ["s"]})).unwrap();
        assert!(users.allows(&staff) && !users.allows(&guest));
    }
}
