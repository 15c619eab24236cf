//! `ToolApprovalForwarder`: the engine. It records a request, lets rules decide where they can,
//! fans prompts out to the people who may decide, collects their decisions with identity,
//! enforces quorum, self-approval and expiry, resolves first-wins through the store, and edits
//! every prompt it sent to show the outcome ("resolved anywhere, updated everywhere").

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use approvald_channel::{
    ActionData, Channel, InboundAction, InboundReply, InboundSink, Markup, MessageRef,
    PlatformUser, Prompt, PromptAction, PromptView, RefusalKind,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Mutex, mpsc, watch};

use crate::audit::{AuditEntry, AuditEvent};
use crate::config::{ApproverFactor, Config, DeliveryMode};
use crate::directory::{Caller, Directory, ResolvedActor};
use crate::domain::{
    Approval, ApprovalRecord, ApprovalRequest, ApproverIdentity, Decision, Delivery, Origin,
    Requester, Resolution, RiskClass, Scope, Status, Target, Transport, Verdict,
};
use crate::error::ApprovalError;
use crate::events::{self, EventBus};
use crate::limits::RequestLimiter;
use crate::metrics::Metrics;
use crate::rules::{self, RuleVerdict, StandingRule};
use crate::store::{DecisionWrite, InsertOutcome, ListQuery, Store};
use crate::templates::{PromptContext, TemplateKind, Templates};
use crate::upstream::Upstream;

mod execution;
mod peers;
mod view;

pub use execution::{ApproveAnswer, EnqueueTask, ExecutionReport, TaskSnapshot, execution_text};
pub use view::{ApprovalView, ResultView, SharedRecord};

/// What a caller sends to ask for approval (the params of `tool.approval.request`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    pub id: Option<String>,
    pub tool: String,
    pub summary: Option<String>,
    pub command: Option<String>,
    pub args: Option<serde_json::Value>,
    pub risk_class: Option<RiskClass>,
    pub agent_id: Option<String>,
    pub session_key: Option<String>,
    pub requester: Option<Requester>,
    pub origin: Option<Origin>,
    pub timeout_ms: Option<u64>,
    pub estimated_cost: Option<f64>,
    pub allowed_decisions: Option<Vec<Decision>>,
    /// Handled by the API layer; accepted here so one struct parses the params.
    pub wait: Option<bool>,
}

/// A decision made by a policy before anyone is asked (see [`ToolApprovalForwarder::request_with`]).
#[derive(Debug, Clone)]
pub struct PresetVerdict {
    pub identity: ApproverIdentity,
    pub decision: Decision,
    pub reason: Option<String>,
}

/// Who is deciding, before the engine has looked them up.
#[derive(Debug, Clone)]
pub enum Actor {
    /// An API token, deciding through the CLI or the API.
    Caller {
        caller: Caller,
        transport: Transport,
    },
    /// An admin token relaying an identity from elsewhere.
    Relay {
        admin: Caller,
        identity: ApproverIdentity,
    },
    /// A person on a chat platform.
    Platform {
        channel: String,
        user: approvald_channel::PlatformUser,
    },
    /// A person signed in to the control UI.
    ControlUi { person: String },
}

/// A decision to apply.
#[derive(Debug, Clone)]
pub struct DecisionAttempt {
    /// Full id or a unique prefix of at least 6 characters.
    pub id: String,
    pub decision: Decision,
    pub reason: Option<String>,
    pub actor: Actor,
}

/// The longest one edit or notice may take before it counts as failed; a prompt may take until
/// its request's deadline if that is later.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// A map keyed by request id. Together they are touched about fifteen times per request and
/// decision, and std's SipHash of the ids was ~4k instructions of each (callgrind, eleventh
/// round in BENCHMARKS.md); foldhash, seeded at random per process, still keeps ids a caller
/// chose from being aimed at one bucket.
type IdMap<V> = DashMap<String, V, foldhash::quality::RandomState>;

