//! What the control UI's templates see: plain, already-decided view structs built from
//! records, so the templates only lay things out (and minijinja escapes every value).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::AuditEntry;
use crate::domain::{ApprovalRecord, Decision, Status, Verdict};

/// Values longer than this (or with more lines) are folded behind "show all".
const FOLD_CHARS: usize = 240;
const FOLD_LINES: usize = 8;

/// A long value shown folded: the head, and the full text behind a disclosure.
#[derive(Debug, Serialize)]
pub struct Folded {
    pub head: String,
    pub full: String,
    pub folded: bool,
    pub chars: usize,
}

impl Folded {
    pub fn new(text: &str) -> Self {
        let chars = text.chars().count();
        let lines = text.lines().count();
        let folded = chars > FOLD_CHARS || lines > FOLD_LINES;
        let head = if folded {
            let mut head: String = text
                .lines()
                .take(FOLD_LINES)
                .collect::<Vec<_>>()
                .join("\n")
                .chars()
                .take(FOLD_CHARS)
                .collect();
            head.push('…');
            head
        } else {
            text.to_string()
        };
        Self {
            head,
            full: text.to_string(),
            folded,
            chars,
        }
    }
}

/// Where a prompt went.
#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub channel: String,
    pub to: String,
    pub thread_id: Option<String>,
    pub ok: bool,
    pub error: Option<String>,
    pub at: String,
}

/// One person's recorded decision.
#[derive(Debug, Serialize)]
pub struct ApprovalView {
    pub who: String,
    pub via: String,
    pub decision: String,
    pub reason: Option<String>,
    pub at: String,
}

/// How a request ended.
#[derive(Debug, Serialize)]
pub struct OutcomeView {
    /// `approved`, `denied` or `expired`.
    pub status: String,
    /// "Approved by Alice via telegram", "Expired: nobody decided in time".
    pub text: String,
    pub by: Option<String>,
    pub via: Option<String>,
    pub reason: Option<String>,
    pub at: String,
}

/// A decision button.
#[derive(Debug, Serialize)]
pub struct DecisionButton {
    pub value: &'static str,
    pub label: &'static str,
    pub class: &'static str,
}

