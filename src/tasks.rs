//! Tasks: every approval request followed through to its end. A task's status starts from its
//! approval (pending_approval, approved, rejected, expired) and then follows the execution the
//! executor reports (running, completed, failed) or an operator's abort. Only the transitions
//! of [`TaskStatus::can_go`] are allowed; anything else is refused and changes nothing.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{ApproverIdentity, Status};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    PendingApproval,
    Approved,
    Running,
    Completed,
    Failed,
    Rejected,
    Aborted,
    Expired,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 9] = [
        TaskStatus::Pending,
        TaskStatus::PendingApproval,
        TaskStatus::Approved,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Rejected,
        TaskStatus::Aborted,
        TaskStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::PendingApproval => "pending_approval",
            TaskStatus::Approved => "approved",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Rejected => "rejected",
            TaskStatus::Aborted => "aborted",
            TaskStatus::Expired => "expired",
        }
    }

    /// The only valid moves: pending -> pending_approval -> approved | rejected | expired;
    /// approved -> running | aborted; running -> completed | failed | aborted.
    pub fn can_go(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, to),
            (Pending, PendingApproval)
                | (PendingApproval, Approved | Rejected | Expired)
                | (Approved, Running | Aborted)
                | (Running, Completed | Failed | Aborted)
        )
    }

    /// No further move is possible.
    pub fn is_final(self) -> bool {
        TaskStatus::ALL.iter().all(|to| !self.can_go(*to))
    }

    /// The task status an approval status stands for, before execution.
    pub fn of_approval(status: Status) -> TaskStatus {
        match status {
            Status::Pending => TaskStatus::PendingApproval,
            Status::Approved => TaskStatus::Approved,
            Status::Denied => TaskStatus::Rejected,
            Status::Expired => TaskStatus::Expired,
        }
    }

    /// Statuses that belong to execution (stored on the task, not derived from the approval).
    pub fn is_execution(self) -> bool {
        matches!(
            self,
            TaskStatus::Running | TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Aborted
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown task status {s:?}: use one of {}",
                    TaskStatus::ALL.map(|t| t.as_str()).join(", ")
                )
            })
    }
}

/// A limit an approved task must run within.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    /// `cost_limit` (USD), `time_limit` (ms), `token_limit`, `parallelism`, `resource_limit`.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: f64,
    pub reason: String,
}

impl Constraint {
    pub fn new(kind: &str, value: f64, reason: impl Into<String>) -> Self {
        Self {
            kind: kind.to_string(),
            value,
            reason: reason.into(),
        }
    }
}

/// An operator's (or a violated constraint's) request to stop a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbortSignal {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<ApproverIdentity>,
    pub at: DateTime<Utc>,
}

/// One step of a task's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStep {
    pub status: TaskStatus,
    pub at: DateTime<Utc>,
}

/// What approvald keeps about a task beyond its approval: the assistant protocol's fields and
/// everything the executor reported. Stored as one document keyed by `task_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub approval_id: String,
    pub task_type: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub estimated_cost: Option<f64>,
    #[serde(default)]
    pub estimated_duration_ms: Option<u64>,
    #[serde(default)]
    pub context: serde_json::Value,
    /// Set once, when the task is first seen approved.
    #[serde(default)]
    pub constraints: Option<Vec<Constraint>>,
    /// Decided while the upstream assistant was unreachable (strict constraints).
    #[serde(default)]
    pub fallback: bool,
    /// Execution status; `None` while the status follows the approval.
    #[serde(default)]
    pub execution: Option<TaskStatus>,
    #[serde(default)]
    pub actual_cost: Option<f64>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub logs: Vec<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub abort: Option<AbortSignal>,
    /// Constraint violations seen in reports.
    #[serde(default)]
    pub violations: Vec<String>,
    #[serde(default)]
    pub history: Vec<TaskStep>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TaskRecord {
    /// A task for an approval that had none yet (native callers: the task id is the approval id).
    pub fn for_approval(task_id: &str, approval_id: &str, task_type: &str) -> Self {
        let now = Utc::now();
        Self {
            task_id: task_id.to_string(),
            approval_id: approval_id.to_string(),
            task_type: task_type.to_string(),
            description: None,
            estimated_cost: None,
            estimated_duration_ms: None,
            context: serde_json::Value::Null,
            constraints: None,
            fallback: false,
            execution: None,
            actual_cost: None,
            started_at: None,
            ended_at: None,
            duration_ms: None,
            result: None,
            logs: Vec::new(),
            error_message: None,
            abort: None,
            violations: Vec::new(),
            history: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The status now, given the status of its approval.
    pub fn status(&self, approval: Status) -> TaskStatus {
        self.execution
            .unwrap_or_else(|| TaskStatus::of_approval(approval))
    }

    pub fn constraint(&self, kind: &str) -> Option<f64> {
        self.constraints
            .as_ref()?
            .iter()
            .find(|c| c.kind == kind)
            .map(|c| c.value)
    }

    /// Append log lines, dropping the oldest beyond `max_bytes` in all.
    pub fn add_logs(&mut self, lines: &[String], max_bytes: usize) {
        self.logs.extend(lines.iter().cloned());
        let mut total: usize = self.logs.iter().map(|l| l.len()).sum();
        let mut dropped = 0;
        while total > max_bytes && !self.logs.is_empty() {
            total -= self.logs.remove(0).len();
            dropped += 1;
        }
        if dropped > 0 {
            let note = format!("[{dropped} earlier log lines dropped]");
            total += note.len();
            self.logs.insert(0, note);
            while total > max_bytes && self.logs.len() > 1 {
                total -= self.logs.remove(1).len();
            }
        }
    }
}

/// The approval id behind an assistant-protocol task id: a name-based UUID, so a repeated
/// `/api/approve` for one task always lands on the same approval (never a second prompt).
pub fn approval_id_for_task(task_id: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_2a4e_9b3d_4e8a_a1c7_52d0_e3f4_b8a9);
    uuid::Uuid::new_v5(&NAMESPACE, task_id.as_bytes())
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_transitions_are_valid() {
        use TaskStatus::*;
        let valid = [
            (Pending, PendingApproval),
            (PendingApproval, Approved),
            (PendingApproval, Rejected),
            (PendingApproval, Expired),
            (Approved, Running),
            (Approved, Aborted),
            (Running, Completed),
            (Running, Failed),
            (Running, Aborted),
        ];
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                assert_eq!(
                    from.can_go(to),
                    valid.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        for end in [Completed, Failed, Rejected, Aborted, Expired] {
            assert!(end.is_final(), "{end}");
        }
        assert!("runing".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn logs_stay_within_their_bound_and_say_what_was_dropped() {
        let mut t = TaskRecord::for_approval("t", "a", "chat");
        let lines: Vec<String> = (0..100).map(|i| format!("line {i:03} ........")).collect();
        t.add_logs(&lines, 200);
        let total: usize = t.logs.iter().map(|l| l.len()).sum();
        assert!(total <= 200, "{total}");
        assert!(t.logs[0].contains("earlier log lines dropped"));
        assert_eq!(t.logs.last().map(String::as_str), Some("line 099 ........"));
    }

    #[test]
    fn a_task_id_always_maps_to_the_same_approval() {
        assert_eq!(approval_id_for_task("t-1"), approval_id_for_task("t-1"));
        assert_ne!(approval_id_for_task("t-1"), approval_id_for_task("t-2"));
    }
}