struct Inner {
    config: Arc<Config>,
    directory: Directory,
    store: Arc<dyn Store>,
    channels: HashMap<String, Arc<dyn Channel>>,
    templates: Templates,
    events: EventBus,
    metrics: Metrics,
    /// Callers waiting on a pending request. A cache: the store is the truth.
    waiters: IdMap<watch::Sender<Option<Arc<SharedRecord>>>>,
    /// Pending requests a caller is blocked on, as stored, so the decision that usually
    /// follows is checked without reading them back. One instance only: where other
    /// instances share the database (PostgreSQL) it is never filled. Kept in step by
    /// `apply_decision`, emptied by `finish`.
    hot: IdMap<Arc<ApprovalRecord>>,
    /// Expiry timers of pending requests.
    timers: IdMap<tokio::task::AbortHandle>,
    /// Requests being written here, and ids someone waits to decide on (`load_stored`):
    /// handed the record once it is stored (the sender dropped if it was not).
    storing: IdMap<Storing>,
    /// Where timers hand the ids that are due, to be expired in batches.
    due: mpsc::UnboundedSender<String>,
    /// Its other end, taken by the expiry worker at start.
    due_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Serialises decisions on one request inside this process (the store's compare-and-set
    /// guards across processes).
    locks: IdMap<Arc<Mutex<()>>>,
    /// Active standing rules, mirrored from the store.
    standing: RwLock<Vec<StandingRule>>,
    /// The upstream assistant, when configured.
    upstream: Option<Arc<Upstream>>,
    /// One outbox flush at a time, so reports go upstream in order and once.
    outbox_flush: Mutex<()>,
    limiter: RequestLimiter,
    /// Set once the server stops: blocked waiters answer `shutting_down` at once.
    shutting_down: watch::Sender<bool>,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct ToolApprovalForwarder {
    inner: Arc<Inner>,
}

impl ToolApprovalForwarder {
    /// Build the engine. Config targets must name a registered channel.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        templates: Templates,
        channels: Vec<Arc<dyn Channel>>,
    ) -> anyhow::Result<Self> {
        let channels: HashMap<String, Arc<dyn Channel>> = channels
            .into_iter()
            .map(|c| (c.name().to_string(), c))
            .collect();
        for (key, list) in [
            ("delivery.targets", &config.delivery.targets),
            (
                "delivery.timeout_notice_targets",
                &config.delivery.timeout_notice_targets,
            ),
        ] {
            for (i, t) in list.iter().enumerate() {
                if !channels.contains_key(&t.channel) {
                    anyhow::bail!(
                        "config error at {key}[{i}].channel: no channel named {:?} is configured (known: {:?})",
                        t.channel,
                        channels.keys().collect::<Vec<_>>()
                    );
                }
            }
        }
        let upstream = Upstream::from_config(&config.assistant)?.map(Arc::new);
        let limiter = RequestLimiter::new(&config.limits);
        let (due, due_rx) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                directory: Directory::new(config.clone()),
                config,
                store,
                channels,
                templates,
                events: EventBus::default(),
                metrics: Metrics::default(),
                waiters: IdMap::default(),
                hot: IdMap::default(),
                timers: IdMap::default(),
                storing: IdMap::default(),
                due,
                due_rx: std::sync::Mutex::new(Some(due_rx)),
                locks: IdMap::default(),
                standing: RwLock::new(Vec::new()),
                upstream,
                outbox_flush: Mutex::new(()),
                limiter,
                shutting_down: watch::channel(false).0,
            }),
        })
    }

    /// The channels prompts go to, by configured name order.
    pub fn channels(&self) -> Vec<Arc<dyn Channel>> {
        let mut names: Vec<_> = self.inner.channels.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| self.inner.channels[n].clone())
            .collect()
    }

    /// Tell every blocked waiter and stream client that the server is stopping.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.send_replace(true);
    }

    /// Becomes true when the server starts stopping (WebSocket and SSE loops watch it).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutting_down.subscribe()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn templates(&self) -> &Templates {
        &self.inner.templates
    }

    /// Each channel's health, by name, as `/healthz` and `approvald.status` show it.
    pub fn channel_health(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<_> = self.inner.channels.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let h = self.inner.channels[name].health();
                let transport = self.inner.channels[name].transport();
                json!({ "name": name, "transport": transport, "connected": h.connected, "last_error": h.last_error })
            })
            .collect()
    }

    /// Re-arm timers for every pending request, load standing rules, start channel receivers.
    /// Requests whose deadline passed while we were down expire now.
    pub async fn start(&self) -> anyhow::Result<()> {
        let standing = self.inner.store.standing_rules(false).await?;
        if let Ok(mut s) = self.inner.standing.write() {
            *s = standing;
        }
        self.spawn_expiry_worker();
        let pending = self.inner.store.pending_deadlines().await?;
        self.inner.metrics.pending.set(pending.len() as i64);
        tracing::info!(pending = pending.len(), "re-arming expiry timers");
        for (id, deadline) in pending {
            self.arm_timer(&id, deadline);
        }
        // In a cluster, receivers only one process may run (long polling, a gateway or
        // socket connection) wait for this instance to become the leader.
        let clustered = self.inner.config.storage.is_postgres();
        let sink: Arc<dyn InboundSink> = Arc::new(self.clone());
        for (name, channel) in &self.inner.channels {
            if clustered && channel.exclusive_receiver() {
                continue;
            }
            channel
                .start(sink.clone())
                .await
                .map_err(|e| anyhow::anyhow!("channel {name} failed to start: {e}"))?;
        }
        self.spawn_fanout_keeper();
        self.spawn_upstream_health();
        if self.inner.limiter.is_active() {
            let engine = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    engine.inner.limiter.housekeeping();
                }
            });
        }
        Ok(())
    }

    // ----- requests -------------------------------------------------------------------

    /// Record a request, let rules decide, deliver prompts. Returns the record as it stands
    /// after deliveries (or `delivery.wait_ms`), and whether this call created it.
    pub async fn request(
        &self,
        new: NewRequest,
        caller: &Caller,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let fold = self.inner.config.limits.fold_identical;
        self.request_with(new, caller, None, fold).await
    }

    /// [`Self::request`], with a verdict already reached by a policy outside the engine (the
    /// budget, the upstream assistant, fallback mode), applied in place of the rules so it is
    /// recorded, audited and announced like any other decision.
    pub async fn request_with(
        &self,
        new: NewRequest,
        caller: &Caller,
        preset: Option<PresetVerdict>,
        fold: bool,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let (rec, _) = self.create(new, caller, preset, fold, false).await?;
        Ok(rec)
    }

    /// [`Self::request`] for a caller that waits for the outcome (`wait: true`): answers
    /// once the request is settled. The caller is subscribed before its request can be
    /// decided, so a decision that lands before it starts waiting reaches it in memory
    /// instead of being read back from the store.
    pub async fn request_and_wait(
        &self,
        new: NewRequest,
        caller: &Caller,
    ) -> Result<ApprovalRecord, ApprovalError> {
        self.request_and_wait_shared(new, caller)
            .await
            .map(SharedRecord::into_record)
    }

    /// [`Self::request_and_wait`], answered with the record as its decision left it (see
    /// [`SharedRecord`]).
    pub async fn request_and_wait_shared(
        &self,
        new: NewRequest,
        caller: &Caller,
    ) -> Result<Arc<SharedRecord>, ApprovalError> {
        let fold = self.inner.config.limits.fold_identical;
        let (rec, told) = self.create(new, caller, None, fold, true).await?;
        if rec.status != Status::Pending {
            return Ok(SharedRecord::new(rec));
        }
        match told {
            Some(rx) => self.wait_told(rec, rx, None).await,
            None => self.wait_on_shared(Box::new(rec), None).await,
        }
    }

    /// The body of [`Self::request_with`]; with `waits`, also the caller's subscription to
    /// the outcome of the request it created (`None` if it created none).
    async fn create(
        &self,
        new: NewRequest,
        caller: &Caller,
        preset: Option<PresetVerdict>,
        fold: bool,
        waits: bool,
    ) -> Result<(ApprovalRecord, Option<SettledRx>), ApprovalError> {
        self.check_rate(&new, caller).await?;
        let req = self.build_request(new, caller)?;
        let fold_key = fold.then(|| req.fold_key());
        let requested = AuditEntry::new(AuditEvent::Requested, Some(&req.id)).detail(json!({
            "tool": req.tool, "risk_class": req.risk_class, "agent_id": req.agent_id,
            "session_key": req.session_key, "requester": req.requester,
            "token": req.requested_via_token, "expires_at": req.expires_at,
        }));
        // Prompts to send make it a fan-out another process finishes should this one die.
        let fanout = !self.targets_for(&req).is_empty();
        // The timer is armed before the request is stored: a decision that races the insert
        // (a resolver handed the id at once) then finds it and stops it, so an armed timer
        // always means "not settled here yet" (which `wait_on` relies on).
        let armed_here = !self.inner.timers.contains_key(&req.id);
        // Subscribed before the timer is armed: whatever settles it is sure to tell us.
        let mut told = (waits && armed_here).then(|| self.subscribe_waiter(&req.id));
        // The rules are looked at before the insert: a request nothing settles at once can be
        // offered to decisions while its insert is still queued (see `Handover::Queued`).
        let verdict = (preset.is_none()
            && self
                .inner
                .config
                .approvals
                .factor_enabled(ApproverFactor::RulesBased))
        .then(|| {
            let standing = self
                .inner
                .standing
                .read()
                .map(|s| s.clone())
                .unwrap_or_default();
            rules::evaluate(&self.inner.config.rules, &standing, &req)
        });
        let settles_at_once =
            preset.is_some() || verdict.as_ref().is_some_and(|v| v.identity().is_some());
        let mut storing = StoringGuard {
            storing: &self.inner.storing,
            id: Some(req.id.clone()),
        };
        if armed_here {
            // A decision arriving from now on waits to be handed the record, unread.
            self.inner
                .storing
                .entry(req.id.clone())
                .or_default()
                .writing = true;
            self.arm_timer(&req.id, req.expires_at);
        }
        let disarm = |id: &str| {
            if armed_here && let Some((_, timer)) = self.inner.timers.remove(id) {
                timer.abort();
            }
        };
        let stored = {
            let insert = self.inner.store.insert_request(
                &req,
                fold_key.as_deref(),
                std::slice::from_ref(&requested),
                fanout,
            );
            let mut insert = std::pin::pin!(insert);
            // The SQLite store queues the insert on its writer as it is first polled; a
            // decision handed the record from then on queues its own write behind it.
            match futures::poll!(insert.as_mut()) {
                std::task::Poll::Ready(stored) => stored,
                std::task::Poll::Pending => {
                    if armed_here
                        && !settles_at_once
                        && !self.inner.config.storage.is_postgres()
                        && let Some(entry) = self.inner.storing.get(&req.id)
                    {
                        entry.tx.send_replace(Some(Handover::Queued(Arc::new(
                            ApprovalRecord::pending(req.clone()),
                        ))));
                    }
                    insert.await
                }
            }
        };
        let inserted = matches!(stored, Ok(InsertOutcome::Inserted));
        if !inserted || settles_at_once {
            storing.hand_over(inserted.then(|| ApprovalRecord::pending(req.clone())));
        }
        if !inserted {
            disarm(&req.id);
            if let Some(rx) = told.take() {
                self.unsubscribe_waiter(&req.id, rx);
            }
        }
        let stored = stored?;
        match stored {
            InsertOutcome::Inserted => {}
            InsertOutcome::Folded(pending) => {
                // The same ask is already waiting for people: wait on that one, no new prompt.
                self.inner.metrics.folded.inc();
                Box::pin(self.audit(
                    AuditEntry::new(AuditEvent::Folded, Some(&pending.request.id)).detail(
                        json!({ "token": caller.token_name, "agent_id": req.agent_id,
                                "session_key": req.session_key, "asked_id": req.id }),
                    ),
                ))
                .await;
                return Ok((*pending, None));
            }
            InsertOutcome::Exists(existing) => {
                // A caller retrying with its own id gets the same request back, never a
                // second prompt; the same id with other content is refused.
                if existing.request.same_content(&req) {
                    return Ok((*existing, None));
                }
                return Err(ApprovalError::DuplicateId(format!(
                    "approval {} already exists with different content",
                    req.id
                )));
            }
        }
        let id = req.id.clone();
        let mut rec = ApprovalRecord::pending(req);
        self.inner.metrics.requests.inc();
        self.inner.metrics.pending.inc();
        // Waiters' channels are made when someone waits: most requests never need one.

        if let Some(preset) = preset {
            let actor = ResolvedActor {
                identity: preset.identity,
                authorised: true,
                why_not: None,
                token_name: None,
            };
            rec =
                Box::pin(self.apply_decision(Box::new(rec), actor, preset.decision, preset.reason))
                    .await?
                    .into_record();
        } else if let Some(verdict) = verdict {
            // Rules first: a deny or an allow that meets quorum settles it before anyone is asked.
            if let Some(identity) = verdict.identity() {
                let decision = match verdict {
                    RuleVerdict::Deny { .. } => Decision::Deny,
                    _ => Decision::ApproveOnce,
                };
                let actor = ResolvedActor {
                    identity,
                    authorised: true,
                    why_not: None,
                    token_name: None,
                };
                rec = Box::pin(self.apply_decision(Box::new(rec), actor, decision, None))
                    .await?
                    .into_record();
            }
        }
        if rec.status != Status::Pending {
            return Ok((rec, told));
        }
        self.inner
            .events
            .publish(events::REQUESTED, &self.approval_view(&rec));
        // Only now: a decision that shared the insert's commit announces its outcome once it
        // is handed this, so that nobody hears of the outcome before the request.
        storing.hand_over(Some(ApprovalRecord::pending(rec.request.clone())));
        if fanout {
            rec.deliveries = Box::pin(self.deliver_all(&rec)).await;
        }
        if !self.inner.timers.contains_key(&id) {
            // Someone decided while the prompts were on their way (finishing stops the
            // timer, then tells the subscribed): answer the outcome.
            let settled = told.as_ref().and_then(|rx| rx.borrow().clone());
            let rec = match settled {
                Some(rec) => (*rec).clone(),
                None => Box::pin(self.load(&id)).await?,
            };
            return Ok((rec, None));
        }
        if rec.delivered_to().is_empty() && self.inner.events.subscriber_count() == 0 {
            // Once a minute at most: a busy gateway without channels would fill the log.
            static LAST_WARNED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
            let now = Utc::now().timestamp();
            let last = LAST_WARNED.load(std::sync::atomic::Ordering::Relaxed);
            if now - last >= 60
                && LAST_WARNED
                    .compare_exchange(
                        last,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(
                    id = %id,
                    "no prompt was delivered and no UI/CLI client is watching: requests are recorded and visible in `approvald pending` (said once a minute)"
                );
            }
        }
        Ok((rec, told))
    }

    /// Refuse a request over its token's, agent's or session's rate (audited once a window).
    async fn check_rate(&self, new: &NewRequest, caller: &Caller) -> Result<(), ApprovalError> {
        let limiter = &self.inner.limiter;
        if !limiter.is_active() {
            return Ok(());
        }
        let Err(limited) = limiter.check(
            &caller.token_name,
            new.agent_id.as_deref(),
            new.session_key.as_deref(),
        ) else {
            return Ok(());
        };
        self.inner
            .metrics
            .rate_limited
            .get_or_create(&vec![("scope", limited.scope.to_string())])
            .inc();
        if limiter.should_report(&limited) {
            tracing::warn!(scope = limited.scope, key = %limited.key, "approval requests rate-limited");
            // Boxed: rare, and every request's future would otherwise make room for it.
            Box::pin(self.audit(
                AuditEntry::new(AuditEvent::RateLimited, None).detail(json!({
                    "scope": limited.scope, "key": limited.key, "token": caller.token_name,
                    "retry_after_ms": limited.retry_after.as_millis() as u64,
                })),
            ))
            .await;
        }
        Err(ApprovalError::RateLimited {
            scope: limited.scope,
            key: limited.key,
            retry_after_ms: limited.retry_after.as_millis().max(1) as u64,
        })
    }

    fn build_request(
        &self,
        new: NewRequest,
        caller: &Caller,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let policy = &self.inner.config.approvals;
        let id = match new.id {
            Some(id) => uuid::Uuid::parse_str(&id)
                .map_err(|_| ApprovalError::InvalidParams(format!("id {id:?} is not a UUID")))?
                .hyphenated()
                .to_string(),
            None => uuid::Uuid::new_v4().to_string(),
        };
        if new.tool.trim().is_empty() {
            return Err(ApprovalError::InvalidParams(
                "tool must not be empty".into(),
            ));
        }
        if new.command.is_none() && new.args.is_none() && new.summary.is_none() {
            return Err(ApprovalError::InvalidParams(
                "give at least one of command, args or summary: people must see what they approve"
                    .into(),
            ));
        }
        if let Some(t) = new.timeout_ms
            && t == 0
        {
            return Err(ApprovalError::InvalidParams(
                "timeout_ms must be above 0".into(),
            ));
        }
        if let Some(cost) = new.estimated_cost
            && (!cost.is_finite() || cost < 0.0)
        {
            return Err(ApprovalError::InvalidParams(
                "estimated_cost must be a non-negative number".into(),
            ));
        }
        let timeout = new
            .timeout_ms
            .unwrap_or(policy.default_timeout_ms)
            .min(policy.max_timeout_ms);
        let mut allowed = policy.allowed_decisions();
        if let Some(asked) = new.allowed_decisions {
            if asked.is_empty() {
                return Err(ApprovalError::InvalidParams(
                    "allowed_decisions must not be empty".into(),
                ));
            }
            allowed.retain(|d| asked.contains(d));
            if !allowed.contains(&Decision::Deny) {
                allowed.push(Decision::Deny);
            }
        }
        let created_at = Utc::now();
        Ok(ApprovalRequest {
            id,
            tool: new.tool,
            summary: new.summary,
            command: new.command,
            args: new.args,
            risk_class: new.risk_class.unwrap_or_default(),
            agent_id: new.agent_id,
            session_key: new.session_key,
            requester: new.requester,
            origin: new.origin,
            estimated_cost: new.estimated_cost,
            created_at,
            expires_at: created_at + chrono::Duration::milliseconds(timeout as i64),
            allowed_decisions: allowed,
            requested_via_token: Some(caller.token_name.clone()),
        })
    }

    /// Wait until the request is resolved, or `timeout` passes (then answer it as it is).
    pub async fn wait(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<ApprovalRecord, ApprovalError> {
        self.wait_shared(id, timeout)
            .await
            .map(SharedRecord::into_record)
    }

    /// [`Self::wait`], answered with the record as its decision left it (see
    /// [`SharedRecord`]).
    pub async fn wait_shared(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Arc<SharedRecord>, ApprovalError> {
        let id = self.resolve_id(id).await?;
        // Subscribe before reading the store: a resolution is written to the store before
        // waiters are told, so one of the two always sees it.
        let rx = self.subscribe_waiter(&id);
        let rec = self.load(&id).await?;
        if rec.request.id != id {
            // An alias or a task id: wait on the request it names.
            drop(rx);
            self.inner.waiters.remove_if(&id, |_, tx| {
                tx.borrow().is_none() && tx.receiver_count() == 0
            });
            let real = rec.request.id.clone();
            return Box::pin(self.wait_shared(&real, timeout)).await;
        }
        if rec.status != Status::Pending {
            self.inner.waiters.remove_if(&id, |_, tx| {
                tx.borrow().is_none() && tx.receiver_count() <= 1
            });
            return Ok(SharedRecord::new(rec));
        }
        self.block_until_settled(id, rx, rec.request.expires_at, timeout)
            .await
    }

    /// [`Self::wait`] on the record [`Self::request`] just answered: while its expiry timer is
    /// armed it is pending here, so it need not be read again.
    pub async fn wait_on(
        &self,
        rec: ApprovalRecord,
        timeout: Option<Duration>,
    ) -> Result<ApprovalRecord, ApprovalError> {
        self.wait_on_shared(Box::new(rec), timeout)
            .await
            .map(SharedRecord::into_record)
    }

    /// [`Self::wait_on`], answered with the record as its decision left it.
    async fn wait_on_shared(
        &self,
        rec: Box<ApprovalRecord>,
        timeout: Option<Duration>,
    ) -> Result<Arc<SharedRecord>, ApprovalError> {
        let id = rec.request.id.clone();
        let rx = self.subscribe_waiter(&id);
        // `finish` stops the timer before it empties `hot` and tells waiters: a timer still
        // armed after we subscribed means we will be told.
        if !self.inner.timers.contains_key(&id) {
            self.unsubscribe_waiter(&id, rx);
            return Box::pin(self.wait_shared(&id, timeout)).await;
        }
        self.wait_told(*rec, rx, timeout).await
    }

    /// Wait on pending `rec` with `rx`, subscribed while its timer was armed (so `finish`
    /// tells it). Meanwhile the record is kept in memory, for the decision to find. Not an
    /// async fn: the record is put away at once, so the future a waiting caller holds is the
    /// wait alone, without the record in it.
    fn wait_told(
        &self,
        rec: ApprovalRecord,
        rx: SettledRx,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Arc<SharedRecord>, ApprovalError>> + Send + '_ {
        let id = rec.request.id.clone();
        let expires_at = rec.request.expires_at;
        if !self.inner.config.storage.is_postgres() {
            self.inner.hot.insert(id.clone(), Arc::new(rec));
            // Settled meanwhile: `finish` has emptied `hot` already, and told `rx`.
            if !self.inner.timers.contains_key(&id) {
                self.inner.hot.remove(&id);
            }
        }
        self.block_until_settled(id, rx, expires_at, timeout)
    }

    /// Be told when `id` is settled (`finish` sends the record).
    fn subscribe_waiter(&self, id: &str) -> SettledRx {
        self.inner
            .waiters
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Give up `rx` (from [`Self::subscribe_waiter`]); its channel goes when nobody else
    /// listens and nothing was sent on it.
    fn unsubscribe_waiter(&self, id: &str, rx: SettledRx) {
        drop(rx);
        self.inner.waiters.remove_if(id, |_, tx| {
            tx.borrow().is_none() && tx.receiver_count() == 0
        });
    }

    /// Block on `rx` until the request is settled, the deadline (and a grace) or `timeout`
    /// passes (then answer it as stored), or the server stops.
    async fn block_until_settled(
        &self,
        id: String,
        mut rx: SettledRx,
        expires_at: DateTime<Utc>,
        timeout: Option<Duration>,
    ) -> Result<Arc<SharedRecord>, ApprovalError> {
        let until_expiry =
            (expires_at - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(5);
        let limit = timeout.map_or(until_expiry, |t| t.min(until_expiry));
        let mut stopping = self.inner.shutting_down.subscribe();
        let settled = tokio::select! {
            waited = tokio::time::timeout(limit, rx.wait_for(|v| v.is_some())) => match waited {
                Ok(Ok(v)) => v.clone(),
                _ => None,
            },
            _ = stopping.wait_for(|s| *s) => {
                // The request stays pending in the store; the caller picks it up again.
                return Err(ApprovalError::ShuttingDown { id });
            }
        };
        match settled {
            Some(rec) => Ok(rec),
            None => Box::pin(self.load(&id)).await.map(SharedRecord::new),
        }
    }

    pub async fn get(&self, id: &str) -> Result<ApprovalRecord, ApprovalError> {
        let id = self.resolve_id(id).await?;
        self.load(&id).await
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Vec<ApprovalRecord>, ApprovalError> {
        Ok(self.inner.store.list(query).await?)
    }

    /// The request `id` names (its own id, an id folded into it, or its task's id).
    async fn load(&self, id: &str) -> Result<ApprovalRecord, ApprovalError> {
        self.inner
            .store
            .get_by_any_id(id)
            .await?
            .ok_or_else(|| ApprovalError::UnknownId(id.to_string()))
    }

    /// [`Self::load`], except that a request that is not stored yet is waited for: while it
    /// is being written here (its expiry timer is armed first) until it is, and an id not
    /// seen at all for a moment ([`UNSEEN_ID_GRACE`]), since a gateway that picks its ids may
    /// hand one to a resolver before its own request has arrived. Either way the resolver
    /// finds the request instead of being told the id is unknown. Where no other instance
    /// shares the store, an id never seen here is looked up in it only after a short wait for
    /// it ([`ON_ITS_WAY`]): usually it arrives, and is handed over, within that.
    ///
    /// With `queued_too`, a request whose insert is only queued is handed over too (see
    /// [`Handover::Queued`]); then the receiver it came on is returned with it, to wait for
    /// the request to be stored and announced.
    async fn load_stored(
        &self,
        id: &str,
        queued_too: bool,
    ) -> Result<(ApprovalRecord, Option<HandoverRx>), ApprovalError> {
        // Ask to be handed the request before looking, so its write cannot slip between.
        let (mut written, being_written) = {
            let entry = self.inner.storing.entry(id.to_string()).or_default();
            (entry.tx.subscribe(), entry.writing)
        };
        let looked = if being_written {
            // Its writer hands it over: nothing to read.
            Err(ApprovalError::UnknownId(id.to_string()))
        } else if self.inner.timers.contains_key(id) {
            // A request under this very id was just written here: not an alias nor a task
            // id, so one read is enough.
            match self.inner.store.get(id).await {
                Ok(Some(rec)) => Ok((rec, false)),
                Ok(None) => Err(ApprovalError::UnknownId(id.to_string())),
                Err(e) => Err(e.into()),
            }
        } else if !self.inner.config.storage.is_postgres()
            && let Ok(Some(handed)) = handed_within(&mut written, ON_ITS_WAY, queued_too).await
        {
            // Never seen here: most often a request on its way (its gateway handed the id to
            // a resolver as it sent it, and the resolver was faster), not in the store yet.
            // Waited for a moment before looking there.
            Ok(handed)
        } else if self.inner.timers.contains_key(id) {
            // It arrived meanwhile and is being written: handed over below, nothing to read.
            Err(ApprovalError::UnknownId(id.to_string()))
        } else {
            self.load(id).await.map(|rec| (rec, false))
        };
        let found = match looked {
            Err(ApprovalError::UnknownId(_)) => {
                // Being written is bounded by the store's own wait for its lock.
                let writing = Duration::from_secs(10);
                let first = match being_written || self.inner.timers.contains_key(id) {
                    true => writing,
                    false => UNSEEN_ID_GRACE,
                };
                let mut handed = handed_within(&mut written, first, queued_too).await;
                if handed.is_err() && self.inner.timers.contains_key(id) {
                    // It arrived during the grace and is being written now.
                    handed = handed_within(&mut written, writing, queued_too).await;
                }
                match handed.ok().flatten() {
                    Some(handed) => Ok(handed),
                    None => self.load(id).await.map(|rec| (rec, false)),
                }
            }
            other => other,
        };
        // The entry is the request's own while it is being written: it removes it.
        self.inner.storing.remove_if(id, |_, w| {
            !w.writing && w.tx.subscribe().same_channel(&written)
        });
        found.map(|(rec, queued)| (rec, queued.then_some(written)))
    }

    /// A full id, the one id a prefix of at least 6 characters names, or a task's id.
    pub async fn resolve_id(&self, given: &str) -> Result<String, ApprovalError> {
        let trimmed = given.trim();
        // A full id needs no lookup here (the hot path: callers and resolvers pass whole ids);
        // `load` finds what it names, an alias or a task id included.
        if let Ok(uuid) = uuid::Uuid::try_parse(trimmed)
            && trimmed.len() == 36
        {
            return Ok(uuid.hyphenated().to_string());
        }
        let given = trimmed.to_ascii_lowercase();
        // A task id from the assistant protocol names its approval too.
        let task_id = || async {
            if trimmed.is_empty() || trimmed.len() > 256 {
                return Ok::<_, ApprovalError>(None);
            }
            Ok(self
                .inner
                .store
                .task_by_id(trimmed)
                .await?
                .map(|t| t.approval_id))
        };
        if given.len() < 6 || !given.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            if let Some(id) = task_id().await? {
                return Ok(id);
            }
            return Err(ApprovalError::InvalidParams(format!(
                "id {given:?} must be a full id or a prefix of at least 6 hex characters"
            )));
        }
        let ids = self.inner.store.ids_with_prefix(&given, 5).await?;
        match ids.as_slice() {
            [] => match task_id().await? {
                Some(id) => Ok(id),
                None => Err(ApprovalError::UnknownId(given)),
            },
            [only] => Ok(only.clone()),
            many => {
                if many.iter().any(|m| m == &given) {
                    return Ok(given);
                }
                Err(ApprovalError::AmbiguousId {
                    prefix: given,
                    candidates: many.to_vec(),
                })
            }
        }
    }

    // ----- decisions ------------------------------------------------------------------

    /// Apply a person's decision. First-wins; refusals change nothing and are audited.
    pub async fn resolve(&self, attempt: DecisionAttempt) -> Result<ApprovalRecord, ApprovalError> {
        self.resolve_shared(attempt)
            .await
            .map(SharedRecord::into_record)
    }

    /// [`Self::resolve`], answered with the record as the decision left it: the same one a
    /// caller waiting on the request is answered with (see [`SharedRecord`]).
    pub async fn resolve_shared(
        &self,
        attempt: DecisionAttempt,
    ) -> Result<Arc<SharedRecord>, ApprovalError> {
        self.resolve_with(attempt, true).await
    }

    /// [`Self::resolve`]; with `queued_too`, also on a request whose insert is only queued
    /// (see [`Handover::Queued`]).
    async fn resolve_with(
        &self,
        attempt: DecisionAttempt,
        queued_too: bool,
    ) -> Result<Arc<SharedRecord>, ApprovalError> {
        let id = self.resolve_id(&attempt.id).await?;
        let lock = self.lock_for(&id);
        let _guard = lock.lock().await;
        // Boxed: the record stays in this future (and those it starts) across every wait.
        let hot = self.inner.hot.get(&id).map(|r| Box::new((**r).clone()));
        let (rec, queued) = match hot {
            Some(rec) => (rec, None),
            None => {
                let (rec, queued) = Box::pin(self.load_stored(&id, queued_too)).await?;
                (Box::new(rec), queued)
            }
        };
        if queued.is_some() && Utc::now() >= rec.request.expires_at {
            // Expiring a request means settling it as stored: once it is.
            drop(_guard);
            return Box::pin(self.resolve_with(attempt, false)).await;
        }
        if rec.request.id != id {
            // An alias or a task id: decide on the request it names, under its lock.
            drop(_guard);
            self.inner.locks.remove(&id);
            let mut attempt = attempt;
            attempt.id = rec.request.id.clone();
            return Box::pin(self.resolve_shared(attempt)).await;
        }
        let actor = self.actor(&attempt.actor)?;

        let not_allowed = if !actor.authorised {
            Some(
                actor
                    .why_not
                    .clone()
                    .unwrap_or_else(|| "not an approver".into()),
            )
        } else if !self
            .inner
            .config
            .approvals
            .factor_enabled(ApproverFactor::UserRequest)
        {
            Some("people may not decide: user_request approvers are disabled".to_string())
        } else {
            None
        };
        if let Some(why) = not_allowed {
            let err = ApprovalError::NotAnApprover(why);
            return Err(self
                .refused(&id, &actor.identity, attempt.decision, err)
                .await);
        }

        if rec.status != Status::Pending {
            // Attempts on settled requests must not leave a lock entry behind.
            self.inner.locks.remove(&id);
            let repeat = rec.approvals.iter().any(|a| {
                a.approver.approver_id == actor.identity.approver_id
                    && a.decision == attempt.decision
            });
            if repeat && rec.status != Status::Expired {
                return Ok(SharedRecord::new(*rec));
            }
            let err = self.final_state_error(&rec);
            return Err(self
                .refused(&id, &actor.identity, attempt.decision, err)
                .await);
        }
        if Utc::now() >= rec.request.expires_at {
            drop(_guard);
            Box::pin(self.expire(&id, false)).await;
            let rec = Box::pin(self.load(&id)).await?;
            let err = self.final_state_error(&rec);
            return Err(self
                .refused(&id, &actor.identity, attempt.decision, err)
                .await);
        }
        if self.inner.directory.is_self_approval(&rec.request, &actor) {
            let err = ApprovalError::SelfApproval(format!(
                "{} asked for this and cannot decide on it",
                actor.identity.display_name
            ));
            return Err(self
                .refused(&id, &actor.identity, attempt.decision, err)
                .await);
        }
        if !rec.request.allowed_decisions.contains(&attempt.decision) {
            let err = ApprovalError::InvalidParams(format!(
                "{} is not allowed for this request (allowed: {})",
                attempt.decision,
                rec.request
                    .allowed_decisions
                    .iter()
                    .map(|d| d.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return Err(self
                .refused(&id, &actor.identity, attempt.decision, err)
                .await);
        }
        if let Some(previous) = rec
            .approvals
            .iter()
            .find(|a| a.approver.approver_id == actor.identity.approver_id)
            && (previous.decision.is_approval() == attempt.decision.is_approval())
        {
            // Same person again (another surface, a double click): counts once.
            return Ok(SharedRecord::new(*rec));
        }
        let Some(queued) = queued else {
            return self
                .apply_decision(rec, actor, attempt.decision, attempt.reason)
                .await;
        };
        let decided = Box::pin(self.apply_decision_with(
            rec,
            actor,
            attempt.decision,
            attempt.reason.clone(),
            Some(queued),
        ))
        .await?;
        match decided {
            Some(rec) => Ok(rec),
            None => {
                // The request checked against was not stored in the end (or not yet when the
                // decision was applied): decide again on what is stored.
                drop(_guard);
                Box::pin(self.resolve_with(attempt, false)).await
            }
        }
    }

    /// Record one decision and resolve when it settles the request. Caller holds the lock.
    async fn apply_decision(
        &self,
        rec: Box<ApprovalRecord>,
        actor: ResolvedActor,
        decision: Decision,
        reason: Option<String>,
    ) -> Result<Arc<SharedRecord>, ApprovalError> {
        match self
            .apply_decision_with(rec, actor, decision, reason, None)
            .await?
        {
            Some(rec) => Ok(rec),
            // Only a decision on a queued request can find it not stored.
            None => Err(ApprovalError::Internal(
                "a decision found no request to be recorded on".into(),
            )),
        }
    }

    /// [`Self::apply_decision`]; with `queued`, on a request whose insert was only queued
    /// when it was handed over on `queued`: `None` when that request is not stored by the time
    /// the decision is applied (nothing changed).
    async fn apply_decision_with(
        &self,
        rec: Box<ApprovalRecord>,
        actor: ResolvedActor,
        decision: Decision,
        reason: Option<String>,
        queued: Option<HandoverRx>,
    ) -> Result<Option<Arc<SharedRecord>>, ApprovalError> {
        let id = rec.request.id.clone();
        let approval = Approval {
            approver: actor.identity.clone(),
            decision,
            reason: reason.clone(),
            decided_at: Utc::now(),
        };
        let mut approvals = rec.approvals.clone();
        approvals.push(approval.clone());
        let min = self.inner.config.approvals.min_approvals as usize;
        let granted = distinct_approvals(&approvals);
        let settled = if decision == Decision::Deny {
            Some((Verdict::Deny, None))
        } else if granted.len() >= min {
            let always = granted
                .iter()
                .all(|a| a.decision == Decision::ApproveAlways);
            Some((
                Verdict::Approve,
                Some(if always { Scope::Always } else { Scope::Once }),
            ))
        } else {
            None
        };
        let resolution = settled.map(|(verdict, scope)| Resolution {
            verdict,
            scope,
            decided_by: Some(actor.identity.clone()),
            reason: reason.clone(),
            resolved_at: approval.decided_at,
        });
        // A deny after one's own approval is allowed (changing one's mind towards safety), so
        // it gets its own key; approvals share one key per approver, so nobody counts twice.
        let key = if decision == Decision::Deny {
            format!("{}#deny", actor.identity.approver_id)
        } else {
            actor.identity.approver_id.clone()
        };
        // The decision's audit line, and the outcome's when it settles the request, are written
        // in the same transaction as the decision.
        let mut audits = vec![
            AuditEntry::new(AuditEvent::Decision, Some(&id))
                .actor(&actor.identity)
                .detail(json!({ "decision": decision, "reason": reason })),
        ];
        if let Some(r) = &resolution {
            audits.push(outcome_audit(&id, r));
        }
        let store = &self.inner.store;
        let write = match &queued {
            None => {
                store
                    .record_decision(&id, &key, &approval, resolution.as_ref(), &audits)
                    .await?
            }
            Some(_) => {
                store
                    .record_decision_after_insert(
                        &id,
                        rec.request.created_at,
                        &key,
                        &approval,
                        resolution.as_ref(),
                        &audits,
                    )
                    .await?
            }
        };
        match write {
            DecisionWrite::Recorded => {}
            DecisionWrite::ApproverAlreadyDecided => {
                return Box::pin(self.load(&id))
                    .await
                    .map(|rec| Some(SharedRecord::new(rec)));
            }
            DecisionWrite::NotPending => {
                let now = Box::pin(self.load(&id)).await?;
                return Err(self.final_state_error(&now));
            }
            DecisionWrite::NotStored => return Ok(None),
        }
        if let Some(mut queued) = queued {
            // Stored together with its request: said only once the request has been
            // announced. Bounded like any wait on a request being written (its writer gone,
            // the entry is dropped and this ends at once).
            let stored = queued.wait_for(|h| matches!(h, Some(Handover::Stored(_))));
            let _ = tokio::time::timeout(Duration::from_secs(10), stored).await;
        }
        // What is stored now is `rec` plus this decision, unless something else wrote to the
        // request meanwhile: another instance (PostgreSQL) or a prompt recorded after `rec`
        // was read (only where prompts are sent). Otherwise it need not be read back.
        let rec = if self.inner.config.storage.is_postgres()
            || !self.targets_for(&rec.request).is_empty()
        {
            Box::new(Box::pin(self.load(&id)).await?)
        } else {
            let mut now = rec;
            now.approvals = approvals;
            if let Some(r) = &resolution {
                now.status = r.verdict.status();
                now.resolution = Some(r.clone());
            }
            now
        };
        match resolution {
            Some(resolution) => Ok(Some(self.finish(rec, &resolution, false).await)),
            None => {
                if let Some(mut copy) = self.inner.hot.get_mut(&id) {
                    *copy = Arc::new((*rec).clone());
                }
                let progress = progress_text(&rec, min);
                self.inner.events.publish(
                    events::UPDATED,
                    &json!({ "approval": self.approval_view(&rec), "progress": progress }),
                );
                self.edit_all(&rec, TemplateKind::Request);
                Ok(Some(SharedRecord::new(*rec)))
            }
        }
    }

    fn final_state_error(&self, rec: &ApprovalRecord) -> ApprovalError {
        match &rec.resolution {
            Some(r) if r.verdict == Verdict::Timeout => ApprovalError::Expired {
                id: rec.request.id.clone(),
                expires_at: rec.request.expires_at.to_rfc3339(),
            },
            Some(r) => ApprovalError::AlreadyResolved {
                id: rec.request.id.clone(),
                status: rec.status,
                verdict: r.verdict,
                decided_by: r.decided_by.clone().map(Box::new),
            },
            None => ApprovalError::Internal(format!(
                "{} is {:?} without a resolution",
                rec.request.id, rec.status
            )),
        }
    }

    async fn refused(
        &self,
        id: &str,
        who: &ApproverIdentity,
        decision: Decision,
        err: ApprovalError,
    ) -> ApprovalError {
        self.inner
            .metrics
            .refusals
            .get_or_create(&vec![("kind", err.kind().to_string())])
            .inc();
        tracing::info!(id, approver = %who.approver_id, transport = %who.transport, kind = err.kind(), "decision refused");
        Box::pin(
            self.audit(
                AuditEntry::new(AuditEvent::Refused, Some(id))
                    .actor(who)
                    .detail(
                        json!({ "decision": decision, "kind": err.kind(), "why": err.to_string() }),
                    ),
            ),
        )
        .await;
        err
    }

    fn actor(&self, actor: &Actor) -> Result<ResolvedActor, ApprovalError> {
        let dir = &self.inner.directory;
        match actor {
            Actor::Caller { caller, transport } => Ok(dir.actor_for_caller(caller, *transport)),
            Actor::Relay { admin, identity } => {
                admin.require(crate::config::TokenScope::Admin)?;
                Ok(dir.actor_for_relay(identity.clone(), admin))
            }
            Actor::Platform { channel, user } => {
                let transport = self
                    .inner
                    .channels
                    .get(channel)
                    .map(|c| c.transport())
                    .ok_or_else(|| {
                        ApprovalError::InvalidParams(format!("unknown channel {channel:?}"))
                    })?;
                Ok(dir.actor_for_platform_user(channel, transport, user))
            }
            Actor::ControlUi { person } => {
                let p = dir.person(person).ok_or_else(|| {
                    ApprovalError::Unauthorized(format!("unknown person {person:?}"))
                })?;
                Ok(ResolvedActor {
                    identity: ApproverIdentity {
                        approver_id: format!("person:{}", p.name),
                        display_name: p.label().to_string(),
                        transport: Transport::ControlUi,
                        platform_user_id: None,
                        channel_id: None,
                        person: Some(p.name.clone()),
                    },
                    authorised: p.approver,
                    why_not: (!p.approver).then(|| format!("{} is not an approver", p.label())),
                    token_name: None,
                })
            }
        }
    }

    fn lock_for(&self, id: &str) -> Arc<Mutex<()>> {
        self.inner.locks.entry(id.to_string()).or_default().clone()
    }

    // ----- resolution and expiry ------------------------------------------------------

    /// Everything that follows a final verdict: wake waiters, stop the timer, count, audit,
    /// announce, edit every prompt, and add a standing rule for approve-always.
    /// Settle `rec` here: stop its timer, answer its waiters, count, announce, edit prompts.
    /// The record as its waiters were answered with it.
    async fn finish(
        &self,
        rec: Box<ApprovalRecord>,
        resolution: &Resolution,
        from_timer: bool,
    ) -> Arc<SharedRecord> {
        let rec = self.settle(rec, resolution, from_timer);
        if resolution.verdict == Verdict::Timeout {
            Box::pin(self.send_timeout_notices(&rec)).await;
        }
        if resolution.scope == Some(Scope::Always)
            && let Some(by) = &resolution.decided_by
        {
            Box::pin(self.add_standing_rule(&rec.request, by)).await;
        }
        rec
    }

    /// What [`Self::finish`] does at once, without waiting for anything. Kept apart, and the
    /// record boxed, so that the futures of the decision path (which hold `finish`'s) stay
    /// small: each is moved and copied as a whole as it is started, several times a decision.
    fn settle(
        &self,
        rec: Box<ApprovalRecord>,
        resolution: &Resolution,
        from_timer: bool,
    ) -> Arc<SharedRecord> {
        let id = rec.request.id.clone();
        // The timer goes first: `wait_on` counts on an armed timer meaning "not told yet".
        if let Some((_, timer)) = self.inner.timers.remove(&id)
            && !from_timer
        {
            timer.abort();
        }
        self.inner.hot.remove(&id);
        let rec = SharedRecord::new(*rec);
        if let Some((_, tx)) = self.inner.waiters.remove(&id) {
            let _ = tx.send(Some(rec.clone()));
        }
        self.inner.locks.remove(&id);
        let m = &self.inner.metrics;
        m.pending.dec();
        let transport = resolution
            .decided_by
            .as_ref()
            .map(|d| d.transport.as_str())
            .unwrap_or("none");
        m.decisions
            .get_or_create(&vec![
                ("verdict", resolution.verdict.as_str().to_string()),
                ("transport", transport.to_string()),
            ])
            .inc();
        let elapsed = (resolution.resolved_at - rec.request.created_at)
            .to_std()
            .unwrap_or_default();
        m.time_to_decision.observe(elapsed.as_secs_f64());

        // The outcome's audit line was written with the outcome itself (`outcome_audit`).
        let method = if resolution.verdict == Verdict::Timeout {
            events::EXPIRED
        } else {
            events::RESOLVED
        };
        let kind = TemplateKind::outcome(rec.status);
        tracing::info!(id = %id, verdict = resolution.verdict.as_str(), by = ?resolution.decided_by.as_ref().map(|d| &d.approver_id), "approval resolved");
        // The same text its waiters and the decider are answered with.
        self.inner.events.publish(method, &*rec);
        self.edit_all(&rec, kind);
        rec
    }

    /// Approve-always: from now on, the same ask is approved by a standing rule.
    async fn add_standing_rule(&self, req: &ApprovalRequest, by: &ApproverIdentity) {
        let rule = StandingRule::from_request(req, by);
        match self.inner.store.add_standing_rule(&rule).await {
            Ok(()) => {
                if let Ok(mut s) = self.inner.standing.write() {
                    s.push(rule.clone());
                }
                self.inner.events.publish(events::RULES_CHANGED, &json!({}));
                self.audit(
                    AuditEntry::new(AuditEvent::RuleAdded, Some(&req.id))
                        .actor(by)
                        .detail(json!({ "rule": rule })),
                )
                .await;
            }
            Err(e) => tracing::error!(error = %e, "could not store the standing rule"),
        }
    }

    fn arm_timer(&self, id: &str, deadline: DateTime<Utc>) {
        let engine = self.clone();
        let key = id.to_string();
        let delay = (deadline - Utc::now()).to_std().unwrap_or_default();
        // A timer only sleeps and hands its id on: the expiry worker expires what is due in
        // batches (one read, one write for thousands due in the same second), and a waiting
        // timer task stays small (with 100,000 pending its size is most of their memory).
        let handle = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = engine.inner.due.send(key);
        });
        if let Some(old) = self
            .inner
            .timers
            .insert(id.to_string(), handle.abort_handle())
        {
            old.abort();
        }
    }

    /// Expire what timers say is due, in batches of what has come due together.
    fn spawn_expiry_worker(&self) {
        let Some(mut due) = self.inner.due_rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let engine = self.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while due.recv_many(&mut batch, 1024).await > 0 {
                engine.expire_many(std::mem::take(&mut batch)).await;
            }
        });
    }

    /// Resolve every request of `ids` that is still pending as `timeout`: one read for all of
    /// them, their settles queued together (the store commits them as one write), then each
    /// finished as [`Self::expire`] would.
    async fn expire_many(&self, ids: Vec<String>) {
        let records = match self.inner.store.get_many(&ids).await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, due = ids.len(), "cannot load requests to expire them; retrying in 1s");
                for id in ids {
                    self.arm_timer(&id, Utc::now() + chrono::Duration::seconds(1));
                }
                return;
            }
        };
        // Due before its insert committed (a very short timeout): look again in a second.
        let found: HashSet<&str> = records.iter().map(|r| r.request.id.as_str()).collect();
        for id in ids.iter().filter(|id| !found.contains(id.as_str())) {
            if self.inner.timers.contains_key(id) {
                self.arm_timer(id, Utc::now() + chrono::Duration::seconds(1));
            }
        }
        let expiries = records.into_iter().map(|rec| async move {
            let id = rec.request.id.clone();
            if rec.status != Status::Pending {
                self.forget_settled(rec);
                return;
            }
            if rec.request.expires_at > Utc::now() + chrono::Duration::milliseconds(50) {
                // Re-armed with a later deadline meanwhile: its own timer will come.
                return;
            }
            let lock = self.lock_for(&id);
            let _guard = lock.lock().await;
            self.expire_pending(rec, true).await;
        });
        futures::future::join_all(expiries).await;
    }

    /// Resolve as `timeout` if still pending.
    async fn expire(&self, id: &str, from_timer: bool) {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let rec = match self.load(id).await {
            Ok(rec) if rec.status == Status::Pending => rec,
            Ok(rec) => {
                self.forget_settled(rec);
                return;
            }
            Err(e) => {
                tracing::error!(id, error = %e, "cannot load request to expire it");
                return;
            }
        };
        self.expire_pending(rec, from_timer).await;
    }

    /// Settle `rec` (pending when read, under its lock) as `timeout`, then finish it, unless
    /// a decision or another instance got there first.
    async fn expire_pending(&self, rec: ApprovalRecord, from_timer: bool) {
        let id = rec.request.id.clone();
        let id = id.as_str();
        let resolution = Resolution {
            verdict: Verdict::Timeout,
            scope: None,
            decided_by: None,
            reason: Some("no decision before the deadline".into()),
            resolved_at: Utc::now(),
        };
        match self
            .inner
            .store
            .resolve(id, &resolution, &[outcome_audit(id, &resolution)])
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Another instance won: its announcement wakes our waiters.
                self.inner.timers.remove(id);
                self.inner.locks.remove(id);
                return;
            }
            Err(e) => {
                tracing::error!(id, error = %e, "cannot store expiry; retrying in 1s");
                self.arm_timer(id, Utc::now() + chrono::Duration::seconds(1));
                return;
            }
        }
        // Read before the lock was taken (a batch of expiries): prompts recorded since are
        // read again, under the lock, so the expiry edits every one of them.
        let rec = match self.targets_for(&rec.request).is_empty() {
            true => ApprovalRecord {
                status: Status::Expired,
                resolution: Some(resolution.clone()),
                ..rec
            },
            false => match self.load(id).await {
                Ok(now) => now,
                Err(e) => {
                    tracing::warn!(id, error = %e, "cannot re-read an expired request; editing the prompts known");
                    ApprovalRecord {
                        status: Status::Expired,
                        resolution: Some(resolution.clone()),
                        ..rec
                    }
                }
            },
        };
        self.finish(Box::new(rec), &resolution, from_timer).await;
    }

    // ----- delivery -------------------------------------------------------------------

    /// Where this request's prompts go: its origin (`session`), the configured targets
    /// (`targets`), or both, after the agent/session filters, deduplicated.
    fn targets_for(&self, req: &ApprovalRequest) -> Vec<Target> {
        let d = &self.inner.config.delivery;
        let passes = |filters: &[crate::config::Filter], value: &Option<String>| {
            filters.is_empty()
                || value
                    .as_deref()
                    .is_some_and(|v| filters.iter().any(|f| f.matches(v)))
        };
        if !passes(&d.agent_filter, &req.agent_id) || !passes(&d.session_filter, &req.session_key) {
            return Vec::new();
        }
        let mut out = Vec::new();
        if matches!(d.mode, DeliveryMode::Session | DeliveryMode::Both)
            && let Some(origin) = &req.origin
        {
            out.push(origin.target());
        }
        if matches!(d.mode, DeliveryMode::Targets | DeliveryMode::Both) {
            out.extend(d.targets.iter().cloned());
        }
        // Recipients a channel adds on its own (DMs to its approvers), in every mode.
        for channel in self.inner.channels.values() {
            out.extend(channel.standing_targets());
        }
        let mut seen = HashSet::new();
        out.retain(|t| seen.insert((t.channel.clone(), t.to.clone(), t.thread_id.clone())));
        out
    }

    /// Fan out concurrently and answer the deliveries that finished within `delivery.wait_ms`;
    /// slower ones go on in the background and are recorded when they finish.
    async fn deliver_all(&self, rec: &ApprovalRecord) -> Vec<Delivery> {
        let targets = self.targets_for(&rec.request);
        if targets.is_empty() {
            // Stored as finished (`insert_request` with `fanout: false`).
            return Vec::new();
        }
        let (tx, mut rx) = mpsc::channel(targets.len());
        let mut sends = Vec::with_capacity(targets.len());
        for target in targets {
            let engine = self.clone();
            let rec = rec.clone();
            let tx = tx.clone();
            sends.push(tokio::spawn(async move {
                let _ = tx.send(engine.deliver_one(&rec, target).await).await;
            }));
        }
        drop(tx);
        // Once every send is done (some may outlast the caller's wait), nobody needs to take
        // this fan-out over.
        let engine = self.clone();
        let id = rec.request.id.clone();
        tokio::spawn(async move {
            futures::future::join_all(sends).await;
            engine.fanout_finished(&id).await;
        });
        let mut done = Vec::new();
        let wait = Duration::from_millis(self.inner.config.delivery.wait_ms);
        let _ = tokio::time::timeout(wait, async {
            while let Some(d) = rx.recv().await {
                done.push(d);
            }
        })
        .await;
        done
    }

    /// Send one prompt and record the outcome (store, metrics, audit; operators are told of a
    /// failure). A prompt that lands after the request was settled is edited to the outcome.
    async fn deliver_one(&self, rec: &ApprovalRecord, target: Target) -> Delivery {
        let id = &rec.request.id;
        let channel = self.inner.channels.get(&target.channel).cloned();
        let platform = channel
            .as_ref()
            .map_or("unknown", |c| c.transport().as_str());
        let sent = match &channel {
            None => Err(format!("no channel named {:?}", target.channel)),
            Some(channel) => match self.prompt(rec, channel.markup(), TemplateKind::Request) {
                Err(e) => Err(e.to_string()),
                Ok(prompt) => {
                    // A prompt may wait in the platform's pacing queue (a burst to many chats
                    // at its rate limit) for as long as the request can still be decided.
                    let limit = (rec.request.expires_at - Utc::now())
                        .to_std()
                        .unwrap_or_default()
                        .max(DELIVERY_TIMEOUT);
                    match tokio::time::timeout(limit, channel.deliver(&target, &prompt)).await {
                        Ok(Ok(message)) => Ok(message),
                        Ok(Err(e)) => Err(e.message),
                        Err(_) => Err("timed out".to_string()),
                    }
                }
            },
        };
        let delivery = Delivery {
            target,
            message: sent.as_ref().ok().cloned(),
            error: sent.as_ref().err().cloned(),
            at: Utc::now(),
        };
        let result = if delivery.error.is_some() {
            "failed"
        } else {
            "delivered"
        };
        self.inner
            .metrics
            .deliveries
            .get_or_create(&vec![
                ("platform", platform.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
        // Recorded and checked under the request's lock, which every settling here holds
        // while it reads the prompts it will edit: either that reading includes this prompt
        // (and the settling edits it) or this check sees the request settled (and edits it
        // below). Never both, never neither.
        let settled_meanwhile = {
            let lock = self.lock_for(id);
            let _guard = lock.lock().await;
            if let Err(e) = self.inner.store.record_delivery(id, &delivery).await {
                tracing::error!(id = %id, error = %e, "cannot record delivery");
            }
            let settled =
                matches!(self.inner.store.status(id).await, Ok(Some(s)) if s != Status::Pending);
            if settled {
                self.inner.locks.remove(id);
            }
            settled
        };
        let detail = json!({ "target": delivery.target, "message": delivery.message, "error": delivery.error });
        match (&channel, &delivery.message) {
            (Some(channel), Some(message)) => {
                let mut event = detail.clone();
                event["id"] = json!(id);
                self.audit(AuditEntry::new(AuditEvent::Delivered, Some(id)).detail(detail))
                    .await;
                self.inner.events.publish(events::DELIVERED, &event);
                // Settled while this prompt was on its way: show the outcome on it too.
                if settled_meanwhile
                    && let Ok(now) = self.load(id).await
                    && let Ok(p) =
                        self.prompt(&now, channel.markup(), TemplateKind::outcome(now.status))
                {
                    let _ = channel.update(message, &p).await;
                }
            }
            _ => {
                tracing::warn!(id = %id, channel = %delivery.target.channel, to = %delivery.target.to, error = ?delivery.error, "prompt could not be delivered");
                self.audit(
                    AuditEntry::new(AuditEvent::DeliveryFailed, Some(id)).detail(detail.clone()),
                )
                .await;
                let mut event = detail;
                event["id"] = json!(id);
                self.inner.events.publish(events::DELIVERY_FAILED, &event);
            }
        }
        delivery
    }

    /// Edit every delivered prompt of this request, on every surface, concurrently.
    fn edit_all(&self, rec: &ApprovalRecord, kind: TemplateKind) {
        self.edit_all_with(rec, kind, None, false)
    }

    /// [`Self::edit_all`], with a line on the task's execution.
    fn edit_all_with(
        &self,
        rec: &ApprovalRecord,
        kind: TemplateKind,
        execution: Option<String>,
        abort_button: bool,
    ) {
        for delivery in &rec.deliveries {
            let Some(message) = delivery.message.clone() else {
                continue;
            };
            let Some(channel) = self.inner.channels.get(&message.channel).cloned() else {
                continue;
            };
            let prompt = match self.prompt_with(
                rec,
                channel.markup(),
                kind,
                execution.clone(),
                abort_button,
            ) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot render edit");
                    continue;
                }
            };
            tokio::spawn(async move {
                match tokio::time::timeout(DELIVERY_TIMEOUT, channel.update(&message, &prompt))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(message = ?message, error = %e, "prompt edit failed")
                    }
                    Err(_) => tracing::warn!(message = ?message, "prompt edit timed out"),
                }
            });
        }
    }

    async fn send_timeout_notices(&self, rec: &ApprovalRecord) {
        for target in &self.inner.config.delivery.timeout_notice_targets {
            let Some(channel) = self.inner.channels.get(&target.channel).cloned() else {
                continue;
            };
            let ctx = self.context(rec);
            let text = match self.inner.templates.render(
                channel.markup(),
                TemplateKind::TimeoutNotice,
                &ctx,
            ) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "cannot render timeout notice");
                    continue;
                }
            };
            let result =
                tokio::time::timeout(DELIVERY_TIMEOUT, channel.notify(target, &text)).await;
            let error = match result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.message),
                Err(_) => Some("timed out".to_string()),
            };
            self.audit(
                AuditEntry::new(AuditEvent::TimeoutNotice, Some(&rec.request.id))
                    .detail(json!({ "target": target, "error": error })),
            )
            .await;
        }
    }

    // ----- rendering ------------------------------------------------------------------

    fn context(&self, rec: &ApprovalRecord) -> PromptContext {
        let req = &rec.request;
        let now = Utc::now();
        let left = (req.expires_at - now).num_seconds();
        let expires_in = if left <= 0 {
            "now".to_string()
        } else if left < 60 {
            format!("in {left}s")
        } else if left < 3600 {
            format!("in {}m {}s", left / 60, left % 60)
        } else {
            format!("in {}h {}m", left / 3600, (left % 3600) / 60)
        };
        let min = self.inner.config.approvals.min_approvals as usize;
        let resolution = rec.resolution.as_ref();
        let outcome_title = resolution.map(|r| match (r.verdict, r.scope) {
            (Verdict::Approve, Some(Scope::Always)) => "Approved (always)".to_string(),
            (Verdict::Approve, _) => "Approved (once)".to_string(),
            (Verdict::Deny, _) => "Denied".to_string(),
            (Verdict::Timeout, _) => "Expired".to_string(),
        });
        let decided_by = resolution
            .and_then(|r| r.decided_by.as_ref())
            .map(identity_label);
        PromptContext {
            view: PromptView {
                approval_id: req.id.clone(),
                short_id: req.short_id().to_string(),
                tool: req.tool.clone(),
                summary: req.summary.clone(),
                command: req.command.clone(),
                args: req
                    .args
                    .as_ref()
                    .map(|a| serde_json::to_string_pretty(a).unwrap_or_default()),
                risk: req.risk_class.as_str().to_string(),
                requester: req.requester.as_ref().map(|r| match &r.display_name {
                    Some(n) => format!("{n} ({})", r.id),
                    None => r.id.clone(),
                }),
                agent_id: req.agent_id.clone(),
                session_key: req.session_key.clone(),
                created_at: req.created_at,
                expires_at: req.expires_at,
                status: rec.status.as_str().to_string(),
                progress: (rec.status == Status::Pending || min > 1)
                    .then(|| progress_text(rec, min))
                    .flatten(),
                decided_by,
                reason: resolution.and_then(|r| r.reason.clone()),
                execution: None,
            },
            expires_at_text: req.expires_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            expires_in,
            expires_unix: req.expires_at.timestamp(),
            decisions: req
                .allowed_decisions
                .iter()
                .map(|d| d.as_str().to_string())
                .collect(),
            outcome_title,
            approvers: distinct_approvals(&rec.approvals)
                .iter()
                .map(|a| identity_label(&a.approver))
                .collect(),
            delivered_count: rec.delivered_to().len(),
        }
    }

    /// The prompt for one markup: text from the shared template, structured view, buttons
    /// while pending.
    pub fn prompt(
        &self,
        rec: &ApprovalRecord,
        markup: Markup,
        kind: TemplateKind,
    ) -> Result<Prompt, crate::templates::TemplateError> {
        self.prompt_with(rec, markup, kind, None, false)
    }

    /// [`Self::prompt`] with the task's execution line ("completed in 4.0 s, cost $0.0087"),
    /// and an Abort button while the task runs.
    pub fn prompt_with(
        &self,
        rec: &ApprovalRecord,
        markup: Markup,
        kind: TemplateKind,
        execution: Option<String>,
        abort_button: bool,
    ) -> Result<Prompt, crate::templates::TemplateError> {
        let mut ctx = self.context(rec);
        ctx.view.execution = execution;
        let text = self.inner.templates.render(markup, kind, &ctx)?;
        let actions = if rec.status == Status::Pending {
            rec.request
                .allowed_decisions
                .iter()
                .map(|d| PromptAction {
                    decision: *d,
                    label: d.label().to_string(),
                    data: ActionData::new(&rec.request.id, *d).to_string(),
                })
                .collect()
        } else if abort_button {
            vec![PromptAction {
                decision: Decision::Deny,
                label: "Abort".into(),
                data: ActionData::abort(&rec.request.id).to_string(),
            }]
        } else {
            Vec::new()
        };
        Ok(Prompt {
            text,
            view: ctx.view,
            actions,
        })
    }

    /// A short confirmation for whoever just decided: "Approved by Alice", or quorum progress.
    pub fn accepted_text(&self, rec: &ApprovalRecord) -> String {
        match &rec.resolution {
            Some(r) => format!(
                "{} by {}",
                match r.verdict {
                    Verdict::Approve => "Approved",
                    Verdict::Deny => "Denied",
                    Verdict::Timeout => "Expired",
                },
                r.decided_by
                    .as_ref()
                    .map(|d| d.display_name.as_str())
                    .unwrap_or("nobody")
            ),
            None => self.progress(rec).unwrap_or_else(|| "Recorded".into()),
        }
    }

    /// Quorum progress while more approvals are needed.
    pub fn progress(&self, rec: &ApprovalRecord) -> Option<String> {
        progress_text(rec, self.inner.config.approvals.min_approvals as usize)
    }

    /// The pending view of a request, as events carry it.
    /// How stream clients and `get`/`list` show a request (see [`ApprovalView`]).
    pub fn approval_view<'a>(&self, rec: &'a ApprovalRecord) -> ApprovalView<'a> {
        ApprovalView {
            record: rec,
            progress: progress_text(rec, self.inner.config.approvals.min_approvals as usize),
        }
    }

    /// [`Self::approval_view`] as a JSON value.
    pub fn view_json(&self, rec: &ApprovalRecord) -> serde_json::Value {
        serde_json::to_value(self.approval_view(rec)).unwrap_or_default()
    }

    async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.inner.store.audit_append(&entry).await {
            tracing::error!(error = %e, event = entry.event.as_str(), "cannot append to the audit log");
        }
    }

    /// A control UI form refused before anyone could be identified (no or expired session, a
    /// missing CSRF token, another site): audited, so operators see the attempt.
    pub async fn audit_refused_form(&self, given_id: &str, why: &str) {
        let id = self.resolve_id(given_id).await.ok();
        let mut entry = AuditEntry::new(AuditEvent::Refused, id.as_deref()).detail(json!({
            "kind": "form_refused", "why": why,
        }));
        entry.transport = Some(Transport::ControlUi);
        self.audit(entry).await;
    }

    /// Revoke a standing rule (by id or unique prefix).
    pub async fn revoke_rule(
        &self,
        id: &str,
        by: &ApproverIdentity,
    ) -> Result<StandingRule, ApprovalError> {
        let rule = self
            .inner
            .store
            .revoke_standing_rule(id)
            .await?
            .ok_or_else(|| {
                ApprovalError::UnknownId(format!("no single active standing rule matches {id:?}"))
            })?;
        if let Ok(mut s) = self.inner.standing.write() {
            s.retain(|r| r.id != rule.id);
        }
        self.inner.events.publish(events::RULES_CHANGED, &json!({}));
        self.audit(
            AuditEntry::new(AuditEvent::RuleRevoked, Some(&rule.source_approval))
                .actor(by)
                .detail(json!({ "rule": rule })),
        )
        .await;
        Ok(rule)
    }
}

