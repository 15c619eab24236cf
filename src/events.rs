//! The live event stream: every request, progress, resolution and expiry, fanned out to
//! WebSocket clients (as JSON-RPC notifications) and `/events` (as Server-Sent Events).

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

/// One notification. `method` is the JSON-RPC notification name, e.g. `tool.approval.resolved`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub method: &'static str,
    pub params: serde_json::Value,
    /// `params` as JSON text, serialised once for every SSE client.
    #[serde(skip)]
    pub params_text: Arc<str>,
    /// The whole JSON-RPC notification, serialised once for every WebSocket client.
    #[serde(skip)]
    pub notification: Arc<str>,
}

pub const REQUESTED: &str = "tool.approval.requested";
pub const UPDATED: &str = "tool.approval.updated";
pub const RESOLVED: &str = "tool.approval.resolved";
pub const EXPIRED: &str = "tool.approval.expired";
/// A prompt reached a target (`id`, `target`, `message`).
pub const DELIVERED: &str = "approvald.delivered";
/// A prompt could not be delivered in the end (`id`, `target`, `error`).
pub const DELIVERY_FAILED: &str = "approvald.delivery_failed";

/// A task moved: its whole view.
pub const TASK_UPDATED: &str = "tool.task.updated";
/// An executor must stop a task (`task_id`, `approval_id`, `reason`, `by`).
pub const EXECUTION_ABORT: &str = "tool.execution.abort";
/// The upstream assistant became unreachable or came back (`in_fallback`, `error`).
pub const FALLBACK: &str = "approvald.fallback";

/// A broadcast channel; slow subscribers lose old events rather than slowing the engine.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl EventBus {
    pub fn publish(&self, method: &'static str, params: serde_json::Value) {
        // No subscribers is fine: events are a live view, the store is the record.
        if self.tx.receiver_count() == 0 {
            return;
        }
        let params_text: Arc<str> = params.to_string().into();
        let notification: Arc<str> =
            format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params_text}}}"#).into();
        let _ = self.tx.send(Event {
            method,
            params,
            params_text,
            notification,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn subscriber_count(&self) -> usize {
        self.tx.receiver_count()
    }
}
