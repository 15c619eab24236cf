//! `GET /rpc/ws`: JSON-RPC over WebSocket. Requests are handled concurrently (a waiting
//! `tool.approval.request` does not block the next message) and every event is pushed as a
//! notification, or those `?events=` names (see [`EventFilter`]).

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;

use super::{AppContext, StreamQuery, authenticate, rpc};
use crate::directory::Caller;
use crate::events::EventFilter;

pub async fn upgrade(
    State(ctx): State<AppContext>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    let caller = match authenticate(&ctx, &headers) {
        Ok(c) => c,
        Err(e) => return rpc::error_response(&e, serde_json::Value::Null),
    };
    let filter = match super::event_filter(query) {
        Ok(f) => f,
        Err(e) => return rpc::error_response(&e, serde_json::Value::Null),
    };
    let slot = match ctx.stream_slot() {
        Ok(slot) => slot,
        Err(e) => return rpc::error_response(&e, serde_json::Value::Null),
    };
    let limit = ctx.max_body_bytes;
    ws.max_message_size(limit)
        .on_upgrade(move |socket| serve(ctx, caller, socket, slot, filter))
}

async fn serve(
    ctx: AppContext,
    caller: Caller,
    socket: WebSocket,
    _slot: tokio::sync::OwnedSemaphorePermit,
    filter: EventFilter,
) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<String>(256);
    // Not subscribed at all when it wants no events: the bus then skips it entirely.
    let mut events = filter.wants_any().then(|| ctx.engine.events().subscribe());
    let mut stopping = ctx.engine.shutdown_signal();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                    // Pending requests stay in the store: reconnect and wait on them again.
                    let note = json!({ "jsonrpc": "2.0", "method": "approvald.shutdown",
                                       "params": { "reconnect": true } });
                    let _ = sink.send(Message::Text(note.to_string().into())).await;
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                out = rx.recv() => match out {
                    Some(text) => if sink.feed(Message::Text(text.into())).await.is_err() { break },
                    None => break,
                },
                ev = next_event(&mut events) => match ev {
                    Ok(ev) => {
                        if !filter.allows(ev.method) { continue }
                        if sink.feed(Message::Text(ev.notification)).await.is_err() { break }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
            }
            // Whatever else is ready goes out in the same write: under load one system call
            // carries many frames instead of one each. Letting the tasks already woken run
            // first (they often publish the next event) gathers more.
            tokio::task::yield_now().await;
            if feed_ready(&mut sink, &mut rx, &mut events, &filter)
                .await
                .is_err()
                || sink.flush().await.is_err()
            {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let text: axum::body::Bytes = match msg {
            Message::Text(t) => t.into(),
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        let ctx = ctx.clone();
        let caller = caller.clone();
        let tx = tx.clone();
        // Boxed: answering a call is a large future, and a task's future is moved (copied)
        // as it is spawned and again as it finishes; a box is moved as one pointer.
        tokio::spawn(async move {
            let answer = Box::pin(rpc::handle_message(&ctx, &caller, &text)).await;
            if let Some(answer) = answer {
                let _ = tx.send(answer).await;
            }
        });
    }
    drop(tx);
    writer.abort();
}

/// Queue every answer and event already waiting (a bounded number, so a busy stream still
/// flushes), without waiting for more.
async fn feed_ready(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<String>,
    events: &mut Option<EventRx>,
    filter: &EventFilter,
) -> Result<(), axum::Error> {
    for _ in 0..64 {
        if let Ok(text) = rx.try_recv() {
            sink.feed(Message::Text(text.into())).await?;
        } else {
            let Some(events) = events.as_mut() else {
                return Ok(());
            };
            match events.try_recv() {
                Ok(ev) if filter.allows(ev.method) => {
                    sink.feed(Message::Text(ev.notification)).await?
                }
                Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return Ok(()),
            }
        }
    }
    Ok(())
}

type EventRx = tokio::sync::broadcast::Receiver<crate::events::Event>;

/// The next event, or never for a client subscribed to none.
async fn next_event(
    events: &mut Option<EventRx>,
) -> Result<crate::events::Event, tokio::sync::broadcast::error::RecvError> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}