/// The audit line of a request's outcome: resolved (with who) or expired.
fn outcome_audit(id: &str, resolution: &Resolution) -> AuditEntry {
    let event = if resolution.verdict == Verdict::Timeout {
        AuditEvent::Expired
    } else {
        AuditEvent::Resolved
    };
    let mut entry = AuditEntry::new(event, Some(id)).detail(json!({
        "verdict": resolution.verdict, "scope": resolution.scope, "reason": resolution.reason,
    }));
    if let Some(by) = &resolution.decided_by {
        entry = entry.actor(by);
    }
    entry
}

fn identity_label(id: &ApproverIdentity) -> String {
    format!("{} via {}", id.display_name, id.transport)
}

/// Approvals that count towards quorum: one per approver, approvals only.
fn distinct_approvals(approvals: &[Approval]) -> Vec<&Approval> {
    let mut seen = HashSet::new();
    approvals
        .iter()
        .filter(|a| a.decision.is_approval())
        .filter(|a| seen.insert(a.approver.approver_id.as_str()))
        .collect()
}

/// Why a decision was refused, in words for the person who tried (chat users, the control UI).
pub fn plain_refusal(e: &ApprovalError) -> (RefusalKind, String) {
    let kind = match e {
        ApprovalError::NotAnApprover(_) | ApprovalError::Unauthorized(_) => {
            RefusalKind::NotAnApprover
        }
        ApprovalError::SelfApproval(_) => RefusalKind::SelfApproval,
        ApprovalError::AlreadyResolved { .. } => RefusalKind::AlreadyResolved,
        ApprovalError::Expired { .. } => RefusalKind::Expired,
        ApprovalError::UnknownId(_) => RefusalKind::UnknownId,
        ApprovalError::AmbiguousId { .. } => RefusalKind::AmbiguousId,
        ApprovalError::InvalidParams(_) => RefusalKind::InvalidDecision,
        _ => RefusalKind::Internal,
    };
    let message = match kind {
        RefusalKind::NotAnApprover => {
            "You are not authorised to decide on this request.".to_string()
        }
        RefusalKind::SelfApproval => {
            "You asked for this yourself, so someone else must decide.".to_string()
        }
        RefusalKind::Internal => {
            "Something went wrong; try again or use the control UI.".to_string()
        }
        _ => e.to_string(),
    };
    (kind, message)
}

