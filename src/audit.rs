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
}
