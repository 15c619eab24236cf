//! The child-process side: `__serve` runs approvald exactly as `approvald serve` does, and
//! `__echo` runs the floor, a bare axum server answering the same shapes with no work behind
//! them. Both stop when stdin closes (the bench let go of them) or on SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

/// Resolves when stdin reaches EOF or the process is asked to stop.
async fn shutdown_signal() {
    let stdin_closed = async {
        // A blocking read on its own thread: tokio's stdin is a blocking thread too.
        let _ = tokio::task::spawn_blocking(|| {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    };
    tokio::select! {
        _ = stdin_closed => {},
        _ = approvald::shutdown::signal() => {},
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("APPROVALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// `__serve CONFIG`: what `approvald serve --config CONFIG` does.
pub async fn serve(config: &Path) -> anyhow::Result<()> {
    init_tracing();
    let (config, _origin) = approvald::config::Config::load(Some(config))?;
    let channels = approvald::server::platform_channels(&config)?;
    let bound = approvald::server::BoundServer::bind(config, channels).await?;
    bound.serve(shutdown_signal()).await?;
    // The stdin reader thread may still block; do not wait for it.
    std::process::exit(0);
}

/// `__echo PORT`: the floor.
pub async fn echo(port: u16) -> anyhow::Result<()> {
    init_tracing();
    let app = Router::new()
        .route("/rpc", post(echo_http))
        .route("/rpc/ws", get(echo_ws_upgrade))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    std::process::exit(0);
}

/// A JSON-RPC result for `body`: its id back, its params as the result. The same parsing and
/// serialising any JSON-RPC server does, and nothing else.
fn echo_answer(body: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            json!({ "jsonrpc": "2.0", "id": v["id"].take(), "result": v["params"].take() })
        }
        Err(e) => json!({
            "jsonrpc": "2.0", "id": null,
            "error": { "code": -32700, "message": e.to_string(), "data": { "kind": "parse_error" } },
        }),
    }
}

async fn echo_http(headers: HeaderMap, body: Bytes) -> Response {
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(echo_answer(&body)).into_response()
}

async fn echo_ws_upgrade(headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    ws.on_upgrade(echo_ws)
}

async fn echo_ws(socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    while let Some(Ok(msg)) = stream.next().await {
        let answer = match msg {
            Message::Text(t) => echo_answer(t.as_bytes()),
            Message::Binary(b) => echo_answer(&b),
            Message::Close(_) => break,
            _ => continue,
        };
        if sink
            .send(Message::Text(answer.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
}