/// Quorum progress ("1 of 2 approvals: alice") while more approvals are needed.
pub fn progress_text(rec: &ApprovalRecord, min: usize) -> Option<String> {
    if min <= 1 {
        return None;
    }
    let granted = distinct_approvals(&rec.approvals);
    let names: Vec<_> = granted
        .iter()
        .map(|a| a.approver.display_name.clone())
        .collect();
    Some(if names.is_empty() {
        format!("0 of {min} approvals")
    } else {
        format!("{} of {min} approvals: {}", granted.len(), names.join(", "))
    })
}

/// The record handed to `written` within `limit` (`Ok(None)`: the writer gave up on it), and
/// whether its insert was only queued then (accepted only with `queued_too`).
async fn handed_within(
    written: &mut HandoverRx,
    limit: Duration,
    queued_too: bool,
) -> Result<Option<(ApprovalRecord, bool)>, tokio::time::error::Elapsed> {
    let handed = written.wait_for(|h| match h {
        Some(Handover::Stored(_)) => true,
        Some(Handover::Queued(_)) => queued_too,
        None => false,
    });
    tokio::time::timeout(limit, handed).await.map(|h| {
        h.ok().and_then(|h| match &*h {
            Some(Handover::Stored(rec)) => Some(((**rec).clone(), false)),
            Some(Handover::Queued(rec)) => Some(((**rec).clone(), true)),
            None => None,
        })
    })
}

