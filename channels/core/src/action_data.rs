//! The data a button carries back: versioned, short (Telegram allows 64 bytes, Discord 100,
//! Slack 2000), and free of secrets, so anyone who sees it learns nothing they could misuse.
//! It names the approval and the decision; who pressed it is always taken from the platform.
//! It needs no server-side state, so buttons sent before a restart keep working.

use std::fmt;
use std::str::FromStr;

use crate::Decision;

/// Current format version; bump it when the layout changes so old buttons answer "no longer valid".
pub const ACTION_DATA_VERSION: &str = "v1";

/// A decoded button payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionData {
    pub approval_id: String,
    pub decision: Decision,
    /// The Abort button a prompt shows while its approved task runs: stop the task instead of
    /// deciding. `decision` is then `Deny`, so platforms style it as the dangerous button.
    pub abort: bool,
}

/// Why a button payload could not be read: an old format, a foreign button, or garbage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionDataError {
    #[error("this button is from an older version and is no longer valid")]
    OldVersion,
    #[error("this button is not valid")]
    Malformed,
}

impl ActionData {
    pub fn new(approval_id: impl Into<String>, decision: Decision) -> Self {
        Self {
            approval_id: approval_id.into(),
            decision,
            abort: false,
        }
    }

    /// The payload of a running task's Abort button.
    pub fn abort(approval_id: impl Into<String>) -> Self {
        Self {
            approval_id: approval_id.into(),
            decision: Decision::Deny,
            abort: true,
        }
    }

    fn code(&self) -> char {
        if self.abort {
            return 'x';
        }
        match self.decision {
            Decision::ApproveOnce => 'o',
            Decision::ApproveAlways => 'a',
            Decision::Deny => 'd',
        }
    }
}

impl fmt::Display for ActionData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ACTION_DATA_VERSION}:{}:{}",
            self.approval_id,
            self.code()
        )
    }
}

impl FromStr for ActionData {
    type Err = ActionDataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let (Some(version), Some(id), Some(code), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ActionDataError::Malformed);
        };
        if version != ACTION_DATA_VERSION {
            return if version.starts_with('v') {
                Err(ActionDataError::OldVersion)
            } else {
                Err(ActionDataError::Malformed)
            };
        }
        let (decision, abort) = match code {
            "o" => (Decision::ApproveOnce, false),
            "a" => (Decision::ApproveAlways, false),
            "d" => (Decision::Deny, false),
            "x" => (Decision::Deny, true),
            _ => return Err(ActionDataError::Malformed),
        };
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !id_ok {
            return Err(ActionDataError::Malformed);
        }
        Ok(ActionData {
            approval_id: id.to_string(),
            decision,
            abort,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_fits_telegram() {
        let id = "0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
        for d in Decision::ALL {
            let data = ActionData::new(id, d).to_string();
            assert!(data.len() <= 64, "{data} is {} bytes", data.len());
            assert_eq!(data.parse::<ActionData>().unwrap(), ActionData::new(id, d));
        }
        let abort = ActionData::abort(id).to_string();
        assert!(abort.len() <= 64);
        let parsed = abort.parse::<ActionData>().unwrap();
        assert!(parsed.abort);
        assert_eq!(parsed.decision, Decision::Deny);
    }

    #[test]
    fn rejects_old_and_foreign_payloads() {
        assert_eq!(
            "v0:abc:o".parse::<ActionData>(),
            Err(ActionDataError::OldVersion)
        );
        assert_eq!(
            "hello".parse::<ActionData>(),
            Err(ActionDataError::Malformed)
        );
        assert_eq!(
            "v1:abc:z".parse::<ActionData>(),
            Err(ActionDataError::Malformed)
        );
        assert_eq!(
            "v1:a b:o".parse::<ActionData>(),
            Err(ActionDataError::Malformed)
        );
        assert_eq!(
            "v1:abc:o:extra".parse::<ActionData>(),
            Err(ActionDataError::Malformed)
        );
    }
}
