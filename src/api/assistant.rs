//! The "personal assistant approval" protocol, so an existing gateway can point at approvald:
//! `POST /api/approve`, `GET /api/abort-signal/{task_id}`, `POST /api/execution-report`,
//! `GET /health`, and the operators' queue under `/api/queue/*` (answers wrapped as
//! `{"success", "timestamp", "data"}`). Auth is an API token as `Authorization: Bearer` or
//! `X-Auth-Token`. Errors are `{"error", "kind"}` with a fitting HTTP status; nothing changes.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AppContext;
use crate::config::TokenScope;
use crate::directory::Caller;
use crate::domain::{Decision, Transport};
use crate::engine::{Actor, DecisionAttempt, EnqueueTask, ExecutionReport};
use crate::error::ApprovalError;
use crate::tasks::TaskStatus;

pub fn routes() -> Router<AppContext> {
    Router::new()
        .route("/health", get(health))
        .route("/api/approve", post(approve))
        .route("/api/abort-signal/{task_id}", get(abort_signal))
        .route("/api/execution-report", post(execution_report))
        .route("/api/approval/health", get(approval_health))
        .route("/api/queue/status", get(queue_status))
        .route("/api/queue/tasks", get(queue_tasks))
        .route("/api/queue/task/{id}", get(queue_task))
        .route("/api/queue/approve/{id}", post(queue_approve))
        .route("/api/queue/reject/{id}", post(queue_reject))
        .route("/api/queue/abort/{id}", post(queue_abort))
}

/// The caller behind `Authorization: Bearer` or `X-Auth-Token`.
fn caller(ctx: &AppContext, headers: &HeaderMap) -> Result<Caller, ApprovalError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let token = bearer
        .or_else(|| headers.get("x-auth-token").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return Err(ApprovalError::Unauthorized(
            "missing Authorization: Bearer <token> or X-Auth-Token".into(),
        ));
    }
    ctx.engine.directory().authenticate(token)
}

fn error(e: ApprovalError) -> Response {
    if let ApprovalError::Internal(detail) = &e {
        tracing::error!(detail, "internal error answering the assistant protocol");
    }
    let mut body = json!({
        "success": false,
        "error": e.to_string(),
        "kind": e.kind(),
        "timestamp": Utc::now(),
    });
    if let ApprovalError::RateLimited { retry_after_ms, .. } = &e {
        // The protocol's own answer shape too, so a gateway that only reads `approved` and
        // `retry_after_seconds` backs off.
        let secs = retry_after_ms.div_ceil(1000);
        body["approved"] = json!(false);
        body["reason"] = json!(e.to_string());
        body["constraints"] = Value::Null;
        body["retry_after_seconds"] = json!(secs);
        return (
            e.rest_status(),
            [(axum::http::header::RETRY_AFTER, secs.to_string())],
            axum::Json(body),
        )
            .into_response();
    }
    (e.rest_status(), axum::Json(body)).into_response()
}

fn wrapped(data: Value) -> Response {
    axum::Json(json!({ "success": true, "timestamp": Utc::now(), "data": data })).into_response()
}

/// A JSON body, with the field that is wrong named in the error. An empty body is `{}`.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApprovalError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApprovalError::Parse(format!("body is not valid JSON: {inner}"))
        } else if path == "." {
            ApprovalError::InvalidParams(inner.to_string())
        } else {
            ApprovalError::InvalidParams(format!("{path}: {inner}"))
        }
    })
}

async fn health(State(ctx): State<AppContext>) -> Response {
    let fallback = ctx.engine.fallback_state();
    axum::Json(json!({
        "status": "healthy",
        "service": "approvald",
        "version": env!("CARGO_PKG_VERSION"),
        "fallback": fallback,
        "timestamp": Utc::now(),
    }))
    .into_response()
}

async fn approve(State(ctx): State<AppContext>, headers: HeaderMap, bytes: Bytes) -> Response {
    let result = async {
        let caller = caller(&ctx, &headers)?;
        let task: EnqueueTask = body(&bytes)?;
        ctx.engine.enqueue_task(task, &caller).await
    }
    .await;
    match result {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => error(e),
    }
}

