//! Client for approvald's "personal assistant approval" protocol.
//!
//! An agent gateway or executor uses this crate to put a human between the agent and a risky
//! task: it asks approvald whether the task may run ([`ApprovalClient::request_approval`], or
//! [`ApprovalClient::wait_for_approval`] to wait while a person decides), tightens its own
//! limits with whatever constraints came back ([`apply_constraints`]), watches for an abort while
//! the task runs ([`ApprovalClient::listen_for_abort`]) and reports the outcome
//! ([`ApprovalClient::report_execution`]).
//!
//! When approvald cannot be reached the client does not hang or guess silently: it enters
//! *fallback mode* ([`ApprovalClient::is_in_fallback`]). With `fallback_strict` every task is
//! refused; without it tasks are approved under tight fixed limits (see
//! [`ApprovalResponse::fallback`]). Execution reports made while approvald is down wait in an
//! in-memory outbox and are delivered once it answers again.
//!
//! ```no_run
//! use std::time::Duration;
//! use approvald_client::{
//!     apply_constraints, ApprovalClient, ClientConfig, ExecutionStatus, ExecutionSummary,
//!     ExecutorLimits, TaskRequest,
//! };
//!
//! # async fn run() -> Result<(), approvald_client::ClientError> {
//! let client = ApprovalClient::new(ClientConfig::from_env()?)?;
//!
//! let mut task = TaskRequest::new("task-42", "shell", "rm -rf ./build && make release");
//! task.estimated_cost = 0.40;
//! task.estimated_duration_ms = 120_000;
//!
//! let (answer, in_fallback) = client
//!     .wait_for_approval(&task, Duration::from_secs(600))
//!     .await?;
//! if !answer.approved {
//!     eprintln!("not approved: {}", answer.reason);
//!     return Ok(());
//! }
//! let limits = apply_constraints(
//!     &ExecutorLimits::default(),
//!     answer.constraints.as_deref().unwrap_or_default(),
//! );
//! // ... run the task within `limits`, racing client.listen_for_abort(...) ...
//! # let _ = (limits, in_fallback);
//!
//! let mut summary = ExecutionSummary::new("task-42", ExecutionStatus::Completed);
//! summary.actual_cost = Some(0.31);
//! client.report_execution(&summary).await?;
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::time::Instant;

/// Reason given by a strict fallback refusal.
pub const STRICT_FALLBACK_REASON: &str = "approval service unreachable; strict fallback refuses";
/// Reason given by a non-strict fallback approval.
pub const LENIENT_FALLBACK_REASON: &str =
    "approval service unreachable; approved in fallback mode under strict limits";
/// Reason prefix approvald uses while a person has not decided yet.
pub const PENDING_REASON_PREFIX: &str = "Awaiting human decision";

/// Shortest pause between two polls of a pending decision in [`ApprovalClient::wait_for_approval`].
const MIN_PENDING_POLL: Duration = Duration::from_millis(50);
/// Pause between polls of a pending decision when approvald gives no `retry_after_seconds`.
const DEFAULT_PENDING_POLL: Duration = Duration::from_secs(2);
/// No single backoff pause is longer than this, whatever the multiplier.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Error bodies quoted in [`ClientError`] are cut to this many characters.
const MAX_ERROR_BODY_CHARS: usize = 300;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Where approvald is, how to authenticate, and how hard to try before falling back.
///
/// Exists so that one value carries every knob the client needs; build it with
/// [`ClientConfig::default`] and struct update syntax, or from the environment with
/// [`ClientConfig::from_env`]. Its `Debug` output never shows the API key.
#[derive(Clone)]
pub struct ClientConfig {
    /// Base URL of approvald, e.g. `http://127.0.0.1:8001` (a path prefix is kept).
    pub url: String,
    /// Sent as `Authorization: Bearer <api_key>`; not sent when empty.
    pub api_key: String,
    /// Limit for one HTTP exchange (connect, send, read the whole answer).
    pub timeout: Duration,
    /// Extra attempts after the first one for network errors, timeouts and 5xx answers.
    pub max_retries: u32,
    /// Each pause is the previous one times this (pause n = `initial_backoff × multiplier^n`).
    pub backoff_multiplier: f64,
    /// Pause before the first retry.
    pub initial_backoff: Duration,
    /// In fallback mode, refuse every task (`true`) or approve under strict limits (`false`).
    pub fallback_strict: bool,
    /// How often [`ApprovalClient::periodic_health_check`] probes `/health`.
    pub health_check_interval: Duration,
    /// When `false` every call makes exactly one attempt.
    pub enable_retries: bool,
    /// How often [`ApprovalClient::listen_for_abort`] polls the abort signal.
    pub abort_poll_interval: Duration,
}

impl Default for ClientConfig {
    /// Loopback approvald, no key, 30 s timeout, 3 retries from 500 ms doubling, strict
    /// fallback (a service meant to put a human in the loop fails closed unless told otherwise),
    /// health check every 30 s, abort polled every 250 ms.
    fn default() -> Self {
        ClientConfig {
            url: "http://127.0.0.1:8001".to_string(),
            api_key: String::new(),
            timeout: Duration::from_secs(30),
            max_retries: 3,
            backoff_multiplier: 2.0,
            initial_backoff: Duration::from_millis(500),
            fallback_strict: true,
            health_check_interval: Duration::from_secs(30),
            enable_retries: true,
            abort_poll_interval: Duration::from_millis(250),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.api_key.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        };
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("api_key", &key)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff_multiplier", &self.backoff_multiplier)
            .field("initial_backoff", &self.initial_backoff)
            .field("fallback_strict", &self.fallback_strict)
            .field("health_check_interval", &self.health_check_interval)
            .field("enable_retries", &self.enable_retries)
            .field("abort_poll_interval", &self.abort_poll_interval)
            .finish()
    }
}

