//! The HTTP surface: JSON-RPC at `POST /rpc` and over WebSocket at `GET /rpc/ws`, the event
//! stream at `GET /events`, `GET /healthz` and `GET /metrics`. One shared [`AppContext`].

mod assistant;
mod body_deadline;
mod rpc;
mod sse;
mod ws;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::directory::Caller;
use crate::engine::ToolApprovalForwarder;
use crate::error::ApprovalError;
use crate::ui::SessionKey;

pub use body_deadline::limit_body_read;
pub use rpc::handle_message;

/// What every handler needs.
#[derive(Clone)]
pub struct AppContext {
    pub engine: ToolApprovalForwarder,
    pub max_body_bytes: usize,
    /// One permit per WebSocket or SSE client (`server.max_stream_clients`).
    pub stream_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Signs control UI sessions (shared by every instance of a cluster).
    pub ui_key: SessionKey,
}

impl AppContext {
    /// A slot for one more streaming client, or the error to answer with.
    pub fn stream_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApprovalError> {
        self.stream_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApprovalError::TooManyClients {
                limit: self.engine.config().server.max_stream_clients,
            })
    }
}

/// The whole router.
pub fn router(ctx: AppContext) -> Router {
    let limit = ctx.max_body_bytes;
    let ui_key = ctx.ui_key.clone();
    let ui = crate::ui::router(ctx.engine.clone(), ui_key.clone());
    Router::new()
        .route("/rpc", post(rpc::http_rpc))
        .route("/rpc/ws", get(ws::upgrade))
        .route("/events", get(sse::events))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(assistant::routes())
        .layer(axum::Extension(ui_key))
        .with_state(ctx)
        .merge(ui)
        .layer(DefaultBodyLimit::max(limit))
}

/// The query of the streaming endpoints (`GET /rpc/ws`, `GET /events`).
#[derive(Debug, serde::Deserialize)]
pub struct StreamQuery {
    /// Which notifications to send (see [`crate::events::EventFilter`]).
    events: Option<String>,
}

/// The filter a streaming client asked for, or why its query is refused.
fn event_filter(
    query: Result<axum::extract::Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<crate::events::EventFilter, ApprovalError> {
    let query = query.map_err(|e| ApprovalError::InvalidRequest(e.body_text()))?;
    crate::events::EventFilter::parse(query.events.as_deref())
        .map_err(ApprovalError::InvalidRequest)
}

/// The bearer token from `Authorization`, checked against the configured tokens.
pub fn authenticate(ctx: &AppContext, headers: &HeaderMap) -> Result<Caller, ApprovalError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or("")
        .trim();
    if token.is_empty() {
        return Err(ApprovalError::Unauthorized(
            "missing Authorization: Bearer <token>".into(),
        ));
    }
    ctx.engine.directory().authenticate(token)
}

async fn healthz(State(ctx): State<AppContext>) -> Response {
    axum::Json(json!({ "status": "ok", "channels": ctx.engine.channel_health() })).into_response()
}

async fn metrics(State(ctx): State<AppContext>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.engine.metrics().render(),
    )
        .into_response()
}
