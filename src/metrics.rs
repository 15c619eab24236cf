//! Prometheus metrics at `GET /metrics`: what operators graph and alert on.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric approvald exports, registered once.
pub struct Metrics {
    registry: Registry,
    pub requests: Counter,
    pub decisions: Family<Labels, Counter>,
    pub refusals: Family<Labels, Counter>,
    pub deliveries: Family<Labels, Counter>,
    pub pending: Gauge,
    pub time_to_decision: Histogram,
    /// 1 while the upstream assistant is unreachable.
    pub fallback: Gauge,
    pub task_transitions: Family<Labels, Counter>,
    /// Approval requests refused by a rate limit, by scope.
    pub rate_limited: Family<Labels, Counter>,
    /// Identical requests folded into a pending one.
    pub folded: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("approvald");
        let requests = Counter::default();
        let decisions = Family::<Labels, Counter>::default();
        let refusals = Family::<Labels, Counter>::default();
        let deliveries = Family::<Labels, Counter>::default();
        let pending = Gauge::default();
        let time_to_decision = Histogram::new([
            0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 86400.0,
        ]);
        registry.register("requests", "Approval requests received", requests.clone());
        registry.register(
            "decisions",
            "Final verdicts by verdict and transport of the deciding approver",
            decisions.clone(),
        );
        registry.register(
            "refusals",
            "Decision attempts refused, by kind",
            refusals.clone(),
        );
        registry.register(
            "deliveries",
            "Prompt deliveries by platform and result",
            deliveries.clone(),
        );
        registry.register(
            "pending",
            "Requests waiting for a decision",
            pending.clone(),
        );
        registry.register(
            "time_to_decision_seconds",
            "Time from request to verdict",
            time_to_decision.clone(),
        );
        let fallback = Gauge::default();
        let task_transitions = Family::<Labels, Counter>::default();
        registry.register(
            "fallback_mode",
            "1 while the upstream assistant is unreachable (fallback mode)",
            fallback.clone(),
        );
        registry.register(
            "task_transitions",
            "Task status changes, by new status",
            task_transitions.clone(),
        );
        let rate_limited = Family::<Labels, Counter>::default();
        let folded = Counter::default();
        registry.register(
            "rate_limited",
            "Approval requests refused by a rate limit, by scope (token, agent, session)",
            rate_limited.clone(),
        );
        registry.register(
            "folded",
            "Identical requests folded into a pending one instead of a second prompt",
            folded.clone(),
        );
        Self {
            rate_limited,
            folded,
            fallback,
            task_transitions,
            registry,
            requests,
            decisions,
            refusals,
            deliveries,
            pending,
            time_to_decision,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
