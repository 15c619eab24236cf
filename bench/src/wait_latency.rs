//! `wait-latency`: callers blocked in `tool.approval.request` (wait: true) over WebSocket;
//! decisions arrive at a steady rate on another connection; the figure is the time from
//! sending a resolve to the blocked caller's answer. The floor is the echo server's round trip
//! for the same resolve message at the same rate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::Env;
use crate::client::{WsRpc, error_kind};
use crate::proc::{CALLER_TOKEN, RESOLVER_TOKEN, ServerProcess, machine_busy, self_cpu};
use crate::stats::{Goal, Latency, Report, ratio};

/// The knobs of the scenario.
#[derive(Clone, Copy, Debug)]
pub struct WaitOptions {
    pub rate: f64,
    pub seconds: f64,
    /// Requests kept pending ahead of the resolver.
    pub ahead: usize,
    /// Connections the blocked callers share.
    pub caller_connections: usize,
}

/// A pending request the resolver may decide: its id, and where to say when the decision was
/// sent.
struct Ahead {
    id: String,
    sent_at: oneshot::Sender<Instant>,
}

/// What one run measured.
#[derive(Default)]
pub(crate) struct WaitRun {
    /// Resolve sent -> the blocked caller's answer (approvald) or the echo (floor).
    pub(crate) latency: Latency,
    /// Resolve sent -> the resolver's own answer.
    pub(crate) resolve_rtt: Latency,
    pub(crate) sent: u64,
    pub(crate) errors: u64,
    pub(crate) retries: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) server_cpu: Duration,
    /// CPU other processes took during the window (noise).
    pub(crate) other_cpu: Duration,
    pub(crate) window: Duration,
}

pub async fn run(env: &Env, opts: WaitOptions) -> anyhow::Result<Value> {
    println!(
        "\nwait-latency: decisions at {}/s for {} s, {} requests pending ahead",
        opts.rate, opts.seconds, opts.ahead
    );
    let server = env.approvald().await?;
    let main = drive_approvald(&server, &server, opts).await?;
    server.stop().await;
    let echo = env.echo().await?;
    let floor = drive_floor(&echo, opts).await?;
    echo.stop().await;

    let mut r = Report::new(
        "wait-latency",
        format!(
            "wait-latency: resolve sent -> blocked caller answered, {} decisions at {}/s",
            main.latency.count(),
            opts.rate
        ),
    );
    r.field("rate", json!(opts.rate))
        .field("seconds", json!(opts.seconds))
        .field("pending_ahead", json!(opts.ahead))
        .field("samples", json!(main.latency.count()))
        .figure("latency p50", "p50_ms", main.latency.p50(), "ms")
        .target(
            "latency p99",
            "p99_ms",
            main.latency.p99(),
            "ms",
            Goal::Below(2.0),
        )
        .figure("latency max", "max_ms", main.latency.max(), "ms")
        .figure(
            "resolver's own answer p99",
            "resolve_rtt_p99_ms",
            main.resolve_rtt.p99(),
            "ms",
        )
        .figure(
            "server CPU busy (of one core)",
            "server_cpu_pct",
            main.server_cpu.as_secs_f64() * 100.0 / main.window.as_secs_f64().max(1e-9),
            "%",
        )
        .figure(
            "other processes' CPU (noise)",
            "other_cpu_pct",
            main.other_cpu.as_secs_f64() * 100.0 / main.window.as_secs_f64().max(1e-9),
            "%",
        )
        .figure("errors", "errors", main.errors as f64, "")
        .figure(
            "resolve retries",
            "resolve_retries",
            main.retries as f64,
            "",
        )
        .figure(
            "floor: echo round trip p50",
            "floor_p50_ms",
            floor.latency.p50(),
            "ms",
        )
        .figure(
            "floor: echo round trip p99",
            "floor_p99_ms",
            floor.latency.p99(),
            "ms",
        )
        .figure(
            "ratio to floor (p50)",
            "ratio_to_floor_p50",
            ratio(main.latency.p50(), floor.latency.p50()),
            "x",
        )
        .figure(
            "ratio to floor (p99)",
            "ratio_to_floor",
            ratio(main.latency.p99(), floor.latency.p99()),
            "x",
        );
    r.field("decisions_sent", json!(main.sent))
        .field("floor_sent", json!(floor.sent));
    if let Some(e) = &main.first_error {
        r.note(&format!("first error: {e}"));
        r.field("first_error", json!(e));
    }
    Ok(r.finish())
}