impl ClientConfig {
    /// Reads `APPROVAL_SYSTEM_URL`, `APPROVAL_API_KEY`, `APPROVAL_TIMEOUT` (seconds, may be
    /// fractional), `APPROVAL_FALLBACK_STRICT`, `APPROVAL_ENABLE_RETRIES` (`true`/`false`/`1`/`0`)
    /// and `APPROVAL_MAX_RETRIES`; unset or empty variables keep the [`Default`] value.
    ///
    /// A variable that is set but cannot be understood is an error rather than silently
    /// ignored: a misspelt `APPROVAL_FALLBACK_STRICT` must not flip how the client fails.
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Same as [`ClientConfig::from_env`] with the variables taken from `lookup` (for tests and
    /// for programs that keep their settings elsewhere).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ClientError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut config = ClientConfig::default();
        if let Some(url) = get("APPROVAL_SYSTEM_URL") {
            config.url = url;
        }
        if let Some(key) = lookup("APPROVAL_API_KEY") {
            config.api_key = key.trim().to_string();
        }
        if let Some(raw) = get("APPROVAL_TIMEOUT") {
            config.timeout = raw
                .parse::<f64>()
                .ok()
                .filter(|secs| *secs > 0.0)
                .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                .ok_or_else(|| {
                    ClientError::Config(format!(
                        "APPROVAL_TIMEOUT must be a positive number of seconds, got {raw:?}"
                    ))
                })?;
        }
        if let Some(raw) = get("APPROVAL_FALLBACK_STRICT") {
            config.fallback_strict = parse_bool("APPROVAL_FALLBACK_STRICT", &raw)?;
        }
        if let Some(raw) = get("APPROVAL_ENABLE_RETRIES") {
            config.enable_retries = parse_bool("APPROVAL_ENABLE_RETRIES", &raw)?;
        }
        if let Some(raw) = get("APPROVAL_MAX_RETRIES") {
            config.max_retries = raw.parse().map_err(|_| {
                ClientError::Config(format!(
                    "APPROVAL_MAX_RETRIES must be a whole number, got {raw:?}"
                ))
            })?;
        }
        Ok(config)
    }

    /// Pause before retry number `attempt` (0 = first retry), capped at one minute.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = self
            .backoff_multiplier
            .powi(i32::try_from(attempt).unwrap_or(i32::MAX));
        let secs = self.initial_backoff.as_secs_f64() * factor;
        if !secs.is_finite() {
            return MAX_BACKOFF;
        }
        Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF)
    }
}

fn parse_bool(name: &str, raw: &str) -> Result<bool, ClientError> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ClientError::Config(format!(
            "{name} must be true, false, 1 or 0, got {raw:?}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything that can go wrong talking to approvald that the client does not absorb itself.
///
/// Exists to separate what the caller must act on (`Rejected`: fix the key or the request)
/// from what the client already handled (an unreachable service is answered by fallback in
/// [`ApprovalClient::request_approval`] and by the outbox in
/// [`ApprovalClient::report_execution`]). No message ever contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot work (bad URL, unreadable environment variable, ...).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// approvald answered 4xx: bad API key (401), forbidden, or a request it will not accept.
    /// Not a reason to fall back: retrying the same request cannot succeed.
    #[error("approval service refused the request (HTTP {status}): {message}")]
    Rejected {
        /// HTTP status code of the answer.
        status: u16,
        /// The `error` field of the answer, or the start of its body.
        message: String,
    },
    /// approvald could not be reached, timed out or answered 5xx (after any retries).
    #[error("approval service unavailable: {0}")]
    Unavailable(String),
    /// approvald answered 2xx (or a redirect) with something that is not the expected JSON.
    #[error("unexpected answer from approval service: {0}")]
    InvalidResponse(String),
}

/// What one HTTP exchange (with its retries) came to, before each call decides what it means.
enum Failure {
    /// Network error, timeout or 5xx: may fall back.
    Unreachable(String),
    /// 4xx.
    Rejected { status: u16, message: String },
    /// Undecodable 2xx, or 1xx/3xx.
    Invalid(String),
}

impl From<Failure> for ClientError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unreachable(message) => ClientError::Unavailable(message),
            Failure::Rejected { status, message } => ClientError::Rejected { status, message },
            Failure::Invalid(message) => ClientError::InvalidResponse(message),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

/// A task the agent wants to run, as sent to `POST /api/approve`.
///
/// Exists so a person (or approvald's rules) can judge the task before it runs. The same
/// `task_id` may be sent again to learn a decision that was pending: approvald answers
/// idempotently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// Caller-chosen unique id; also the key for abort signals and execution reports.
    pub task_id: String,
    /// Kind of task, e.g. `shell`, `http_request`, `payment`.
    pub task_type: String,
    /// What the task does, in words a person can judge.
    pub description: String,
    /// Expected cost in USD.
    pub estimated_cost: f64,
    /// Expected run time in milliseconds.
    pub estimated_duration_ms: u64,
    /// Free-form JSON object with anything that helps the decision.
    pub context: serde_json::Value,
    /// When the task was requested (sent as RFC 3339).
    pub timestamp: DateTime<Utc>,
}

