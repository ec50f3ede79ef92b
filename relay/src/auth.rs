//! Authentication at the WebSocket upgrade: a signed device token as an
//! `Authorization: Bearer` header or, for browsers that cannot set headers
//! on a WebSocket, a `token` query parameter. Checked before the upgrade,
//! so a refused peer never reaches any document.

use axum::http::HeaderMap;
use protocol::{DeviceClaims, TokenError, TokenVerifier};

/// Finds the token in the header first, then the query string.
pub fn token_from(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))
    {
        return Some(token.trim().to_owned());
    }
    query_token.map(str::to_owned)
}

pub fn authenticate(verifier: &TokenVerifier, token: Option<&str>, now_secs: u64) -> Result<DeviceClaims, TokenError> {
    let token = token.ok_or(TokenError::Malformed)?;
    verifier.verify(token, now_secs)
}
