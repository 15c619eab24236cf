//! `cycle` and `cycle-newconn`: callers ask and block (`wait: true`), a resolver approves,
//! the caller's answer closes the cycle. Against approvald on a durable store, then against
//! the echo floor with the same clients and the same pattern.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::client::{HttpRpc, InFlight, Note, NoteSink, Rpc, WsRpc, error_kind};
use crate::proc::{
    CALLER_TOKEN, IoCounts, Kind, RESOLVER_TOKEN, ServerProcess, machine_busy, self_cpu,
    thread_share,
};
use crate::stats::{Goal, Latency, Report, num, ratio};
use crate::{Env, Mode};

/// The knobs of one cycle run.
#[derive(Clone, Copy, Debug)]
pub struct CycleOptions {
    pub mode: Mode,
    /// HTTP only: a new TCP connection for every call.
    pub new_connection: bool,
    pub seconds: f64,
    pub in_flight: usize,
    pub callers: usize,
    pub handoff: Handoff,
    /// WebSocket only: which notifications the caller connections ask for.
    pub caller_events: CallerEvents,
}

/// What the caller connections (gateways that make calls and wait on them) are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CallerEvents {
    /// `?events=none`: their answers only, as a gateway that only makes calls asks.
    None,
    /// Every notification (what every client got before `?events=` existed).
    All,
}

/// How the resolver learns which request to decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Handoff {
    /// The caller hands the id over an in-process channel as soon as its request is sent;
    /// the resolver retries while the request is not stored yet (`unknown_id`).
    Channel,
    /// WebSocket only: the resolver also waits for the `tool.approval.requested`
    /// notification of that id, as a UI would, so it never races the insert.
    Event,
}

/// What one run against one server measured.
#[derive(Default)]
pub struct CycleRun {
    pub cycles: u64,
    pub window: Duration,
    /// Request sent -> the caller's answer.
    pub answer: Latency,
    /// Request sent -> both the caller's and the resolver's answers back.
    pub full: Latency,
    pub errors: u64,
    pub first_error: Option<String>,
    pub resolve_retries: u64,
    pub server_cpu: Duration,
    pub client_cpu: Duration,
    /// CPU the rest of the machine (other processes) used during the window.
    pub other_cpu: Duration,
    pub server_rss_mb: f64,
    /// What the server wrote during the window.
    pub server_io: IoCounts,
    pub notes_seen: u64,
    pub threads: Vec<(String, Duration)>,
}

impl CycleRun {
    pub fn per_second(&self) -> f64 {
        self.cycles as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn server_cpu_us_per_cycle(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / (self.cycles.max(1) as f64)
    }

    pub fn client_cpu_us_per_cycle(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / (self.cycles.max(1) as f64)
    }

    /// KiB the server caused to be written to storage per cycle.
    pub fn storage_kib_per_cycle(&self) -> f64 {
        self.server_io.storage_bytes as f64 / 1024.0 / (self.cycles.max(1) as f64)
    }

    pub fn write_calls_per_cycle(&self) -> f64 {
        self.server_io.write_calls as f64 / (self.cycles.max(1) as f64)
    }
}

/// Counters every task of a run adds to.
#[derive(Default)]
struct Shared {
    errors: AtomicU64,
    retries: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock()
            && f.is_none()
        {
            *f = Some(what);
        }
    }
}

/// A request id handed from a caller to the resolver, and where to say it is resolved.
struct Job {
    id: String,
    done: oneshot::Sender<()>,
}

/// The measurement window: warm up until `start`, count until `end`.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }
}

/// What one caller slot measured.
#[derive(Default)]
struct SlotResult {
    cycles: u64,
    answer: Latency,
    full: Latency,
}

