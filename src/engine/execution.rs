//! Tasks through to their end: the assistant protocol's enqueue (`/api/approve`), budgets and
//! constraints, execution start and reports, aborts, and the queue figures. A task is an
//! approval plus what the executor reports; its status moves only along
//! [`TaskStatus::can_go`], each move a compare-and-set in the store, audited, announced and
//! shown on every prompt of its approval.

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use approvald_channel::{InboundAction, InboundReply, RefusalKind};

use super::{Actor, NewRequest, PresetVerdict, ToolApprovalForwarder};
use crate::audit::{AuditEntry, AuditEvent};
use crate::config::{ApproverFactor, TokenScope};
use crate::directory::Caller;
use crate::domain::{ApprovalRecord, ApproverIdentity, Decision, Requester, Status, Transport};
use crate::error::ApprovalError;
use crate::events;
use crate::tasks::{
    AbortSignal, Constraint, TaskRecord, TaskStatus, TaskStep, approval_id_for_task,
};
use crate::templates::TemplateKind;
use crate::upstream::UpstreamVerdict;

/// The body of `POST /api/approve`.
#[derive(Debug, Clone, Deserialize)]
pub struct EnqueueTask {
    pub task_id: String,
    pub task_type: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub estimated_cost: Option<f64>,
    #[serde(default)]
    pub estimated_duration_ms: Option<u64>,
    #[serde(default)]
    pub context: Value,
    /// When the gateway asked; informational.
    #[serde(default)]
    pub timestamp: Option<Value>,
}

/// The answer to `POST /api/approve`: the protocol's four fields, plus where the task stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApproveAnswer {
    pub approved: bool,
    pub reason: String,
    pub constraints: Option<Vec<Constraint>>,
    pub retry_after_seconds: Option<u64>,
    /// A human decision is still awaited: ask again after `retry_after_seconds`.
    pub pending: bool,
    pub task_id: String,
    pub approval_id: String,
    pub status: TaskStatus,
    /// Decided in fallback mode (upstream assistant unreachable).
    pub fallback: bool,
}

/// The body of `POST /api/execution-report` and `tool.execution.report`.
#[derive(Debug, Clone, Deserialize)]
pub struct ExecutionReport {
    pub task_id: String,
    pub status: String,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub actual_cost: Option<f64>,
    #[serde(default)]
    pub start_time: Option<Value>,
    #[serde(default)]
    pub end_time: Option<Value>,
    #[serde(default)]
    pub logs: Option<Value>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// A task as it stands: its record, its approval, and whether the record is stored yet
/// (native requests get one at their first execution step).
#[derive(Debug, Clone)]
pub struct TaskSnapshot {
    pub task: TaskRecord,
    pub approval: ApprovalRecord,
    stored: bool,
}

impl TaskSnapshot {
    pub fn status(&self) -> TaskStatus {
        self.task.status(self.approval.status)
    }
}

const MAX_TASK_ID: usize = 256;
const MAX_RESULT: usize = 4096;

impl ToolApprovalForwarder {
    // ----- lookups ----------------------------------------------------------------------

    /// A task by its task id, or by its approval's id (or unique prefix).
    pub async fn task(&self, given: &str) -> Result<TaskSnapshot, ApprovalError> {
        let given = given.trim();
        if given.is_empty() || given.len() > MAX_TASK_ID {
            return Err(ApprovalError::InvalidParams(
                "task_id must be 1 to 256 characters".into(),
            ));
        }
        let store = &self.inner.store;
        if let Some(task) = store.task_by_id(given).await? {
            let approval = self.load(&task.approval_id).await?;
            return Ok(TaskSnapshot {
                task,
                approval,
                stored: true,
            });
        }
        let id = match self.resolve_id(given).await {
            Ok(id) => id,
            Err(ApprovalError::InvalidParams(_)) => {
                return Err(ApprovalError::UnknownId(given.to_string()));
            }
            Err(e) => return Err(e),
        };
        let approval = self.load(&id).await?;
        match store.task_by_approval(&id).await? {
            Some(task) => Ok(TaskSnapshot {
                task,
                approval,
                stored: true,
            }),
            None => {
                let mut task = TaskRecord::for_approval(&id, &id, &approval.request.tool);
                task.description = approval
                    .request
                    .summary
                    .clone()
                    .or(approval.request.command.clone());
                task.estimated_cost = approval.request.estimated_cost;
                task.created_at = approval.request.created_at;
                Ok(TaskSnapshot {
                    task,
                    approval,
                    stored: false,
                })
            }
        }
    }

    /// The API view of a task.
    pub fn task_json(&self, snap: &TaskSnapshot) -> Value {
        let t = &snap.task;
        json!({
            "task_id": t.task_id,
            "approval_id": t.approval_id,
            "task_type": t.task_type,
            "description": t.description,
            "status": snap.status(),
            "estimated_cost": t.estimated_cost,
            "estimated_duration_ms": t.estimated_duration_ms,
            "actual_cost": t.actual_cost,
            "constraints": t.constraints,
            "context": t.context,
            "start_time": t.started_at,
            "end_time": t.ended_at,
            "duration_ms": t.duration_ms,
            "result": t.result,
            "logs": t.logs,
            "error_message": t.error_message,
            "abort": t.abort,
            "violations": t.violations,
            "history": full_history(snap),
            "fallback": t.fallback,
            "created_at": t.created_at,
            "updated_at": t.updated_at,
            "execution_text": execution_text(snap),
            "approval": super::result_json(&snap.approval),
        })
    }

