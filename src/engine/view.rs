//! How a request is shown to callers and stream clients, serialised straight from the record.
//!
//! Every cycle answers the caller, the resolver and every stream client with these; building
//! a `serde_json::Value` first (a map per object, a string per date) and then writing it out
//! cost more than the rest of answering together.

use std::sync::{Arc, OnceLock};

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

use crate::domain::{Approval, ApprovalRecord};

/// What a caller is answered about a request (`tool.approval.request`, `wait`, `resolve`) and
/// what `tool.approval.resolved` and `tool.approval.expired` carry. The outcome's fields
/// (`decision`, `scope`, `decided_by`, `reason`, `resolved_at`) are there once it is settled.
pub struct ResultView<'a>(pub &'a ApprovalRecord);

/// [`ResultView`] plus the whole request and the progress towards quorum: what stream clients
/// are sent when a request arrives, and what `tool.approval.get` and `list` answer.
pub struct ApprovalView<'a> {
    pub record: &'a ApprovalRecord,
    pub progress: Option<String>,
}

/// A record handed to more than one answer at once: the caller blocked on a request and the
/// person whose decision settled it are answered from the same record, so its answer text
/// ([`ResultView`]) is written once, by whichever answer goes first, and the record is not
/// copied for each.
#[derive(Debug)]
pub struct SharedRecord {
    record: ApprovalRecord,
    answer: OnceLock<Option<Box<RawValue>>>,
}

impl SharedRecord {
    pub fn new(record: ApprovalRecord) -> Arc<Self> {
        Arc::new(Self {
            record,
            answer: OnceLock::new(),
        })
    }

    /// The record as [`ResultView`] text (`None` cannot happen: every key is a string).
    pub fn answer_text(&self) -> Option<&RawValue> {
        self.answer
            .get_or_init(|| serde_json::value::to_raw_value(&ResultView(&self.record)).ok())
            .as_deref()
    }

    /// The record itself, copied only if another answer still holds it.
    pub fn into_record(self: Arc<Self>) -> ApprovalRecord {
        match Arc::try_unwrap(self) {
            Ok(shared) => shared.record,
            Err(shared) => shared.record.clone(),
        }
    }
}

/// Serialises as its answer text ([`ResultView`]), written once.
impl Serialize for SharedRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.answer_text() {
            Some(text) => text.serialize(serializer),
            None => ResultView(&self.record).serialize(serializer),
        }
    }
}

impl std::ops::Deref for SharedRecord {
    type Target = ApprovalRecord;

    fn deref(&self) -> &ApprovalRecord {
        &self.record
    }
}

/// A date as [`crate::rfc3339`] writes it.
struct Rfc3339<'a>(&'a chrono::DateTime<chrono::Utc>);

impl Serialize for Rfc3339<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::rfc3339::serialize(self.0, serializer)
    }
}

/// Every decision, in order, each as [`DecisionView`] (written as they are read, no list
/// built first).
struct DecisionsView<'a>(&'a [Approval]);

/// One decision as answers show it: `reason` always present (`null` when none was given).
struct DecisionView<'a>(&'a Approval);

impl ResultView<'_> {
    fn entries<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        let rec = self.0;
        map.serialize_entry("id", &rec.request.id)?;
        map.serialize_entry("status", &rec.status)?;
        map.serialize_entry("tool", &rec.request.tool)?;
        map.serialize_entry("delivered_to", &rec.delivered_to())?;
        map.serialize_entry("created_at", &Rfc3339(&rec.request.created_at))?;
        map.serialize_entry("expires_at", &Rfc3339(&rec.request.expires_at))?;
        map.serialize_entry("approvals", &DecisionsView(&rec.approvals))?;
        if let Some(r) = &rec.resolution {
            map.serialize_entry("decision", &r.verdict)?;
            if let Some(scope) = r.scope {
                map.serialize_entry("scope", &scope)?;
            }
            map.serialize_entry("decided_by", &r.decided_by)?;
            map.serialize_entry("reason", &r.reason)?;
            map.serialize_entry("resolved_at", &Rfc3339(&r.resolved_at))?;
        }
        Ok(())
    }
}

impl Serialize for ResultView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        self.entries(&mut map)?;
        map.end()
    }
}

