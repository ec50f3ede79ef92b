//! Authentication at the WebSocket upgrade: a signed device token as an
//! `Authorization: Bearer` header or, for browsers that cannot set headers
//! on a WebSocket, a `token` query parameter. Checked before the upgrade,
//! so a refused peer never reaches any document.

use axum::http::HeaderMap;
use protocol::{DeviceClaims, TokenError, TokenVerifier};

/// The credentials of an `Authorization: Bearer <token>` header. The scheme
/// is matched case-insensitively (RFC 9110 section 11.1): `bearer`, `BEARER`.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(|c: char| c.is_ascii_whitespace())?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Finds the token in the header first, then the query string.
pub fn token_from(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    bearer_token(headers).map(str::to_owned).or_else(|| query_token.map(str::to_owned))
}

pub fn authenticate(verifier: &TokenVerifier, token: Option<&str>, now_secs: u64) -> Result<DeviceClaims, TokenError> {
    let token = token.ok_or(TokenError::Malformed)?;
    verifier.verify(token, now_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearerabc", None),
        ] {
            h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer_token(&h), expected, "{value}");
        }
    }
}