/// What a request's writer hands to the decisions waiting for it (`Inner::storing`).
#[derive(Debug, Clone)]
enum Handover {
    /// Its insert is queued on the store's one writer (SQLite), not yet committed. A decision
    /// checked against it queues its own write behind the insert, usually to share its
    /// commit rather than wait for it (`Store::record_decision_after_insert`), and announces
    /// its outcome only once handed [`Handover::Stored`]. Not offered for a request that a
    /// preset or a rule settles as it is made.
    Queued(Arc<ApprovalRecord>),
    /// Stored, and announced (`tool.approval.requested`) unless settled at once.
    Stored(Arc<ApprovalRecord>),
}

type HandoverRx = watch::Receiver<Option<Handover>>;

/// A request being written, or an id a decision waits on: see `Inner::storing`.
struct Storing {
    tx: watch::Sender<Option<Handover>>,
    /// Set by the request's own writer, which removes the entry (and hands the record over)
    /// once the write is done.
    writing: bool,
}

/// Ends a request's `storing` entry when its `create` is done with it, however `create` ends
/// (a caller that goes away cancels it midway): decisions waiting on the entry then look in
/// the store rather than wait out their limit for a handover that will not come.
struct StoringGuard<'a> {
    storing: &'a IdMap<Storing>,
    /// `None` once handed over.
    id: Option<String>,
}