    // ----- budgets and constraints ------------------------------------------------------

    fn today_start(&self) -> DateTime<Utc> {
        let offset = self.inner.config.budget.offset();
        let local = Utc::now().with_timezone(&offset);
        offset
            .with_ymd_and_hms(local.year(), local.month(), local.day(), 0, 0, 0)
            .single()
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(Utc::now)
    }

    /// Seconds until the budget day rolls over.
    pub fn seconds_to_next_budget_day(&self) -> u64 {
        let next = self.today_start() + chrono::Duration::days(1);
        (next - Utc::now()).num_seconds().max(1) as u64
    }

    pub async fn spent_today(&self) -> Result<f64, ApprovalError> {
        Ok(self.inner.store.spent_since(self.today_start()).await?)
    }

    /// Why the budget refuses a task at once, and when to ask again.
    async fn budget_refusal(
        &self,
        task_type: &str,
        estimated: f64,
    ) -> Result<Option<PresetVerdict>, ApprovalError> {
        let b = &self.inner.config.budget;
        if let Some(limit) = b.task_type_limits.get(task_type)
            && estimated > *limit
        {
            return Ok(Some(PresetVerdict {
                identity: ApproverIdentity::rules("task-type-limit"),
                decision: Decision::Deny,
                reason: Some(format!(
                    "Exceeds {task_type} task limit: ${limit:.2} limit, ${estimated:.2} estimated"
                )),
            }));
        }
        if let Some(daily) = b.daily_usd {
            let spent = self.spent_today().await?;
            if spent + estimated > daily || (spent >= daily && daily > 0.0) {
                return Ok(Some(PresetVerdict {
                    identity: ApproverIdentity::rules(DAILY_BUDGET_RULE),
                    decision: Decision::Deny,
                    reason: Some(format!(
                        "Exceeds daily budget: ${daily:.2} limit, ${spent:.2} used"
                    )),
                }));
            }
        }
        Ok(None)
    }

    /// The constraints an approved task runs under now: what is left of today's budget and
    /// its type's limit, the configured limits, and, in fallback mode, the strict ones.
    async fn constraints_now(
        &self,
        task_type: &str,
        fallback: bool,
    ) -> Result<Vec<Constraint>, ApprovalError> {
        let b = &self.inner.config.budget;
        let mut out = Vec::new();
        let mut cost: Option<(f64, String)> = None;
        let mut tighten_cost = |value: f64, reason: String| {
            if cost.as_ref().is_none_or(|(v, _)| value < *v) {
                cost = Some((value, reason));
            }
        };
        if let Some(limit) = b.task_type_limits.get(task_type) {
            tighten_cost(*limit, format!("{task_type} task limit"));
        }
        if let Some(daily) = b.daily_usd {
            let left = (daily - self.spent_today().await?).max(0.0);
            tighten_cost(
                (left * 100.0).floor() / 100.0,
                format!("left of today's ${daily:.2} budget"),
            );
        }
        let a = &self.inner.config.assistant;
        if fallback {
            tighten_cost(a.fallback_cost_limit, "fallback mode".into());
        }
        if let Some((v, why)) = cost {
            out.push(Constraint::new("cost_limit", v, why));
        }
        let mut time = b
            .default_time_limit_ms
            .map(|t| (t as f64, "default time limit".to_string()));
        if fallback
            && time
                .as_ref()
                .is_none_or(|(t, _)| *t > a.fallback_time_limit_ms as f64)
        {
            time = Some((a.fallback_time_limit_ms as f64, "fallback mode".into()));
        }
        if let Some((v, why)) = time {
            out.push(Constraint::new("time_limit", v, why));
        }
        if let Some(t) = b.token_limit {
            out.push(Constraint::new(
                "token_limit",
                t as f64,
                "configured token limit",
            ));
        }
        if let Some(p) = b.parallelism {
            out.push(Constraint::new(
                "parallelism",
                p as f64,
                "configured parallelism",
            ));
        }
        let mut resource = b
            .resource_limit
            .map(|r| (r, "configured resource limit".to_string()));
        if fallback
            && resource
                .as_ref()
                .is_none_or(|(r, _)| *r > a.fallback_resource_limit)
        {
            resource = Some((a.fallback_resource_limit, "fallback mode".into()));
        }
        if let Some((v, why)) = resource {
            out.push(Constraint::new("resource_limit", v, why));
        }
        Ok(out)
    }

    /// Fix an approved task's constraints the first time it is seen approved.
    async fn settle_constraints(&self, snap: &mut TaskSnapshot) -> Result<(), ApprovalError> {
        if snap.task.constraints.is_some() || snap.approval.status != Status::Approved {
            return Ok(());
        }
        let constraints = self
            .constraints_now(&snap.task.task_type, snap.task.fallback)
            .await?;
        let mut next = snap.task.clone();
        next.constraints = Some(constraints);
        next.updated_at = Utc::now();
        if self.write_task(snap, &next).await? {
            snap.task = next;
            snap.stored = true;
        } else if let Ok(now) = self.task(&snap.task.task_id).await {
            *snap = now;
        }
        Ok(())
    }

