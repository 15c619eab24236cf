//! Control UI sessions: a signed, HttpOnly, SameSite=Strict cookie naming the person, and a
//! CSRF token bound to that session.
//!
//! Nothing about a session is stored server side, so a restart keeps people signed in. The
//! signing key lives in the data directory (`ui-session.key`, created on first start). A
//! session carries a fingerprint of the person's UI token: rotating the token in config signs
//! out every session made with the old one.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::directory::Directory;

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "approvald_session";
/// How long a sign-in lasts.
pub const SESSION_HOURS: i64 = 12;

/// The key sessions and CSRF tokens are signed with, and the sessions signed out since start.
#[derive(Clone)]
pub struct SessionKey {
    key: std::sync::Arc<[u8; 32]>,
    /// Nonces of signed-out sessions and when they would have expired. In memory only: a
    /// signed-out cookie replayed after a restart works again until it expires (documented).
    signed_out: std::sync::Arc<dashmap::DashMap<String, i64>>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(***)")
    }
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub person: String,
    pub expires_at: DateTime<Utc>,
    /// Per-session random value the CSRF token is derived from.
    nonce: String,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// Person name.
    p: String,
    /// Expiry, unix seconds.
    e: i64,
    /// Random nonce.
    n: String,
    /// Fingerprint of the UI token the session was made with.
    t: String,
}

impl SessionKey {
    /// Read the key from `<data_dir>/ui-session.key`, creating it (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join("ui-session.key");
        if let Ok(bytes) = std::fs::read(&path) {
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!(
                    "{} is not a 32-byte key; delete it to make a new one",
                    path.display()
                )
            })?;
            return Ok(Self::from_bytes(key));
        }
        std::fs::create_dir_all(data_dir)?;
        let key = Self::random();
        write_private(&path, key.key.as_slice())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        Ok(key)
    }

    /// A fresh random key (tests, or a data dir that cannot be written).
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self::from_bytes(key)
    }

    /// The raw key, to store it where other instances read it.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    pub(crate) fn from_bytes(key: [u8; 32]) -> Self {
        Self {
            key: std::sync::Arc::new(key),
            signed_out: Default::default(),
        }
    }

    /// Sign a session out: its cookie stops working here even if someone kept a copy.
    pub fn sign_out(&self, session: &Session, now: DateTime<Utc>) {
        let now = now.timestamp();
        self.signed_out.retain(|_, expires| *expires > now);
        self.signed_out
            .insert(session.nonce.clone(), session.expires_at.timestamp());
    }

    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.key.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    fn token_fingerprint(&self, ui_token: &str) -> String {
        B64.encode(&self.mac(&[b"ui-token", ui_token.as_bytes()])[..12])
    }

    /// A new session cookie value for `person`, who signed in with `ui_token`.
    pub fn issue(&self, person: &str, ui_token: &str, now: DateTime<Utc>) -> (String, Session) {
        let expires_at = now + Duration::hours(SESSION_HOURS);
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let payload = Payload {
            p: person.to_string(),
            e: expires_at.timestamp(),
            n: nonce.clone(),
            t: self.token_fingerprint(ui_token),
        };
        let body = B64.encode(serde_json::to_vec(&payload).unwrap_or_default());
        let sig = B64.encode(self.mac(&[b"session", body.as_bytes()]));
        (
            format!("{body}.{sig}"),
            Session {
                person: person.to_string(),
                expires_at: DateTime::from_timestamp(payload.e, 0).unwrap_or(expires_at),
                nonce,
            },
        )
    }

    /// Check a cookie value: signature, expiry, and that the person still has the same UI
    /// token in config. Any failure is simply "not signed in".
    pub fn verify(
        &self,
        value: &str,
        directory: &Directory,
        now: DateTime<Utc>,
    ) -> Option<Session> {
        let (body, sig) = value.split_once('.')?;
        let sig = B64.decode(sig).ok()?;
        let want = self.mac(&[b"session", body.as_bytes()]);
        if !bool::from(want.as_slice().ct_eq(sig.as_slice())) {
            return None;
        }
        let payload: Payload = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        let expires_at = DateTime::from_timestamp(payload.e, 0)?;
        if expires_at <= now {
            return None;
        }
        if self.signed_out.contains_key(&payload.n) {
            return None;
        }
        let person = directory.person(&payload.p)?;
        let token = person.ui_token.as_ref()?;
        let fingerprint = self.token_fingerprint(token.expose());
        if !bool::from(fingerprint.as_bytes().ct_eq(payload.t.as_bytes())) {
            return None;
        }
        Some(Session {
            person: payload.p,
            expires_at,
            nonce: payload.n,
        })
    }

    /// The CSRF token forms of this session must carry.
    pub fn csrf_token(&self, session: &Session) -> String {
        B64.encode(self.mac(&[b"csrf", session.nonce.as_bytes()]))
    }

    /// Constant-time check of a submitted CSRF token.
    pub fn csrf_ok(&self, session: &Session, submitted: &str) -> bool {
        let want = self.csrf_token(session);
        bool::from(want.as_bytes().ct_eq(submitted.as_bytes()))
    }
}