impl StoringGuard<'_> {
    /// Remove the entry, handing `stored` (the request as stored) to those waiting on it.
    fn hand_over(&mut self, stored: Option<ApprovalRecord>) {
        if let Some(id) = self.id.take()
            && let Some((_, entry)) = self.storing.remove(&id)
            && let Some(rec) = stored
        {
            entry.tx.send_replace(Some(Handover::Stored(Arc::new(rec))));
        }
    }
}

impl Drop for StoringGuard<'_> {
    fn drop(&mut self) {
        self.hand_over(None);
    }
}

impl Default for Storing {
    fn default() -> Self {
        Self {
            tx: watch::channel(None).0,
            writing: false,
        }
    }
}

/// Told the record once its request is settled (see `ToolApprovalForwarder::subscribe_waiter`).
type SettledRx = watch::Receiver<Option<Arc<SharedRecord>>>;

/// How long a decision on an id never seen waits for its request to arrive before it is
/// answered `unknown_id` (see `load_stored`).
const UNSEEN_ID_GRACE: Duration = Duration::from_millis(250);

/// How long a decision on an id never seen here waits for its request to arrive and be handed
/// over before it looks in the store (see `load_stored`). A decision that names a settled
/// request (a stale button), an alias or a task id is answered that much later; a resolver
/// that overtook its request skips a read that would find nothing (measured: 0.38 reads per
/// cycle in `approvald-bench cycle`, 15 % of the server's CPU). Not where other instances
/// share the store: decisions on their requests are the rule there.
const ON_ITS_WAY: Duration = Duration::from_millis(5);