    /// Insert or compare-and-set a task document. False when someone else moved it first.
    async fn write_task(
        &self,
        snap: &TaskSnapshot,
        next: &TaskRecord,
    ) -> Result<bool, ApprovalError> {
        let store = &self.inner.store;
        Ok(if snap.stored {
            store.task_update(next, snap.task.execution).await?
        } else {
            store.task_insert(next).await?
        })
    }

    // ----- the assistant protocol's enqueue ---------------------------------------------

    /// `POST /api/approve`: record the task, let the budget and the upstream assistant decide
    /// where they can, otherwise ask people; wait a short while for them. Idempotent by
    /// task id: a repeat never sends a second prompt and answers the decision once made.
    pub async fn enqueue_task(
        &self,
        body: EnqueueTask,
        caller: &Caller,
    ) -> Result<ApproveAnswer, ApprovalError> {
        caller.require(TokenScope::Request)?;
        let task_id = body.task_id.trim().to_string();
        if task_id.is_empty() || task_id.len() > MAX_TASK_ID {
            return Err(ApprovalError::InvalidParams(
                "task_id must be 1 to 256 characters".into(),
            ));
        }
        let task_type = body.task_type.trim().to_string();
        if task_type.is_empty() || task_type.len() > 64 {
            return Err(ApprovalError::InvalidParams(
                "task_type must be 1 to 64 characters".into(),
            ));
        }
        if let Some(c) = body.estimated_cost
            && (!c.is_finite() || c < 0.0)
        {
            return Err(ApprovalError::InvalidParams(
                "estimated_cost must be a non-negative number".into(),
            ));
        }
        if !(body.context.is_null() || body.context.is_object()) {
            return Err(ApprovalError::InvalidParams(
                "context must be an object".into(),
            ));
        }
        let approval_id = approval_id_for_task(&task_id);
        let wait = Duration::from_millis(self.inner.config.tasks.approve_wait_ms);

        // A repeat: answer what is known (waiting a little if people are still deciding).
        if let Some(task) = self.inner.store.task_by_id(&task_id).await?
            && let Ok(approval) = self.load(&task.approval_id).await
        {
            let snap = TaskSnapshot {
                task,
                approval,
                stored: true,
            };
            return self.answer_for(snap, wait).await;
        }

        let now = Utc::now();
        let mut task = TaskRecord::for_approval(&task_id, &approval_id, &task_type);
        task.description = body.description.clone();
        task.estimated_cost = body.estimated_cost;
        task.estimated_duration_ms = body.estimated_duration_ms;
        task.context = body.context.clone();
        task.history.push(TaskStep {
            status: TaskStatus::Pending,
            at: now,
        });
        // A crash between this insert and the approval below leaves a task without its
        // approval; the repeat call then creates the approval under the same id.
        let inserted = self.inner.store.task_insert(&task).await?;
        if !inserted && let Some(existing) = self.inner.store.task_by_id(&task_id).await? {
            task = existing;
        }

        // Policies that decide at once: budget, then the upstream assistant.
        let mut preset = self
            .budget_refusal(&task_type, body.estimated_cost.unwrap_or(0.0))
            .await?;
        let mut upstream_constraints = None;
        if preset.is_none()
            && let Some(upstream) = self.inner.upstream.clone()
            && self
                .inner
                .config
                .approvals
                .factor_enabled(ApproverFactor::Assistant)
        {
            let verdict = upstream.ask(&assistant_body(&body)).await;
            self.note_upstream(&verdict).await;
            let assistant = ApproverIdentity {
                approver_id: "assistant:upstream".into(),
                display_name: "assistant".into(),
                transport: Transport::Assistant,
                platform_user_id: None,
                channel_id: None,
                person: None,
            };
            match verdict {
                UpstreamVerdict::Approved {
                    reason,
                    constraints,
                } => {
                    upstream_constraints = Some(constraints);
                    preset = Some(PresetVerdict {
                        identity: assistant,
                        decision: Decision::ApproveOnce,
                        reason: Some(reason).filter(|r| !r.is_empty()),
                    });
                }
                UpstreamVerdict::Denied { reason } => {
                    preset = Some(PresetVerdict {
                        identity: assistant,
                        decision: Decision::Deny,
                        reason: Some(if reason.is_empty() {
                            "denied by the upstream assistant".into()
                        } else {
                            reason
                        }),
                    });
                }
                UpstreamVerdict::Pending { .. } => {}
                UpstreamVerdict::Unreachable { .. } => {
                    task.fallback = true;
                    let cfg = &self.inner.config;
                    let fallback = ApproverIdentity::rules("fallback");
                    if cfg.assistant.fallback_strict {
                        preset = Some(PresetVerdict {
                            identity: fallback,
                            decision: Decision::Deny,
                            reason: Some(
                                "The approval assistant is unreachable and fallback_strict refuses every task until it is back".into(),
                            ),
                        });
                    } else if !cfg.approvals.factor_enabled(ApproverFactor::UserRequest) {
                        preset = Some(PresetVerdict {
                            identity: fallback,
                            decision: Decision::ApproveOnce,
                            reason: Some(
                                "Approved in fallback mode (approval assistant unreachable) under strict constraints".into(),
                            ),
                        });
                    }
                }
            }
        }
        if task.fallback || upstream_constraints.is_some() {
            let mut next = task.clone();
            if let Some(c) = upstream_constraints {
                let mut own = self.constraints_now(&task_type, next.fallback).await?;
                // Ours and the upstream's: the tighter of each kind.
                for c in c {
                    match own.iter_mut().find(|o| o.kind == c.kind) {
                        Some(o) if o.value <= c.value => {}
                        Some(o) => *o = c,
                        None => own.push(c),
                    }
                }
                next.constraints = Some(own);
            }
            if self.inner.store.task_update(&next, None).await? {
                task = next;
            }
        }

        let new = new_request_for(&approval_id, &body);
        // Task ids are idempotent on their own; folding would mix two tasks' approvals.
        let approval = match self.request_with(new, caller, preset, false).await {
            Ok(rec) => rec,
            // The same task id asked again with other details: the first one stands.
            Err(ApprovalError::DuplicateId(_)) => self.load(&approval_id).await?,
            Err(e) => return Err(e),
        };
        let mut snap = TaskSnapshot {
            task,
            approval,
            stored: true,
        };
        // pending -> pending_approval, and on to the verdict if a policy gave one.
        let mut next = snap.task.clone();
        let at = Utc::now();
        next.history.push(TaskStep {
            status: TaskStatus::PendingApproval,
            at,
        });
        if snap.approval.status != Status::Pending {
            next.history.push(TaskStep {
                status: TaskStatus::of_approval(snap.approval.status),
                at,
            });
        }
        next.updated_at = at;
        if self.inner.store.task_update(&next, None).await? {
            snap.task = next;
        }
        self.answer_for(snap, wait).await
    }