impl TaskRequest {
    /// A task with no estimated cost or duration, an empty context and the current time.
    pub fn new(
        task_id: impl Into<String>,
        task_type: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        TaskRequest {
            task_id: task_id.into(),
            task_type: task_type.into(),
            description: description.into(),
            estimated_cost: 0.0,
            estimated_duration_ms: 0,
            context: serde_json::Value::Object(serde_json::Map::new()),
            timestamp: Utc::now(),
        }
    }

    /// Sets the expected cost in USD.
    pub fn with_estimated_cost(mut self, usd: f64) -> Self {
        self.estimated_cost = usd;
        self
    }

    /// Sets the expected run time in milliseconds.
    pub fn with_estimated_duration_ms(mut self, ms: u64) -> Self {
        self.estimated_duration_ms = ms;
        self
    }

    /// Sets the context (should be a JSON object).
    pub fn with_context(mut self, context: serde_json::Value) -> Self {
        self.context = context;
        self
    }
}

/// One limit approvald attaches to an approval, which the executor must not exceed.
///
/// Exists because approval is often "yes, but": a person may allow a task only with less money,
/// less time or fewer resources. Feed them to [`apply_constraints`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    /// One of the `Constraint::*` kind constants; unknown kinds are ignored by
    /// [`apply_constraints`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The limit, in the unit of its kind.
    pub value: f64,
    /// Why the limit was set, when approvald says.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Constraint {
    /// Most the task may cost, in USD.
    pub const COST_LIMIT: &'static str = "cost_limit";
    /// Longest the task may run, in milliseconds.
    pub const TIME_LIMIT: &'static str = "time_limit";
    /// Most tokens the task may use.
    pub const TOKEN_LIMIT: &'static str = "token_limit";
    /// Most things the task may do at once.
    pub const PARALLELISM: &'static str = "parallelism";
    /// Share of its usual resources the task may use (e.g. 0.5 = half).
    pub const RESOURCE_LIMIT: &'static str = "resource_limit";

    /// A constraint of `kind` with `value` and a reason.
    pub fn new(kind: impl Into<String>, value: f64, reason: impl Into<String>) -> Self {
        Constraint {
            kind: kind.into(),
            value,
            reason: Some(reason.into()),
        }
    }
}

/// approvald's answer to `POST /api/approve` (or the client's own answer in fallback mode).
///
/// Exists to tell the executor whether to run the task, under which limits, and whether the
/// decision is still with a person ([`ApprovalResponse::is_pending`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalResponse {
    /// Whether the task may run now.
    pub approved: bool,
    /// Why, in words.
    #[serde(default, deserialize_with = "null_as_default")]
    pub reason: String,
    /// Limits the run must respect, when approved with conditions.
    #[serde(default)]
    pub constraints: Option<Vec<Constraint>>,
    /// When to ask again: for a pending decision, or for a budget that resets later.
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
    /// Set by approvald while a person has not decided yet.
    #[serde(default, deserialize_with = "null_as_default")]
    pub pending: bool,
}

impl ApprovalResponse {
    /// Whether a person has yet to decide, so asking again later may change the answer.
    ///
    /// True when approvald says `"pending": true` or its reason starts with
    /// "Awaiting human decision"; a refusal with `retry_after_seconds` for another reason (such
    /// as an exhausted budget) is final for now.
    pub fn is_pending(&self) -> bool {
        !self.approved && (self.pending || self.reason.starts_with(PENDING_REASON_PREFIX))
    }

    /// The answer the client gives itself when approvald cannot be reached: a refusal when
    /// `strict`, otherwise an approval limited to $5.00, 5 minutes and half the usual resources.
    pub fn fallback(strict: bool) -> Self {
        if strict {
            ApprovalResponse {
                approved: false,
                reason: STRICT_FALLBACK_REASON.to_string(),
                constraints: None,
                retry_after_seconds: None,
                pending: false,
            }
        } else {
            let why = "approval service unreachable";
            ApprovalResponse {
                approved: true,
                reason: LENIENT_FALLBACK_REASON.to_string(),
                constraints: Some(vec![
                    Constraint::new(Constraint::COST_LIMIT, 5.0, why),
                    Constraint::new(Constraint::TIME_LIMIT, 300_000.0, why),
                    Constraint::new(Constraint::RESOURCE_LIMIT, 0.5, why),
                ]),
                retry_after_seconds: None,
                pending: false,
            }
        }
    }
}

/// approvald's answer to `GET /api/abort-signal/{task_id}`.
///
/// Exists so a person can stop a task that is already running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbortSignal {
    /// Whether the task must stop now.
    pub should_abort: bool,
    /// Why, when approvald says.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Where a task's execution stands, as reported to approvald.