/// The API shape of a record (the `tool.approval.request` answer).
pub fn result_json(rec: &ApprovalRecord) -> serde_json::Value {
    // Serialising a record cannot fail: every map key is a string.
    serde_json::to_value(ResultView(rec)).unwrap_or_default()
}

#[async_trait]
impl InboundSink for ToolApprovalForwarder {
    async fn pending(
        &self,
        channel: &str,
        user: &PlatformUser,
    ) -> Result<Vec<PromptView>, InboundReply> {
        let actor = Actor::Platform {
            channel: channel.to_string(),
            user: user.clone(),
        };
        let refused = |message: String| InboundReply::Refused {
            kind: RefusalKind::NotAnApprover,
            message,
        };
        match self.actor(&actor) {
            Ok(a) if a.authorised => {}
            Ok(_) => {
                return Err(refused(
                    "You are not authorised to see or decide on requests.".into(),
                ));
            }
            Err(e) => return Err(refused(e.to_string())),
        }
        let query = ListQuery {
            status: Some(Status::Pending),
            limit: 20,
            ..ListQuery::default()
        };
        match self.list(&query).await {
            Ok(recs) => Ok(recs.iter().map(|r| self.context(r).view).collect()),
            Err(e) => {
                tracing::error!(error = %e, "cannot list pending requests for a chat command");
                Err(InboundReply::Refused {
                    kind: RefusalKind::Internal,
                    message: "Something went wrong; try again or use the control UI.".into(),
                })
            }
        }
    }

    async fn approval_for_message(&self, message: &MessageRef) -> Option<String> {
        match self.inner.store.approval_for_message(message).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot look up the approval behind a message");
                None
            }
        }
    }

    async fn decide(&self, action: InboundAction) -> InboundReply {
        if action.abort {
            return self.abort_from_chat(action).await;
        }
        let attempt = DecisionAttempt {
            id: action.approval.clone(),
            decision: action.decision,
            reason: action.reason.clone(),
            actor: Actor::Platform {
                channel: action.channel.clone(),
                user: action.user.clone(),
            },
        };
        match self.resolve(attempt).await {
            Ok(rec) => {
                let message = self.accepted_text(&rec);
                InboundReply::Accepted {
                    status: rec.status.as_str().to_string(),
                    message,
                }
            }
            Err(e) => {
                let (kind, message) = plain_refusal(&e);
                InboundReply::Refused { kind, message }
            }
        }
    }
}