    /// The protocol answer for a task, after waiting up to `wait` for a pending decision.
    async fn answer_for(
        &self,
        mut snap: TaskSnapshot,
        wait: Duration,
    ) -> Result<ApproveAnswer, ApprovalError> {
        if snap.approval.status == Status::Pending && !wait.is_zero() {
            snap.approval = self.wait_on(snap.approval.clone(), Some(wait)).await?;
        }
        self.settle_constraints(&mut snap).await?;
        let retry = self.inner.config.tasks.retry_after_seconds;
        let rec = &snap.approval;
        let by = rec.resolution.as_ref().and_then(|r| r.decided_by.as_ref());
        let by_name = by.map(|b| b.display_name.clone()).unwrap_or_default();
        let reason = rec.resolution.as_ref().and_then(|r| r.reason.clone());
        let (approved, reason, retry_after, pending) = match rec.status {
            Status::Pending => (
                false,
                format!(
                    "Awaiting human decision (approval {}): approve in the control UI, in chat, or with `approvald approve {}`",
                    rec.request.short_id(),
                    rec.request.short_id()
                ),
                Some(retry),
                true,
            ),
            Status::Approved => (
                true,
                reason.unwrap_or_else(|| format!("Approved by {by_name}")),
                None,
                false,
            ),
            Status::Denied => {
                let budget_day =
                    by.is_some_and(|b| b.approver_id == format!("rules:{DAILY_BUDGET_RULE}"));
                (
                    false,
                    reason.unwrap_or_else(|| format!("Denied by {by_name}")),
                    budget_day.then(|| self.seconds_to_next_budget_day()),
                    false,
                )
            }
            Status::Expired => (
                false,
                "No decision before the deadline (expired, not denied); ask again".into(),
                None,
                false,
            ),
        };
        Ok(ApproveAnswer {
            approved,
            reason,
            constraints: if approved {
                snap.task.constraints.clone().filter(|c| !c.is_empty())
            } else {
                None
            },
            retry_after_seconds: retry_after,
            pending,
            task_id: snap.task.task_id.clone(),
            approval_id: snap.task.approval_id.clone(),
            status: snap.status(),
            fallback: snap.task.fallback,
        })
    }

    // ----- execution --------------------------------------------------------------------

    /// The executor starts an approved task: approved -> running. Answers the task with its
    /// constraints.
    pub async fn start_execution(
        &self,
        given: &str,
        caller: &Caller,
    ) -> Result<TaskSnapshot, ApprovalError> {
        caller.require(TokenScope::Request)?;
        let mut snap = self.task(given).await?;
        self.settle_constraints(&mut snap).await?;
        let mut next = snap.task.clone();
        self.step(&snap, &mut next, TaskStatus::Running)?;
        next.started_at = Some(Utc::now());
        self.commit(snap, next, json!({ "by": caller.token_name }))
            .await
    }

