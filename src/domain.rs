//! The words approvald speaks: requests, decisions, verdicts, identities, resolutions.
//!
//! These types are what the store persists, what the API returns and what the audit log
//! records, so they are all serde-serialisable and their names are part of the API contract.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use approvald_channel::{Decision, MessageRef, Target, Transport};

/// How dangerous the caller says a tool call is. Rules and the prompt's colour use it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum RiskClass {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl RiskClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskClass::Low => "low",
            RiskClass::Medium => "medium",
            RiskClass::High => "high",
            RiskClass::Critical => "critical",
        }
    }
}

impl FromStr for RiskClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(RiskClass::Low),
            "medium" => Ok(RiskClass::Medium),
            "high" => Ok(RiskClass::High),
            "critical" => Ok(RiskClass::Critical),
            _ => Err(format!(
                "unknown risk class {s:?}: use low, medium, high or critical"
            )),
        }
    }
}

impl fmt::Display for RiskClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asked for the tool call (the human or agent behind the session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// A requester with its keys in sorted order, as a `serde_json::Value` writes it: the fold
/// key was first computed from that text, and stored keys must keep matching.
struct SortedRequester<'a>(&'a Requester);

impl Serialize for SortedRequester<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if let Some(name) = &self.0.display_name {
            map.serialize_entry("display_name", name)?;
        }
        map.serialize_entry("id", &self.0.id)?;
        map.end()
    }
}

/// Where the session that asked lives, for `session` delivery (answer where the agent was asked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub channel: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

impl Origin {
    pub fn target(&self) -> Target {
        Target {
            channel: self.channel.clone(),
            to: self.to.clone(),
            thread_id: self.thread_id.clone(),
            account_id: self.account_id.clone(),
        }
    }
}

/// A tool call waiting for permission, exactly as recorded when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: String,
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    pub risk_class: RiskClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Requester>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost: Option<f64>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub expires_at: DateTime<Utc>,
    pub allowed_decisions: Vec<Decision>,
    /// The API token that created it: asking and approving with one token is self-approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_via_token: Option<String>,
}

impl ApprovalRequest {
    /// The first 8 characters: what people type in `/approve <id>` and see on prompts.
    pub fn short_id(&self) -> &str {
        self.id.get(..8).unwrap_or(&self.id)
    }

    /// What makes two requests "the same ask" for folding: who asks (requester, token),
    /// from where (agent, session) and what (tool, command, args, risk). Two people's requests
    /// never share a key, so folding cannot let anyone approve their own request through
    /// another's prompt.
    pub fn fold_key(&self) -> String {
        use sha2::Digest;
        // The text hashed is a JSON array of these fields, as first written through a
        // `serde_json::Value` (so a requester's keys in sorted order). Written straight from
        // the fields now, with no copy of them: the key is computed for every request.
        let parts = (
            &self.requested_via_token,
            self.requester.as_ref().map(SortedRequester),
            &self.agent_id,
            &self.session_key,
            &self.tool,
            &self.command,
            &self.args,
            &self.risk_class,
            &self.summary,
        );
        // Cannot fail: every map key is a string.
        let digest = sha2::Sha256::digest(serde_json::to_vec(&parts).unwrap_or_default());
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut key = String::with_capacity(64);
        for b in digest {
            key.push(HEX[usize::from(b >> 4)] as char);
            key.push(HEX[usize::from(b & 0xf)] as char);
        }
        key
    }

    /// Whether two requests ask for the same thing (an explicit id resent by a retrying caller).
    pub fn same_content(&self, other: &ApprovalRequest) -> bool {
        self.tool == other.tool
            && self.summary == other.summary
            && self.command == other.command
            && self.args == other.args
            && self.risk_class == other.risk_class
            && self.agent_id == other.agent_id
            && self.session_key == other.session_key
            && self.requester == other.requester
    }
}

/// The identity attached to every decision: who, through which surface, and the linked person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverIdentity {
    /// Stable key: `person:<name>` when linked, else `<transport>:<platform id>` or `token:<name>`.
    pub approver_id: String,
    pub display_name: String,
    pub transport: Transport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// The configured person this identity belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
}

