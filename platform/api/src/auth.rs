//! API tokens: making them, hashing them, and who a request's token says the caller is.
//!
//! The operator token comes from the server's environment and is never stored. Owner tokens
//! are made by the operator, shown once, and stored only as their SHA-256 (hex) in the
//! registry's `tokens` hash, so a copy of Redis does not give anyone access.

use pier_registry::model::TokenRecord;
use pier_registry::Registry;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Prefix of every token this API makes: recognisable in logs and by secret scanners.
pub const TOKEN_PREFIX: &str = "pier_";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// May do anything, including creating apps and tokens.
    Operator,
    /// May act only on this app.
    Owner(String),
}

/// Who made a change, for the log: `operator` or `owner:<app>` (never the token).
impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Operator => f.write_str("operator"),
            Caller::Owner(app) => write!(f, "owner:{app}"),
        }
    }
}

impl Caller {
    /// `Ok` if this caller may act on `app`; an owner of another app gets 403 whether or not
    /// `app` exists, so owners cannot probe for other customers' app names.
    pub fn may_act_on(&self, app: &str) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Owner(own) if own == app => Ok(()),
            Caller::Owner(_) => Err(ApiError::Forbidden(format!(
                "this token may not act on app {app:?}"
            ))),
        }
    }

    pub fn require_operator(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Owner(_) => Err(ApiError::Forbidden(format!("only the operator may {what}"))),
        }
    }
}

/// SHA-256 of a token, lower-case hex: the key it is stored under.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Random hex of `bytes` random bytes from the operating system's generator.
pub fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf)
        .map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    let mut out = String::with_capacity(bytes * 2);
    for b in buf {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Ok(out)
}

/// A new token: the prefix and 256 random bits.
pub fn new_token() -> Result<String, ApiError> {
    Ok(format!("{TOKEN_PREFIX}{}", random_hex(32)?))
}

/// Checks bearer tokens against the operator token and the registry.
#[derive(Clone)]
pub struct Authenticator {
    /// Hash of the operator token: comparing hashes keeps the comparison's timing independent
    /// of how much of the secret a guess got right.
    operator_hash: String,
}

impl Authenticator {
    pub fn new(operator_token: &str) -> Self {
        Authenticator {
            operator_hash: hash_token(operator_token),
        }
    }

    /// Who the `Authorization` header value says the caller is.
    pub async fn caller(
        &self,
        registry: &Registry,
        authorization: Option<&[u8]>,
    ) -> Result<Caller, ApiError> {
        let raw = authorization
            .ok_or_else(|| ApiError::Unauthorized("no Authorization: Bearer token".into()))?;
        // RFC 9110 §11.1: the scheme is case-insensitive, followed by one or more spaces.
        let token = std::str::from_utf8(raw)
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim_matches(' '))
            .filter(|t| !t.is_empty() && !t.contains(' '))
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization must be \"Bearer <token>\"".into())
            })?;
        self.caller_of_token(registry, token).await
    }

    /// Who `token` says the caller is (git clients send it as a Basic password).
    pub async fn caller_of_token(
        &self,
        registry: &Registry,
        token: &str,
    ) -> Result<Caller, ApiError> {
        let hash = hash_token(token);
        if hash == self.operator_hash {
            return Ok(Caller::Operator);
        }
        match registry.token(&hash).await? {
            Some(TokenRecord { role, app, .. }) => match (role.as_str(), app) {
                ("operator", _) => Ok(Caller::Operator),
                ("owner", Some(app)) => Ok(Caller::Owner(app)),
                _ => Err(ApiError::Unauthorized("token has no usable role".into())),
            },
            None => Err(ApiError::Unauthorized("unknown token".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tokens_are_distinct_and_prefixed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
    }

    #[test]
    fn owner_acts_only_on_own_app() {
        let c = Caller::Owner("blog".into());
        assert!(c.may_act_on("blog").is_ok());
        assert!(matches!(c.may_act_on("shop"), Err(ApiError::Forbidden(_))));
        assert!(Caller::Operator.may_act_on("shop").is_ok());
    }
}
