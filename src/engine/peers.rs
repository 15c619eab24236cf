//! What the engine does beside answering calls when it may not be the only process: take over
//! fan-outs a dead process left unfinished, and, in a cluster of instances on one PostgreSQL
//! database, follow what the others announce (new requests to time, decisions that wake our
//! waiters, rule changes) and run the receivers only one process may run while it leads.
//!
//! The database stays the judge of every race (compare-and-set on `pending`); what arrives
//! here only keeps this instance's caches, timers and waiters in step with it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use approvald_channel::InboundSink;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{SharedRecord, ToolApprovalForwarder};
use crate::domain::{ApprovalRecord, Status};
use crate::events;

/// How often this instance says it is alive and looks for fan-outs to take over.
const KEEPER_EVERY: Duration = Duration::from_secs(2);
/// A fan-out whose owner has not said it is alive for this long is taken over.
const OWNER_STALE: Duration = Duration::from_secs(10);

impl ToolApprovalForwarder {
    /// Every prompt of `id` was sent or failed.
    pub(super) async fn fanout_finished(&self, id: &str) {
        if let Err(e) = self.inner.store.deliveries_finished(id).await {
            tracing::warn!(id, error = %e, "cannot mark the fan-out finished (it may be re-checked later)");
        }
    }

    /// Heartbeat and take over unfinished fan-outs of processes that stopped (a crash before
    /// a restart, or another instance of a cluster), for as long as the engine lives.
    pub(super) fn spawn_fanout_keeper(&self) {
        let engine = self.clone();
        let mut stopping = self.shutdown_signal();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(KEEPER_EVERY) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                if let Err(e) = engine.inner.store.heartbeat().await {
                    tracing::warn!(error = %e, "cannot record this instance's heartbeat");
                    continue;
                }
                match engine
                    .inner
                    .store
                    .claim_unfinished_deliveries(OWNER_STALE, 100)
                    .await
                {
                    Ok(ids) => {
                        for id in ids {
                            engine.resume_fanout(&id).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot look for unfinished fan-outs"),
                }
            }
        });
    }

    /// Send the prompts of `id` that its first owner did not get to (a target with a recorded
    /// delivery, sent or failed, is not sent again), then mark the fan-out finished.
    async fn resume_fanout(&self, id: &str) {
        let rec = match self.load(id).await {
            Ok(rec) => rec,
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot load a request to finish its fan-out");
                return;
            }
        };
        if rec.status == Status::Pending {
            let done: HashSet<_> = rec
                .deliveries
                .iter()
                .map(|d| {
                    (
                        d.target.channel.clone(),
                        d.target.to.clone(),
                        d.target.thread_id.clone(),
                    )
                })
                .collect();
            let missing: Vec<_> = self
                .targets_for(&rec.request)
                .into_iter()
                .filter(|t| !done.contains(&(t.channel.clone(), t.to.clone(), t.thread_id.clone())))
                .collect();
            tracing::info!(
                id,
                missing = missing.len(),
                "taking over a fan-out its process left unfinished"
            );
            if !self.inner.timers.contains_key(id) {
                self.arm_timer(id, rec.request.expires_at);
            }
            let sends = missing.into_iter().map(|t| self.deliver_one(&rec, t));
            futures::future::join_all(sends).await;
        }
        self.fanout_finished(id).await;
    }

    /// An event another instance published: keep timers, waiters and rules in step, then
    /// tell this instance's stream clients.
    pub async fn on_peer_event(&self, method: &'static str, params_text: String) {
        let Ok(params) = serde_json::from_str::<Value>(&params_text) else {
            tracing::warn!(method, "an event from another instance is not JSON");
            return;
        };
        let id = params.get("id").and_then(Value::as_str).map(str::to_string);
        match (method, id) {
            (events::REQUESTED, Some(id)) => {
                let deadline = params
                    .get("expires_at")
                    .and_then(Value::as_str)
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.with_timezone(&Utc));
                if let Some(deadline) = deadline
                    && !self.inner.timers.contains_key(&id)
                {
                    // Every instance times every request: whichever fires first expires it
                    // (compare-and-set), so a request outlives the instance that took it.
                    self.arm_timer(&id, deadline);
                    self.inner.metrics.pending.inc();
                }
            }
            (events::RESOLVED | events::EXPIRED, Some(id)) => self.settled_elsewhere(&id).await,
            (events::RULES_CHANGED, _) => self.reload_standing_rules().await,
            _ => {}
        }
        if method != events::RULES_CHANGED {
            self.inner.events.publish_local(method, params_text.into());
        }
    }

    /// Another instance settled `id`: stop timing it and answer our waiters from the store.
    async fn settled_elsewhere(&self, id: &str) {
        self.stop_timing(id);
        if !self.inner.waiters.contains_key(id) {
            return;
        }
        match self.inner.store.get(id).await {
            Ok(Some(rec)) if rec.status != Status::Pending => self.forget_settled(rec),
            Ok(_) => {}
            Err(e) => tracing::warn!(id, error = %e, "cannot load a request settled elsewhere"),
        }
    }

    /// `rec` was settled without this instance finishing it (by another instance, or with
    /// the announcement missed): stop timing it and answer our waiters with it.
    pub(super) fn forget_settled(&self, rec: ApprovalRecord) {
        let id = rec.request.id.clone();
        self.stop_timing(&id);
        if let Some((_, tx)) = self.inner.waiters.remove(&id) {
            let _ = tx.send(Some(SharedRecord::new(rec)));
        }
    }

    /// Forget the timer, lock and copy of `id`; a timer still armed was counted as pending.
    fn stop_timing(&self, id: &str) {
        if let Some((_, timer)) = self.inner.timers.remove(id) {
            timer.abort();
            self.inner.metrics.pending.dec();
        }
        self.inner.locks.remove(id);
        self.inner.hot.remove(id);
    }

    async fn reload_standing_rules(&self) {
        match self.inner.store.standing_rules(false).await {
            Ok(rules) => {
                if let Ok(mut s) = self.inner.standing.write() {
                    *s = rules;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload standing rules"),
        }
    }

    /// After a gap in what we heard from the others (the listening connection dropped): time
    /// every pending request, answer waiters whose request was settled meanwhile, reload rules.
    pub async fn resync_with_peers(&self) {
        match self.inner.store.pending_deadlines().await {
            Ok(pending) => {
                for (id, deadline) in pending {
                    if !self.inner.timers.contains_key(&id) {
                        self.arm_timer(&id, deadline);
                        self.inner.metrics.pending.inc();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot re-read pending requests"),
        }
        let waiting: Vec<String> = self.inner.waiters.iter().map(|e| e.key().clone()).collect();
        for id in waiting {
            if let Ok(Some(status)) = self.inner.store.status(&id).await
                && status != Status::Pending
            {
                self.settled_elsewhere(&id).await;
            }
        }
        self.reload_standing_rules().await;
    }

    /// This instance became the leader: start the receivers only one process may run.
    pub async fn start_exclusive_receivers(&self) {
        let sink: Arc<dyn InboundSink> = Arc::new(self.clone());
        for (name, channel) in &self.inner.channels {
            if channel.exclusive_receiver() {
                tracing::info!(channel = %name, "leader: starting the receiver");
                if let Err(e) = channel.start(sink.clone()).await {
                    tracing::error!(channel = %name, error = %e, "receiver failed to start");
                }
            }
        }
    }

    /// This instance is no longer the leader: stop them, another instance takes over.
    pub async fn stop_exclusive_receivers(&self) {
        for (name, channel) in &self.inner.channels {
            if channel.exclusive_receiver() {
                tracing::info!(channel = %name, "no longer the leader: stopping the receiver");
                channel.stop().await;
            }
        }
    }

    /// True when some channel has a receiver only the leader may run.
    pub fn has_exclusive_receivers(&self) -> bool {
        self.inner.channels.values().any(|c| c.exclusive_receiver())
    }
}