impl Serialize for ApprovalView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        ResultView(self.record).entries(&mut map)?;
        map.serialize_entry("request", &self.record.request)?;
        map.serialize_entry("progress", &self.progress)?;
        map.end()
    }
}

impl Serialize for DecisionsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(DecisionView))
    }
}

impl Serialize for DecisionView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("approver", &a.approver)?;
        map.serialize_entry("decision", &a.decision)?;
        map.serialize_entry("reason", &a.reason)?;
        map.serialize_entry("decided_at", &Rfc3339(&a.decided_at))?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::domain::{Resolution, Status, Verdict};

    fn record() -> ApprovalRecord {
        let request = serde_json::from_value(json!({
            "id": "0b8f3c1e-5d7a-4c2b-9e1f-2a3b4c5d6e7f", "tool": "shell",
            "command": "rm -rf build", "risk_class": "high",
            "created_at": "2026-11-30T08:00:00Z", "expires_at": "2026-11-30T08:05:00Z",
            "allowed_decisions": ["approve-once", "deny"],
        }))
        .expect("a request");
        ApprovalRecord::pending(request)
    }

    fn text(v: &impl Serialize) -> Value {
        serde_json::from_str(&serde_json::to_string(v).expect("serialises")).expect("JSON")
    }

    #[test]
    fn a_pending_request_has_no_outcome_fields() {
        let v = text(&ResultView(&record()));
        assert_eq!(v["id"], "0b8f3c1e-5d7a-4c2b-9e1f-2a3b4c5d6e7f");
        assert_eq!(v["status"], "pending");
        assert_eq!(v["created_at"], "2026-11-30T08:00:00Z");
        assert_eq!(v["approvals"], json!([]));
        assert_eq!(v["delivered_to"], json!([]));
        for absent in [
            "decision",
            "scope",
            "decided_by",
            "reason",
            "resolved_at",
            "request",
        ] {
            assert!(v.get(absent).is_none(), "{absent} in {v}");
        }
    }

    #[test]
    fn a_settled_request_says_who_decided_and_every_decision_has_a_reason_field() {
        let mut rec = record();
        let who: crate::domain::ApproverIdentity = serde_json::from_value(json!({
            "approver_id": "person:alice", "display_name": "Alice", "transport": "slack",
        }))
        .expect("an identity");
        rec.approvals.push(Approval {
            approver: who.clone(),
            decision: approvald_channel::Decision::Deny,
            reason: None,
            decided_at: rec.request.created_at,
        });
        rec.status = Status::Denied;
        rec.resolution = Some(Resolution {
            verdict: Verdict::Deny,
            scope: None,
            decided_by: Some(who),
            reason: None,
            resolved_at: rec.request.created_at,
        });
        let v = text(&ResultView(&rec));
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["decided_by"]["approver_id"], "person:alice");
        // Present and null, so callers can read them without checking first.
        assert_eq!(v.get("reason"), Some(&Value::Null));
        assert_eq!(v["approvals"][0].get("reason"), Some(&Value::Null));
        assert_eq!(v["approvals"][0]["decision"], "deny");
        assert!(v.get("scope").is_none(), "no scope for a denial: {v}");
    }

    #[test]
    fn the_full_view_adds_the_request_and_progress() {
        let rec = record();
        let v = text(&ApprovalView {
            record: &rec,
            progress: Some("1 of 2 approvals: Alice".into()),
        });
        assert_eq!(v["id"], v["request"]["id"]);
        assert_eq!(v["request"]["command"], "rm -rf build");
        assert_eq!(v["progress"], "1 of 2 approvals: Alice");
        assert_eq!(
            text(&ApprovalView {
                record: &rec,
                progress: None
            })["progress"],
            Value::Null
        );
    }

    #[test]
    fn a_shared_record_answers_with_its_result_view_written_once() {
        let shared = SharedRecord::new(record());
        assert_eq!(text(&*shared), text(&ResultView(&record())));
        // Both answers get the one text (the caller's and the decider's).
        let first = shared.answer_text().expect("text");
        let second = shared.answer_text().expect("text");
        assert!(std::ptr::eq(first, second));
        // Held by another answer: the record is copied out, and the copy is the record.
        let other = shared.clone();
        assert_eq!(shared.into_record(), record());
        assert_eq!(other.into_record(), record());
    }
}
