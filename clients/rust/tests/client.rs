//! The client against a fake approvald (axum on 127.0.0.1:0) that records every call, checks
//! the Bearer key, and can be told to answer 500, to go down and come back on the same port,
//! to keep a decision pending for a number of asks, and to raise an abort signal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvald_client::{
    ApprovalClient, ApprovalResponse, ClientConfig, ClientError, Constraint, ExecutionStatus,
    ExecutionSummary, ExecutorLimits, STRICT_FALLBACK_REASON, TaskRequest, apply_constraints,
};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const KEY: &str = "test-key-0123456789";

// ---------------------------------------------------------------------------------------------
// The fake approvald
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Fake {
    approve_calls: AtomicU32,
    health_calls: AtomicU32,
    abort_calls: AtomicU32,
    report_calls: AtomicU32,
    /// Answer 500 to this many calls (any endpoint), then behave.
    fail_next: AtomicU32,
    /// Answer 500 to every call.
    always_fail: AtomicBool,
    /// Answer "pending" to this many approval asks before the decision.
    pending_left: AtomicU32,
    /// Pending answers carry `"pending": true` (else only the "Awaiting human decision" reason).
    pending_flag: AtomicBool,
    /// The decision once nothing is pending.
    decision: Mutex<Option<Value>>,
    approve_bodies: Mutex<Vec<Value>>,
    reports: Mutex<Vec<Value>>,
    /// task id -> abort reason (`None`: abort without a reason).
    aborts: Mutex<HashMap<String, Option<String>>>,
}

type Shared = Arc<Fake>;

impl Fake {
    /// 401 for a wrong key, 500 when told to fail; `None` lets the handler answer.
    fn gate(&self, headers: &HeaderMap) -> Option<Response> {
        let expected = format!("Bearer {KEY}");
        let authorized = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == expected);
        if !authorized {
            return Some(
                (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "invalid api key", "hint": "check APPROVAL_API_KEY"})),
                )
                    .into_response(),
            );
        }
        let fail_once = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail_once || self.always_fail.load(Ordering::SeqCst) {
            return Some(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": "database is locked"})),
                )
                    .into_response(),
            );
        }
        None
    }
}

async fn approve(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    fake.approve_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(refusal) = fake.gate(&headers) {
        return refusal;
    }
    fake.approve_bodies.lock().unwrap().push(body);
    let still_pending = fake
        .pending_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if still_pending {
        let mut answer = json!({
            "approved": false,
            "reason": "Awaiting human decision: asked alice on telegram",
            "constraints": null,
            "retry_after_seconds": 0,
            "request_id": "apr_123",
        });
        if fake.pending_flag.load(Ordering::SeqCst) {
            answer["pending"] = json!(true);
        }
        return Json(answer).into_response();
    }
    let decision = fake.decision.lock().unwrap().clone().unwrap_or_else(|| {
        json!({"approved": true, "reason": "approved by alice", "constraints": null, "retry_after_seconds": null})
    });
    Json(decision).into_response()
}

async fn abort_signal(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> Response {
    fake.abort_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(refusal) = fake.gate(&headers) {
        return refusal;
    }
    let answer = match fake.aborts.lock().unwrap().get(&task_id) {
        Some(reason) => json!({"should_abort": true, "reason": reason}),
        None => json!({"should_abort": false, "reason": null}),
    };
    Json(answer).into_response()
}

async fn execution_report(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    fake.report_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(refusal) = fake.gate(&headers) {
        return refusal;
    }
    if body.get("task_id").and_then(Value::as_str).is_none() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "task_id is required"})),
        )
            .into_response();
    }
    fake.reports.lock().unwrap().push(body);
    Json(json!({"success": true, "message": "report recorded", "extra": [1, 2]})).into_response()
}

async fn health(State(fake): State<Shared>) -> Response {
    fake.health_calls.fetch_add(1, Ordering::SeqCst);
    if fake.always_fail.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy"})),
        )
            .into_response();
    }
    Json(json!({"status": "healthy", "version": "fake"})).into_response()
}

