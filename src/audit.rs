//! The audit trail's entry type. Operators must be able to see every request, delivery,
//! decision attempt (refused ones too, and why), resolution and expiry, with who and how.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{ApproverIdentity, Transport};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    Requested,
    Delivered,
    DeliveryFailed,
    Decision,
    Refused,
    Resolved,
    Expired,
    TimeoutNotice,
    RuleAdded,
    RuleRevoked,
    /// A task moved (started, reported, aborted): `task_id`, `from`, `to`.
    Task,
    /// An execution report went over a task's constraints.
    ConstraintViolation,
    /// The upstream assistant became unreachable (`entered`) or came back.
    Fallback,
    /// Requests refused for going over a rate limit (once a window per scope and key).
    RateLimited,
    /// An identical request folded into this pending one (no second prompt).
    Folded,
}

impl AuditEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Requested => "requested",
            AuditEvent::Delivered => "delivered",
            AuditEvent::DeliveryFailed => "delivery_failed",
            AuditEvent::Decision => "decision",
            AuditEvent::Refused => "refused",
            AuditEvent::Resolved => "resolved",
            AuditEvent::Expired => "expired",
            AuditEvent::TimeoutNotice => "timeout_notice",
            AuditEvent::RuleAdded => "rule_added",
            AuditEvent::RuleRevoked => "rule_revoked",
            AuditEvent::Task => "task",
            AuditEvent::ConstraintViolation => "constraint_violation",
            AuditEvent::Fallback => "fallback",
            AuditEvent::RateLimited => "rate_limited",
            AuditEvent::Folded => "folded",
        }
    }
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, assigned by the store.
    #[serde(default)]
    pub seq: i64,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    pub event: AuditEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ApproverIdentity>,
    /// Event-specific facts: the decision, the refusal kind, the target, the error.
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl AuditEntry {
    pub fn new(event: AuditEvent, approval_id: Option<&str>) -> Self {
        Self {
            seq: 0,
            at: Utc::now(),
            approval_id: approval_id.map(str::to_string),
            event,
            transport: None,
            actor: None,
            detail: serde_json::Value::Null,
        }
    }

    pub fn actor(mut self, actor: &ApproverIdentity) -> Self {
        self.transport = Some(actor.transport);
        self.actor = Some(actor.clone());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The entry's JSON text as the SQLite store keeps it: without what the row has columns
    /// for (`seq`, `approval_id`, `event`, `transport`). Every request writes three lines,
    /// and those fields were a third of each (about 100 of 290 bytes). PostgreSQL keeps lines
    /// whole, for the instances of a cluster still running an earlier build.
    pub fn stored_text(&self) -> serde_json::Result<String> {
        crate::json::text(&StoredBody {
            at: self.at,
            actor: self.actor.as_ref(),
            detail: &self.detail,
        })
    }

    /// An entry read back from its row: the columns, and the JSON text [`Self::stored_text`]
    /// wrote. Lines kept whole (written before it, or by PostgreSQL) read as written.
    pub fn from_stored(
        seq: i64,
        approval_id: Option<String>,
        event: &str,
        transport: Option<&str>,
        text: &str,
    ) -> Result<Self, String> {
        let line: StoredLine = serde_json::from_str(text)
            .map_err(|e| format!("audit line {seq} is not readable: {e}"))?;
        let event = match line.event {
            Some(event) => event,
            None => serde_json::from_value(serde_json::Value::String(event.to_string()))
                .map_err(|_| format!("audit line {seq} has an unknown event {event:?}"))?,
        };
        let transport = match (line.transport, transport) {
            (Some(t), _) => Some(t),
            (None, Some(t)) => Some(t.parse::<Transport>()?),
            (None, None) => None,
        };
        Ok(Self {
            seq,
            at: line.at,
            approval_id: line.approval_id.or(approval_id),
            event,
            transport,
            actor: line.actor,
            detail: line.detail,
        })
    }
}

/// What [`AuditEntry::stored_text`] writes.
#[derive(Serialize)]
struct StoredBody<'a> {
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a ApproverIdentity>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    detail: &'a serde_json::Value,
}

/// A stored line's JSON text, in either form: the fields the row has columns for are
/// there only in lines written before [`AuditEntry::stored_text`].
#[derive(Deserialize)]
struct StoredLine {
    at: DateTime<Utc>,
    #[serde(default)]
    approval_id: Option<String>,
    #[serde(default)]
    event: Option<AuditEvent>,
    #[serde(default)]
    transport: Option<Transport>,
    #[serde(default)]
    actor: Option<ApproverIdentity>,
    #[serde(default)]
    detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decided() -> AuditEntry {
        AuditEntry::new(
            AuditEvent::Decision,
            Some("0b9c7c1e-6a4f-4a35-9d33-5b7d2f0e8a11"),
        )
        .actor(&ApproverIdentity {
            approver_id: "person:alice".into(),
            display_name: "Alice".into(),
            transport: Transport::Slack,
            platform_user_id: Some("U123".into()),
            channel_id: None,
            person: Some("alice".into()),
        })
        .detail(json!({ "decision": "approve-once", "reason": "looks \"fine\"" }))
    }

    /// What a store writes leaves out the fields its row has columns for, and reads back
    /// whole from the row.
    #[test]
    fn a_stored_line_reads_back_whole_from_its_row() {
        let mut entry = decided();
        let text = entry.stored_text().expect("serialises");
        let written: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        for column in ["seq", "approval_id", "event", "transport"] {
            assert!(written.get(column).is_none(), "{column} kept in {text}");
        }
        let read = AuditEntry::from_stored(
            42,
            entry.approval_id.clone(),
            entry.event.as_str(),
            entry.transport.map(Transport::as_str),
            &text,
        )
        .expect("reads");
        entry.seq = 42;
        assert_eq!(read, entry);

        // A line about no request, with no actor, transport or detail.
        let mut bare = AuditEntry::new(AuditEvent::Fallback, None);
        let text = bare.stored_text().expect("serialises");
        let read = AuditEntry::from_stored(7, None, "fallback", None, &text).expect("reads");
        bare.seq = 7;
        assert_eq!(read, bare);
    }

    /// Lines written before the stored form kept every field in their text: they read as
    /// they were written.
    #[test]
    fn a_line_written_whole_reads_as_written() {
        let mut entry = decided();
        let whole = crate::json::text(&entry).expect("serialises");
        let read = AuditEntry::from_stored(
            9,
            entry.approval_id.clone(),
            entry.event.as_str(),
            entry.transport.map(Transport::as_str),
            &whole,
        )
        .expect("reads");
        entry.seq = 9;
        assert_eq!(read, entry);
    }

    /// A row whose event column no build knows is an error that says which line, not a
    /// guess.
    #[test]
    fn an_unknown_event_column_is_a_clear_error() {
        let text = decided().stored_text().expect("serialises");
        let err =
            AuditEntry::from_stored(3, None, "teleported", None, &text).expect_err("unknown event");
        assert!(
            err.contains("audit line 3") && err.contains("teleported"),
            "{err}"
        );
    }
}