/// One request, as a card on the pending page, a row in history, or the detail page.
#[derive(Debug, Serialize)]
pub struct CardView {
    pub id: String,
    pub short_id: String,
    pub tool: String,
    pub summary: Option<String>,
    pub command: Option<Folded>,
    pub args: Option<Folded>,
    pub risk: &'static str,
    pub requester: Option<String>,
    pub agent: Option<String>,
    pub session: Option<String>,
    pub estimated_cost: Option<f64>,
    pub created_at: String,
    pub expires_at: String,
    pub expires_in: String,
    pub status: &'static str,
    pub deliveries: Vec<DeliveryView>,
    pub progress: Option<String>,
    pub approvals: Vec<ApprovalView>,
    pub outcome: Option<OutcomeView>,
    pub decisions: Vec<DecisionButton>,
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// "4m 10s", "2h 5m", "3d 1h".
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

fn button(d: Decision) -> DecisionButton {
    match d {
        Decision::ApproveOnce => DecisionButton {
            value: "approve-once",
            label: "Approve once",
            class: "approve",
        },
        Decision::ApproveAlways => DecisionButton {
            value: "approve-always",
            label: "Always approve",
            class: "always",
        },
        Decision::Deny => DecisionButton {
            value: "deny",
            label: "Deny",
            class: "deny",
        },
    }
}

impl CardView {
    pub fn new(rec: &ApprovalRecord, progress: Option<String>, now: DateTime<Utc>) -> Self {
        let req = &rec.request;
        let left = (req.expires_at - now).num_seconds();
        let outcome = rec.resolution.as_ref().map(|r| {
            let by = r.decided_by.as_ref().map(|d| d.display_name.clone());
            let via = r.decided_by.as_ref().map(|d| d.transport.to_string());
            let text = match (r.verdict, &by, &via) {
                (Verdict::Timeout, _, _) => "Expired: nobody decided in time".to_string(),
                (v, Some(by), Some(via)) => format!(
                    "{} by {by} via {via}",
                    if v == Verdict::Approve {
                        "Approved"
                    } else {
                        "Denied"
                    }
                ),
                (v, _, _) => if v == Verdict::Approve {
                    "Approved"
                } else {
                    "Denied"
                }
                .to_string(),
            };
            OutcomeView {
                status: rec.status.as_str().to_string(),
                text,
                by,
                via,
                reason: r.reason.clone(),
                at: iso(r.resolved_at),
            }
        });
        Self {
            id: req.id.clone(),
            short_id: req.short_id().to_string(),
            tool: req.tool.clone(),
            summary: req.summary.clone(),
            command: req.command.as_deref().map(Folded::new),
            args: req.args.as_ref().map(|a| {
                Folded::new(&serde_json::to_string_pretty(a).unwrap_or_else(|_| a.to_string()))
            }),
            risk: req.risk_class.as_str(),
            requester: req.requester.as_ref().map(|r| match &r.display_name {
                Some(name) if name != &r.id => format!("{name} ({})", r.id),
                _ => r.id.clone(),
            }),
            agent: req.agent_id.clone(),
            session: req.session_key.clone(),
            estimated_cost: req.estimated_cost,
            created_at: iso(req.created_at),
            expires_at: iso(req.expires_at),
            expires_in: if left > 0 {
                format!("in {}", human_duration(left))
            } else {
                "expired".to_string()
            },
            status: rec.status.as_str(),
            deliveries: rec
                .deliveries
                .iter()
                .map(|d| DeliveryView {
                    channel: d.target.channel.clone(),
                    to: d.target.to.clone(),
                    thread_id: d.target.thread_id.clone(),
                    ok: d.message.is_some(),
                    error: d.error.clone(),
                    at: iso(d.at),
                })
                .collect(),
            progress,
            approvals: rec
                .approvals
                .iter()
                .map(|a| ApprovalView {
                    who: a.approver.display_name.clone(),
                    via: a.approver.transport.to_string(),
                    decision: a.decision.label().to_string(),
                    reason: a.reason.clone(),
                    at: iso(a.decided_at),
                })
                .collect(),
            outcome,
            decisions: if rec.status == Status::Pending {
                req.allowed_decisions.iter().map(|d| button(*d)).collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// One audit line on the detail page.
#[derive(Debug, Serialize)]
pub struct AuditView {
    pub seq: i64,
    pub at: String,
    pub event: &'static str,
    pub who: Option<String>,
    pub via: Option<String>,
    /// The event's facts in words ("telegram:-100 failed: chat not found").
    pub text: String,
}

impl AuditView {
    pub fn new(e: &AuditEntry) -> Self {
        let d = &e.detail;
        let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let target = |v: &serde_json::Value| {
            format!(
                "{}:{}",
                v["channel"].as_str().unwrap_or("?"),
                v["to"].as_str().unwrap_or("?")
            )
        };
        let text = match e.event.as_str() {
            "delivered" => format!("prompt delivered to {}", target(&d["target"])),
            "delivery_failed" => format!(
                "could not deliver to {}: {}",
                target(&d["target"]),
                s(&d["error"]).unwrap_or_default()
            ),
            "refused" => format!(
                "{} refused ({}): {}",
                s(&d["decision"]).unwrap_or_else(|| "decision".into()),
                s(&d["kind"]).unwrap_or_default(),
                s(&d["why"]).unwrap_or_default()
            ),
            "timeout_notice" => format!("timeout notice to {}", target(&d["target"])),
            "task" => {
                let mut t = format!(
                    "task {}: {} → {}",
                    s(&d["task_id"]).unwrap_or_default(),
                    s(&d["from"]).unwrap_or_default(),
                    s(&d["to"]).unwrap_or_default()
                );
                if let Some(reason) = s(&d["abort"]["reason"]) {
                    t.push_str(&format!(" ({reason})"));
                }
                t
            }
            "constraint_violation" => format!(
                "constraint violated: {}",
                d["violations"]
                    .as_array()
                    .map(|v| v
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join("; "))
                    .unwrap_or_default()
            ),
            _ if d.is_null() => String::new(),
            _ => compact(d),
        };
        Self {
            seq: e.seq,
            at: iso(e.at),
            event: e.event.as_str(),
            who: e.actor.as_ref().map(|a| a.display_name.clone()),
            via: e.transport.map(|t| t.to_string()),
            text,
        }
    }
}

/// `key: value` pairs of a JSON object, for audit details that have no sentence of their own.
fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_fold_and_short_ones_do_not() {
        let short = Folded::new("ls -la");
        assert!(!short.folded);
        assert_eq!(short.head, "ls -la");
        let long = Folded::new(&"x".repeat(1000));
        assert!(long.folded);
        assert_eq!(long.chars, 1000);
        assert_eq!(long.full.len(), 1000);
        assert!(long.head.chars().count() <= FOLD_CHARS + 1);
        let many = Folded::new(&"a\n".repeat(20));
        assert!(many.folded);
        assert_eq!(many.head.lines().count(), FOLD_LINES);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(250), "4m 10s");
        assert_eq!(human_duration(7500), "2h 5m");
        assert_eq!(human_duration(90000), "1d 1h");
        assert_eq!(human_duration(-3), "0s");
    }
}
