//! The load clients: JSON-RPC over one WebSocket (many calls in flight, answers matched by
//! id, notifications skipped or handed on) and over HTTP/1.1 (hyper, keep-alive or a new
//! connection per call). The same code drives approvald and the echo floor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Answers not yet back, by JSON-RPC id.
type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A notification the server pushed, with the wall-clock time it arrived.
pub struct Note {
    pub at: SystemTime,
    pub method: String,
    pub params: Value,
}

/// Where a [`WsRpc`] hands the notifications it is asked to keep (by method name).
pub struct NoteSink {
    pub method: &'static str,
    pub tx: mpsc::UnboundedSender<Note>,
}

/// Just enough of a message to route it: answers have an id, notifications a method. Parsing
/// only this skips the (large) params of the many notifications cheaply.
#[derive(Deserialize)]
struct Head<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
}

/// One WebSocket JSON-RPC connection shared by many concurrent calls.
pub struct WsRpc {
    out: mpsc::UnboundedSender<String>,
    waiting: Waiting,
    next_id: AtomicU64,
    notes_seen: Arc<AtomicU64>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl WsRpc {
    /// Connect to `ws_url` with a bearer token.
    pub async fn connect(ws_url: &str, token: &str) -> anyhow::Result<Self> {
        Self::connect_with(ws_url, token, None).await
    }

    /// Connect, and hand every notification named `sink.method` to `sink`.
    pub async fn connect_with(
        ws_url: &str,
        token: &str,
        sink: Option<NoteSink>,
    ) -> anyhow::Result<Self> {
        let mut req = ws_url.into_client_request().context("websocket request")?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().context("auth header")?,
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .with_context(|| format!("connect {ws_url}"))?;
        let (mut tx_ws, mut rx_ws) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            // Feed whatever is queued, then flush once: fewer writes under load.
            while let Some(first) = out_rx.recv().await {
                if tx_ws.feed(Message::text(first)).await.is_err() {
                    return;
                }
                let mut n = 0;
                while n < 256 {
                    match out_rx.try_recv() {
                        Ok(more) => {
                            if tx_ws.feed(Message::text(more)).await.is_err() {
                                return;
                            }
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                if tx_ws.flush().await.is_err() {
                    return;
                }
            }
            let _ = tx_ws.close().await;
        });
        let waiting: Waiting = Arc::new(Mutex::new(HashMap::new()));
        let notes_seen = Arc::new(AtomicU64::new(0));
        let reader = {
            let waiting = waiting.clone();
            let notes_seen = notes_seen.clone();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = rx_ws.next().await {
                    let text = match &msg {
                        Message::Text(t) => t.as_str(),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    let Ok(head) = serde_json::from_str::<Head>(text) else {
                        continue;
                    };
                    match head.id {
                        Some(id) => {
                            let Ok(value) = serde_json::from_str::<Value>(text) else {
                                continue;
                            };
                            let tx = waiting.lock().ok().and_then(|mut w| w.remove(&id));
                            if let Some(tx) = tx {
                                let _ = tx.send(value);
                            }
                        }
                        None => {
                            notes_seen.fetch_add(1, Ordering::Relaxed);
                            if let (Some(sink), Some(method)) = (&sink, head.method.as_deref())
                                && method == sink.method
                            {
                                let at = SystemTime::now();
                                if let Ok(mut value) = serde_json::from_str::<Value>(text) {
                                    let _ = sink.tx.send(Note {
                                        at,
                                        method: method.to_string(),
                                        params: value["params"].take(),
                                    });
                                }
                            }
                        }
                    }
                }
                // Connection gone: every call still waiting gets an error (its sender drops).
                if let Ok(mut w) = waiting.lock() {
                    w.clear();
                }
            })
        };
        Ok(Self {
            out,
            waiting,
            next_id: AtomicU64::new(1),
            notes_seen,
            reader,
            writer,
        })
    }

    /// Queue the call for sending now; the receiver gets the whole response object.
    pub fn send(&self, method: &str, params: Value) -> oneshot::Receiver<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id, tx);
        }
        let msg = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        // A closed writer drops the message; the waiting entry then never answers, and the
        // reader clears it when the connection ends.
        let _ = self.out.send(msg.to_string());
        rx
    }

    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(method, params)
            .await
            .map_err(|_| anyhow!("websocket closed before answering {method}"))
    }

    /// Notifications received so far (answered or not).
    pub fn notes_seen(&self) -> u64 {
        self.notes_seen.load(Ordering::Relaxed)
    }

    /// Close the connection and stop its tasks.
    pub async fn close(self) {
        drop(self.out);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer).await;
        self.reader.abort();
    }
}

