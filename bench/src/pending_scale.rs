//! `pending-scale`: what many pending approvals cost. (a) the idle server's memory; (b) the
//! rate of creating N pending approvals (deadlines far ahead) and the memory they hold; (c)
//! the time from process start to serving with N pending in the store; (d) how late expiry
//! events arrive when M requests expire within the same second. Floors: the echo server's
//! memory, start time and creation rate with the same clients, and the lateness of M tokio
//! timers in this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::Env;
use crate::client::{NoteSink, WsRpc, error_kind};
use crate::proc::{ADMIN_TOKEN, CALLER_TOKEN, ServerProcess};
use crate::stats::{Goal, Latency, Report, ratio};

/// The knobs of the scenario.
#[derive(Clone, Copy, Debug)]
pub struct PendingOptions {
    pub pending: usize,
    pub expiring: usize,
    /// How far ahead the expiring batch's one-second window is centred, at least.
    pub lead: Duration,
    pub connections: usize,
    /// Calls in flight per connection while creating.
    pub window: usize,
}

/// How long each created request lives: far ahead (staggered), or to a chosen wall-clock
/// instant.
type TimeoutOf = Arc<dyn Fn(usize) -> u64 + Send + Sync>;

/// What a batch of creations measured.
struct Created {
    elapsed: Duration,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// id -> expires_at, as the answers gave them (kept only when asked).
    expires: HashMap<String, SystemTime>,
}

pub async fn run(env: &Env, opts: PendingOptions) -> anyhow::Result<Value> {
    println!(
        "\npending-scale: {} pending, then {} expiring within one second",
        opts.pending, opts.expiring
    );
    // (a) idle
    let data = env.data_dir();
    let port = crate::proc::free_port();
    let server = env.approvald_on(&data, port).await?;
    let first_start = server.startup;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let idle_rss = server.rss_mb();

    // (b) many pending, deadlines 1 h ahead and on, 20 ms apart
    let far: TimeoutOf = Arc::new(|i| 3_600_000 + 20 * i as u64);
    // Commands differ between batches: approvald folds an identical pending request into
    // the first one (`limits.fold_identical`).
    let created = create(&server, opts, opts.pending, far, false, true, "pending").await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pending_rss = server.rss_mb();
    let pending_peak = server.peak_rss_mb();
    let create_rate = created.ok as f64 / created.elapsed.as_secs_f64().max(1e-9);

    // (c) restart with them in the store
    let stop_time = server.stop().await;
    let server = env.approvald_on(&data, port).await?;
    let restart = server.startup;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let restart_rss = server.rss_mb();

    // (d) expiry lateness
    let lateness = expiry(&server, opts, create_rate).await?;
    server.stop().await;

    // Floors
    let echo = env.echo().await?;
    let echo_start = echo.startup;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let echo_idle = echo.rss_mb();
    let far: TimeoutOf = Arc::new(|i| 3_600_000 + 20 * i as u64);
    let echo_created = create(&echo, opts, opts.pending, far, false, false, "pending").await?;
    let echo_rate = echo_created.ok as f64 / echo_created.elapsed.as_secs_f64().max(1e-9);
    echo.stop().await;
    let timer_floor = timer_floor(opts.expiring).await;

    let mut r = Report::new(
        "pending-scale",
        format!(
            "pending-scale: {} pending, {} expiring in one second",
            opts.pending, opts.expiring
        ),
    );
    r.field("pending", json!(opts.pending))
        .field("expiring", json!(opts.expiring))
        .target(
            "(a) idle server RSS",
            "idle_rss_mb",
            idle_rss,
            "MiB",
            Goal::Below(40.0),
        )
        .figure(
            "(a) start to serving, empty store",
            "empty_start_s",
            first_start.as_secs_f64(),
            "s",
        )
        .figure(
            "(b) creation rate (wait: false)",
            "create_per_s",
            create_rate,
            "req/s",
        )
        .target(
            "(b) RSS with all pending",
            "pending_rss_mb",
            pending_rss,
            "MiB",
            Goal::Below(150.0),
        )
        .figure("(b) peak RSS", "pending_peak_rss_mb", pending_peak, "MiB")
        .figure(
            "(b) creation errors",
            "create_errors",
            created.errors as f64,
            "",
        )
        .figure(
            "(c) graceful stop took",
            "stop_s",
            stop_time.as_secs_f64(),
            "s",
        )
        .target(
            "(c) start to serving, N pending",
            "restart_s",
            restart.as_secs_f64(),
            "s",
            Goal::Below(3.0),
        )
        .figure(
            "(c) RSS after restart",
            "restart_rss_mb",
            restart_rss,
            "MiB",
        )
        .figure(
            "(b) memory per pending (live)",
            "kib_per_pending",
            (pending_rss - idle_rss) * 1024.0 / opts.pending.max(1) as f64,
            "KiB",
        )
        .figure(
            "(c) memory per pending (restarted)",
            "kib_per_pending_restarted",
            (restart_rss - idle_rss) * 1024.0 / opts.pending.max(1) as f64,
            "KiB",
        )
        .figure(
            "(d) expired events received",
            "expired_received",
            lateness.received as f64,
            "",
        )
        .figure(
            "(d) expired events missing",
            "expired_missing",
            (opts.expiring as u64).saturating_sub(lateness.received) as f64,
            "",
        )
        .figure(
            "(d) lateness p50",
            "expiry_late_p50_ms",
            lateness.late.p50(),
            "ms",
        )
        .target(
            "(d) lateness p99",
            "expiry_late_p99_ms",
            lateness.late.p99(),
            "ms",
            Goal::Below(100.0),
        )
        .figure(
            "(d) lateness max",
            "expiry_late_max_ms",
            lateness.late.max(),
            "ms",
        )
        .figure(
            "(d) server-side part p99 (resolved_at)",
            "expiry_server_late_p99_ms",
            lateness.server_late.p99(),
            "ms",
        )
        .figure(
            "(d) expiring batch creation rate",
            "expiring_create_per_s",
            lateness.create_rate,
            "req/s",
        )
        .figure(
            "floor: echo idle RSS",
            "floor_idle_rss_mb",
            echo_idle,
            "MiB",
        )
        .figure(
            "floor: echo start to serving",
            "floor_start_s",
            echo_start.as_secs_f64(),
            "s",
        )
        .figure(
            "floor: echo creation rate",
            "floor_create_per_s",
            echo_rate,
            "req/s",
        )
        .figure(
            "floor: tokio timer lateness p99",
            "floor_timer_late_p99_ms",
            timer_floor.p99(),
            "ms",
        )
        .figure(
            "ratio to floor (creation rate)",
            "ratio_to_floor",
            ratio(create_rate, echo_rate),
            "x",
        )
        .figure(
            "ratio to floor (restart time)",
            "restart_ratio_to_floor",
            ratio(restart.as_secs_f64(), echo_start.as_secs_f64()),
            "x",
        )
        .figure(
            "ratio to floor (expiry p99)",
            "expiry_ratio_to_floor",
            ratio(lateness.late.p99(), timer_floor.p99()),
            "x",
        );
    for e in [&created.first_error, &lateness.first_error]
        .into_iter()
        .flatten()
    {
        r.note(&format!("first error: {e}"));
    }
    Ok(r.finish())
}