/// Run the scenario: approvald, then the floor; print and answer the report.
pub async fn run(env: &Env, opts: CycleOptions) -> anyhow::Result<Value> {
    let scenario = if opts.new_connection {
        "cycle-newconn"
    } else {
        "cycle"
    };
    let mode = if opts.new_connection {
        "http-newconn"
    } else {
        opts.mode.as_str()
    };
    println!(
        "\n{scenario} ({mode}): {} in flight over {} caller connection(s) + 1 resolver, {} s per server",
        opts.in_flight, opts.callers, opts.seconds
    );
    let server = env.approvald().await?;
    let main = drive(&server, opts, true).await?;
    let log_lines = server.log_lines();
    server.stop().await;
    let echo = env.echo().await?;
    let floor = drive(&echo, opts, false).await?;
    echo.stop().await;

    let mut r = Report::new(
        scenario,
        format!(
            "{scenario} over {mode}: {} in flight, {} callers, {:.1} s measured",
            opts.in_flight,
            opts.callers,
            main.window.as_secs_f64()
        ),
    );
    let handoff = match opts.handoff {
        Handoff::Channel => "channel",
        Handoff::Event => "event",
    };
    let caller_events = match (opts.mode, opts.caller_events) {
        (Mode::Http, _) => "none (HTTP)",
        (Mode::Ws, CallerEvents::None) => "none",
        (Mode::Ws, CallerEvents::All) => "all",
    };
    r.field("mode", json!(mode))
        .field("handoff", json!(handoff))
        .field("caller_events", json!(caller_events))
        .field("in_flight", json!(opts.in_flight))
        .field("callers", json!(opts.callers))
        .field("seconds", json!(main.window.as_secs_f64()));
    let throughput_goal = if opts.new_connection {
        Goal::AtLeast(2_000.0)
    } else {
        Goal::AtLeast(9_000.0)
    };
    r.target(
        "throughput",
        "cycles_per_s",
        main.per_second(),
        "cycles/s",
        throughput_goal,
    )
    .figure("cycles completed", "cycles", main.cycles as f64, "")
    .figure(
        "latency request->answer p50",
        "p50_ms",
        main.answer.p50(),
        "ms",
    );
    if opts.new_connection {
        r.figure(
            "latency request->answer p99",
            "p99_ms",
            main.answer.p99(),
            "ms",
        );
    } else {
        r.target(
            "latency request->answer p99",
            "p99_ms",
            main.answer.p99(),
            "ms",
            Goal::Below(10.0),
        );
    }
    r.figure(
        "latency request->answer max",
        "max_ms",
        main.answer.max(),
        "ms",
    )
    .figure(
        "full cycle p99 (both answers)",
        "cycle_p99_ms",
        main.full.p99(),
        "ms",
    );
    if opts.new_connection {
        r.figure(
            "server CPU per cycle",
            "server_cpu_us_per_cycle",
            main.server_cpu_us_per_cycle(),
            "us",
        );
    } else {
        r.target(
            "server CPU per cycle",
            "server_cpu_us_per_cycle",
            main.server_cpu_us_per_cycle(),
            "us",
            Goal::AtMost(100.0),
        );
    }
    r.figure(
        "server CPU busy (of one core)",
        "server_cpu_pct",
        main.server_cpu.as_secs_f64() * 100.0 / main.window.as_secs_f64(),
        "%",
    )
    .figure(
        "load client CPU per cycle",
        "client_cpu_us_per_cycle",
        main.client_cpu_us_per_cycle(),
        "us",
    )
    .figure(
        "other processes' CPU (noise)",
        "other_cpu_pct",
        main.other_cpu.as_secs_f64() * 100.0 / main.window.as_secs_f64(),
        "%",
    )
    .figure(
        "server RSS at the end",
        "server_rss_mb",
        main.server_rss_mb,
        "MiB",
    )
    .figure(
        "server writes to storage per cycle",
        "storage_kib_per_cycle",
        main.storage_kib_per_cycle(),
        "KiB",
    )
    .figure(
        "server file write calls per cycle",
        "write_calls_per_cycle",
        main.write_calls_per_cycle(),
        "",
    )
    .figure(
        "resolve retries per cycle (unknown_id)",
        "resolve_retries_per_cycle",
        ratio(main.resolve_retries as f64, main.cycles as f64),
        "",
    )
    .figure("errors", "errors", main.errors as f64, "")
    .figure(
        "floor: echo cycles/s",
        "floor_cycles_per_s",
        floor.per_second(),
        "cycles/s",
    )
    .figure(
        "floor: echo p99 (full cycle)",
        "floor_p99_ms",
        floor.full.p99(),
        "ms",
    )
    .figure(
        "floor: other processes' CPU (noise)",
        "floor_other_cpu_pct",
        floor.other_cpu.as_secs_f64() * 100.0 / floor.window.as_secs_f64(),
        "%",
    )
    .figure(
        "floor: echo server CPU per cycle",
        "floor_server_cpu_us_per_cycle",
        floor.server_cpu_us_per_cycle(),
        "us",
    )
    .figure(
        "ratio to floor (cycles/s)",
        "ratio_to_floor",
        ratio(main.per_second(), floor.per_second()),
        "x",
    )
    .figure(
        "ratio to floor (server CPU/cycle)",
        "cpu_ratio_to_floor",
        ratio(
            main.server_cpu_us_per_cycle(),
            floor.server_cpu_us_per_cycle(),
        ),
        "x",
    )
    .field("resolve_retries", json!(main.resolve_retries))
    .field(
        "notifications_per_cycle",
        json!(ratio(main.notes_seen as f64, main.cycles as f64)),
    )
    .field("server_log_lines", json!(log_lines));
    if let Some(e) = &main.first_error {
        r.note(&format!("first error: {e}"));
        r.field("first_error", json!(e));
    }
    if let Some(e) = &floor.first_error {
        r.note(&format!("first floor error: {e}"));
    }
    if !opts.new_connection {
        r.note("peer (OpenClaw): 4,555 cycles/s, p50 13.3 ms, p99 31.7 ms, ~207 us CPU/cycle");
    }
    let total: Duration = main.threads.iter().map(|(_, d)| *d).sum();
    let mut shares = serde_json::Map::new();
    let mut line = String::from("server CPU by thread:");
    for (name, d) in &main.threads {
        let pct = ratio(d.as_secs_f64(), total.as_secs_f64()) * 100.0;
        line.push_str(&format!(" {name} {}%", num(pct)));
        shares.insert(name.clone(), json!(crate::stats::r3(pct)));
    }
    r.note(&line);
    r.field("server_cpu_share_by_thread_pct", Value::Object(shares));
    Ok(r.finish())
}

