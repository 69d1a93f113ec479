//! `x-request-id`: taken from the request when it is a plain token (letters, digits,
//! `-_.:`, at most 128), generated otherwise; echoed on the response; the `request_id`
//! of a tracing span around the request's handling, so its log lines carry it; and a
//! request extension ([`RequestId`]) that the OpenAI routes build their response ids
//! from, as vLLM does.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::validation::random_seed;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// A fresh id: 32 hex digits.
    pub fn generate() -> RequestId {
        RequestId(format!("{:016x}{:016x}", random_seed(), random_seed()).into())
    }

    /// The client's id, if it is one to echo and log.
    pub fn parse(value: &str) -> Option<RequestId> {
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.:".contains(&b);
        (!value.is_empty() && value.len() <= 128 && value.bytes().all(plain))
            .then(|| RequestId(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The middleware (every route).
pub async fn layer(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::generate);
    request.extensions_mut().insert(id.clone());
    let span = tracing::info_span!("request", request_id = %id.as_str());
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_and_others_replaced() {
        assert_eq!(RequestId::parse("req-1.a:b_c").unwrap().as_str(), "req-1.a:b_c");
        for bad in ["", "has space", "new\nline", "ü", &"x".repeat(129)] {
            assert_eq!(RequestId::parse(bad), None, "{bad:?}");
        }
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(RequestId::parse(a.as_str()).is_some());
    }
}