/// Callers blocked on `server`, decisions sent to `resolver_at` (the same server, or another
/// instance on the same database).
pub(crate) async fn drive_approvald(
    server: &ServerProcess,
    resolver_at: &ServerProcess,
    opts: WaitOptions,
) -> anyhow::Result<WaitRun> {
    let mut callers = Vec::new();
    for _ in 0..opts.caller_connections.max(1) {
        callers.push(Arc::new(
            WsRpc::connect(&server.ws_url(), CALLER_TOKEN).await?,
        ));
    }
    let resolver = Arc::new(WsRpc::connect(&resolver_at.ws_url(), RESOLVER_TOKEN).await?);
    let latency = Arc::new(Mutex::new(Latency::default()));
    let rtt = Arc::new(Mutex::new(Latency::default()));
    let errors = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let note_error = {
        let errors = errors.clone();
        let first_error = first_error.clone();
        move |e: String| {
            errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut f) = first_error.lock()
                && f.is_none()
            {
                *f = Some(e);
            }
        }
    };

    let mut queue: VecDeque<Ahead> = VecDeque::new();
    let mut n = 0usize;
    let mut waiters = Vec::new();
    let warmup = Duration::from_secs_f64((opts.seconds / 5.0).clamp(0.2, 1.0));
    // Ask: one blocked caller more, answered when the resolver decides it.
    let mut ask = |queue: &mut VecDeque<Ahead>, measure_from: Instant| {
        let caller = callers[n % callers.len()].clone();
        n += 1;
        let id = uuid::Uuid::new_v4().to_string();
        let answer = caller.send(
            "tool.approval.request",
            json!({ "id": id, "wait": true, "tool": "shell", "command": format!("echo wait {n}") }),
        );
        let (tx, rx) = oneshot::channel::<Instant>();
        queue.push_back(Ahead { id, sent_at: tx });
        let latency = latency.clone();
        let note_error = note_error.clone();
        waiters.push(tokio::spawn(async move {
            let answer = answer.await;
            let at = Instant::now();
            let Ok(sent) = rx.await else { return };
            match answer {
                Ok(a) if a["result"]["status"] == "approved" => {
                    if sent >= measure_from
                        && let Ok(mut l) = latency.lock()
                    {
                        l.record(at.saturating_duration_since(sent));
                    }
                }
                Ok(a) => note_error(format!("blocked caller answered: {a}")),
                Err(e) => note_error(format!("blocked caller: {e:#}")),
            }
        }));
    };

    // The first batch gets 300 ms to be stored before the first decision.
    let settle = Duration::from_millis(300);
    let measure_from = Instant::now() + settle + warmup;
    for _ in 0..opts.ahead.max(1) {
        ask(&mut queue, measure_from);
    }
    tokio::time::sleep(settle).await;
    let end = measure_from + Duration::from_secs_f64(opts.seconds);
    let period = Duration::from_secs_f64(1.0 / opts.rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut cpu0 = None;
    let mut sent = 0u64;
    let mut resolves = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        if cpu0.is_none() && Instant::now() >= measure_from {
            cpu0 = Some((server.cpu(), self_cpu(), machine_busy(), Instant::now()));
        }
        let Some(item) = queue.pop_front() else { break };
        ask(&mut queue, measure_from);
        let resolver = resolver.clone();
        let rtt = rtt.clone();
        let retries = retries.clone();
        let note_error = note_error.clone();
        let t = Instant::now();
        let _ = item.sent_at.send(t);
        sent += 1;
        resolves.push(tokio::spawn(async move {
            let params = json!({ "id": item.id, "decision": "approve-once" });
            let mut first = true;
            loop {
                match resolver.call("tool.approval.resolve", params.clone()).await {
                    Ok(a) => match error_kind(&a) {
                        None => {
                            if first
                                && t >= measure_from
                                && let Ok(mut l) = rtt.lock()
                            {
                                l.record(t.elapsed());
                            }
                            return;
                        }
                        Some("unknown_id") if t.elapsed() < Duration::from_secs(5) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            first = false;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Some(kind) => {
                            note_error(format!("resolve answered {kind}: {a}"));
                            return;
                        }
                    },
                    Err(e) => {
                        note_error(format!("resolve: {e:#}"));
                        return;
                    }
                }
            }
        }));
    }
    let (cpu_start, self_start, busy_start, t_start) =
        cpu0.unwrap_or((server.cpu(), self_cpu(), machine_busy(), Instant::now()));
    let server_cpu = server.cpu().saturating_sub(cpu_start);
    let other_cpu = machine_busy()
        .saturating_sub(busy_start)
        .saturating_sub(server_cpu)
        .saturating_sub(self_cpu().saturating_sub(self_start));
    let window = t_start.elapsed();
    for r in resolves {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    // The callers still pending ahead stay blocked; their tasks end with the connections.
    drop(queue);
    let done = waiters.len().saturating_sub(opts.ahead.max(1));
    for w in waiters.into_iter().take(done) {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let latency = latency.lock().map(|l| l.clone()).unwrap_or_default();
    let resolve_rtt = rtt.lock().map(|l| l.clone()).unwrap_or_default();
    for c in callers {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    if let Ok(r) = Arc::try_unwrap(resolver) {
        r.close().await;
    }
    Ok(WaitRun {
        latency,
        resolve_rtt,
        sent,
        errors: errors.load(Ordering::Relaxed),
        retries: retries.load(Ordering::Relaxed),
        first_error: first_error.lock().ok().and_then(|f| f.clone()),
        server_cpu,
        other_cpu,
        window,
    })
}

/// The floor: the same resolve messages at the same rate, echoed back.
async fn drive_floor(server: &ServerProcess, opts: WaitOptions) -> anyhow::Result<WaitRun> {
    let resolver = Arc::new(WsRpc::connect(&server.ws_url(), RESOLVER_TOKEN).await?);
    let latency = Arc::new(Mutex::new(Latency::default()));
    let warmup = Duration::from_secs_f64((opts.seconds / 5.0).clamp(0.2, 1.0));
    let measure_from = Instant::now() + warmup;
    let end = measure_from + Duration::from_secs_f64(opts.seconds);
    let period = Duration::from_secs_f64(1.0 / opts.rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut sent = 0;
    while Instant::now() < end {
        tick.tick().await;
        let resolver = resolver.clone();
        let latency = latency.clone();
        let id = uuid::Uuid::new_v4().to_string();
        sent += 1;
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let answer = resolver
                .call(
                    "tool.approval.resolve",
                    json!({ "id": id, "decision": "approve-once" }),
                )
                .await;
            if answer.is_ok()
                && t >= measure_from
                && let Ok(mut l) = latency.lock()
            {
                l.record(t.elapsed());
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let latency = latency.lock().map(|l| l.clone()).unwrap_or_default();
    if let Ok(r) = Arc::try_unwrap(resolver) {
        r.close().await;
    }
    Ok(WaitRun {
        latency,
        sent,
        ..Default::default()
    })
}