    /// An execution report: progress while running, or the end state. Moves the task (an
    /// approved task that reports its end passes through running), records cost, times,
    /// result and logs, and checks the constraints.
    pub async fn report_execution(
        &self,
        report: ExecutionReport,
        caller: &Caller,
    ) -> Result<(TaskSnapshot, String), ApprovalError> {
        caller.require(TokenScope::Request)?;
        let to = match report.status.trim().to_ascii_lowercase().as_str() {
            "running" | "progress" | "in_progress" => TaskStatus::Running,
            "completed" | "complete" | "success" | "succeeded" => TaskStatus::Completed,
            "failed" | "failure" | "error" => TaskStatus::Failed,
            "aborted" | "cancelled" | "canceled" => TaskStatus::Aborted,
            other => {
                return Err(ApprovalError::InvalidParams(format!(
                    "status {other:?} is not one of running, completed, failed, aborted"
                )));
            }
        };
        if let Some(c) = report.actual_cost
            && (!c.is_finite() || c < 0.0)
        {
            return Err(ApprovalError::InvalidParams(
                "actual_cost must be a non-negative number".into(),
            ));
        }
        let start = report.start_time.as_ref().map(parse_time).transpose()?;
        let end = report.end_time.as_ref().map(parse_time).transpose()?;
        let logs = log_lines(report.logs.as_ref())?;
        let result = report.result.as_ref().map(|r| match r {
            Value::String(s) => cut(s, MAX_RESULT),
            other => cut(&other.to_string(), MAX_RESULT),
        });

        let mut snap = self.task(&report.task_id).await?;
        self.settle_constraints(&mut snap).await?;
        let from = snap.status();
        let mut next = snap.task.clone();
        let mut message;
        // An operator's abort stands; the executor's report of its end is still recorded.
        let already_aborted = from == TaskStatus::Aborted && to != TaskStatus::Running;
        if already_aborted {
            message = format!(
                "report recorded; task {} had been aborted",
                snap.task.task_id
            );
        } else if from == TaskStatus::Running && to == TaskStatus::Running {
            message = format!("progress recorded for task {}", snap.task.task_id);
        } else {
            if from == TaskStatus::Approved
                && to != TaskStatus::Running
                && to != TaskStatus::Aborted
            {
                self.step(&snap, &mut next, TaskStatus::Running)?;
                let mut via = snap.clone();
                via.task.execution = Some(TaskStatus::Running);
                self.step(&via, &mut next, to)?;
            } else {
                self.step(&snap, &mut next, to)?;
            }
            message = format!("task {} is now {to}", snap.task.task_id);
        }
        if next.started_at.is_none() {
            next.started_at = start.or(Some(Utc::now()));
        }
        if let Some(c) = report.actual_cost {
            next.actual_cost = Some(c);
        }
        if to != TaskStatus::Running {
            next.ended_at = end.or(next.ended_at).or(Some(Utc::now()));
        }
        let started = next.started_at;
        let elapsed_ms =
            |until: DateTime<Utc>| started.map(|s| (until - s).num_milliseconds().max(0) as u64);
        next.duration_ms = report
            .duration_ms
            .or_else(|| next.ended_at.and_then(elapsed_ms))
            .or(next.duration_ms);
        if result.is_some() {
            next.result = result;
        }
        if report.error_message.is_some() {
            next.error_message = report.error_message.clone().map(|e| cut(&e, MAX_RESULT));
        }
        next.add_logs(&logs, self.inner.config.tasks.max_log_bytes);

        // Constraints: over cost or time gets an abort signal while it runs, and is
        // recorded and shown to operators either way.
        let running_ms = report
            .duration_ms
            .or_else(|| elapsed_ms(end.unwrap_or_else(Utc::now)));
        let mut violations = Vec::new();
        if let (Some(limit), Some(cost)) = (next.constraint("cost_limit"), next.actual_cost)
            && cost > limit
        {
            violations.push(format!("cost ${cost:.4} is over the ${limit:.2} limit"));
        }
        if let (Some(limit), Some(ms)) = (next.constraint("time_limit"), running_ms)
            && ms as f64 > limit
        {
            violations.push(format!("ran {ms} ms, over the {limit} ms limit"));
        }
        let new_violations: Vec<String> = violations
            .into_iter()
            .filter(|v| !next.violations.contains(v))
            .collect();
        if !new_violations.is_empty() {
            next.violations.extend(new_violations.iter().cloned());
            let what = new_violations.join("; ");
            if next.execution == Some(TaskStatus::Running) {
                let at = Utc::now();
                next.execution = Some(TaskStatus::Aborted);
                next.history.push(TaskStep {
                    status: TaskStatus::Aborted,
                    at,
                });
                next.ended_at = Some(at);
                next.abort = Some(AbortSignal {
                    reason: format!("Constraint violated: {what}"),
                    by: None,
                    at,
                });
                message = format!("constraint violated ({what}): task aborted, stop it now");
            }
            self.audit(
                AuditEntry::new(
                    AuditEvent::ConstraintViolation,
                    Some(&snap.task.approval_id),
                )
                .detail(json!({ "task_id": snap.task.task_id, "violations": new_violations })),
            )
            .await;
            tracing::warn!(task_id = %snap.task.task_id, violations = %what, "task went over its constraints");
        }
        let upstream_body = json!({
            "task_id": snap.task.task_id,
            "status": to,
            "result": next.result,
            "actual_cost": next.actual_cost,
            "start_time": next.started_at,
            "end_time": next.ended_at,
            "logs": logs,
            "error_message": next.error_message,
            "duration_ms": next.duration_ms,
        });
        let snap = self
            .commit(
                snap,
                next,
                json!({ "by": caller.token_name, "report": report.status }),
            )
            .await?;
        if self.inner.upstream.is_some() {
            self.inner.store.outbox_push(&upstream_body).await?;
            let engine = self.clone();
            tokio::spawn(async move { engine.flush_outbox().await });
        }
        Ok((snap, message))
    }

