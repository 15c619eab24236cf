//! The live event stream: every request, progress, resolution and expiry, fanned out to
//! WebSocket clients (as JSON-RPC notifications) and `/events` (as Server-Sent Events).

use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// One notification, serialised once for every subscriber.
#[derive(Debug, Clone)]
pub struct Event {
    pub method: &'static str,
    /// The params as JSON text (what SSE clients are sent).
    pub params_text: Arc<str>,
    /// The whole JSON-RPC notification (what WebSocket clients are sent); shared, not copied,
    /// by every client's frame.
    pub notification: axum::extract::ws::Utf8Bytes,
}

impl Event {
    /// The params parsed, for the few that look inside an event.
    pub fn params(&self) -> serde_json::Value {
        serde_json::from_str(&self.params_text).unwrap_or_default()
    }
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

/// Internal to a cluster: standing rules changed, peers reload theirs. Never sent to clients.
pub const RULES_CHANGED: &str = "cluster.rules_changed";

/// Every method a client may be sent (and ask for, see [`EventFilter`]).
const CLIENT_METHODS: [&str; 9] = [
    REQUESTED,
    UPDATED,
    RESOLVED,
    EXPIRED,
    DELIVERED,
    DELIVERY_FAILED,
    TASK_UPDATED,
    EXECUTION_ABORT,
    FALLBACK,
];

/// Every method published here, to map one received from another instance back to its name
/// here.
pub fn known_method(method: &str) -> Option<&'static str> {
    CLIENT_METHODS
        .into_iter()
        .chain([RULES_CHANGED])
        .find(|m| *m == method)
}

/// Which notifications a stream client is sent: `?events=` on `GET /rpc/ws` and `GET /events`.
/// All of them by default; `none` (a gateway that only makes calls and waits on them needs
/// none, and each costs both sides a frame), or a comma-separated list of methods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EventFilter {
    #[default]
    All,
    /// These methods only (none when empty).
    Only(Vec<&'static str>),
}

impl EventFilter {
    /// The filter `?events=` asks for (`None`: not given). Unknown methods are refused, so a
    /// typo does not silently mean "nothing".
    pub fn parse(given: Option<&str>) -> Result<Self, String> {
        let Some(given) = given.map(str::trim) else {
            return Ok(Self::All);
        };
        match given {
            "" | "all" => return Ok(Self::All),
            "none" => return Ok(Self::Only(Vec::new())),
            _ => {}
        }
        let mut only = Vec::new();
        for name in given.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(method) = CLIENT_METHODS.into_iter().find(|m| *m == name) else {
                return Err(format!(
                    "events: unknown method {name:?}; give all, none, or a comma-separated list of {}",
                    CLIENT_METHODS.join(", ")
                ));
            };
            if !only.contains(&method) {
                only.push(method);
            }
        }
        Ok(Self::Only(only))
    }

    pub fn allows(&self, method: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(only) => only.contains(&method),
        }
    }

    /// Whether any event passes (if not, the client need not be subscribed at all).
    pub fn wants_any(&self) -> bool {
        !matches!(self, Self::Only(only) if only.is_empty())
    }
}

/// What is handed to the other instances of a cluster: an event published here, its params
/// as JSON text.
pub type PeerEvent = (&'static str, Arc<str>);

/// A broadcast channel; slow subscribers lose old events rather than slowing the engine.
/// In a cluster every event published here is also handed to the other instances.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    peers: Arc<OnceLock<mpsc::UnboundedSender<PeerEvent>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
            peers: Arc::new(OnceLock::new()),
        }
    }
}

impl EventBus {
    /// From now on, hand every published event to `peers` too (set once, by the cluster).
    pub fn forward_to_peers(&self, peers: mpsc::UnboundedSender<PeerEvent>) {
        let _ = self.peers.set(peers);
    }

    /// Tell this instance's clients and, in a cluster, every other instance. `params` is
    /// serialised once, and not at all when nobody would receive it.
    pub fn publish<T: Serialize + ?Sized>(&self, method: &'static str, params: &T) {
        let peers = self.peers.get();
        let local = method != RULES_CHANGED && self.tx.receiver_count() > 0;
        if peers.is_none() && !local {
            return;
        }
        let params_text: Arc<str> = crate::json::text_or_null(params).into();
        if let Some(peers) = peers {
            let _ = peers.send((method, params_text.clone()));
        }
        if local {
            self.publish_local(method, params_text);
        }
    }

    /// Tell this instance's clients only (an event that came from another instance).
    pub fn publish_local(&self, method: &'static str, params_text: Arc<str>) {
        // No subscribers is fine: events are a live view, the store is the record.
        if self.tx.receiver_count() == 0 {
            return;
        }
        let notification =
            format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params_text}}}"#).into();
        let _ = self.tx.send(Event {
            method,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters_parse_as_asked_and_refuse_unknown_methods() {
        assert_eq!(EventFilter::parse(None), Ok(EventFilter::All));
        assert_eq!(EventFilter::parse(Some("all")), Ok(EventFilter::All));
        let none = EventFilter::parse(Some("none")).expect("none");
        assert!(!none.wants_any() && !none.allows(REQUESTED));
        let two = EventFilter::parse(Some(
            " tool.approval.resolved, tool.approval.expired,tool.approval.resolved ",
        ))
        .expect("a list");
        assert_eq!(two, EventFilter::Only(vec![RESOLVED, EXPIRED]));
        assert!(two.wants_any() && two.allows(RESOLVED) && !two.allows(REQUESTED));
        // Internal to a cluster, never a client's.
        assert!(EventFilter::parse(Some(RULES_CHANGED)).is_err());
        let err = EventFilter::parse(Some("tool.approval.resolvd")).expect_err("a typo");
        assert!(
            err.contains("tool.approval.resolvd") && err.contains(RESOLVED),
            "{err}"
        );
    }
}