/// JSON-RPC over `POST /rpc`, HTTP/1.1 on hyper's connection-level client: a keep-alive
/// connection carries one call at a time (as HTTP/1.1 allows), idle ones are reused, a call
/// finding none opens another. Leaner than a full client (reqwest cost ~40 us of the load
/// client's CPU per cycle, taken from the same two cores the server runs on); the floor is
/// driven by the same client.
pub struct HttpRpc {
    /// `host:port` to connect to, also the `Host` header.
    authority: String,
    authorization: hyper::header::HeaderValue,
    /// Keep-alive connections not in use (empty when every call gets a new connection).
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    new_connection_each_call: bool,
    next_id: AtomicU64,
}

impl HttpRpc {
    /// `base_url` is `http://host:port`. `new_connection_each_call`: no connection is kept
    /// after its answer, so every call opens a new TCP connection.
    pub fn new(base_url: &str, token: &str, new_connection_each_call: bool) -> Self {
        let authority = base_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Self {
            authority,
            authorization: format!("Bearer {token}")
                .parse()
                .expect("a token is header-safe"),
            idle: Mutex::new(Vec::new()),
            new_connection_each_call,
            next_id: AtomicU64::new(1),
        }
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connect {}", self.authority))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP handshake")?;
        // The connection's I/O runs on its own task; it ends when the sender is dropped.
        tokio::spawn(conn);
        Ok(sender)
    }

    /// An idle keep-alive connection still open, or a new one.
    async fn connection(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some(mut sender) = idle else {
                return self.connect().await;
            };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
            // Closed by the server while idle: try the next one.
        }
    }

    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let request = hyper::Request::post("/rpc")
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, self.authorization.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .context("request")?;
        let mut sender = self.connection().await?;
        let exchange = async {
            let response = sender.send_request(request).await?;
            response.into_body().collect().await.map(|b| b.to_bytes())
        };
        let bytes = tokio::time::timeout(Duration::from_secs(120), exchange)
            .await
            .map_err(|_| anyhow!("POST {method}: no answer within 120 s"))?
            .with_context(|| format!("POST {method}"))?;
        if !self.new_connection_each_call
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(sender);
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{method} answer is not JSON"))
    }
}

/// Either transport, so a scenario's flow is written once.
#[derive(Clone)]
pub enum Rpc {
    Ws(Arc<WsRpc>),
    Http(Arc<HttpRpc>),
}

/// A call already on its way; await its answer with [`InFlight::answer`].
pub enum InFlight {
    Ws(oneshot::Receiver<Value>),
    Http(JoinHandle<anyhow::Result<Value>>),
}

impl Rpc {
    /// Start the call now (HTTP: on a task of its own, so it is sent without being awaited).
    pub fn send(&self, method: &'static str, params: Value) -> InFlight {
        match self {
            Rpc::Ws(ws) => InFlight::Ws(ws.send(method, params)),
            Rpc::Http(http) => {
                let http = http.clone();
                InFlight::Http(tokio::spawn(async move { http.call(method, params).await }))
            }
        }
    }

    pub async fn call(&self, method: &'static str, params: Value) -> anyhow::Result<Value> {
        match self {
            Rpc::Ws(ws) => ws.call(method, params).await,
            Rpc::Http(http) => http.call(method, params).await,
        }
    }
}

impl InFlight {
    pub async fn answer(self) -> anyhow::Result<Value> {
        match self {
            InFlight::Ws(rx) => rx.await.map_err(|_| anyhow!("websocket closed")),
            InFlight::Http(task) => task.await.map_err(|e| anyhow!("call task: {e}"))?,
        }
    }
}

/// `error.data.kind` of a JSON-RPC answer, if it is an error.
pub fn error_kind(answer: &Value) -> Option<&str> {
    let err = answer.get("error")?;
    Some(err["data"]["kind"].as_str().unwrap_or("unknown"))
}