    /// Abort an approved or running task. Operators (approvers, admin tokens, the control UI)
    /// only; the executor hears it through the abort signal and the WebSocket notification.
    pub async fn abort_task(
        &self,
        given: &str,
        reason: Option<String>,
        actor: &Actor,
    ) -> Result<TaskSnapshot, ApprovalError> {
        let resolved = self.actor(actor)?;
        let admin = matches!(actor, Actor::Caller { caller, .. } if caller.has(TokenScope::Admin));
        if !resolved.authorised && !admin {
            return Err(ApprovalError::NotAnApprover(
                resolved.why_not.unwrap_or_else(|| {
                    format!("{} may not abort tasks", resolved.identity.display_name)
                }),
            ));
        }
        let snap = self.task(given).await?;
        let mut next = snap.task.clone();
        self.step(&snap, &mut next, TaskStatus::Aborted)?;
        let at = Utc::now();
        let reason = reason
            .map(|r| cut(r.trim(), 500))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| format!("aborted by {}", resolved.identity.display_name));
        next.abort = Some(AbortSignal {
            reason,
            by: Some(resolved.identity.clone()),
            at,
        });
        next.ended_at = Some(at);
        if let Some(started) = next.started_at {
            next.duration_ms = Some((at - started).num_milliseconds().max(0) as u64);
        }
        self.commit(snap, next, json!({ "by": resolved.identity }))
            .await
    }

    /// A press on a running task's Abort button in chat.
    pub(crate) async fn abort_from_chat(&self, action: InboundAction) -> InboundReply {
        let actor = Actor::Platform {
            channel: action.channel.clone(),
            user: action.user.clone(),
        };
        let id = match self.resolve_id(&action.approval).await {
            Ok(id) => id,
            Err(e) => {
                let (kind, message) = super::plain_refusal(&e);
                return InboundReply::Refused { kind, message };
            }
        };
        match self.abort_task(&id, None, &actor).await {
            Ok(snap) => InboundReply::Accepted {
                status: snap.status().as_str().to_string(),
                message: format!(
                    "Task {}",
                    execution_text(&snap).unwrap_or_else(|| "aborted".into())
                ),
            },
            Err(ApprovalError::InvalidTransition(_)) => {
                let now = self
                    .task(&id)
                    .await
                    .map(|s| s.status().as_str())
                    .unwrap_or("finished");
                InboundReply::Refused {
                    kind: RefusalKind::AlreadyResolved,
                    message: format!("This task is no longer running (it is {now})."),
                }
            }
            Err(e) => {
                let (kind, message) = super::plain_refusal(&e);
                InboundReply::Refused { kind, message }
            }
        }
    }

    /// `(should_abort, reason)` for an executor polling.
    pub async fn abort_signal(&self, given: &str) -> Result<(bool, Option<String>), ApprovalError> {
        let snap = self.task(given).await?;
        Ok(match (&snap.task.abort, snap.status()) {
            (Some(a), _) => (true, Some(a.reason.clone())),
            (None, TaskStatus::Rejected) => (true, Some("the task was rejected".into())),
            (None, TaskStatus::Expired) => (true, Some("the approval expired".into())),
            _ => (false, None),
        })
    }

    /// Check one move and write it into `next` (status and history).
    fn step(
        &self,
        snap: &TaskSnapshot,
        next: &mut TaskRecord,
        to: TaskStatus,
    ) -> Result<(), ApprovalError> {
        let from = snap.status();
        if !from.can_go(to) {
            let hint = match from {
                TaskStatus::PendingApproval | TaskStatus::Pending => {
                    " (it is still waiting for approval)"
                }
                TaskStatus::Rejected | TaskStatus::Expired => " (it was never approved)",
                _ => "",
            };
            return Err(ApprovalError::InvalidTransition(format!(
                "task {} is {from}; it cannot become {to}{hint}",
                snap.task.task_id
            )));
        }
        next.execution = Some(to);
        next.history.push(TaskStep {
            status: to,
            at: Utc::now(),
        });
        Ok(())
    }

    /// Store a moved task (compare-and-set), then audit, announce and edit the prompts.
    async fn commit(
        &self,
        snap: TaskSnapshot,
        mut next: TaskRecord,
        detail: Value,
    ) -> Result<TaskSnapshot, ApprovalError> {
        next.updated_at = Utc::now();
        if !self.write_task(&snap, &next).await? {
            let now = self.task(&snap.task.task_id).await?;
            return Err(ApprovalError::InvalidTransition(format!(
                "task {} changed meanwhile (it is now {}); nothing was changed",
                snap.task.task_id,
                now.status()
            )));
        }
        let from = snap.status();
        let after = TaskSnapshot {
            task: next,
            approval: snap.approval,
            stored: true,
        };
        let to = after.status();
        let id = after.task.approval_id.clone();
        if from != to {
            self.inner
                .metrics
                .task_transitions
                .get_or_create(&vec![("to", to.as_str().to_string())])
                .inc();
            let mut entry = AuditEntry::new(AuditEvent::Task, Some(&id)).detail(json!({
                "task_id": after.task.task_id, "from": from, "to": to, "detail": detail,
                "abort": after.task.abort,
            }));
            if let Some(by) = after.task.abort.as_ref().and_then(|a| a.by.as_ref())
                && to == TaskStatus::Aborted
            {
                entry = entry.actor(by);
            }
            self.audit(entry).await;
            tracing::info!(task_id = %after.task.task_id, %from, %to, "task moved");
            if to == TaskStatus::Aborted {
                let abort = after.task.abort.clone();
                self.inner.events.publish(
                    events::EXECUTION_ABORT,
                    &json!({
                        "task_id": after.task.task_id,
                        "approval_id": id,
                        "reason": abort.as_ref().map(|a| a.reason.clone()),
                        "by": abort.and_then(|a| a.by),
                    }),
                );
            }
        }
        self.inner
            .events
            .publish(events::TASK_UPDATED, &self.task_json(&after));
        if let Some(text) = execution_text(&after) {
            self.edit_all_with(
                &after.approval,
                TemplateKind::outcome(after.approval.status),
                Some(text),
                to == TaskStatus::Running,
            );
        }
        Ok(after)
    }

