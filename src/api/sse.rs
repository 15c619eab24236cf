//! `GET /events`: the live event stream as Server-Sent Events, for `approvald watch` and the
//! control UI. Same events as the WebSocket notifications, and the same `?events=` filter.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::{AppContext, StreamQuery, authenticate, rpc::error_response};
use crate::ui::SessionKey;

/// Bearer token (CLI, gateways) or a control UI session cookie (the browser's EventSource
/// cannot send headers).
pub async fn events(
    State(ctx): State<AppContext>,
    ui_key: Option<Extension<SessionKey>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Response {
    let ui_session = ui_key
        .as_ref()
        .and_then(|Extension(key)| crate::ui::signed_in(&ctx.engine, key, &headers));
    if ui_session.is_none()
        && let Err(e) = authenticate(&ctx, &headers)
    {
        return error_response(&e, serde_json::Value::Null);
    }
    let filter = match super::event_filter(query) {
        Ok(f) => f,
        Err(e) => return error_response(&e, serde_json::Value::Null),
    };
    let slot = match ctx.stream_slot() {
        Ok(slot) => slot,
        Err(e) => return error_response(&e, serde_json::Value::Null),
    };
    let mut stopping = ctx.engine.shutdown_signal();
    let stream = BroadcastStream::new(ctx.engine.events().subscribe())
        .take_until(async move {
            let _ = stopping.wait_for(|s| *s).await;
        })
        .filter(move |item| {
            let pass = item.as_ref().map_or(true, |ev| filter.allows(ev.method));
            std::future::ready(pass)
        })
        .map(move |item| {
            // The slot is held for as long as the stream lives.
            let _held = &slot;
            match item {
                Ok(ev) => Ok::<_, Infallible>(
                    SseEvent::default()
                        .event(ev.method)
                        .data(ev.params_text.as_ref()),
                ),
                // A slow reader missed events; tell it so it can refetch.
                Err(_) => Ok(SseEvent::default().event("approvald.lagged").data("{}")),
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
