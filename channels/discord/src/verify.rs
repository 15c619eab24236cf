//! Is this request really from Discord? Ed25519 over timestamp||body with the application's
//! public key (serenity's `Verifier`), a timestamp no older than five minutes (Discord signs
//! the time but does not check it for us), and no signature seen twice (a captured request
//! replayed within the window). Any failure is a 401: Discord probes endpoints with bad
//! signatures and disables those that accept them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use serenity::interactions_endpoint::Verifier;

/// Why a request was refused (for logs; the caller only ever sees 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MissingHeaders,
    BadSignature,
    Stale,
    Replayed,
}

/// Checks signatures and remembers recent ones.
pub struct SignatureCheck {
    verifier: Verifier,
    max_age: Duration,
    /// Signatures accepted within the window, with their timestamps.
    seen: Mutex<HashMap<String, i64>>,
}

impl SignatureCheck {
    pub fn new(verifier: Verifier, max_age: Duration) -> Self {
        Self {
            verifier,
            max_age,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Accept or refuse one request; `now` is the current unix time in seconds.
    pub fn check(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), Rejection> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(signature), Some(timestamp)) = (
            header("x-signature-ed25519"),
            header("x-signature-timestamp"),
        ) else {
            return Err(Rejection::MissingHeaders);
        };
        // The signature first: nothing unsigned may touch the replay memory.
        self.verifier
            .verify(signature, timestamp, body)
            .map_err(|()| Rejection::BadSignature)?;
        let signed_at: i64 = timestamp.trim().parse().map_err(|_| Rejection::Stale)?;
        let window = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        if now.abs_diff(signed_at) > window.unsigned_abs() {
            return Err(Rejection::Stale);
        }
        let mut seen = self.seen.lock().map_err(|_| Rejection::Replayed)?;
        seen.retain(|_, at| now.saturating_sub(*at) <= window);
        if seen
            .insert(signature.to_ascii_lowercase(), signed_at)
            .is_some()
        {
            return Err(Rejection::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn signed(key: &SigningKey, ts: i64, body: &str) -> HeaderMap {
        let sig = key.sign(format!("{ts}{body}").as_bytes());
        let mut h = HeaderMap::new();
        h.insert("x-signature-ed25519", hex(&sig.to_bytes()).parse().unwrap());
        h.insert("x-signature-timestamp", ts.to_string().parse().unwrap());
        h
    }

    fn check_for(key: &SigningKey) -> SignatureCheck {
        let verifier = Verifier::try_new(key.verifying_key().to_bytes()).unwrap();
        SignatureCheck::new(verifier, Duration::from_secs(300))
    }

    #[test]
    fn only_fresh_unique_requests_signed_by_the_application_pass() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let check = check_for(&key);
        let now = 1_700_000_000;
        let body = r#"{"type":1}"#;
        assert_eq!(
            check.check(&signed(&key, now, body), body.as_bytes(), now),
            Ok(())
        );
        assert_eq!(
            check.check(&signed(&key, now, body), body.as_bytes(), now),
            Err(Rejection::Replayed)
        );
        assert_eq!(
            check.check(&signed(&other, now, body), body.as_bytes(), now),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            check.check(&signed(&key, now, body), br#"{"type":2}"#, now),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            check.check(&signed(&key, now - 301, body), body.as_bytes(), now),
            Err(Rejection::Stale)
        );
        assert_eq!(
            check.check(&signed(&key, now + 301, body), body.as_bytes(), now),
            Err(Rejection::Stale)
        );
        assert_eq!(
            check.check(&HeaderMap::new(), body.as_bytes(), now),
            Err(Rejection::MissingHeaders)
        );
        let mut garbage = signed(&key, now - 1, body);
        garbage.insert("x-signature-ed25519", "zz".parse().unwrap());
        assert_eq!(
            check.check(&garbage, body.as_bytes(), now),
            Err(Rejection::BadSignature)
        );
    }
}