///
/// Exists so the report's `status` can only be one of the four values approvald understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionStatus {
    /// Finished successfully.
    Completed,
    /// Finished with an error.
    Failed,
    /// Stopped before finishing (for instance after an abort signal).
    Aborted,
    /// Still running (a progress report).
    Running,
}

/// What happened when a task ran, as sent to `POST /api/execution-report`.
///
/// Exists to close the loop: approvald records actual cost and outcome next to the decision,
/// which feeds budgets and the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionSummary {
    /// The `task_id` the approval was asked for.
    pub task_id: String,
    /// Outcome so far.
    pub status: ExecutionStatus,
    /// Short result text.
    pub result: Option<String>,
    /// What the task really cost, in USD.
    pub actual_cost: Option<f64>,
    /// When the run started (RFC 3339).
    pub start_time: Option<DateTime<Utc>>,
    /// When the run ended (RFC 3339).
    pub end_time: Option<DateTime<Utc>>,
    /// Log lines worth keeping.
    pub logs: Vec<String>,
    /// What went wrong, for `failed` and `aborted`.
    pub error_message: Option<String>,
    /// How long the run took, in milliseconds.
    pub duration_ms: Option<u64>,
}

impl ExecutionSummary {
    /// A report with only the task id and status filled in.
    pub fn new(task_id: impl Into<String>, status: ExecutionStatus) -> Self {
        ExecutionSummary {
            task_id: task_id.into(),
            status,
            result: None,
            actual_cost: None,
            start_time: None,
            end_time: None,
            logs: Vec::new(),
            error_message: None,
            duration_ms: None,
        }
    }
}

/// approvald's answer to an execution report, or the client's note that it queued the report.
///
/// Exists so the caller can tell a report approvald recorded (`success`) from one waiting in
/// the outbox for approvald to come back (`queued`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportResponse {
    /// Whether approvald recorded the report.
    #[serde(default, deserialize_with = "null_as_default")]
    pub success: bool,
    /// approvald's message (or the client's, when queued).
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
    /// Set by the client (never by approvald) when the report could not be delivered and waits
    /// in the outbox; it is sent again by [`ApprovalClient::flush_reports`].
    #[serde(skip)]
    pub queued: bool,
}

/// approvald's answer to `GET /health`.
///
/// Exists for health probes and to end fallback mode; any 2xx answer counts as healthy, so
/// getting this value at all means approvald is up.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthStatus {
    /// The `status` field of the answer (`"healthy"` when the answer has none).
    pub status: String,
    /// The whole JSON answer (`null` when the body was not JSON).
    pub details: serde_json::Value,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Executor limits
// ---------------------------------------------------------------------------------------------

/// The limits an executor runs a task under; `None` means "no limit of this kind".
///
/// Exists so constraints from approvald have one place to land: start from the executor's own
/// limits and pass them through [`apply_constraints`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutorLimits {
    /// Most tokens the task may use.
    pub max_tokens: Option<u64>,
    /// Longest the task may run, in milliseconds.
    pub max_duration_ms: Option<u64>,
    /// Most things the task may do at once.
    pub parallelism: Option<u32>,
    /// Most the task may cost, in USD.
    pub max_cost: Option<f64>,
    /// Share of the usual resources the task may use.
    pub resource_multiplier: Option<f64>,
}

/// Tightens `limits` with `constraints`: every known constraint can only lower a limit (or set
/// one that was unset), never raise it. Unknown constraint kinds and NaN values are ignored,
/// negative values count as zero, and whole-number limits round down.
pub fn apply_constraints(limits: &ExecutorLimits, constraints: &[Constraint]) -> ExecutorLimits {
    fn tighter_f64(current: Option<f64>, value: f64) -> Option<f64> {
        let value = value.max(0.0);
        Some(current.map_or(value, |c| c.min(value)))
    }
    fn tighter_u64(current: Option<u64>, value: f64) -> Option<u64> {
        // `as` saturates: +inf and huge values become u64::MAX, negatives 0.
        let value = value.floor() as u64;
        Some(current.map_or(value, |c| c.min(value)))
    }
    fn tighter_u32(current: Option<u32>, value: f64) -> Option<u32> {
        let value = value.floor() as u32;
        Some(current.map_or(value, |c| c.min(value)))
    }

    let mut out = limits.clone();
    for constraint in constraints {
        let value = constraint.value;
        if value.is_nan() {
            tracing::warn!(kind = %constraint.kind, "ignoring constraint with NaN value");
            continue;
        }
        match constraint.kind.as_str() {
            Constraint::COST_LIMIT => out.max_cost = tighter_f64(out.max_cost, value),
            Constraint::TIME_LIMIT => out.max_duration_ms = tighter_u64(out.max_duration_ms, value),
            Constraint::TOKEN_LIMIT => out.max_tokens = tighter_u64(out.max_tokens, value),
            Constraint::PARALLELISM => out.parallelism = tighter_u32(out.parallelism, value),
            Constraint::RESOURCE_LIMIT => {
                out.resource_multiplier = tighter_f64(out.resource_multiplier, value)
            }
            other => tracing::debug!(kind = %other, "ignoring unknown constraint kind"),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// Talks to approvald: asks for approvals, watches abort signals, reports executions, and
/// keeps working (fallback mode, report outbox) while approvald is down.
///
/// Exists so every agent executor gets the same retry, fallback and redelivery behaviour
/// instead of each hand-rolling HTTP calls. Cheap to clone (clones share the connection pool,
/// fallback flag and outbox); wrap it in an [`Arc`] to use
/// [`ApprovalClient::periodic_health_check`].
#[derive(Clone)]
pub struct ApprovalClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    base: Url,
    http: reqwest::Client,
    in_fallback: AtomicBool,
    outbox: Mutex<VecDeque<ExecutionSummary>>,
    /// Held while reports are being delivered, so they go out once each and in order.
    delivery: tokio::sync::Mutex<()>,
}

impl fmt::Debug for ApprovalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApprovalClient")
            .field("config", &self.inner.config)
            .field("in_fallback", &self.is_in_fallback())
            .field("pending_reports", &self.pending_reports())
            .finish()
    }
}

