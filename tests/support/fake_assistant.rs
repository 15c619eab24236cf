//! A fake upstream assistant approval service: the protocol approvald speaks as a client
//! (`POST /api/approve`, `POST /api/execution-report`, `GET /health`, bearer key). It records
//! every call and answers as scripted: approve with constraints, deny, pending, 500s, or down
//! (every request answered 503, as a dead upstream behind a proxy; `stop` closes the port).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const UPSTREAM_KEY: &str = "upstream-key-0123456789";

/// How the fake answers `/api/approve`.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Approve {
        constraints: Value,
    },
    Deny(&'static str),
    Pending,
    /// Every endpoint (health included) answers 503.
    Down,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub body: Value,
    pub authorised: bool,
}

struct Inner {
    mode: Mode,
    calls: Vec<Call>,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct FakeAssistant {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    stop: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
}

impl FakeAssistant {
    pub async fn start(mode: Mode) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            mode,
            calls: Vec::new(),
        }));
        let app = Router::new()
            .route("/api/approve", post(approve))
            .route("/api/execution-report", post(report))
            .route("/health", get(health))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            url: format!("http://{addr}"),
            inner,
            stop: Arc::new(Mutex::new(Some(tx))),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = mode;
    }

    pub fn calls(&self, path: &str) -> Vec<Call> {
        self.inner
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }
}

fn record(inner: &Mutex<Inner>, path: &str, headers: &HeaderMap, body: Value) -> (Mode, bool) {
    let authorised = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {UPSTREAM_KEY}"));
    let mut g = inner.lock().unwrap();
    g.calls.push(Call {
        path: path.to_string(),
        body,
        authorised,
    });
    (g.mode.clone(), authorised)
}

async fn approve(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let (mode, authorised) = record(&inner, "/api/approve", &headers, body);
    if !authorised {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": "bad key" })),
        )
            .into_response();
    }
    let answer = match mode {
        Mode::Down => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Approve { constraints } => json!({
            "approved": true, "reason": "within policy", "constraints": constraints,
            "retry_after_seconds": null,
        }),
        Mode::Deny(reason) => json!({
            "approved": false, "reason": reason, "constraints": null, "retry_after_seconds": null,
        }),
        Mode::Pending => json!({
            "approved": false, "reason": "Human decision pending", "constraints": null,
            "retry_after_seconds": 5,
        }),
    };
    axum::Json(answer).into_response()
}

async fn report(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let (mode, authorised) = record(&inner, "/api/execution-report", &headers, body);
    if mode == Mode::Down {
        // A down upstream has not taken the report: approvald must keep it.
        inner.lock().unwrap().calls.pop();
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !authorised {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(json!({ "success": true, "message": "recorded" })).into_response()
}

async fn health(State(inner): State<Arc<Mutex<Inner>>>) -> Response {
    if inner.lock().unwrap().mode == Mode::Down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    axum::Json(json!({ "status": "healthy" })).into_response()
}
