//! A fake Slack for the integration tests: the Web API methods approvald calls
//! (`POST /api/<method>` with a bearer token, JSON in, Slack's `{"ok":..}` envelopes out),
//! `response_url` and incoming-webhook endpoints, and a Socket Mode WebSocket
//! (`apps.connections.open` answers its ws:// URL). It records every call with the time it
//! arrived and answers like Slack does, including 429 with `Retry-After`, 5xx with a plain
//! body, and error codes such as `channel_not_found`. Tests script faults per method, also
//! transport ones: a connection reset, a request held past the client's timeout, a 200 whose
//! body is not JSON, and a call carried out but answered late.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};

pub const BOT_TOKEN: &str = "xoxb-fake-bot-token-0123456789";
pub const APP_TOKEN: &str = "xapp-1-fake-app-token-0123456789";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `chat.postMessage`, ..., or `response_url` / `webhook`.
    pub method: String,
    pub body: Value,
    pub at: Instant,
    /// What the fake answered: `ok`, `ratelimited`, `http 503`, or a Slack error code; for the
    /// transport faults `reset`, `held` (no answer), `garbage`, `ok (late)`.
    pub outcome: String,
}

/// A scripted answer for the next call to a method.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// HTTP 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// This HTTP status with a plain-text body (as Slack's edge answers 5xx).
    Status(u16),
    /// HTTP 200 `{"ok": false, "error": code}`.
    Api(&'static str),
    /// The TCP connection is dropped (RST) without an answer; nothing is done.
    Reset,
    /// Held this many milliseconds without an answer, nothing done, then the connection is
    /// dropped (the client's timeout should be shorter).
    Hang(u64),
    /// HTTP 200 with a body that is not JSON; nothing is done.
    Garbage,
    /// Carried out at once (a message is really posted), answered only after this many
    /// milliseconds: a client that gave up and posts again makes a second message.
    SlowOk(u64),
}