/// Create `count` requests with `wait: false`, pipelined over a few WebSocket connections.
async fn create(
    server: &ServerProcess,
    opts: PendingOptions,
    count: usize,
    timeout_of: TimeoutOf,
    keep_expiry: bool,
    expect_pending: bool,
    label: &'static str,
) -> anyhow::Result<Created> {
    let conns = opts.connections.max(1);
    let mut ws = Vec::new();
    for _ in 0..conns {
        ws.push(Arc::new(
            WsRpc::connect(&server.ws_url(), CALLER_TOKEN).await?,
        ));
    }
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let expires: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, conn) in ws.iter().enumerate() {
        let conn = conn.clone();
        let (ok, errors, first_error, expires, timeout_of) = (
            ok.clone(),
            errors.clone(),
            first_error.clone(),
            expires.clone(),
            timeout_of.clone(),
        );
        let window = opts.window.max(1);
        tasks.push(tokio::spawn(async move {
            let mut inflight = FuturesUnordered::new();
            let handle = |answer: Result<Value, tokio::sync::oneshot::error::RecvError>| {
                let fail = |e: String| {
                    errors.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut f) = first_error.lock()
                        && f.is_none()
                    {
                        *f = Some(e);
                    }
                };
                let Ok(a) = answer else {
                    fail("websocket closed".into());
                    return;
                };
                if let Some(kind) = error_kind(&a) {
                    fail(format!("request answered {kind}: {a}"));
                    return;
                }
                if expect_pending && a["result"]["status"] != "pending" {
                    fail(format!("request not pending: {a}"));
                    return;
                }
                ok.fetch_add(1, Ordering::Relaxed);
                if keep_expiry
                    && let (Some(id), Some(at)) = (
                        a["result"]["id"].as_str(),
                        a["result"]["expires_at"].as_str(),
                    )
                    && let Some(at) = parse_time(at)
                    && let Ok(mut m) = expires.lock()
                {
                    m.insert(id.to_string(), at);
                }
            };
            for i in (c..count).step_by(conns) {
                if inflight.len() >= window
                    && let Some(a) = inflight.next().await
                {
                    handle(a);
                }
                let id = uuid::Uuid::new_v4().to_string();
                inflight.push(conn.send(
                    "tool.approval.request",
                    json!({
                        "id": id, "wait": false, "tool": "shell",
                        "command": format!("echo {label} {i}"), "timeout_ms": timeout_of(i),
                    }),
                ));
            }
            while let Some(a) = inflight.next().await {
                handle(a);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    for c in ws {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    let expires = std::mem::take(&mut *expires.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let first_error = first_error.lock().ok().and_then(|f| f.clone());
    Ok(Created {
        elapsed,
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error,
        expires,
    })
}

fn parse_time(text: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(SystemTime::from)
}

/// Milliseconds from `from` to `to`; negative when `to` is earlier.
fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

/// What (d) measured.
struct Lateness {
    /// expires_at -> the expired notification's arrival.
    late: Latency,
    /// expires_at -> the server's resolved_at.
    server_late: Latency,
    received: u64,
    create_rate: f64,
    first_error: Option<String>,
}

/// (d): M requests whose deadlines fall within one second, `lead` (or more, when creating
/// them takes longer) from now; a WebSocket watches `tool.approval.expired`.
async fn expiry(
    server: &ServerProcess,
    opts: PendingOptions,
    create_rate: f64,
) -> anyhow::Result<Lateness> {
    let m = opts.expiring;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = WsRpc::connect_with(
        &server.ws_url(),
        ADMIN_TOKEN,
        Some(NoteSink {
            method: "tool.approval.expired",
            tx,
        }),
    )
    .await?;
    // Creating must end well before the first deadline.
    let needed = Duration::from_secs_f64(2.0 * m as f64 / create_rate.max(100.0) + 1.5);
    let lead = opts.lead.max(needed);
    let centre = SystemTime::now() + lead;
    let window_start = centre - Duration::from_millis(500);
    let spacing = 1000.0 / m.max(1) as f64;
    let timeout_of: TimeoutOf = Arc::new(move |i| {
        let target = window_start + Duration::from_secs_f64(i as f64 * spacing / 1000.0);
        let left = ms_between(SystemTime::now(), target);
        left.max(1.0) as u64
    });
    println!(
        "  (d) creating {m} requests expiring between {:.1} s and {:.1} s from now",
        lead.as_secs_f64() - 0.5,
        lead.as_secs_f64() + 0.5
    );
    let created = create(server, opts, m, timeout_of, true, true, "expiring").await?;
    let expires = created.expires;
    let mut late = Latency::default();
    let mut server_late = Latency::default();
    let mut received = 0u64;
    let mut first_error = created.first_error.clone();
    // Wait for the window asked for (not the deadlines answered: a request folded into an
    // older one would answer that one's), plus 20 s.
    let last = centre + Duration::from_millis(500);
    let give_up = tokio::time::Instant::now()
        + last.duration_since(SystemTime::now()).unwrap_or_default()
        + Duration::from_secs(20);
    let far_off = expires
        .values()
        .filter(|&&at| at > last + Duration::from_secs(60))
        .count();
    if far_off > 0 && first_error.is_none() {
        first_error = Some(format!(
            "{far_off} answers expire long after the window (folded?)"
        ));
    }
    let mut early = 0u64;
    while received < expires.len() as u64 {
        let note = match tokio::time::timeout_at(give_up, rx.recv()).await {
            Ok(Some(n)) => n,
            _ => break,
        };
        if note.method != "tool.approval.expired" {
            continue;
        }
        let Some(id) = note.params["id"].as_str() else {
            continue;
        };
        let Some(&expires_at) = expires.get(id) else {
            continue;
        };
        received += 1;
        let ms = ms_between(expires_at, note.at);
        if ms < 0.0 {
            early += 1;
        }
        late.record_ms_f64(ms.max(0.0));
        if let Some(resolved) = note.params["resolved_at"].as_str().and_then(parse_time) {
            server_late.record_ms_f64(ms_between(expires_at, resolved).max(0.0));
        }
    }
    if early > 0 && first_error.is_none() {
        first_error = Some(format!(
            "{early} expired events arrived before their expires_at"
        ));
    }
    watcher.close().await;
    Ok(Lateness {
        late,
        server_late,
        received,
        create_rate: created.ok as f64 / created.elapsed.as_secs_f64().max(1e-9),
        first_error,
    })
}

/// The machine's own floor for (d): M tokio timers in this process due within one second;
/// how late each wakes.
async fn timer_floor(m: usize) -> Latency {
    let centre = tokio::time::Instant::now() + Duration::from_millis(1500);
    let start = centre - Duration::from_millis(500);
    let spacing = Duration::from_secs_f64(1.0 / m.max(1) as f64);
    let mut tasks = Vec::with_capacity(m);
    for i in 0..m {
        let due = start + spacing * i as u32;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            tokio::time::Instant::now().saturating_duration_since(due)
        }));
    }
    let mut late = Latency::default();
    for t in tasks {
        if let Ok(d) = t.await {
            late.record(d);
        }
    }
    late
}