/// One run against `server`. `expect_approved`: approvald answers `status: approved`; the
/// echo answers anything with a `result`.
async fn drive(
    server: &ServerProcess,
    opts: CycleOptions,
    expect_approved: bool,
) -> anyhow::Result<CycleRun> {
    // Connections first, outside the measurement.
    let mut callers = Vec::new();
    let mut ws_conns = Vec::new();
    for _ in 0..opts.callers.max(1) {
        callers.push(match opts.mode {
            Mode::Ws => {
                let url = match opts.caller_events {
                    CallerEvents::None => format!("{}?events=none", server.ws_url()),
                    CallerEvents::All => server.ws_url(),
                };
                let ws = Arc::new(WsRpc::connect(&url, CALLER_TOKEN).await?);
                ws_conns.push(ws.clone());
                Rpc::Ws(ws)
            }
            Mode::Http => Rpc::Http(Arc::new(HttpRpc::new(
                &server.base_url(),
                CALLER_TOKEN,
                opts.new_connection,
            ))),
        });
    }
    // The floor sends no notifications: it always gets the ids over the channel.
    let by_event = opts.handoff == Handoff::Event && server.kind == Kind::Approvald;
    let (note_tx, note_rx) = mpsc::unbounded_channel::<Note>();
    let resolver = match opts.mode {
        Mode::Ws => {
            let sink = by_event.then_some(NoteSink {
                method: "tool.approval.requested",
                tx: note_tx,
            });
            let ws = Arc::new(WsRpc::connect_with(&server.ws_url(), RESOLVER_TOKEN, sink).await?);
            ws_conns.push(ws.clone());
            Rpc::Ws(ws)
        }
        Mode::Http => Rpc::Http(Arc::new(HttpRpc::new(
            &server.base_url(),
            RESOLVER_TOKEN,
            opts.new_connection,
        ))),
    };

    let shared = Arc::new(Shared::default());
    let (job_tx, job_rx) = mpsc::unbounded_channel::<Job>();
    let notes = by_event.then_some(note_rx);
    let resolver_task = tokio::spawn(resolve_loop(resolver, job_rx, notes, shared.clone()));

    let warmup = Duration::from_secs_f64((opts.seconds / 5.0).clamp(0.2, 1.0));
    let t0 = Instant::now();
    let window = Window {
        start: t0 + warmup,
        end: t0 + warmup + Duration::from_secs_f64(opts.seconds),
    };
    let mut slots = Vec::new();
    let counter = Arc::new(AtomicU64::new(0));
    for i in 0..opts.in_flight.max(1) {
        let caller = callers[i % callers.len()].clone();
        slots.push(tokio::spawn(slot(
            caller,
            job_tx.clone(),
            window,
            shared.clone(),
            counter.clone(),
            expect_approved,
        )));
    }
    drop(job_tx);

    tokio::time::sleep_until(window.start.into()).await;
    let cpu0 = server.cpu();
    let self0 = self_cpu();
    let busy0 = machine_busy();
    let threads0 = server.thread_cpu();
    let io0 = server.io();
    let notes0: u64 = ws_conns.iter().map(|c| c.notes_seen()).sum();
    tokio::time::sleep_until(window.end.into()).await;
    let cpu1 = server.cpu();
    let self1 = self_cpu();
    let busy1 = machine_busy();
    let threads1 = server.thread_cpu();
    let io1 = server.io();
    let notes1: u64 = ws_conns.iter().map(|c| c.notes_seen()).sum();
    let rss = server.rss_mb();

    let mut run = CycleRun {
        window: window.end - window.start,
        server_cpu: cpu1.saturating_sub(cpu0),
        client_cpu: self1.saturating_sub(self0),
        other_cpu: busy1
            .saturating_sub(busy0)
            .saturating_sub(cpu1.saturating_sub(cpu0))
            .saturating_sub(self1.saturating_sub(self0)),
        server_rss_mb: rss,
        server_io: io1.since(io0),
        notes_seen: notes1 - notes0,
        threads: thread_share(&threads0, &threads1),
        ..Default::default()
    };
    for s in slots {
        // A slot stuck on a lost answer is not waited for forever.
        match tokio::time::timeout(Duration::from_secs(30), s).await {
            Ok(Ok(r)) => {
                run.cycles += r.cycles;
                run.answer.merge(&r.answer);
                run.full.merge(&r.full);
            }
            _ => shared.error("a caller slot did not finish within 30 s".into()),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), resolver_task).await;
    run.errors = shared.errors.load(Ordering::Relaxed);
    run.resolve_retries = shared.retries.load(Ordering::Relaxed);
    run.first_error = shared.first_error.lock().ok().and_then(|f| f.clone());
    drop(callers);
    for c in ws_conns {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    if server.kind == Kind::Approvald && run.cycles == 0 {
        anyhow::bail!(
            "no cycle completed: {}",
            run.first_error.unwrap_or_default()
        );
    }
    Ok(run)
}

/// One caller: ask, hand the id to the resolver, wait for the answer; again until the window
/// ends.
async fn slot(
    caller: Rpc,
    resolver: mpsc::UnboundedSender<Job>,
    window: Window,
    shared: Arc<Shared>,
    counter: Arc<AtomicU64>,
    expect_approved: bool,
) -> SlotResult {
    let mut out = SlotResult::default();
    let slow = slow_cycle_threshold().filter(|_| expect_approved);
    loop {
        let t0 = Instant::now();
        if t0 >= window.end {
            break;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let id = uuid::Uuid::new_v4().to_string();
        let call: InFlight = caller.send(
            "tool.approval.request",
            json!({ "id": id, "wait": true, "tool": "shell", "command": format!("echo {n}") }),
        );
        let (done_tx, done_rx) = oneshot::channel();
        if resolver.send(Job { id, done: done_tx }).is_err() {
            break;
        }
        let answer = call.answer().await;
        let t_answer = Instant::now();
        let resolved = done_rx.await.is_ok();
        let t_done = Instant::now();
        let ok = match &answer {
            Ok(a) => match (error_kind(a), expect_approved) {
                (Some(kind), _) => {
                    shared.error(format!("request answered {kind}: {a}"));
                    false
                }
                (None, true) if a["result"]["status"] != "approved" => {
                    shared.error(format!("request answered without approval: {a}"));
                    false
                }
                _ => true,
            },
            Err(e) => {
                shared.error(format!("request failed: {e:#}"));
                false
            }
        };
        if ok && resolved && window.contains(t_done) {
            out.cycles += 1;
            out.answer.record(t_answer - t0);
            out.full.record(t_done - t0);
            if let Some(limit) = slow
                && t_answer - t0 > limit
            {
                report_slow_cycle(t0, t_answer - t0);
            }
        }
        if answer.is_err() {
            // The connection is gone; do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// `APPROVALD_BENCH_SLOW_MS=N`: cycles of approvald slower than N ms are printed (see
/// `report_slow_cycle`), to line them up with the server's log.
fn slow_cycle_threshold() -> Option<Duration> {
    let ms: f64 = std::env::var("APPROVALD_BENCH_SLOW_MS")
        .ok()?
        .parse()
        .ok()?;
    (ms > 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
}

/// One line on stderr: `slow cycle <unix time it started, s> <request->answer, ms>`.
fn report_slow_cycle(started: Instant, took: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let started_unix = now.as_secs_f64() - started.elapsed().as_secs_f64();
    eprintln!(
        "slow cycle {started_unix:.4} {:.2}",
        took.as_secs_f64() * 1000.0
    );
}

/// The resolver: approve each handed id, retrying while the request is not stored yet. With
/// `notes`, an id is decided only once its `tool.approval.requested` notification came too.
async fn resolve_loop(
    resolver: Rpc,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut notes: Option<mpsc::UnboundedReceiver<Note>>,
    shared: Arc<Shared>,
) {
    let mut waiting_event: HashMap<String, Job> = HashMap::new();
    let mut seen_event: HashSet<String> = HashSet::new();
    loop {
        let job = match notes.as_mut() {
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
            Some(rx) => tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) if seen_event.remove(&job.id) => job,
                    Some(job) => {
                        waiting_event.insert(job.id.clone(), job);
                        continue;
                    }
                    None => return,
                },
                note = rx.recv() => {
                    let Some(id) = note.as_ref().and_then(|n| n.params["id"].as_str()) else {
                        continue;
                    };
                    match waiting_event.remove(id) {
                        Some(job) => job,
                        None => {
                            seen_event.insert(id.to_string());
                            continue;
                        }
                    }
                },
            },
        };
        decide(&resolver, job, &shared);
    }
}

/// Approve one request on its own task.
fn decide(resolver: &Rpc, job: Job, shared: &Arc<Shared>) {
    let resolver = resolver.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        let params = json!({ "id": job.id, "decision": "approve-once" });
        let deadline = Instant::now() + Duration::from_secs(10);
        // Backoff doubles from 1 ms to 16 ms: each retry is work for the server that is
        // no part of a cycle, so keep them few.
        let mut backoff = Duration::from_millis(1);
        loop {
            match resolver.call("tool.approval.resolve", params.clone()).await {
                Ok(a) => match error_kind(&a) {
                    None => {
                        let _ = job.done.send(());
                        return;
                    }
                    // The resolve overtook the request's insert: try again shortly.
                    Some("unknown_id") if Instant::now() < deadline => {
                        shared.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(16));
                    }
                    Some(kind) => {
                        shared.error(format!("resolve answered {kind}: {a}"));
                        return;
                    }
                },
                Err(e) => {
                    shared.error(format!("resolve failed: {e:#}"));
                    return;
                }
            }
        }
    });
}
