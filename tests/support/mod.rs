//! Shared test harness: an approvald server in-process on a free loopback port, on a temporary
//! data dir, with in-process test channels, plus a small JSON-RPC client.
#![allow(dead_code)]

pub mod daemon;
pub mod pg;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use approvald::ToolApprovalForwarder;
use approvald::config::Config;
use approvald::server::BoundServer;
use approvald_channel::{Channel, PlatformUser, TestChannel, Transport};
use serde_json::{Value, json};

pub const GATEWAY: &str = "gateway-token-1";
pub const ALICE: &str = "alice-token-1";
pub const BOB: &str = "bob-token-1";
pub const CAROL: &str = "carol-token-1";
pub const DAVE: &str = "dave-token-1";
pub const ADMIN: &str = "admin-token-1";
/// A token that may both request and resolve (to test same-token self-approval).
pub const BOTH: &str = "both-token-1";

/// Tokens, people and two test channels: `chat-a` (a discord-like surface) and `chat-b`
/// (a slack-like one). Tests append their own `[approvals]` / `[delivery]` sections.
pub const BASE: &str = r#"
[[tokens]]
name = "gateway"
token = "gateway-token-1"
scopes = ["request"]

[[tokens]]
name = "alice-cli"
token = "alice-token-1"
scopes = ["resolve"]
person = "alice"

[[tokens]]
name = "bob-cli"
token = "bob-token-1"
scopes = ["resolve"]
person = "bob"

[[tokens]]
name = "carol-cli"
token = "carol-token-1"
scopes = ["resolve"]
person = "carol"

[[tokens]]
name = "dave-cli"
token = "dave-token-1"
scopes = ["resolve"]
person = "dave"

[[tokens]]
name = "admin"
token = "admin-token-1"
scopes = ["admin"]

[[tokens]]
name = "both"
token = "both-token-1"
scopes = ["request", "resolve"]

[[people]]
name = "alice"
display_name = "Alice"
ids = ["alice@example.com"]
discord = ["111"]
slack = ["U111"]
ui_token = "alice-ui-token-1"

[[people]]
name = "bob"
display_name = "Bob"
discord = ["222"]
slack = ["U222"]
ui_token = "bob-ui-token-1"

[[people]]
name = "carol"
display_name = "Carol"
approver = false
discord = ["333"]
ui_token = "carol-ui-token-1"

[[people]]
name = "dave"
display_name = "Dave"

[channels.chat-a]
approvers = ["999"]

[channels.chat-b]
"#;

/// `BASE` without its in-process test channels, for the real binary (which builds only
/// platform channels and refuses a channel of unknown kind).
pub fn base_for_binary() -> &'static str {
    BASE.split("[channels.chat-a]").next().unwrap_or(BASE)
}

/// A running in-process server.
pub struct TestServer {
    pub engine: ToolApprovalForwarder,
    pub url: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    http: reqwest::Client,
}

/// The two standard test channels.
pub fn channels() -> (TestChannel, TestChannel) {
    (
        TestChannel::new("chat-a", Transport::Discord),
        TestChannel::new("chat-b", Transport::Slack),
    )
}

pub fn as_channels(list: &[&TestChannel]) -> Vec<Arc<dyn Channel>> {
    list.iter()
        .map(|c| Arc::new((*c).clone()) as Arc<dyn Channel>)
        .collect()
}