impl ApproverIdentity {
    /// The identity recorded when a rule decides.
    pub fn rules(rule: &str) -> Self {
        Self {
            approver_id: format!("rules:{rule}"),
            display_name: format!("rule {rule}"),
            transport: Transport::Rules,
            platform_user_id: None,
            channel_id: None,
            person: None,
        }
    }
}

/// One person's (or rule's) decision on a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub approver: ApproverIdentity,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub decided_at: DateTime<Utc>,
}

/// The final verdict. A timeout is its own verdict and is never reported as a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Deny,
    Timeout,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
            Verdict::Timeout => "timeout",
        }
    }

    pub fn status(self) -> Status {
        match self {
            Verdict::Approve => Status::Approved,
            Verdict::Deny => Status::Denied,
            Verdict::Timeout => Status::Expired,
        }
    }
}

/// How far an approval reaches: this call only, or every identical call from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Once,
    Always,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
        }
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Status::Pending),
            "approved" => Ok(Status::Approved),
            "denied" => Ok(Status::Denied),
            "expired" => Ok(Status::Expired),
            _ => Err(format!(
                "unknown status {s:?}: use pending, approved, denied or expired"
            )),
        }
    }
}

/// How a request ended: the verdict, its scope, the decisions that led to it, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The decision that settled it (absent for a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<ApproverIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub resolved_at: DateTime<Utc>,
}

/// A prompt that reached a target (or failed to), kept so it can be edited later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub target: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub at: DateTime<Utc>,
}

/// Everything known about one request: what was asked, who decided what, how it ended,
/// and where its prompts went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub request: ApprovalRequest,
    pub status: Status,
    pub approvals: Vec<Approval>,
    pub resolution: Option<Resolution>,
    pub deliveries: Vec<Delivery>,
}

impl ApprovalRecord {
    /// A request just recorded: pending, nothing decided, nothing delivered.
    pub fn pending(request: ApprovalRequest) -> Self {
        Self {
            request,
            status: Status::Pending,
            approvals: Vec::new(),
            resolution: None,
            deliveries: Vec::new(),
        }
    }

    pub fn delivered_to(&self) -> Vec<&MessageRef> {
        self.deliveries
            .iter()
            .filter_map(|d| d.message.as_ref())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored with every pending request: a new ask must find one stored by an earlier
    /// version, so the key of the same ask never changes.
    #[test]
    fn the_fold_key_of_an_ask_stays_the_same() {
        let req: ApprovalRequest = serde_json::from_value(serde_json::json!({
            "id": "0b8f3c1e-5d7a-4c2b-9e1f-2a3b4c5d6e7f", "tool": "shell",
            "command": "rm -rf build", "args": { "cwd": "/srv", "all": true },
            "risk_class": "high", "agent_id": "builder", "session_key": "s-1",
            "requester": { "id": "u1", "display_name": "Uma" },
            "created_at": "2026-11-30T08:00:00Z", "expires_at": "2026-11-30T08:05:00Z",
            "allowed_decisions": ["approve-once", "deny"], "requested_via_token": "gateway",
        }))
        .expect("a request");
        assert_eq!(
            req.fold_key(),
            "d9ff63e01feb09899f1c53944be1b262d303fee4b63228588f8272186b718142"
        );
        // Absent fields (null in the text), a requester with only an id, a summary.
        let req: ApprovalRequest = serde_json::from_value(serde_json::json!({
            "id": "1c9a4d2f-6e8b-4d3c-8f2a-3b4c5d6e7f80", "tool": "http.fetch",
            "summary": "fetch the page", "risk_class": "low", "requester": { "id": "u2" },
            "created_at": "2026-11-30T08:00:00Z", "expires_at": "2026-11-30T08:05:00Z",
            "allowed_decisions": ["approve-once", "deny"],
        }))
        .expect("a request");
        assert_eq!(
            req.fold_key(),
            "5ddd7ece5aa7a8ab1f2a8a3c4257149ce607c0373fdbf4ba469e1477fc7caf6f"
        );
    }

    #[test]
    fn timeout_is_its_own_status_not_a_denial() {
        assert_eq!(Verdict::Timeout.status(), Status::Expired);
        assert_ne!(Verdict::Timeout.status(), Verdict::Deny.status());
        assert_eq!(
            serde_json::to_string(&Verdict::Timeout).unwrap(),
            "\"timeout\""
        );
    }
}