/// No answer at all: reset the connection (when served by `serve_resettable`).
async fn drop_connection(kill: Option<axum::Extension<crate::support::ConnKill>>) -> Response {
    match kill {
        Some(axum::Extension(kill)) => {
            kill.reset();
            std::future::pending::<Response>().await
        }
        None => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// The transport faults, answered here; `None` for the others (and for `SlowOk`, which the
/// handler carries out before holding its answer).
async fn transport_fault(
    state: &Mutex<State_>,
    method: &str,
    body: &Value,
    fault: &Fault,
    kill: Option<axum::Extension<crate::support::ConnKill>>,
) -> Option<Response> {
    match *fault {
        Fault::Reset => {
            record(state, method, body.clone(), "reset");
            Some(drop_connection(kill).await)
        }
        Fault::Hang(ms) => {
            record(state, method, body.clone(), "held");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Some(drop_connection(kill).await)
        }
        Fault::Garbage => {
            record(state, method, body.clone(), "garbage");
            Some(
                (
                    StatusCode::OK,
                    [("content-type", "application/json; charset=utf-8")],
                    "{\"ok\":true,\"channel\":",
                )
                    .into_response(),
            )
        }
        _ => None,
    }
}

#[derive(Default)]
struct State_ {
    calls: Vec<Call>,
    faults: HashMap<String, VecDeque<Fault>>,
    missing_channels: HashSet<String>,
    /// (channel, ts) -> the message as it now stands.
    messages: HashMap<(String, String), Value>,
    next_ts: u64,
    socket_out: Vec<tokio::sync::mpsc::UnboundedSender<String>>,
    socket_in: Vec<Value>,
    socket_connections: usize,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct FakeSlack {
    pub url: String,
    state: Arc<Mutex<State_>>,
}

impl FakeSlack {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State_::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/api/{method}", post(api))
            .route("/response/{id}", post(response_url))
            .route("/services/{*path}", post(webhook))
            .route("/socket", any(socket))
            .with_state((state.clone(), url.clone()));
        tokio::spawn(crate::support::serve_resettable(
            listener,
            app,
            std::future::pending(),
        ));
        Self { url, state }
    }

    /// The `api_url` to configure.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.url)
    }

    /// An incoming-webhook URL on the fake (its path plays the secret).
    pub fn webhook_url(&self) -> String {
        format!("{}/services/T0001/B0001/webhook-secret-path", self.url)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State_> {
        self.state.lock().unwrap()
    }

    /// Answer the next call(s) to `method` with these faults, in order.
    pub fn fail_next(&self, method: &str, faults: &[Fault]) {
        self.lock()
            .faults
            .entry(method.to_string())
            .or_default()
            .extend(faults.iter().cloned());
    }

    /// Posting into this channel answers `channel_not_found`.
    pub fn missing_channel(&self, channel: &str) {
        self.lock().missing_channels.insert(channel.to_string());
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Successful calls of a method.
    pub fn ok_calls(&self, method: &str) -> Vec<Call> {
        self.calls(method)
            .into_iter()
            .filter(|c| c.outcome == "ok")
            .collect()
    }

    /// The message as it stands now.
    pub fn message(&self, channel: &str, ts: &str) -> Option<Value> {
        self.lock()
            .messages
            .get(&(channel.to_string(), ts.to_string()))
            .cloned()
    }

    pub fn socket_connections(&self) -> usize {
        self.lock().socket_connections
    }

    /// Send a frame to every connected Socket Mode client.
    pub fn socket_send(&self, frame: Value) {
        let text = frame.to_string();
        self.lock()
            .socket_out
            .retain(|tx| tx.send(text.clone()).is_ok());
    }

    /// Frames the clients sent (acknowledgements).
    pub fn socket_received(&self) -> Vec<Value> {
        self.lock().socket_in.clone()
    }
}

type AppState = (Arc<Mutex<State_>>, String);

fn slack_json(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn fault_response(fault: &Fault) -> (Response, String) {
    match fault {
        Fault::RateLimited(secs) => (
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    (
                        "content-type",
                        "application/json; charset=utf-8".to_string(),
                    ),
                    ("retry-after", secs.to_string()),
                ],
                json!({ "ok": false, "error": "ratelimited" }).to_string(),
            )
                .into_response(),
            "ratelimited".into(),
        ),
        Fault::Status(code) => (
            (
                StatusCode::from_u16(*code).unwrap(),
                [("content-type", "text/plain")],
                "upstream connect error or disconnect/reset before headers",
            )
                .into_response(),
            format!("http {code}"),
        ),
        Fault::Api(code) => (
            slack_json(StatusCode::OK, json!({ "ok": false, "error": code })),
            code.to_string(),
        ),
        // Answered by `transport_fault` / the handlers; never reaches here.
        Fault::Reset | Fault::Hang(_) | Fault::Garbage | Fault::SlowOk(_) => (
            StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            "fake misuse".into(),
        ),
    }
}

fn record(state: &Mutex<State_>, method: &str, body: Value, outcome: &str) {
    state.lock().unwrap().calls.push(Call {
        method: method.to_string(),
        body,
        at: Instant::now(),
        outcome: outcome.to_string(),
    });
}

async fn api(
    State((state, base)): State<AppState>,
    Path(method): Path<String>,
    kill: Option<axum::Extension<crate::support::ConnKill>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let fault = state
        .lock()
        .unwrap()
        .faults
        .get_mut(&method)
        .and_then(|q| q.pop_front());
    let mut late = None;
    if let Some(fault) = fault {
        if let Some(resp) = transport_fault(&state, &method, &body, &fault, kill).await {
            return resp;
        }
        if let Fault::SlowOk(ms) = fault {
            late = Some(std::time::Duration::from_millis(ms));
        } else {
            let (resp, outcome) = fault_response(&fault);
            record(&state, &method, body, &outcome);
            return resp;
        }
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let want = if method == "apps.connections.open" {
        APP_TOKEN
    } else {
        BOT_TOKEN
    };
    if auth != format!("Bearer {want}") {
        record(&state, &method, body, "invalid_auth");
        return slack_json(
            StatusCode::OK,
            json!({ "ok": false, "error": "invalid_auth" }),
        );
    }
    let channel = body["channel"].as_str().unwrap_or("").to_string();
    let (answer, outcome) = match method.as_str() {
        "auth.test" => (
            json!({ "ok": true, "url": "https://fake.slack.com/", "team": "Fake Team",
                    "user": "approvald", "team_id": "T0001", "user_id": "UBOT", "bot_id": "B0001" }),
            "ok".to_string(),
        ),
        "conversations.open" => {
            let user = body["users"]
                .as_array()
                .and_then(|u| u.first())
                .and_then(|u| u.as_str())
                .or_else(|| body["users"].as_str())
                .unwrap_or("");
            if user.is_empty() {
                (
                    json!({ "ok": false, "error": "users_list_not_supplied" }),
                    "users_list_not_supplied".into(),
                )
            } else {
                (
                    json!({ "ok": true, "channel": { "id": format!("D{user}") } }),
                    "ok".into(),
                )
            }
        }
        "chat.postMessage" => {
            let mut st = state.lock().unwrap();
            if st.missing_channels.contains(&channel) || channel.is_empty() {
                (
                    json!({ "ok": false, "error": "channel_not_found" }),
                    "channel_not_found".into(),
                )
            } else {
                st.next_ts += 1;
                let ts = format!("{}.{:06}", 1_700_000_000 + st.next_ts, st.next_ts);
                st.messages
                    .insert((channel.clone(), ts.clone()), body.clone());
                (
                    json!({ "ok": true, "channel": channel, "ts": ts,
                            "message": { "type": "message", "ts": ts, "bot_id": "B0001",
                                         "text": body["text"] } }),
                    "ok".into(),
                )
            }
        }
        "chat.update" => {
            let ts = body["ts"].as_str().unwrap_or("").to_string();
            let mut st = state.lock().unwrap();
            match st.messages.get_mut(&(channel.clone(), ts.clone())) {
                Some(m) => {
                    *m = body.clone();
                    (
                        json!({ "ok": true, "channel": channel, "ts": ts, "text": body["text"],
                                "message": { "text": body["text"], "bot_id": "B0001" } }),
                        "ok".into(),
                    )
                }
                None => (
                    json!({ "ok": false, "error": "message_not_found" }),
                    "message_not_found".into(),
                ),
            }
        }
        "chat.postEphemeral" => (
            json!({ "ok": true, "message_ts": "1700000000.999999" }),
            "ok".into(),
        ),
        "apps.connections.open" => (
            json!({ "ok": true, "url": format!("{}/socket", base.replace("http://", "ws://")) }),
            "ok".into(),
        ),
        _ => (
            json!({ "ok": false, "error": "unknown_method" }),
            "unknown_method".into(),
        ),
    };
    match late {
        None => record(&state, &method, body, &outcome),
        Some(hold) => {
            record(&state, &method, body, &format!("{outcome} (late)"));
            tokio::time::sleep(hold).await;
        }
    }
    slack_json(StatusCode::OK, answer)
}

/// Slack answers response_url and incoming-webhook posts with a plain `ok`.
async fn response_url(
    State((state, _)): State<AppState>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    let mut body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    body["_response_id"] = json!(id);
    record(&state, "response_url", body, "ok");
    (StatusCode::OK, [("content-type", "text/html")], "ok").into_response()
}

async fn webhook(
    State((state, _)): State<AppState>,
    Path(path): Path<String>,
    kill: Option<axum::Extension<crate::support::ConnKill>>,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if path != "T0001/B0001/webhook-secret-path" {
        record(&state, "webhook", body, "no_service");
        return (
            StatusCode::NOT_FOUND,
            [("content-type", "text/html")],
            "no_service",
        )
            .into_response();
    }
    let fault = state
        .lock()
        .unwrap()
        .faults
        .get_mut("webhook")
        .and_then(|q| q.pop_front());
    if let Some(fault) = fault {
        if let Some(resp) = transport_fault(&state, "webhook", &body, &fault, kill).await {
            return resp;
        }
        if let Fault::SlowOk(ms) = fault {
            record(&state, "webhook", body, "ok (late)");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            return (StatusCode::OK, [("content-type", "text/html")], "ok").into_response();
        }
        let (resp, outcome) = fault_response(&fault);
        record(&state, "webhook", body, &outcome);
        return resp;
    }
    record(&state, "webhook", body, "ok");
    (StatusCode::OK, [("content-type", "text/html")], "ok").into_response()
}

async fn socket(State((state, _)): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve_socket(socket, state))
}

async fn serve_socket(mut socket: WebSocket, state: Arc<Mutex<State_>>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let hello = json!({ "type": "hello", "num_connections": 1,
        "debug_info": { "host": "fake-slack", "approximate_connection_time": 18060 },
        "connection_info": { "app_id": "A0001" } });
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    {
        let mut st = state.lock().unwrap();
        st.socket_out.push(tx);
        st.socket_connections += 1;
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(text) => if socket.send(Message::Text(text.into())).await.is_err() { break },
                None => break,
            },
            got = socket.recv() => match got {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or(json!({ "raw": text.to_string() }));
                    state.lock().unwrap().socket_in.push(v);
                }
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
}