struct FakeServer {
    addr: SocketAddr,
    fake: Shared,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl FakeServer {
    async fn start() -> Self {
        let mut server = FakeServer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            fake: Arc::new(Fake::default()),
            running: None,
        };
        server.come_back().await;
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Listens again on the same address (a fresh one the first time).
    async fn come_back(&mut self) {
        assert!(self.running.is_none(), "fake approvald already up");
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(self.addr).expect("bind");
        let listener = socket.listen(64).expect("listen");
        self.addr = listener.local_addr().expect("local addr");
        let app = Router::new()
            .route("/api/approve", post(approve))
            .route("/api/abort-signal/{task_id}", get(abort_signal))
            .route("/api/execution-report", post(execution_report))
            .route("/health", get(health))
            .with_state(Arc::clone(&self.fake));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("fake approvald serve");
        });
        self.running = Some((stop, task));
    }

    /// Stops listening and closes every connection: the port refuses connections afterwards.
    async fn go_down(&mut self) {
        let (stop, task) = self.running.take().expect("fake approvald is up");
        let _ = stop.send(());
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

fn config_for(server: &FakeServer) -> ClientConfig {
    ClientConfig {
        url: server.url(),
        api_key: KEY.to_string(),
        timeout: Duration::from_secs(2),
        max_retries: 2,
        backoff_multiplier: 2.0,
        initial_backoff: Duration::from_millis(5),
        fallback_strict: false,
        health_check_interval: Duration::from_millis(20),
        enable_retries: true,
        abort_poll_interval: Duration::from_millis(20),
    }
}

fn task(id: &str) -> TaskRequest {
    TaskRequest::new(id, "shell", "rm -rf ./build && make release")
        .with_estimated_cost(0.75)
        .with_estimated_duration_ms(90_000)
        .with_context(json!({"cwd": "/srv/app", "agent": "builder"}))
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn strict_fallback_constraints() -> Vec<Constraint> {
    ApprovalResponse::fallback(false)
        .constraints
        .expect("lenient fallback has constraints")
}

// ---------------------------------------------------------------------------------------------
// Approvals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn approval_with_constraints_is_returned_as_sent() {
    let server = FakeServer::start().await;
    *server.fake.decision.lock().unwrap() = Some(json!({
        "approved": true,
        "reason": "approved by alice, with limits",
        "constraints": [
            {"type": "cost_limit", "value": 0.5, "reason": "keep it cheap"},
            {"type": "time_limit", "value": 60000, "reason": "one minute"},
            {"type": "parallelism", "value": 2},
            {"type": "gpu_quota", "value": 1, "reason": "not known to the client"}
        ],
        "retry_after_seconds": null,
        "decided_by": "alice"
    }));
    let client = ApprovalClient::new(config_for(&server)).expect("client");

    let sent = task("task-approve-1");
    let (answer, in_fallback) = client.request_approval(&sent).await.expect("approval");
    assert!(answer.approved);
    assert!(!in_fallback);
    assert!(!client.is_in_fallback());
    assert!(!answer.is_pending());
    let constraints = answer.constraints.clone().expect("constraints");
    assert_eq!(constraints.len(), 4);
    assert_eq!(constraints[0].kind, Constraint::COST_LIMIT);
    assert_eq!(constraints[0].value, 0.5);
    assert_eq!(constraints[0].reason.as_deref(), Some("keep it cheap"));
    assert_eq!(constraints[2].reason, None);

    let limits = apply_constraints(
        &ExecutorLimits {
            max_cost: Some(2.0),
            ..ExecutorLimits::default()
        },
        &constraints,
    );
    assert_eq!(limits.max_cost, Some(0.5));
    assert_eq!(limits.max_duration_ms, Some(60_000));
    assert_eq!(limits.parallelism, Some(2));
    assert_eq!(limits.max_tokens, None);

    // The wire format the server saw.
    let bodies = server.fake.approve_bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let body = &bodies[0];
    assert_eq!(body["task_id"], "task-approve-1");
    assert_eq!(body["task_type"], "shell");
    assert_eq!(body["description"], "rm -rf ./build && make release");
    assert_eq!(body["estimated_cost"], 0.75);
    assert_eq!(body["estimated_duration_ms"], 90_000);
    assert_eq!(
        body["context"],
        json!({"cwd": "/srv/app", "agent": "builder"})
    );
    let timestamp = body["timestamp"].as_str().expect("timestamp is a string");
    let parsed = chrono::DateTime::parse_from_rfc3339(timestamp).expect("RFC 3339 timestamp");
    assert_eq!(parsed, sent.timestamp);
}

#[tokio::test]
async fn pending_decision_is_waited_for_until_approved() {
    let server = FakeServer::start().await;
    server.fake.pending_left.store(2, Ordering::SeqCst);
    server.fake.pending_flag.store(true, Ordering::SeqCst);
    let client = ApprovalClient::new(config_for(&server)).expect("client");

    // One ask on its own shows the pending answer.
    let (first, _) = client
        .request_approval(&task("task-pending"))
        .await
        .expect("ask");
    assert!(first.is_pending() && first.pending && !first.approved);

    let started = Instant::now();
    let (answer, in_fallback) = client
        .wait_for_approval(&task("task-pending"), Duration::from_secs(10))
        .await
        .expect("wait");
    assert!(answer.approved, "{answer:?}");
    assert!(!in_fallback);
    // 1 lone ask + 1 more pending + the decision; each pause at least 50 ms.
    assert_eq!(server.fake.approve_calls.load(Ordering::SeqCst), 3);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let bodies = server.fake.approve_bodies.lock().unwrap().clone();
    assert!(bodies.iter().all(|b| b["task_id"] == "task-pending"));
}

#[tokio::test]
async fn pending_is_recognised_by_its_reason_without_the_flag() {
    let server = FakeServer::start().await;
    server.fake.pending_left.store(3, Ordering::SeqCst);
    let client = ApprovalClient::new(config_for(&server)).expect("client");

    let (answer, _) = client
        .wait_for_approval(&task("task-reason"), Duration::from_secs(10))
        .await
        .expect("wait");
    assert!(answer.approved);
    assert_eq!(server.fake.approve_calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn waiting_gives_back_the_pending_answer_when_time_runs_out() {
    let server = FakeServer::start().await;
    server.fake.pending_left.store(u32::MAX, Ordering::SeqCst);
    server.fake.pending_flag.store(true, Ordering::SeqCst);
    let client = ApprovalClient::new(config_for(&server)).expect("client");

    let started = Instant::now();
    let (answer, in_fallback) = client
        .wait_for_approval(&task("task-slow-human"), Duration::from_millis(300))
        .await
        .expect("wait");
    assert!(answer.is_pending());
    assert!(!answer.approved && !in_fallback);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(server.fake.approve_calls.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn over_budget_refusal_is_final_not_pending() {
    let server = FakeServer::start().await;
    *server.fake.decision.lock().unwrap() = Some(json!({
        "approved": false,
        "reason": "Daily budget of $20.00 exhausted",
        "constraints": null,
        "retry_after_seconds": 36000
    }));
    let client = ApprovalClient::new(config_for(&server)).expect("client");

    let started = Instant::now();
    let (answer, in_fallback) = client
        .wait_for_approval(&task("task-budget"), Duration::from_secs(600))
        .await
        .expect("wait");
    assert!(!answer.approved && !answer.is_pending() && !in_fallback);
    assert_eq!(answer.retry_after_seconds, Some(36000));
    assert_eq!(server.fake.approve_calls.load(Ordering::SeqCst), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn bad_key_is_an_error_not_a_fallback() {
    let server = FakeServer::start().await;
    let client = ApprovalClient::new(ClientConfig {
        api_key: "wrong-key-abcdef".to_string(),
        ..config_for(&server)
    })
    .expect("client");

    let err = client
        .request_approval(&task("task-401"))
        .await
        .expect_err("a bad key must not be answered by fallback");
    match &err {
        ClientError::Rejected { status, message } => {
            assert_eq!(*status, 401);
            assert_eq!(message, "invalid api key");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!err.to_string().contains("wrong-key-abcdef"), "{err}");
    assert!(!client.is_in_fallback());
    // 4xx is not retried.
    assert_eq!(server.fake.approve_calls.load(Ordering::SeqCst), 1);

    let report = client
        .report_execution(&ExecutionSummary::new(
            "task-401",
            ExecutionStatus::Completed,
        ))
        .await;
    assert!(matches!(
        report,
        Err(ClientError::Rejected { status: 401, .. })
    ));
    assert_eq!(
        client.pending_reports(),
        0,
        "refused reports are not queued"
    );
}

// ---------------------------------------------------------------------------------------------
// Fallback and recovery
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_down_falls_back_with_strict_limits_and_recovers_after_health_check() {
    let mut server = FakeServer::start().await;
    let client = Arc::new(ApprovalClient::new(config_for(&server)).expect("client"));
    let (answer, in_fallback) = client.request_approval(&task("task-up")).await.expect("up");
    assert!(answer.approved && !in_fallback);

    server.go_down().await;
    let (answer, in_fallback) = client
        .request_approval(&task("task-down"))
        .await
        .expect("fallback is an answer, not an error");
    assert!(in_fallback);
    assert!(client.is_in_fallback());
    assert!(answer.approved, "non-strict fallback approves");
    let constraints = answer.constraints.clone().expect("fallback constraints");
    assert_eq!(constraints, strict_fallback_constraints());
    let limits = apply_constraints(&ExecutorLimits::default(), &constraints);
    assert_eq!(limits.max_cost, Some(5.0));
    assert_eq!(limits.max_duration_ms, Some(300_000));
    assert_eq!(limits.resource_multiplier, Some(0.5));
    assert!(matches!(
        client.get_health().await,
        Err(ClientError::Unavailable(_))
    ));

    server.come_back().await;
    assert!(client.is_in_fallback(), "nothing has told the client yet");
    let checker = client.periodic_health_check();
    eventually("the health check ends fallback mode", || {
        !client.is_in_fallback()
    })
    .await;
    checker.abort();
    assert!(server.fake.health_calls.load(Ordering::SeqCst) >= 1);

    let (answer, in_fallback) = client
        .request_approval(&task("task-back"))
        .await
        .expect("back");
    assert!(answer.approved && !in_fallback);
    assert_eq!(answer.reason, "approved by alice");
}

#[tokio::test]
async fn strict_fallback_refuses_while_server_is_down() {
    let mut server = FakeServer::start().await;
    let client = ApprovalClient::new(ClientConfig {
        fallback_strict: true,
        ..config_for(&server)
    })
    .expect("client");
    server.go_down().await;

    let (answer, in_fallback) = client
        .request_approval(&task("task-strict"))
        .await
        .expect("answer");
    assert!(in_fallback && client.is_in_fallback());
    assert!(!answer.approved);
    assert!(!answer.is_pending());
    assert_eq!(answer.reason, STRICT_FALLBACK_REASON);
    assert_eq!(answer.constraints, None);

    // wait_for_approval does not spin on a fallback refusal.
    let (answer, in_fallback) = client
        .wait_for_approval(&task("task-strict"), Duration::from_secs(60))
        .await
        .expect("answer");
    assert!(!answer.approved && in_fallback);

    // A successful call (not only a health check) also ends fallback mode.
    server.come_back().await;
    let (answer, in_fallback) = client
        .request_approval(&task("task-strict"))
        .await
        .expect("back");
    assert!(answer.approved && !in_fallback && !client.is_in_fallback());
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let server = FakeServer::start().await;
    server.fake.fail_next.store(2, Ordering::SeqCst);
    let client = ApprovalClient::new(ClientConfig {
        max_retries: 3,
        ..config_for(&server)
    })
    .expect("client");

    let (answer, in_fallback) = client
        .request_approval(&task("task-flaky"))
        .await
        .expect("approval");
    assert!(answer.approved && !in_fallback && !client.is_in_fallback());
    assert_eq!(server.fake.approve_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn persistent_server_errors_exhaust_retries_then_fall_back() {
    let server = FakeServer::start().await;
    server.fake.always_fail.store(true, Ordering::SeqCst);
    let client = ApprovalClient::new(config_for(&server)).expect("client");

    let (answer, in_fallback) = client
        .request_approval(&task("task-500"))
        .await
        .expect("fallback");
    assert!(in_fallback && answer.approved);
    // First attempt plus max_retries (2).
    assert_eq!(server.fake.approve_calls.load(Ordering::SeqCst), 3);
    // /health answering 503 keeps the client in fallback.
    assert!(matches!(
        client.get_health().await,
        Err(ClientError::Unavailable(_))
    ));
    assert!(client.is_in_fallback());
}

#[tokio::test]
async fn retries_can_be_turned_off() {
    let server = FakeServer::start().await;
    server.fake.always_fail.store(true, Ordering::SeqCst);
    let client = ApprovalClient::new(ClientConfig {
        enable_retries: false,
        max_retries: 5,
        ..config_for(&server)
    })
    .expect("client");

    let (_, in_fallback) = client
        .request_approval(&task("task-once"))
        .await
        .expect("fallback");
    assert!(in_fallback);
    assert_eq!(server.fake.approve_calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// Execution reports
// ---------------------------------------------------------------------------------------------

fn summary(task_id: &str, status: ExecutionStatus) -> ExecutionSummary {
    let start = chrono::Utc::now();
    ExecutionSummary {
        result: Some("built".to_string()),
        actual_cost: Some(0.31),
        start_time: Some(start),
        end_time: Some(start + chrono::Duration::milliseconds(1200)),
        logs: vec!["make: ok".to_string()],
        duration_ms: Some(1200),
        ..ExecutionSummary::new(task_id, status)
    }
}

#[tokio::test]
async fn report_is_delivered_in_the_wire_format() {
    let server = FakeServer::start().await;
    let client = ApprovalClient::new(config_for(&server)).expect("client");

    let answer = client
        .report_execution(&summary("task-report", ExecutionStatus::Completed))
        .await
        .expect("report");
    assert!(answer.success && !answer.queued);
    assert_eq!(answer.message, "report recorded");
    assert_eq!(client.pending_reports(), 0);

    let reports = server.fake.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    let body = &reports[0];
    assert_eq!(body["task_id"], "task-report");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["result"], "built");
    assert_eq!(body["actual_cost"], 0.31);
    assert_eq!(body["logs"], json!(["make: ok"]));
    assert_eq!(body["duration_ms"], 1200);
    assert!(body["error_message"].is_null() && body.get("error_message").is_some());
    for field in ["start_time", "end_time"] {
        let text = body[field].as_str().expect("timestamp string");
        chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339");
    }
}

#[tokio::test]
async fn reports_made_while_down_wait_in_the_outbox_until_flushed() {
    let mut server = FakeServer::start().await;
    let client = ApprovalClient::new(config_for(&server)).expect("client");
    server.go_down().await;

    let first = client
        .report_execution(&summary("task-a", ExecutionStatus::Completed))
        .await
        .expect("queued, not an error");
    assert!(first.queued && !first.success, "{first:?}");
    let mut failed = summary("task-b", ExecutionStatus::Failed);
    failed.error_message = Some("disk full".to_string());
    let second = client.report_execution(&failed).await.expect("queued");
    assert!(second.queued);
    assert_eq!(client.pending_reports(), 2);
    assert!(client.is_in_fallback());
    assert!(matches!(
        client.flush_reports().await,
        Err(ClientError::Unavailable(_))
    ));
    assert_eq!(client.pending_reports(), 2, "nothing lost while down");

    server.come_back().await;
    assert_eq!(client.flush_reports().await.expect("flush"), 2);
    assert_eq!(client.pending_reports(), 0);
    assert!(!client.is_in_fallback());

    let reports = server.fake.reports.lock().unwrap().clone();
    let seen: Vec<(&str, &str)> = reports
        .iter()
        .map(|r| {
            (
                r["task_id"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(seen, vec![("task-a", "completed"), ("task-b", "failed")]);
    assert_eq!(reports[1]["error_message"], "disk full");

    // A flush with nothing queued is a no-op.
    assert_eq!(client.flush_reports().await.expect("flush"), 0);
    assert_eq!(server.fake.reports.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn queued_reports_go_out_before_a_new_one_and_after_a_health_check() {
    let mut server = FakeServer::start().await;
    let client = Arc::new(ApprovalClient::new(config_for(&server)).expect("client"));
    server.go_down().await;
    client
        .report_execution(&summary("task-old", ExecutionStatus::Running))
        .await
        .expect("queued");
    assert_eq!(client.pending_reports(), 1);
    server.come_back().await;

    // A new report while the old one waits: the old one is delivered first.
    let answer = client
        .report_execution(&summary("task-new", ExecutionStatus::Completed))
        .await
        .expect("report");
    assert!(answer.success && !answer.queued);
    assert_eq!(client.pending_reports(), 0);
    let order: Vec<String> = server
        .fake
        .reports
        .lock()
        .unwrap()
        .iter()
        .map(|r| r["task_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(order, ["task-old", "task-new"]);

    // Down again: the periodic health check delivers the outbox when the service is back.
    server.go_down().await;
    client
        .report_execution(&summary("task-late", ExecutionStatus::Aborted))
        .await
        .expect("queued");
    assert_eq!(client.pending_reports(), 1);
    server.come_back().await;
    let checker = client.periodic_health_check();
    eventually("the health check delivers the outbox", || {
        client.pending_reports() == 0
    })
    .await;
    checker.abort();
    let reports = server.fake.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[2]["task_id"], "task-late");
    assert_eq!(reports[2]["status"], "aborted");
}

#[tokio::test]
async fn a_successful_approval_call_delivers_the_outbox() {
    let mut server = FakeServer::start().await;
    let client = ApprovalClient::new(config_for(&server)).expect("client");
    server.go_down().await;
    client
        .report_execution(&summary("task-queued", ExecutionStatus::Completed))
        .await
        .expect("queued");
    server.come_back().await;

    let (answer, in_fallback) = client
        .request_approval(&task("task-next"))
        .await
        .expect("approval");
    assert!(answer.approved && !in_fallback);
    eventually("the outbox is delivered", || client.pending_reports() == 0).await;
    eventually("the fake recorded the report", || {
        server.fake.reports.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(server.fake.report_calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// Abort signals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn listen_for_abort_returns_the_reason_once_raised() {
    let server = FakeServer::start().await;
    let client = ApprovalClient::new(config_for(&server)).expect("client");

    let fake = Arc::clone(&server.fake);
    let raiser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        fake.aborts.lock().unwrap().insert(
            "task-abort".to_string(),
            Some("alice pressed stop".to_string()),
        );
    });
    let started = Instant::now();
    let reason = client
        .listen_for_abort("task-abort", Duration::from_secs(5))
        .await
        .expect("listen");
    raiser.await.expect("raiser");
    assert_eq!(reason.as_deref(), Some("alice pressed stop"));
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(server.fake.abort_calls.load(Ordering::SeqCst) >= 2);

    // An abort without a reason still stops the task.
    server
        .fake
        .aborts
        .lock()
        .unwrap()
        .insert("task-quiet".to_string(), None);
    let reason = client
        .listen_for_abort("task-quiet", Duration::from_secs(5))
        .await
        .expect("listen");
    assert_eq!(reason.as_deref(), Some("aborted"));
}

#[tokio::test]
async fn listen_for_abort_gives_none_on_timeout() {
    let server = FakeServer::start().await;
    let client = ApprovalClient::new(config_for(&server)).expect("client");

    let started = Instant::now();
    let reason = client
        .listen_for_abort("task-calm", Duration::from_millis(200))
        .await
        .expect("listen");
    assert_eq!(reason, None);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert!(server.fake.abort_calls.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn listen_for_abort_with_a_bad_key_is_an_error() {
    let server = FakeServer::start().await;
    let client = ApprovalClient::new(ClientConfig {
        api_key: "nope".to_string(),
        ..config_for(&server)
    })
    .expect("client");
    let result = client
        .listen_for_abort("task-x", Duration::from_secs(5))
        .await;
    assert!(matches!(
        result,
        Err(ClientError::Rejected { status: 401, .. })
    ));
}

#[tokio::test]
async fn health_reports_the_server_status() {
    let server = FakeServer::start().await;
    let client = ApprovalClient::new(config_for(&server)).expect("client");
    let health = client.get_health().await.expect("healthy");
    assert_eq!(health.status, "healthy");
    assert_eq!(health.details["version"], "fake");
}

// ---------------------------------------------------------------------------------------------
// apply_constraints
// ---------------------------------------------------------------------------------------------

#[test]
fn constraints_set_limits_that_were_unset() {
    let limits = apply_constraints(
        &ExecutorLimits::default(),
        &[
            Constraint::new(Constraint::COST_LIMIT, 1.25, "budget"),
            Constraint::new(Constraint::TIME_LIMIT, 30_000.9, "short"),
            Constraint::new(Constraint::TOKEN_LIMIT, 4096.0, "tokens"),
            Constraint::new(Constraint::PARALLELISM, 3.0, "calm"),
            Constraint::new(Constraint::RESOURCE_LIMIT, 0.25, "quarter"),
        ],
    );
    assert_eq!(
        limits,
        ExecutorLimits {
            max_tokens: Some(4096),
            max_duration_ms: Some(30_000),
            parallelism: Some(3),
            max_cost: Some(1.25),
            resource_multiplier: Some(0.25),
        }
    );
}

#[test]
fn constraints_tighten_and_never_loosen() {
    let mine = ExecutorLimits {
        max_tokens: Some(1000),
        max_duration_ms: Some(10_000),
        parallelism: Some(8),
        max_cost: Some(0.10),
        resource_multiplier: Some(1.0),
    };
    let limits = apply_constraints(
        &mine,
        &[
            // Looser than mine: ignored.
            Constraint::new(Constraint::TOKEN_LIMIT, 50_000.0, "generous"),
            Constraint::new(Constraint::COST_LIMIT, 5.0, "generous"),
            Constraint::new(Constraint::TIME_LIMIT, f64::INFINITY, "forever"),
            // Tighter than mine: taken.
            Constraint::new(Constraint::PARALLELISM, 2.0, "tighter"),
            Constraint::new(Constraint::RESOURCE_LIMIT, 0.5, "tighter"),
        ],
    );
    assert_eq!(limits.max_tokens, Some(1000));
    assert_eq!(limits.max_cost, Some(0.10));
    assert_eq!(limits.max_duration_ms, Some(10_000));
    assert_eq!(limits.parallelism, Some(2));
    assert_eq!(limits.resource_multiplier, Some(0.5));

    // Applying the same constraints again changes nothing; the input is untouched.
    assert_eq!(
        apply_constraints(&limits, &strict_fallback_constraints()).max_cost,
        Some(0.10)
    );
    assert_eq!(mine.parallelism, Some(8));
}

#[test]
fn the_tightest_of_repeated_constraints_wins_and_unknown_kinds_are_ignored() {
    let limits = apply_constraints(
        &ExecutorLimits::default(),
        &[
            Constraint::new(Constraint::COST_LIMIT, 3.0, "rule"),
            Constraint::new(Constraint::COST_LIMIT, 1.0, "person"),
            Constraint::new(Constraint::COST_LIMIT, 2.0, "rule"),
            Constraint::new("network_egress", 0.0, "unknown to this client"),
            Constraint::new(Constraint::TIME_LIMIT, -5.0, "nonsense counts as zero"),
            Constraint::new(Constraint::TOKEN_LIMIT, f64::NAN, "unreadable"),
        ],
    );
    assert_eq!(
        limits,
        ExecutorLimits {
            max_tokens: None,
            max_duration_ms: Some(0),
            parallelism: None,
            max_cost: Some(1.0),
            resource_multiplier: None,
        }
    );
}