async fn abort_signal(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> Response {
    let result = async {
        caller(&ctx, &headers)?;
        ctx.engine.abort_signal(&task_id).await
    }
    .await;
    match result {
        Ok((should_abort, reason)) => {
            axum::Json(json!({ "should_abort": should_abort, "reason": reason })).into_response()
        }
        Err(e) => error(e),
    }
}

async fn execution_report(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let result = async {
        let caller = caller(&ctx, &headers)?;
        let report: ExecutionReport = body(&bytes)?;
        ctx.engine.report_execution(report, &caller).await
    }
    .await;
    match result {
        Ok((snap, message)) => axum::Json(json!({
            "success": true,
            "message": message,
            "status": snap.status(),
            "should_abort": snap.task.abort.is_some(),
        }))
        .into_response(),
        Err(e) => error(e),
    }
}

async fn approval_health(State(ctx): State<AppContext>, headers: HeaderMap) -> Response {
    if let Err(e) = caller(&ctx, &headers) {
        return error(e);
    }
    let outbox = ctx.engine.store().outbox_len().await.unwrap_or(0);
    let fallback = ctx.engine.fallback_state();
    let degraded = fallback["in_fallback"].as_bool().unwrap_or(false);
    wrapped(json!({
        "status": if degraded { "degraded" } else { "healthy" },
        "fallback_mode": degraded,
        "fallback": fallback,
        "reports_waiting_upstream": outbox,
        "channels": ctx.engine.channel_health(),
    }))
}

async fn queue_status(State(ctx): State<AppContext>, headers: HeaderMap) -> Response {
    let result = async {
        caller(&ctx, &headers)?;
        ctx.engine.queue_status().await
    }
    .await;
    match result {
        Ok(v) => wrapped(v),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
struct TasksQuery {
    status: Option<String>,
    page: Option<u32>,
    per_page: Option<u32>,
}

async fn queue_tasks(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    query: Result<Query<TasksQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        caller(&ctx, &headers)?;
        let Query(q) = query.map_err(|e| ApprovalError::InvalidParams(e.body_text()))?;
        let status = q
            .status
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::parse::<TaskStatus>)
            .transpose()
            .map_err(ApprovalError::InvalidParams)?;
        ctx.engine
            .task_page(status, q.page.unwrap_or(1), q.per_page.unwrap_or(50))
            .await
    }
    .await;
    match result {
        Ok(v) => wrapped(v),
        Err(e) => error(e),
    }
}

async fn queue_task(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        caller(&ctx, &headers)?;
        ctx.engine.task(&id).await
    }
    .await;
    match result {
        Ok(snap) => wrapped(ctx.engine.task_json(&snap)),
        Err(e) => error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    reason: Option<String>,
    /// `once` (default) or `always`.
    scope: Option<String>,
}

async fn decide(
    ctx: &AppContext,
    headers: &HeaderMap,
    id: &str,
    bytes: &[u8],
    approve: bool,
) -> Response {
    let result = async {
        let caller = caller(ctx, headers)?;
        caller.require(TokenScope::Resolve)?;
        let b: DecideBody = body(bytes)?;
        let decision = match (approve, b.scope.as_deref()) {
            (false, _) => Decision::Deny,
            (true, None | Some("once")) => Decision::ApproveOnce,
            (true, Some("always")) => Decision::ApproveAlways,
            (true, Some(other)) => {
                return Err(ApprovalError::InvalidParams(format!(
                    "scope {other:?} is not once or always"
                )));
            }
        };
        let snap = ctx.engine.task(id).await?;
        ctx.engine
            .resolve(DecisionAttempt {
                id: snap.task.approval_id.clone(),
                decision,
                reason: b.reason,
                actor: Actor::Caller {
                    caller,
                    transport: Transport::Api,
                },
            })
            .await?;
        ctx.engine.task(id).await
    }
    .await;
    match result {
        Ok(snap) => wrapped(ctx.engine.task_json(&snap)),
        Err(e) => error(e),
    }
}

async fn queue_approve(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Response {
    decide(&ctx, &headers, &id, &bytes, true).await
}

async fn queue_reject(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Response {
    decide(&ctx, &headers, &id, &bytes, false).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    reason: Option<String>,
}

async fn queue_abort(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Response {
    let result = async {
        let caller = caller(&ctx, &headers)?;
        let b: AbortBody = body(&bytes)?;
        let actor = Actor::Caller {
            caller,
            transport: Transport::Api,
        };
        ctx.engine.abort_task(&id, b.reason, &actor).await
    }
    .await;
    match result {
        Ok(snap) => wrapped(ctx.engine.task_json(&snap)),
        Err(e) => error(e),
    }
}
