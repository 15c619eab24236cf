//! Proof that a request comes from Slack: `X-Slack-Signature` is `v0=` + hex HMAC-SHA256 of
//! `v0:{X-Slack-Request-Timestamp}:{raw body}` under the app's signing secret.
//!
//! It is checked on the raw bytes before anything is parsed, in constant time, with a
//! five-minute window on the timestamp; a signature already seen inside that window is a
//! replay and refused too (Slack never sends one interaction twice).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from our clock, in seconds.
pub const WINDOW_SECS: i64 = 300;

/// Why a request was refused. Logged, never shown to the caller beyond "401".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Slack-Signature or X-Slack-Request-Timestamp header")]
    Missing,
    #[error("X-Slack-Request-Timestamp is not a number")]
    BadTimestamp,
    #[error("timestamp is more than 5 minutes from now (stale or replayed request)")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
    #[error("signature was already used (replayed request)")]
    Replayed,
}

/// See the module docs.
pub struct Verifier {
    secret: Vec<u8>,
    /// Signatures accepted in the last window, with their timestamp.
    seen: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(***)")
    }
}

impl Verifier {
    pub fn new(signing_secret: &str) -> Self {
        Self {
            secret: signing_secret.as_bytes().to_vec(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Check the headers against the raw body at time `now` (unix seconds).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let (Some(ts), Some(sig)) = (
            header("x-slack-request-timestamp"),
            header("x-slack-signature"),
        ) else {
            return Err(SignatureError::Missing);
        };
        let ts_num: i64 = ts.parse().map_err(|_| SignatureError::BadTimestamp)?;
        if now.abs_diff(ts_num) > WINDOW_SECS.unsigned_abs() {
            return Err(SignatureError::Stale);
        }
        let given = sig
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or(SignatureError::Mismatch)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).map_err(|_| SignatureError::Mismatch)?;
        mac.update(b"v0:");
        mac.update(ts.as_bytes());
        mac.update(b":");
        mac.update(body);
        // verify_slice compares in constant time.
        mac.verify_slice(&given)
            .map_err(|_| SignatureError::Mismatch)?;

        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 256 {
            seen.retain(|_, at| (now - *at).abs() <= WINDOW_SECS);
        }
        if seen.insert(sig.to_ascii_lowercase(), ts_num).is_some() {
            return Err(SignatureError::Replayed);
        }
        Ok(())
    }
}

/// Sign a body the way Slack does (for tests and the fake).
pub fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-slack-request-timestamp", ts.parse().unwrap());
        h.insert("x-slack-signature", sig.parse().unwrap());
        h
    }

    #[test]
    fn accepts_slacks_signature_once_and_refuses_the_rest() {
        let v = Verifier::new("8f742231b10e8888abcd99yyyzzz85a5");
        let body = b"token=x&team_id=T1&command=%2Fpending";
        let now = 1_700_000_000;
        let sig = sign("8f742231b10e8888abcd99yyyzzz85a5", now, body);
        assert_eq!(
            v.verify(&headers(&now.to_string(), &sig), body, now + 10),
            Ok(())
        );
        assert_eq!(
            v.verify(&headers(&now.to_string(), &sig), body, now + 10),
            Err(SignatureError::Replayed)
        );
        let fresh = sign("8f742231b10e8888abcd99yyyzzz85a5", now + 1, body);
        assert_eq!(
            v.verify(&headers(&(now + 1).to_string(), &fresh), b"tampered", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(
                &headers(&(now + 1).to_string(), &fresh),
                body,
                now + 1 + 301
            ),
            Err(SignatureError::Stale)
        );
        let forged = sign("wrong-secret", now, body);
        assert_eq!(
            v.verify(&headers(&now.to_string(), &forged), body, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(&headers(&now.to_string(), "v0=zz"), body, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(&HeaderMap::new(), body, now),
            Err(SignatureError::Missing)
        );
    }
}