impl ApprovalClient {
    /// Checks `config` and builds the HTTP client (rustls, no redirects followed, `timeout` per
    /// exchange).
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let base = Url::parse(config.url.trim())
            .map_err(|e| ClientError::Config(format!("url {:?}: {e}", config.url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::Config(format!(
                "url {:?} must be an http:// or https:// address",
                config.url
            )));
        }
        if config.timeout.is_zero() {
            return Err(ClientError::Config("timeout must be above zero".into()));
        }
        if !config.backoff_multiplier.is_finite() || config.backoff_multiplier <= 0.0 {
            return Err(ClientError::Config(format!(
                "backoff_multiplier must be a positive number, got {}",
                config.backoff_multiplier
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            // An API that redirects is misconfigured; following could carry the key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("approvald-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(ApprovalClient {
            inner: Arc::new(Inner {
                config,
                base,
                http,
                in_fallback: AtomicBool::new(false),
                outbox: Mutex::new(VecDeque::new()),
                delivery: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Asks approvald whether `task` may run. The `bool` is `true` when the answer is the
    /// client's own fallback answer because approvald could not be reached.
    ///
    /// Network errors, timeouts and 5xx answers are retried with exponential backoff (when
    /// `enable_retries`); if approvald is still unreachable the client enters fallback mode and
    /// answers with [`ApprovalResponse::fallback`]. A 4xx answer (bad key, bad request) is
    /// returned as [`ClientError::Rejected`], never as a fallback. A pending answer is returned
    /// as is; see [`ApprovalClient::wait_for_approval`] to wait it out.
    pub async fn request_approval(
        &self,
        task: &TaskRequest,
    ) -> Result<(ApprovalResponse, bool), ClientError> {
        let url = self.inner.endpoint(&["api", "approve"]);
        match self
            .inner
            .exchange::<ApprovalResponse>(Method::POST, url, Some(task), true)
            .await
        {
            Ok(answer) => {
                self.mark_reachable();
                Ok((answer, false))
            }
            Err(Failure::Unreachable(why)) => {
                self.inner.mark_unreachable(&why);
                let answer = ApprovalResponse::fallback(self.inner.config.fallback_strict);
                tracing::warn!(
                    task_id = %task.task_id,
                    approved = answer.approved,
                    "approval answered by fallback: {why}"
                );
                Ok((answer, true))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Like [`ApprovalClient::request_approval`], but while a person has not decided yet it
    /// asks again (same `task_id`) after the `retry_after_seconds` approvald gives, never
    /// sleeping past `max_wait` and never less than 50 ms between asks. Returns the first
    /// answer that is not pending, or the last (pending) answer once `max_wait` has run out.
    pub async fn wait_for_approval(
        &self,
        task: &TaskRequest,
        max_wait: Duration,
    ) -> Result<(ApprovalResponse, bool), ClientError> {
        let deadline = Instant::now() + max_wait;
        loop {
            let (answer, in_fallback) = self.request_approval(task).await?;
            if !answer.is_pending() {
                return Ok((answer, in_fallback));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok((answer, in_fallback));
            }
            let wanted = answer
                .retry_after_seconds
                .map_or(DEFAULT_PENDING_POLL, Duration::from_secs);
            let pause = wanted.min(deadline - now).max(MIN_PENDING_POLL);
            tracing::debug!(
                task_id = %task.task_id,
                pause_ms = pause.as_millis() as u64,
                "approval pending; asking again later"
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// Asks approvald once whether `task_id` must stop.
    pub async fn abort_signal(&self, task_id: &str) -> Result<AbortSignal, ClientError> {
        let url = self.inner.endpoint(&["api", "abort-signal", task_id]);
        match self
            .inner
            .exchange::<AbortSignal>(Method::GET, url, None::<&()>, false)
            .await
        {
            Ok(signal) => {
                self.mark_reachable();
                Ok(signal)
            }
            Err(failure) => {
                if let Failure::Unreachable(why) = &failure {
                    self.inner.mark_unreachable(why);
                }
                Err(failure.into())
            }
        }
    }

    /// Polls the abort signal for `task_id` every `abort_poll_interval` until approvald says
    /// stop (`Some(reason)`, `"aborted"` when it gives none) or `timeout` passes (`None`).
    ///
    /// Meant to race the task itself in `tokio::select!`. Polls that fail because approvald is
    /// unreachable are skipped (the task is not stopped for that); a 4xx answer ends the
    /// listening with [`ClientError::Rejected`].
    pub async fn listen_for_abort(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<String>, ClientError> {
        let deadline = Instant::now() + timeout;
        let poll = self
            .inner
            .config
            .abort_poll_interval
            .max(Duration::from_millis(1));
        loop {
            match tokio::time::timeout_at(deadline, self.abort_signal(task_id)).await {
                Err(_elapsed) => return Ok(None),
                Ok(Ok(signal)) if signal.should_abort => {
                    let reason = signal
                        .reason
                        .filter(|r| !r.trim().is_empty())
                        .unwrap_or_else(|| "aborted".to_string());
                    return Ok(Some(reason));
                }
                Ok(Ok(_)) => {}
                Ok(Err(ClientError::Unavailable(why))) => {
                    tracing::debug!(task_id, "abort signal poll failed: {why}");
                }
                Ok(Err(other)) => return Err(other),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
        }
    }

    /// Reports how a task ran. Reports still waiting in the outbox are sent first, so approvald
    /// sees them in order.
    ///
    /// If approvald cannot be reached (after retries) the report is kept in the in-memory
    /// outbox and the answer is `Ok` with `success: false, queued: true`; it is delivered by
    /// [`ApprovalClient::flush_reports`], which runs by itself after the next successful call
    /// and on each successful [`ApprovalClient::periodic_health_check`]. A 4xx answer is
    /// returned as [`ClientError::Rejected`] and the report is not kept.
    pub async fn report_execution(
        &self,
        summary: &ExecutionSummary,
    ) -> Result<ReportResponse, ClientError> {
        let _delivering = self.inner.delivery.lock().await;
        if let Err(why) = self.inner.deliver_outbox().await {
            return Ok(self.inner.enqueue(summary.clone(), &why));
        }
        match self.inner.send_report(summary, true).await {
            Ok(answer) => {
                self.mark_reachable_holding_delivery();
                Ok(answer)
            }
            Err(Failure::Unreachable(why)) => {
                self.inner.mark_unreachable(&why);
                Ok(self.inner.enqueue(summary.clone(), &why))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// How many execution reports wait in the outbox for approvald to come back.
    pub fn pending_reports(&self) -> usize {
        self.inner.outbox_lock().len()
    }

    /// Sends the reports waiting in the outbox, oldest first, each with the usual retries.
    /// Returns how many were delivered; stops with [`ClientError::Unavailable`] at the first
    /// one that still cannot be delivered (it and the later ones stay queued). A report that
    /// approvald refuses with 4xx is dropped with a warning, since sending it again cannot help.
    pub async fn flush_reports(&self) -> Result<usize, ClientError> {
        let _delivering = self.inner.delivery.lock().await;
        self.inner
            .deliver_outbox()
            .await
            .map_err(ClientError::Unavailable)
    }

    /// Probes `GET /health` once (no retries). Any 2xx answer is healthy and ends fallback
    /// mode; a network error, timeout or 5xx is [`ClientError::Unavailable`] and enters it.
    pub async fn get_health(&self) -> Result<HealthStatus, ClientError> {
        let url = self.inner.endpoint(&["health"]);
        match self
            .inner
            .exchange_raw(Method::GET, url, None::<&()>, false)
            .await
        {
            Ok(body) => {
                self.mark_reachable();
                let details: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let status = details
                    .get("status")
                    .and_then(|s| s.as_str())
                    .unwrap_or("healthy")
                    .to_string();
                Ok(HealthStatus { status, details })
            }
            Err(failure) => {
                if let Failure::Unreachable(why) = &failure {
                    self.inner.mark_unreachable(why);
                }
                Err(failure.into())
            }
        }
    }

    /// Whether the client is in fallback mode: the last attempt to reach approvald failed and
    /// no health check or call has succeeded since.
    pub fn is_in_fallback(&self) -> bool {
        self.inner.in_fallback.load(Ordering::SeqCst)
    }

    /// Starts a task that probes [`ApprovalClient::get_health`] every `health_check_interval`
    /// (the first probe right away): a failure enters fallback mode, a success leaves it and
    /// delivers the report outbox. Transitions are logged with `tracing`. The task ends by
    /// itself once every `Arc` of this client is dropped, or when the handle is aborted.
    pub fn periodic_health_check(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let period = self
            .inner
            .config
            .health_check_interval
            .max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(client) = weak.upgrade() else {
                    return;
                };
                match client.get_health().await {
                    Ok(_) => {
                        if client.pending_reports() > 0 {
                            match client.flush_reports().await {
                                Ok(n) => tracing::info!(delivered = n, "report outbox delivered"),
                                Err(e) => tracing::warn!("report outbox not delivered: {e}"),
                            }
                        }
                    }
                    Err(e) => tracing::debug!("health check failed: {e}"),
                }
            }
        })
    }

    /// A call succeeded: leave fallback mode, and deliver queued reports in the background.
    fn mark_reachable(&self) {
        self.inner.mark_reachable();
        if self.pending_reports() == 0 {
            return;
        }
        // Deliver in the background so the successful call is not slowed down; skip when a
        // delivery is already running (it will see the queued reports).
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let Ok(_delivering) = inner.delivery.try_lock() else {
                return;
            };
            if let Err(why) = inner.deliver_outbox().await {
                tracing::debug!("report outbox not delivered: {why}");
            }
        });
    }

    /// [`Self::mark_reachable`] for callers that hold the delivery lock and have just emptied
    /// the outbox themselves.
    fn mark_reachable_holding_delivery(&self) {
        self.inner.mark_reachable();
    }
}

impl Inner {
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            // Segments are percent-encoded here, so a task id cannot change the path.
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn mark_reachable(&self) {
        if self.in_fallback.swap(false, Ordering::SeqCst) {
            tracing::info!("approval service reachable again; leaving fallback mode");
        }
    }

    fn mark_unreachable(&self, why: &str) {
        if !self.in_fallback.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                strict = self.config.fallback_strict,
                "approval service unreachable; entering fallback mode: {why}"
            );
        }
    }

    fn outbox_lock(&self) -> MutexGuard<'_, VecDeque<ExecutionSummary>> {
        // A panic while holding this lock cannot leave the queue half-changed.
        self.outbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn enqueue(&self, summary: ExecutionSummary, why: &str) -> ReportResponse {
        let mut outbox = self.outbox_lock();
        outbox.push_back(summary);
        let pending = outbox.len();
        drop(outbox);
        tracing::warn!(pending, "execution report queued for redelivery: {why}");
        ReportResponse {
            success: false,
            message: format!(
                "approval service unreachable; report queued for redelivery ({pending} pending)"
            ),
            queued: true,
        }
    }

    async fn send_report(
        &self,
        summary: &ExecutionSummary,
        retries: bool,
    ) -> Result<ReportResponse, Failure> {
        let url = self.endpoint(&["api", "execution-report"]);
        self.exchange::<ReportResponse>(Method::POST, url, Some(summary), retries)
            .await
    }

    /// Delivers the outbox in order. Callers hold `delivery`. `Err` carries why the first
    /// undeliverable report could not be sent.
    async fn deliver_outbox(&self) -> Result<usize, String> {
        let mut delivered = 0;
        loop {
            let Some(next) = self.outbox_lock().front().cloned() else {
                return Ok(delivered);
            };
            match self.send_report(&next, true).await {
                Ok(_) => {
                    self.mark_reachable();
                    delivered += 1;
                }
                Err(Failure::Unreachable(why)) => {
                    self.mark_unreachable(&why);
                    return Err(why);
                }
                Err(Failure::Rejected { status, message }) => tracing::warn!(
                    task_id = %next.task_id,
                    status,
                    "queued execution report refused by approval service; dropped: {message}"
                ),
                Err(Failure::Invalid(why)) => tracing::warn!(
                    task_id = %next.task_id,
                    "queued execution report got an unexpected answer; dropped: {why}"
                ),
            }
            // Only this task (holding `delivery`) removes from the front.
            self.outbox_lock().pop_front();
        }
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
        retries: bool,
    ) -> Result<T, Failure> {
        let bytes = self
            .exchange_raw(method, url.clone(), body, retries)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Invalid(format!(
                "{} {}: {e}",
                url.path(),
                self.scrub(&snippet(&bytes))
            ))
        })
    }

    /// One HTTP exchange with retries: the 2xx body, or why not.
    async fn exchange_raw(
        &self,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
        retries: bool,
    ) -> Result<Vec<u8>, Failure> {
        let max_retries = if retries && self.config.enable_retries {
            self.config.max_retries
        } else {
            0
        };
        let mut attempt = 0;
        loop {
            match self.attempt(method.clone(), url.clone(), body).await {
                Err(Failure::Unreachable(why)) if attempt < max_retries => {
                    let pause = self.config.backoff(attempt);
                    attempt += 1;
                    tracing::debug!(
                        attempt,
                        max_retries,
                        pause_ms = pause.as_millis() as u64,
                        "{} {} failed, retrying: {why}",
                        method,
                        url.path()
                    );
                    tokio::time::sleep(pause).await;
                }
                Err(Failure::Unreachable(why)) if attempt > 0 => {
                    return Err(Failure::Unreachable(format!(
                        "{why} (after {} attempts)",
                        attempt + 1
                    )));
                }
                other => return other,
            }
        }
    }

    async fn attempt(
        &self,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
    ) -> Result<Vec<u8>, Failure> {
        let path = url.path().to_string();
        let mut request = self.http.request(method, url);
        if !self.config.api_key.is_empty() {
            request = request.bearer_auth(&self.config.api_key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Unreachable(self.scrub(&describe(&path, &e))))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Unreachable(self.scrub(&describe(&path, &e))))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let message = self.scrub(&error_message(status, &bytes));
        if status.is_server_error() {
            Err(Failure::Unreachable(format!(
                "{path}: HTTP {}: {message}",
                status.as_u16()
            )))
        } else if status.is_client_error() {
            Err(Failure::Rejected {
                status: status.as_u16(),
                message,
            })
        } else {
            Err(Failure::Invalid(format!(
                "{path}: HTTP {}: {message}",
                status.as_u16()
            )))
        }
    }

    /// Removes the API key from text that came from elsewhere (error bodies, error chains).
    fn scrub(&self, text: &str) -> String {
        let key = self.config.api_key.as_str();
        if key.is_empty() {
            text.to_string()
        } else {
            text.replace(key, "[redacted]")
        }
    }
}

fn describe(path: &str, error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The source chain says *why* (connection refused, dns, ...); the top level only "error
    // sending request".
    let mut text = format!("{path}: {kind}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The `error` (string, or object with `message`) of a JSON error body, else the body's start.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = json.get("error");
        let text = error
            .and_then(|e| e.as_str())
            .or_else(|| {
                error
                    .and_then(|e| e.get("message"))
                    .and_then(|m| m.as_str())
            })
            .or_else(|| json.get("message").and_then(|m| m.as_str()));
        if let Some(text) = text {
            return text.to_string();
        }
    }
    let text = snippet(body);
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no explanation")
            .to_string()
    } else {
        text
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_BODY_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn debug_output_redacts_the_api_key() {
        let config = ClientConfig {
            api_key: "s3cret-key-value".into(),
            ..ClientConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret-key-value"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        let client = ApprovalClient::new(config).expect("client");
        let text = format!("{client:?}");
        assert!(!text.contains("s3cret-key-value"), "{text}");
    }

    #[test]
    fn config_from_environment_values() {
        let config = ClientConfig::from_lookup(lookup(&[
            ("APPROVAL_SYSTEM_URL", "https://approvals.example:9000/base"),
            ("APPROVAL_API_KEY", "k"),
            ("APPROVAL_TIMEOUT", "2.5"),
            ("APPROVAL_FALLBACK_STRICT", "0"),
            ("APPROVAL_ENABLE_RETRIES", "FALSE"),
            ("APPROVAL_MAX_RETRIES", "7"),
        ]))
        .expect("config");
        assert_eq!(config.url, "https://approvals.example:9000/base");
        assert_eq!(config.api_key, "k");
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert!(!config.fallback_strict);
        assert!(!config.enable_retries);
        assert_eq!(config.max_retries, 7);

        let defaults = ClientConfig::from_lookup(lookup(&[])).expect("defaults");
        assert_eq!(defaults.url, ClientConfig::default().url);
        assert!(defaults.fallback_strict);
        assert!(defaults.enable_retries);
    }

    #[test]
    fn config_rejects_values_it_cannot_understand() {
        for (name, value) in [
            ("APPROVAL_FALLBACK_STRICT", "yes please"),
            ("APPROVAL_ENABLE_RETRIES", "maybe"),
            ("APPROVAL_TIMEOUT", "-1"),
            ("APPROVAL_TIMEOUT", "soon"),
            ("APPROVAL_MAX_RETRIES", "-2"),
        ] {
            let err = ClientConfig::from_lookup(lookup(&[(name, value)]))
                .expect_err("bad value must be refused");
            assert!(
                matches!(err, ClientError::Config(_)),
                "{name}={value}: {err}"
            );
        }
        let bad_url = ClientConfig {
            url: "ftp://nowhere".into(),
            ..ClientConfig::default()
        };
        assert!(matches!(
            ApprovalClient::new(bad_url),
            Err(ClientError::Config(_))
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let config = ClientConfig {
            initial_backoff: Duration::from_millis(100),
            backoff_multiplier: 2.0,
            ..ClientConfig::default()
        };
        assert_eq!(config.backoff(0), Duration::from_millis(100));
        assert_eq!(config.backoff(1), Duration::from_millis(200));
        assert_eq!(config.backoff(3), Duration::from_millis(800));
        assert_eq!(config.backoff(200), MAX_BACKOFF);
    }

    #[test]
    fn pending_is_recognised_by_flag_or_reason_only() {
        let pending_flag: ApprovalResponse = serde_json::from_str(
            r#"{"approved":false,"reason":"queued","pending":true,"retry_after_seconds":5,"extra":1}"#,
        )
        .expect("parse");
        assert!(pending_flag.is_pending());

        let pending_reason: ApprovalResponse = serde_json::from_str(
            r#"{"approved":false,"reason":"Awaiting human decision (3 min left)","constraints":null,"retry_after_seconds":5}"#,
        )
        .expect("parse");
        assert!(pending_reason.is_pending());

        let over_budget: ApprovalResponse = serde_json::from_str(
            r#"{"approved":false,"reason":"Daily budget exhausted","constraints":null,"retry_after_seconds":40000}"#,
        )
        .expect("parse");
        assert!(!over_budget.is_pending());

        let minimal: ApprovalResponse =
            serde_json::from_str(r#"{"approved":true,"reason":null}"#).expect("parse");
        assert!(minimal.approved && !minimal.is_pending() && minimal.reason.is_empty());
    }

    #[test]
    fn task_ids_are_one_path_segment() {
        let client = ApprovalClient::new(ClientConfig {
            url: "http://127.0.0.1:8001/prefix/".into(),
            ..ClientConfig::default()
        })
        .expect("client");
        let url = client
            .inner
            .endpoint(&["api", "abort-signal", "../../admin?x=1#y"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8001/prefix/api/abort-signal/..%2F..%2Fadmin%3Fx=1%23y"
        );
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(
            error_message(StatusCode::UNAUTHORIZED, br#"{"error":"invalid api key"}"#),
            "invalid api key"
        );
        assert_eq!(
            error_message(
                StatusCode::BAD_REQUEST,
                br#"{"error":{"message":"bad task","data":{}}}"#
            ),
            "bad task"
        );
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
        assert_eq!(snippet("é".repeat(400).as_bytes()).chars().count(), 303);
    }
}