/// The `Set-Cookie` value for a session (or, with `None`, one that clears it).
pub fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_HOURS * 3600
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// The session cookie's value from a `Cookie` header, if present.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;

    fn directory(token: &str) -> Directory {
        let config = Config::from_toml_str_with_env(
            &format!("[[people]]\nname = 'ann'\nui_token = '{token}'\n"),
            &|_| None,
        )
        .unwrap();
        Directory::new(Arc::new(config))
    }

    #[test]
    fn sessions_verify_and_fail_on_tampering_expiry_and_token_rotation() {
        let key = SessionKey::random();
        let dir = directory("ann-ui-token-1");
        let now = Utc::now();
        let (cookie, session) = key.issue("ann", "ann-ui-token-1", now);
        assert_eq!(key.verify(&cookie, &dir, now), Some(session.clone()));

        // Another key, a changed payload, a cut signature: not signed in.
        assert_eq!(SessionKey::random().verify(&cookie, &dir, now), None);
        let (body, sig) = cookie.split_once('.').unwrap();
        let forged = B64.encode(
            String::from_utf8(B64.decode(body).unwrap())
                .unwrap()
                .replace("ann", "bob"),
        );
        assert_eq!(key.verify(&format!("{forged}.{sig}"), &dir, now), None);
        assert_eq!(key.verify(body, &dir, now), None);
        // Expired.
        let later = now + Duration::hours(SESSION_HOURS) + Duration::seconds(1);
        assert_eq!(key.verify(&cookie, &dir, later), None);
        // The token was rotated in config.
        assert_eq!(key.verify(&cookie, &directory("ann-ui-token-2"), now), None);

        // Signed out: the same cookie no longer works; another session is untouched.
        let (other_cookie, _) = key.issue("ann", "ann-ui-token-1", now);
        key.sign_out(&session, now);
        assert_eq!(key.verify(&cookie, &dir, now), None);
        assert!(key.verify(&other_cookie, &dir, now).is_some());

        // CSRF tokens are per session.
        let token = key.csrf_token(&session);
        assert!(key.csrf_ok(&session, &token));
        let (_, other) = key.issue("ann", "ann-ui-token-1", now);
        assert!(!key.csrf_ok(&other, &token));
        assert!(!key.csrf_ok(&session, ""));
    }

    #[test]
    fn the_key_persists_in_the_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let a = SessionKey::load_or_create(tmp.path()).unwrap();
        let b = SessionKey::load_or_create(tmp.path()).unwrap();
        assert_eq!(a.key, b.key);
        std::fs::write(tmp.path().join("ui-session.key"), b"short").unwrap();
        assert!(SessionKey::load_or_create(tmp.path()).is_err());
    }
}