    // ----- queue ------------------------------------------------------------------------

    /// `GET /api/queue/status` figures.
    pub async fn queue_status(&self) -> Result<Value, ApprovalError> {
        let counts = self.inner.store.task_status_counts().await?;
        let mut by_status = serde_json::Map::new();
        for s in TaskStatus::ALL {
            by_status.insert(s.as_str().into(), json!(0));
        }
        let mut total = 0;
        for (s, n) in &counts {
            by_status.insert(s.as_str().into(), json!(n));
            total += n;
        }
        let count = |s: TaskStatus| counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
        let (cost, time) = self.inner.store.task_totals().await?;
        Ok(json!({
            "total_tasks": total,
            "by_status": by_status,
            "total_cost_usd": (cost * 10_000.0).round() / 10_000.0,
            "total_execution_time_ms": time,
            "pending_approval": count(TaskStatus::PendingApproval) + count(TaskStatus::Pending),
            "running": count(TaskStatus::Running),
            "spent_today_usd": (self.spent_today().await? * 10_000.0).round() / 10_000.0,
            "daily_budget_usd": self.inner.config.budget.daily_usd,
            "fallback": self.fallback_state(),
            "timestamp": Utc::now(),
        }))
    }

    /// One page of tasks, newest first.
    pub async fn task_page(
        &self,
        status: Option<TaskStatus>,
        page: u32,
        per_page: u32,
    ) -> Result<Value, ApprovalError> {
        let per_page = per_page.clamp(1, 200);
        let page = page.max(1);
        let (ids, total) = self
            .inner
            .store
            .task_page(status, per_page, (page - 1).saturating_mul(per_page))
            .await?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            items.push(self.task_json(&self.task(&id).await?));
        }
        Ok(json!({
            "tasks": items,
            "page": page,
            "per_page": per_page,
            "total": total,
            "pages": total.div_ceil(u64::from(per_page)),
        }))
    }

    // ----- the upstream assistant ---------------------------------------------------------

    /// The fallback state for operators (`/api/approval/health`, the control UI, status).
    pub fn fallback_state(&self) -> Value {
        match &self.inner.upstream {
            None => json!({ "configured": false, "in_fallback": false }),
            Some(u) => json!(u.state()),
        }
    }

    /// Record whether the upstream answered; on a change of mode tell everyone once.
    async fn note_upstream(&self, verdict: &UpstreamVerdict) {
        let error = match verdict {
            UpstreamVerdict::Unreachable { error } => Some(error.clone()),
            _ => None,
        };
        self.note_upstream_health(error.is_none(), error).await;
    }

    pub(crate) async fn note_upstream_health(&self, reachable: bool, error: Option<String>) {
        let Some(upstream) = &self.inner.upstream else {
            return;
        };
        let Some(entered) = upstream.note(reachable, error.clone()) else {
            return;
        };
        self.inner.metrics.fallback.set(i64::from(entered));
        let strict = upstream.config().fallback_strict;
        let text = if entered {
            format!(
                "approvald entered fallback mode: the approval assistant is unreachable ({}). {}",
                error.as_deref().unwrap_or("no answer"),
                if strict {
                    "Every task is refused until it is back (fallback_strict)."
                } else {
                    "Tasks run under strict constraints until it is back."
                }
            )
        } else {
            "approvald left fallback mode: the approval assistant answers again.".to_string()
        };
        if entered {
            tracing::warn!(error = ?error, strict, "entering fallback mode");
        } else {
            tracing::info!("leaving fallback mode");
        }
        self.audit(AuditEntry::new(AuditEvent::Fallback, None).detail(json!({
            "in_fallback": entered, "error": error, "strict": strict,
        })))
        .await;
        self.inner.events.publish(
            events::FALLBACK,
            &json!({ "in_fallback": entered, "error": error, "strict": strict, "message": text }),
        );
        for target in &self.inner.config.delivery.timeout_notice_targets {
            if let Some(channel) = self.inner.channels.get(&target.channel).cloned() {
                let target = target.clone();
                let text = text.clone();
                tokio::spawn(async move {
                    if let Err(e) = channel.notify(&target, &text).await {
                        tracing::warn!(error = %e, "cannot tell operators about fallback mode");
                    }
                });
            }
        }
    }

    /// Send waiting execution reports upstream, oldest first; stop at the first failure
    /// (they stay stored and go with the next flush).
    pub async fn flush_outbox(&self) {
        let Some(upstream) = self.inner.upstream.clone() else {
            return;
        };
        let _one_at_a_time = self.inner.outbox_flush.lock().await;
        loop {
            let batch = match self.inner.store.outbox_peek(50).await {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the upstream outbox");
                    return;
                }
            };
            for (seq, body) in batch {
                match upstream.forward_report(&body).await {
                    Ok(()) => {
                        if let Err(e) = self.inner.store.outbox_remove(seq).await {
                            tracing::error!(error = %e, "cannot clear a forwarded report");
                            return;
                        }
                    }
                    Err(error) => {
                        self.note_upstream_health(false, Some(error)).await;
                        return;
                    }
                }
            }
        }
    }

    /// Probe the upstream's health every `health_check_interval_ms` until shutdown.
    pub(crate) fn spawn_upstream_health(&self) {
        let Some(upstream) = self.inner.upstream.clone() else {
            return;
        };
        let engine = self.clone();
        let every = Duration::from_millis(upstream.config().health_check_interval_ms.max(50));
        tokio::spawn(async move {
            loop {
                let result = upstream.probe().await;
                let ok = result.is_ok();
                engine.note_upstream_health(ok, result.err()).await;
                if ok {
                    engine.flush_outbox().await;
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

/// The rule name a daily-budget refusal is recorded under.
const DAILY_BUDGET_RULE: &str = "daily-budget";

/// What chat prompts and the control UI say about a task's execution.
pub fn execution_text(snap: &TaskSnapshot) -> Option<String> {
    let t = &snap.task;
    let secs = t.duration_ms.map(|d| format!("{:.1} s", d as f64 / 1000.0));
    let cost = t.actual_cost.map(|c| format!("cost ${c:.4}"));
    let details = [secs.map(|s| format!("in {s}")), cost]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
    let with = |word: &str| {
        if details.is_empty() {
            word.to_string()
        } else {
            format!("{word} {details}")
        }
    };
    match t.execution? {
        TaskStatus::Running => Some("running".into()),
        TaskStatus::Completed => Some(with("completed")),
        TaskStatus::Failed => Some(format!(
            "failed: {}",
            t.error_message.as_deref().unwrap_or("no error message")
        )),
        TaskStatus::Aborted => Some(match &t.abort {
            Some(a) => match &a.by {
                Some(by) if a.reason == format!("aborted by {}", by.display_name) => {
                    a.reason.clone()
                }
                Some(by) => format!("aborted by {}: {}", by.display_name, a.reason),
                None => format!("aborted: {}", a.reason),
            },
            None => "aborted by the executor".into(),
        }),
        _ => None,
    }
}

/// A task's steps: what it stored, plus the approval's own (asked, decided), which happen
/// in the engine and are not written twice.
fn full_history(snap: &TaskSnapshot) -> Vec<TaskStep> {
    let mut steps = snap.task.history.clone();
    let asked = TaskStep {
        status: TaskStatus::PendingApproval,
        at: snap.approval.request.created_at,
    };
    if !steps
        .iter()
        .any(|s| s.status == TaskStatus::PendingApproval)
    {
        let at = steps
            .iter()
            .position(|s| s.status != TaskStatus::Pending)
            .unwrap_or(steps.len());
        steps.insert(at, asked);
    }
    if let Some(r) = &snap.approval.resolution {
        let decided = TaskStatus::of_approval(snap.approval.status);
        if !steps.iter().any(|s| s.status == decided) {
            let at = steps
                .iter()
                .position(|s| s.status.is_execution())
                .unwrap_or(steps.len());
            steps.insert(
                at,
                TaskStep {
                    status: decided,
                    at: r.resolved_at,
                },
            );
        }
    }
    steps
}

/// The upstream's view of a task: the body the gateway sent us.
fn assistant_body(body: &EnqueueTask) -> Value {
    json!({
        "task_id": body.task_id,
        "task_type": body.task_type,
        "description": body.description,
        "estimated_cost": body.estimated_cost,
        "estimated_duration_ms": body.estimated_duration_ms,
        "context": body.context,
        "timestamp": body.timestamp.clone().unwrap_or_else(|| json!(Utc::now())),
    })
}

/// The approval request a task asks for: what people see in the prompt.
fn new_request_for(approval_id: &str, body: &EnqueueTask) -> NewRequest {
    let ctx = &body.context;
    let text = |k: &str| ctx.get(k).and_then(Value::as_str).map(str::to_string);
    let requester = match ctx.get("requester") {
        Some(Value::String(id)) => Some(Requester {
            id: id.clone(),
            display_name: None,
        }),
        Some(v @ Value::Object(_)) => serde_json::from_value(v.clone()).ok(),
        _ => text("user_id").map(|id| Requester {
            id,
            display_name: None,
        }),
    };
    NewRequest {
        id: Some(approval_id.to_string()),
        tool: body.task_type.clone(),
        summary: Some(
            body.description
                .clone()
                .filter(|d| !d.trim().is_empty())
                .unwrap_or_else(|| format!("{} task {}", body.task_type, body.task_id)),
        ),
        command: text("command"),
        args: (!ctx.is_null()).then(|| ctx.clone()),
        risk_class: text("risk_class").and_then(|r| r.parse().ok()),
        agent_id: text("agent_id"),
        session_key: text("session_key"),
        requester,
        estimated_cost: body.estimated_cost,
        ..NewRequest::default()
    }
}

fn parse_time(v: &Value) -> Result<DateTime<Utc>, ApprovalError> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| ApprovalError::InvalidParams(format!("{s:?} is not an RFC 3339 time"))),
        Value::Number(n) => n
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| ApprovalError::InvalidParams(format!("{n} is not a time in ms"))),
        other => Err(ApprovalError::InvalidParams(format!(
            "{other} is not a time"
        ))),
    }
}

fn log_lines(v: Option<&Value>) -> Result<Vec<String>, ApprovalError> {
    Ok(match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.lines().map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(_) => {
            return Err(ApprovalError::InvalidParams(
                "logs must be a string or a list of strings".into(),
            ));
        }
    })
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