impl TestServer {
    /// Start with `BASE` + `extra` config on a fresh temporary data dir.
    pub async fn start(extra: &str, channels: Vec<Arc<dyn Channel>>) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Self::start_in(tmp.path(), extra, channels).await;
        s._tmp = Some(tmp);
        s
    }

    /// Start on an existing data dir (to test restarts).
    pub async fn start_in(dir: &Path, extra: &str, channels: Vec<Arc<dyn Channel>>) -> Self {
        Self::start_with_server(dir, "", extra, channels).await
    }

    /// One instance of a cluster: state in the PostgreSQL database at `database_url`, shared
    /// with the other instances started on it.
    pub async fn start_on_database(
        database_url: &str,
        extra: &str,
        channels: Vec<Arc<dyn Channel>>,
    ) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Self::start_full(tmp.path(), "", Some(database_url), extra, channels).await;
        s._tmp = Some(tmp);
        s
    }

    /// Like `start_in`, with more keys for the `[server]` table (e.g. `max_stream_clients = 2`).
    pub async fn start_with_server(
        dir: &Path,
        server: &str,
        extra: &str,
        channels: Vec<Arc<dyn Channel>>,
    ) -> Self {
        // APPROVALD_TEST_STORE=postgres runs the same tests on PostgreSQL: one database per
        // data dir, so a restart on the same dir finds its state again.
        let database = match pg::suite_on_postgres() {
            Some(url) => Some(pg::database_for_dir(&url, dir).await),
            None => None,
        };
        Self::start_full(dir, server, database.as_deref(), extra, channels).await
    }

    async fn start_full(
        dir: &Path,
        server: &str,
        database_url: Option<&str>,
        extra: &str,
        channels: Vec<Arc<dyn Channel>>,
    ) -> Self {
        // Few connections each: many test servers share one PostgreSQL (100 connections).
        let database = database_url
            .map(|url| format!("url = {url:?}\nmax_connections = 4\n"))
            .unwrap_or_default();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 65536\n{server}\n[storage]\ndata_dir = {:?}\n{database}{BASE}\n{extra}",
            dir.display().to_string()
        );
        let config = Config::from_toml_str(&text).expect("test config is valid");
        let bound = BoundServer::bind(config, channels)
            .await
            .expect("server starts");
        let url = format!("http://{}", bound.addr);
        let engine = bound.engine.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = bound
                .serve(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            engine,
            url,
            data_dir: dir.to_path_buf(),
            _tmp: None,
            stop: Some(tx),
            http: reqwest::Client::new(),
        }
    }

    /// The handshake of a WebSocket client of `GET /rpc/ws{query}` holding `token`.
    pub fn ws_request(
        &self,
        token: &str,
        query: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("{}/rpc/ws{query}", self.url.replace("http", "ws"))
            .into_client_request()
            .expect("a WebSocket request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
        req
    }

    /// The full JSON-RPC response object.
    pub async fn rpc(&self, token: &str, method: &str, params: Value) -> Value {
        rpc_at(&self.url, token, method, params).await
    }

    /// A caller blocked in `tool.approval.wait` in the background (its full response).
    pub fn spawn_wait(&self, id: &str) -> tokio::task::JoinHandle<Value> {
        spawn_wait(&self.url, id)
    }

    /// `result` or panic with the error.
    pub async fn call(&self, token: &str, method: &str, params: Value) -> Value {
        let r = self.rpc(token, method, params).await;
        match r.get("result") {
            Some(v) => v.clone(),
            None => panic!("{method} failed: {r}"),
        }
    }

    /// The error's `data.kind`, or panic if the call succeeded.
    pub async fn error_kind(&self, token: &str, method: &str, params: Value) -> (String, Value) {
        let r = self.rpc(token, method, params).await;
        match r.get("error") {
            Some(e) => (
                e["data"]["kind"].as_str().unwrap_or("?").to_string(),
                e.clone(),
            ),
            None => panic!("{method} should have failed: {r}"),
        }
    }

    /// Create a pending request (wait=false) and return its result.
    pub async fn request(&self, params: Value) -> Value {
        let mut p = params;
        p["wait"] = json!(false);
        self.call(GATEWAY, "tool.approval.request", p).await
    }

    pub async fn get(&self, id: &str) -> Value {
        self.call(ADMIN, "tool.approval.get", json!({ "id": id }))
            .await
    }

    pub async fn audit(&self, id: &str) -> Vec<Value> {
        let r = self.call(ADMIN, "audit.list", json!({ "id": id })).await;
        r["entries"].as_array().cloned().unwrap_or_default()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One JSON-RPC call to the server at `url`; the full response object.
pub async fn rpc_at(url: &str, token: &str, method: &str, params: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{url}/rpc"))
        .bearer_auth(token)
        .json(&json!({ "jsonrpc": "2.0", "id": 7, "method": method, "params": params }))
        .send()
        .await
        .expect("rpc send")
        .json()
        .await
        .expect("rpc answer is JSON")
}

/// The gateway waiting on `id` at `url`, in the background.
pub fn spawn_wait(url: &str, id: &str) -> tokio::task::JoinHandle<Value> {
    let (url, id) = (url.to_string(), id.to_string());
    tokio::spawn(
        async move { rpc_at(&url, GATEWAY, "tool.approval.wait", json!({ "id": id })).await },
    )
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn user(id: &str) -> PlatformUser {
    PlatformUser {
        id: id.to_string(),
        username: Some(format!("user{id}")),
        display_name: None,
        chat_id: Some("room".into()),
        workspace_id: None,
        roles: Vec::new(),
    }
}

/// Poll `f` until it returns true, or panic.
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn events_of(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

// ----- fake platform servers that can drop a connection ---------------------------------------

/// Put into every request's extensions by [`serve_resettable`]: `reset()` drops the TCP
/// connection the request came on (an RST, no answer at all), as a crashed upstream or a
/// middlebox does. Fake platform servers use it for their connection-reset faults.
#[derive(Clone)]
pub struct ConnKill(Arc<tokio::sync::Notify>);

impl ConnKill {
    pub fn reset(&self) {
        self.0.notify_one();
    }
}

/// Serve `app` on `listener` as `axum::serve` does (HTTP/1 with upgrades, or HTTP/2), with a
/// [`ConnKill`] for the request's own connection in every request's extensions, until
/// `shutdown` completes.
pub async fn serve_resettable(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper::service::Service as _;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // A second handle on the socket, to close it with an RST when told to.
        let Ok(std_stream) = stream.into_std() else {
            continue;
        };
        let Ok(spare) = std_stream.try_clone() else {
            continue;
        };
        let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let kill = ConnKill(Arc::new(tokio::sync::Notify::new()));
        let app = app.clone();
        tokio::spawn(async move {
            let for_requests = kill.clone();
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(for_requests.clone());
                    hyper_util::service::TowerToHyperService::new(app.clone()).call(req)
                },
            );
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
            let killed = tokio::select! {
                _ = conn => false,
                _ = kill.0.notified() => true,
            };
            // The connection (and the request it was serving) is dropped by now; the spare
            // handle is the last one: with a zero linger, closing it sends an RST.
            if killed && let Ok(spare) = tokio::net::TcpStream::from_std(spare) {
                let _ = spare.set_zero_linger();
            }
        });
    }
}

// ----- the engine's live events ------------------------------------------------------------------

/// Every engine event (`approvald.delivery_failed`, ...) from the moment it was created,
/// collected in the background.
#[derive(Clone)]
pub struct EventLog(Arc<std::sync::Mutex<Vec<(String, Value)>>>);

impl EventLog {
    pub fn start(s: &TestServer) -> Self {
        let log = Self(Arc::default());
        let mut rx = s.engine.events().subscribe();
        let sink = log.0.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((e.method.to_string(), e.params())),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        log
    }

    /// The params of every event named `method`, oldest first.
    pub fn of(&self, method: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Events named `method` about one approval id.
    pub fn about(&self, method: &str, id: &str) -> Vec<Value> {
        self.of(method)
            .into_iter()
            .filter(|v| v["id"] == id)
            .collect()
    }
}
