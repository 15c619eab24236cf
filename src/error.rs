//! The one error type of the API. Each variant has a stable `kind` (the contract callers match
//! on, in `error.data.kind`), a JSON-RPC code and an HTTP status. Internal details stay in the
//! logs: an `Internal` error answers only "internal error".

use serde_json::json;

use crate::domain::{ApproverIdentity, Status, Verdict};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("method not found: {0}")]
    MethodNotFound(String),
    #[error("request body too large (limit {limit} bytes)")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    InvalidParams(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("no approval with id {0:?}")]
    UnknownId(String),
    #[error(
        "id prefix {prefix:?} matches several approvals ({candidates:?}); give more characters"
    )]
    AmbiguousId {
        prefix: String,
        candidates: Vec<String>,
    },
    #[error("approval {id} expired at {expires_at} without a decision")]
    Expired { id: String, expires_at: String },
    #[error("approval {id} was already {} by {}", status.as_str(), decided_by.as_ref().map(|d| d.display_name.as_str()).unwrap_or("someone else"))]
    AlreadyResolved {
        id: String,
        status: Status,
        verdict: Verdict,
        decided_by: Option<Box<ApproverIdentity>>,
    },
    #[error("{0}")]
    NotAnApprover(String),
    #[error("{0}")]
    SelfApproval(String),
    #[error("{0}")]
    DuplicateId(String),
    /// Too many requests for a token, agent or session.
    #[error("too many approval requests for this {scope} ({key}); try again in {} s", retry_after_ms.div_ceil(1000))]
    RateLimited {
        scope: &'static str,
        key: String,
        retry_after_ms: u64,
    },
    /// The server is stopping while the caller waited; the request is still pending.
    #[error("approvald is shutting down; reconnect and call tool.approval.wait with id {id}")]
    ShuttingDown { id: String },
    /// Too many WebSocket and event-stream clients at once.
    #[error("too many streaming clients are connected (limit {limit}); try again later")]
    TooManyClients { limit: usize },
    /// A task was asked to move where its lifecycle does not allow.
    #[error("{0}")]
    InvalidTransition(String),
    #[error("internal error")]
    Internal(String),
}

impl ApprovalError {
    /// The stable machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ApprovalError::Parse(_) => "parse_error",
            ApprovalError::InvalidRequest(_) => "invalid_request",
            ApprovalError::MethodNotFound(_) => "method_not_found",
            ApprovalError::PayloadTooLarge { .. } => "payload_too_large",
            ApprovalError::InvalidParams(_) => "invalid_params",
            ApprovalError::Unauthorized(_) => "unauthorized",
            ApprovalError::UnknownId(_) => "unknown_id",
            ApprovalError::AmbiguousId { .. } => "ambiguous_id",
            ApprovalError::Expired { .. } => "expired",
            ApprovalError::AlreadyResolved { .. } => "already_resolved",
            ApprovalError::NotAnApprover(_) => "not_an_approver",
            ApprovalError::SelfApproval(_) => "self_approval",
            ApprovalError::DuplicateId(_) => "duplicate_id",
            ApprovalError::InvalidTransition(_) => "invalid_transition",
            ApprovalError::RateLimited { .. } => "rate_limited",
            ApprovalError::ShuttingDown { .. } => "shutting_down",
            ApprovalError::TooManyClients { .. } => "too_many_clients",
            ApprovalError::Internal(_) => "internal",
        }
    }

    /// JSON-RPC error code: the standard ones where they fit, -32000.. for ours.
    pub fn code(&self) -> i64 {
        match self {
            ApprovalError::Parse(_) => -32700,
            ApprovalError::InvalidRequest(_) | ApprovalError::PayloadTooLarge { .. } => -32600,
            ApprovalError::MethodNotFound(_) => -32601,
            ApprovalError::InvalidParams(_) => -32602,
            ApprovalError::Internal(_) => -32603,
            ApprovalError::Unauthorized(_) => -32001,
            ApprovalError::UnknownId(_) | ApprovalError::AmbiguousId { .. } => -32002,
            ApprovalError::Expired { .. } | ApprovalError::AlreadyResolved { .. } => -32003,
            ApprovalError::NotAnApprover(_) | ApprovalError::SelfApproval(_) => -32004,
            ApprovalError::DuplicateId(_) => -32005,
            ApprovalError::InvalidTransition(_) => -32006,
            ApprovalError::RateLimited { .. } => -32007,
            ApprovalError::ShuttingDown { .. } | ApprovalError::TooManyClients { .. } => -32008,
        }
    }

    /// HTTP status for errors that end a whole HTTP exchange (auth, size, parse).
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            ApprovalError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApprovalError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApprovalError::Parse(_) | ApprovalError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApprovalError::TooManyClients { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApprovalError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        }
    }

    /// HTTP status for the REST endpoints (assistant protocol, queue), where each error is the
    /// whole answer.
    pub fn rest_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            ApprovalError::Parse(_)
            | ApprovalError::InvalidRequest(_)
            | ApprovalError::InvalidParams(_)
            | ApprovalError::AmbiguousId { .. } => StatusCode::BAD_REQUEST,
            ApprovalError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApprovalError::NotAnApprover(_) | ApprovalError::SelfApproval(_) => {
                StatusCode::FORBIDDEN
            }
            ApprovalError::UnknownId(_) | ApprovalError::MethodNotFound(_) => StatusCode::NOT_FOUND,
            ApprovalError::Expired { .. }
            | ApprovalError::AlreadyResolved { .. }
            | ApprovalError::DuplicateId(_)
            | ApprovalError::InvalidTransition(_) => StatusCode::CONFLICT,
            ApprovalError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApprovalError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApprovalError::ShuttingDown { .. } | ApprovalError::TooManyClients { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApprovalError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// `error.data`: the kind plus facts a caller can act on.
    pub fn data(&self) -> serde_json::Value {
        let mut data = json!({ "kind": self.kind() });
        match self {
            ApprovalError::AlreadyResolved {
                id,
                status,
                verdict,
                decided_by,
            } => {
                data["id"] = json!(id);
                data["status"] = json!(status);
                data["decision"] = json!(verdict);
                data["decided_by"] = json!(decided_by);
            }
            ApprovalError::AmbiguousId { candidates, .. } => {
                data["candidates"] = json!(candidates);
            }
            ApprovalError::RateLimited {
                scope,
                retry_after_ms,
                ..
            } => {
                data["scope"] = json!(scope);
                data["retry_after_ms"] = json!(retry_after_ms);
                data["retry_after_seconds"] = json!(retry_after_ms.div_ceil(1000));
            }
            ApprovalError::ShuttingDown { id } => {
                data["id"] = json!(id);
                data["reconnect"] = json!(true);
            }
            ApprovalError::Expired { id, expires_at } => {
                data["id"] = json!(id);
                data["expires_at"] = json!(expires_at);
            }
            _ => {}
        }
        data
    }
}

impl From<StoreError> for ApprovalError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure");
        ApprovalError::Internal(e.to_string())
    }
}
