//! API keys and their model scopes (`--api-key`, `--api-key-file`), checked on every
//! inference route of every family; health, readiness, `/info` and `/metrics` stay open.
//!
//! A key is `SECRET` (any model) or `SECRET:model-a,model-b` (only those names). One
//! replica serves one model under its served names, so a scoped key is allowed here when
//! it names any of them: the same key file can then be mounted on replicas of different
//! models. `Authorization: Bearer` missing or unknown is 401; a known key that is not
//! scoped to this model is 403, each in its family's error shape. Secrets are compared
//! in constant time against every key (no early exit), and never logged: `Debug` shows
//! only the scopes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

/// The configured keys.
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

struct ApiKey {
    secret: Box<[u8]>,
    /// `None`: every model.
    models: Option<Vec<String>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scopes: Vec<_> = self.keys.iter().map(|k| k.models.as_deref()).collect();
        f.debug_struct("ApiKeys").field("scopes", &scopes).finish()
    }
}

/// What a request's credentials allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// No bearer token, or not one of the keys: 401.
    Unauthorized,
    /// A known key whose scope does not name this model: 403.
    Forbidden,
}

impl ApiKeys {
    /// Parse `SECRET[:model,model,...]` specs. Empty secrets and empty scopes are errors.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<ApiKeys, String> {
        let keys = specs
            .iter()
            .map(|spec| {
                let spec = spec.as_ref().trim();
                let (secret, models) = match spec.split_once(':') {
                    None => (spec, None),
                    Some((secret, list)) => {
                        let models: Vec<String> = list
                            .split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(String::from)
                            .collect();
                        if models.is_empty() {
                            return Err("an API key scope (`KEY:model,...`) names no model".into());
                        }
                        (secret, Some(models))
                    }
                };
                if secret.is_empty() {
                    return Err("an API key is empty".to_string());
                }
                Ok(ApiKey { secret: secret.as_bytes().into(), models })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ApiKeys { keys })
    }

    /// The key specs in a file: one per line; blank lines and `#` comments are skipped.
    pub fn read_file(path: &std::path::Path) -> Result<Vec<String>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the API key file {}: {e}", path.display()))?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// What `Authorization` header value `authorization` allows on a server serving
    /// `served` (the one model's names).
    pub fn check(&self, authorization: Option<&str>, served: &[String]) -> Access {
        let Some(given) = authorization.and_then(bearer_token) else {
            return Access::Unauthorized;
        };
        let given = given.as_bytes();
        // Compare with every key so that timing says nothing about which one matched.
        let mut found: Option<&ApiKey> = None;
        for key in &self.keys {
            if bool::from(key.secret.as_ref().ct_eq(given)) {
                found = Some(key);
            }
        }
        match found {
            None => Access::Unauthorized,
            Some(ApiKey { models: None, .. }) => Access::Allowed,
            Some(ApiKey { models: Some(models), .. }) => {
                if models.iter().any(|m| served.contains(m)) {
                    Access::Allowed
                } else {
                    Access::Forbidden
                }
            }
        }
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// How a family answers a refused request: the status (401 or 403) and a message (it
/// counts the failure, as its other errors).
pub type Refuse = fn(StatusCode, String) -> Response;

/// The guard one family's routes are wrapped in.
#[derive(Debug)]
pub struct KeyGuard {
    pub keys: Arc<ApiKeys>,
    pub served: Arc<[String]>,
    pub refuse: Refuse,
}

/// The middleware: pass allowed requests on, refuse the rest in the family's shape.
pub async fn require_api_key(
    State(guard): State<Arc<KeyGuard>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match guard.keys.check(authorization, &guard.served) {
        Access::Allowed => next.run(request).await,
        Access::Unauthorized => {
            (guard.refuse)(StatusCode::UNAUTHORIZED, "Invalid or missing API key".into())
        }
        Access::Forbidden => {
            let model = guard.served.first().map(String::as_str).unwrap_or_default();
            let message = format!("This API key is not allowed to use the model `{model}`");
            (guard.refuse)(StatusCode::FORBIDDEN, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Vec<String> {
        vec!["meta-llama/Llama-3.2-1B".into(), "llama".into()]
    }

    #[test]
    fn keys_are_checked_with_their_scopes() {
        let keys = ApiKeys::parse(&["open", "mine:llama", "other:qwen,mistral"]).unwrap();
        let check = |h: Option<&str>| keys.check(h, &served());
        assert_eq!(check(Some("Bearer open")), Access::Allowed);
        assert_eq!(check(Some("bearer  mine")), Access::Allowed);
        assert_eq!(check(Some("Bearer other")), Access::Forbidden);
        assert_eq!(check(Some("Bearer nope")), Access::Unauthorized);
        assert_eq!(check(Some("Bearer open2")), Access::Unauthorized);
        assert_eq!(check(Some("Bearer ")), Access::Unauthorized);
        assert_eq!(check(Some("Basic open")), Access::Unauthorized);
        assert_eq!(check(None), Access::Unauthorized);
    }

    #[test]
    fn bad_specs_are_refused_and_secrets_never_shown() {
        assert!(ApiKeys::parse(&[""]).is_err());
        assert!(ApiKeys::parse(&[":llama"]).is_err());
        assert!(ApiKeys::parse(&["k:"]).is_err());
        let keys = ApiKeys::parse(&["s3cret:llama"]).unwrap();
        let shown = format!("{keys:?}");
        assert!(!shown.contains("s3cret") && shown.contains("llama"), "{shown}");
    }

    #[test]
    fn a_key_file_skips_comments_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# team a\nka:llama\n\n  kb  \n").unwrap();
        assert_eq!(ApiKeys::read_file(&path).unwrap(), ["ka:llama", "kb"]);
        assert!(ApiKeys::read_file(&dir.path().join("missing")).is_err());
    }
}
