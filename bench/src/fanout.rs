//! The fan-out scenarios: approvald configured with Telegram, Slack and Discord channels
//! (`[delivery] mode = "targets"`), each pointed at a fake of its platform in the bench process
//! (`fakes.rs`).
//!
//! - `fanout-latency`: `tool.approval.request` (`wait: false`) at a steady rate, one target per
//!   platform, approvald's pacing set out of the way; the figure is the time from the bench
//!   sending the request to the prompt arriving at each fake. Floor: the bench POSTs the same
//!   body (a prompt approvald sent, with a fresh id) straight to each fake at the same rate.
//! - `ratelimited-fanout`: a burst of requests, each to many chats per platform, against fakes
//!   that enforce the published limits; nothing may be lost, at most 1 % of sends answered 429,
//!   and the time to the last prompt within 1.1x the minimum the limits allow (computed here).
//!   Floor: the bench sends the same load straight to the fakes on the schedule of that
//!   minimum, stretched by 2 %.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Env;
use crate::client::{HttpRpc, error_kind};
use crate::fakes::{
    DISCORD_APPLICATION_ID, DISCORD_PUBLIC_KEY, DISCORD_TOKEN, Fake, Limits, Platform,
    SLACK_SIGNING_SECRET, SLACK_TOKEN, TELEGRAM_TOKEN,
};
use crate::proc::{CALLER_TOKEN, ServerProcess, machine_busy, self_cpu};
use crate::stats::{Goal, Latency, Report, r3, ratio};

/// How the floor of `ratelimited-fanout` stretches the minimum schedule, so that loopback
/// jitter does not put two of its sends closer than a limit allows.
const FLOOR_STRETCH: f64 = 1.02;

/// The knobs of `fanout-latency`.
#[derive(Clone, Copy, Debug)]
pub struct LatencyOptions {
    pub rate: f64,
    pub seconds: f64,
}

/// The knobs of `ratelimited-fanout`.
#[derive(Clone, Copy, Debug)]
pub struct RateLimitedOptions {
    /// Prompts each platform gets (rounded up to a whole number of requests).
    pub prompts: usize,
    /// Chats (channels) per platform; every request goes to all of them.
    pub chats: usize,
    pub pacing: Pacing,
}

/// approvald's pacing settings in `ratelimited-fanout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pacing {
    /// approvald's defaults (what a deployment gets).
    Default,
    /// Settings a little under the limits: Telegram `global_per_second = 29`, Slack
    /// `per_channel_interval_ms = 1050` and `global_interval_ms = 0`, Discord
    /// `global_per_second = 48`.
    Tuned,
}

impl Pacing {
    fn as_str(self) -> &'static str {
        match self {
            Pacing::Default => "default",
            Pacing::Tuned => "tuned",
        }
    }
}

/// What approvald's config says about pacing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ServerPacing {
    /// As fast as the settings go: `fanout-latency`, where the limits are not the subject.
    Unpaced,
    Ratelimited(Pacing),
}

/// The `[channels.*]` and `[delivery]` part of approvald's config: every platform pointed at
/// its fake, `chats` targets each.
fn channels_config(fakes: &[Fake], chats: usize, pacing: ServerPacing) -> String {
    let mut out = String::from("\n[delivery]\nmode = \"targets\"\n");
    for fake in fakes {
        let p = fake.platform;
        let targets: Vec<String> = (0..chats).map(|i| format!("{:?}", p.chat(i))).collect();
        let targets = targets.join(", ");
        let url = &fake.api_url;
        let (keys, paced) = match p {
            Platform::Telegram => (
                format!(
                    "bot_token = \"{TELEGRAM_TOKEN}\"\napi_url = \"{url}\"\n\
                     receive = \"webhook\"\nwebhook_secret = \"bench-webhook-secret\"\n"
                ),
                match pacing {
                    ServerPacing::Unpaced => "chat_interval_ms = 0\nglobal_per_second = 1000\n",
                    ServerPacing::Ratelimited(Pacing::Default) => "",
                    ServerPacing::Ratelimited(Pacing::Tuned) => "global_per_second = 29\n",
                },
            ),
            Platform::Slack => (
                format!(
                    "bot_token = \"{SLACK_TOKEN}\"\nsigning_secret = \"{SLACK_SIGNING_SECRET}\"\n\
                     api_url = \"{url}\"\n"
                ),
                match pacing {
                    ServerPacing::Unpaced => {
                        "per_channel_interval_ms = 0\nglobal_interval_ms = 0\n"
                    }
                    ServerPacing::Ratelimited(Pacing::Default) => "",
                    ServerPacing::Ratelimited(Pacing::Tuned) => {
                        "per_channel_interval_ms = 1050\nglobal_interval_ms = 0\n"
                    }
                },
            ),
            Platform::Discord => (
                format!(
                    "bot_token = \"{DISCORD_TOKEN}\"\napplication_id = \"{DISCORD_APPLICATION_ID}\"\n\
                     public_key = \"{DISCORD_PUBLIC_KEY}\"\napi_url = \"{url}\"\n\
                     register_commands = false\n"
                ),
                match pacing {
                    ServerPacing::Unpaced => "global_per_second = 1000\n",
                    ServerPacing::Ratelimited(Pacing::Default) => "",
                    ServerPacing::Ratelimited(Pacing::Tuned) => "global_per_second = 48\n",
                },
            ),
        };
        out.push_str(&format!(
            "\n[channels.{}]\n{keys}{paced}targets = [{targets}]\n",
            p.name()
        ));
    }
    out
}

async fn start_fakes(limits: impl Fn(Platform) -> Limits) -> anyhow::Result<Vec<Fake>> {
    let mut fakes = Vec::new();
    for p in Platform::ALL {
        fakes.push(Fake::start(p, limits(p)).await?);
    }
    Ok(fakes)
}

/// Errors of the request calls: counted, the first kept.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn note(&self, e: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
    }

    fn first(&self) -> Option<String> {
        self.first.lock().ok().and_then(|f| f.clone())
    }
}

/// One `tool.approval.request` that does not wait for a decision.
async fn ask(rpc: &HttpRpc, id: String, n: usize, errors: &Errors) {
    let params =
        json!({ "id": id, "wait": false, "tool": "shell", "command": format!("echo fanout {n}") });
    match rpc.call("tool.approval.request", params).await {
        Ok(a) => {
            if let Some(kind) = error_kind(&a) {
                errors.note(format!("request answered {kind}: {a}"));
            }
        }
        Err(e) => errors.note(format!("request: {e:#}")),
    }
}

// ----- fanout-latency --------------------------------------------------------------------

/// What one `fanout-latency` run measured.
#[derive(Default)]
struct LatencyRun {
    /// Per platform, in `Platform::ALL` order: sent -> arrived at that fake.
    per_platform: Vec<Latency>,
    overall: Latency,
    /// Sent -> the last of the request's prompts arrived.
    all_arrived: Latency,
    /// Requests sent in the measured window.
    requests: u64,
    /// Prompts expected (requests x platforms) and arrived, for the measured window.
    expected: u64,
    arrived: u64,
    errors: u64,
    first_error: Option<String>,
    server_cpu: Duration,
    other_cpu: Duration,
    window: Duration,
}

/// Match the fakes' arrivals with the send times (only those sent from `from` on).
fn latencies(fakes: &[Fake], sent: &HashMap<String, Instant>, from: Instant, run: &mut LatencyRun) {
    let measured = sent.values().filter(|t| **t >= from).count() as u64;
    run.requests = measured;
    run.expected = measured * fakes.len() as u64;
    let mut last: HashMap<&str, (usize, Duration)> = HashMap::new();
    run.per_platform = vec![Latency::default(); fakes.len()];
    for (i, fake) in fakes.iter().enumerate() {
        let mut seen = HashSet::new();
        for a in fake.arrivals() {
            let Some(id) = a.approval.as_deref() else {
                continue;
            };
            let Some((key, t)) = sent.get_key_value(id) else {
                continue;
            };
            if *t < from || !seen.insert(id.to_string()) {
                continue;
            }
            let d = a.at.saturating_duration_since(*t);
            run.per_platform[i].record(d);
            run.overall.record(d);
            run.arrived += 1;
            let e = last.entry(key.as_str()).or_insert((0, Duration::ZERO));
            e.0 += 1;
            e.1 = e.1.max(d);
        }
    }
    for (n, d) in last.values() {
        if *n == fakes.len() {
            run.all_arrived.record(*d);
        }
    }
}

/// Wait until the fakes hold `expected` sends in all, at most `limit`.
async fn settle(fakes: &[Fake], expected: usize, limit: Duration) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if fakes.iter().map(Fake::accepted).sum::<usize>() >= expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run_latency(env: &Env, opts: LatencyOptions) -> anyhow::Result<Value> {
    println!(
        "\nfanout-latency: requests at {}/s for {} s, each to Telegram, Slack and Discord fakes",
        opts.rate, opts.seconds
    );
    let fakes = start_fakes(|_| Limits::default()).await?;
    let extra = channels_config(&fakes, 1, ServerPacing::Unpaced);
    let server = env.approvald_with(&extra).await?;
    let main = drive_latency(&server, &fakes, opts).await;
    let undelivered = server.log_count("could not be delivered");
    server.stop().await;
    let main = main?;
    let other_calls: serde_json::Map<String, Value> = fakes
        .iter()
        .map(|f| (f.platform.name().to_string(), json!(f.other_calls())))
        .collect();
    for f in &fakes {
        f.clear();
    }
    let floor = drive_latency_floor(&fakes, opts).await?;
    for f in fakes {
        f.stop();
    }

    let mut r = Report::new(
        "fanout-latency",
        format!(
            "fanout-latency: request sent -> prompt at each fake, {} requests at {}/s, 3 platforms",
            main.requests, opts.rate
        ),
    );
    r.field("rate", json!(opts.rate))
        .field("seconds", json!(opts.seconds))
        .field("requests", json!(main.requests))
        .field("prompts_expected", json!(main.expected));
    for (i, p) in Platform::ALL.iter().enumerate() {
        let (Some(l), Some(f)) = (main.per_platform.get(i), floor.per_platform.get(i)) else {
            continue;
        };
        let n = p.name();
        r.figure(&format!("{n} p50"), &format!("{n}_p50_ms"), l.p50(), "ms")
            .figure(&format!("{n} p99"), &format!("{n}_p99_ms"), l.p99(), "ms")
            .figure(&format!("{n} max"), &format!("{n}_max_ms"), l.max(), "ms")
            .figure(
                &format!("{n} floor p99"),
                &format!("{n}_floor_p99_ms"),
                f.p99(),
                "ms",
            );
    }
    r.figure("all platforms p50", "p50_ms", main.overall.p50(), "ms")
        .target(
            "all platforms p99",
            "p99_ms",
            main.overall.p99(),
            "ms",
            Goal::Below(10.0),
        )
        .figure("all platforms max", "max_ms", main.overall.max(), "ms")
        .figure(
            "last of a request's 3 prompts p99",
            "all_arrived_p99_ms",
            main.all_arrived.p99(),
            "ms",
        )
        .figure(
            "prompts missing",
            "prompts_missing",
            main.expected.saturating_sub(main.arrived) as f64,
            "",
        )
        .figure(
            "server CPU per request",
            "server_cpu_us_per_request",
            main.server_cpu.as_secs_f64() * 1e6 / main.requests.max(1) as f64,
            "us",
        )
        .figure(
            "other processes' CPU (noise)",
            "other_cpu_pct",
            main.other_cpu.as_secs_f64() * 100.0 / main.window.as_secs_f64().max(1e-9),
            "%",
        )
        .figure("request errors", "errors", main.errors as f64, "")
        .figure(
            "floor: bench -> fake p50",
            "floor_p50_ms",
            floor.overall.p50(),
            "ms",
        )
        .figure(
            "floor: bench -> fake p99",
            "floor_p99_ms",
            floor.overall.p99(),
            "ms",
        )
        .figure(
            "ratio to floor (p50)",
            "ratio_to_floor_p50",
            ratio(main.overall.p50(), floor.overall.p50()),
            "x",
        )
        .figure(
            "ratio to floor (p99)",
            "ratio_to_floor",
            ratio(main.overall.p99(), floor.overall.p99()),
            "x",
        );
    r.field("prompts_arrived", json!(main.arrived))
        .field("floor_prompts_expected", json!(floor.expected))
        .field("floor_prompts_arrived", json!(floor.arrived))
        .field("undelivered_logged", json!(undelivered))
        .field("fake_other_calls", json!(other_calls));
    if let Some(e) = &main.first_error {
        r.note(&format!("first error: {e}"));
        r.field("first_error", json!(e));
    }
    Ok(r.finish())
}

async fn drive_latency(
    server: &ServerProcess,
    fakes: &[Fake],
    opts: LatencyOptions,
) -> anyhow::Result<LatencyRun> {
    let rpc = Arc::new(HttpRpc::new(&server.base_url(), CALLER_TOKEN, false));
    let errors = Arc::new(Errors::default());
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let warmup = Duration::from_secs_f64((opts.seconds / 5.0).clamp(0.2, 1.0));
    let measure_from = Instant::now() + warmup;
    let end = measure_from + Duration::from_secs_f64(opts.seconds);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut cpu0 = None;
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        if cpu0.is_none() && Instant::now() >= measure_from {
            cpu0 = Some((server.cpu(), self_cpu(), machine_busy(), Instant::now()));
        }
        n += 1;
        let id = uuid::Uuid::new_v4().to_string();
        sent.insert(id.clone(), Instant::now());
        let rpc = rpc.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move { ask(&rpc, id, n, &errors).await }));
    }
    let (cpu_start, self_start, busy_start, t_start) =
        cpu0.unwrap_or((server.cpu(), self_cpu(), machine_busy(), Instant::now()));
    let server_cpu = server.cpu().saturating_sub(cpu_start);
    let other_cpu = machine_busy()
        .saturating_sub(busy_start)
        .saturating_sub(server_cpu)
        .saturating_sub(self_cpu().saturating_sub(self_start));
    let window = t_start.elapsed();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    settle(fakes, n * fakes.len(), Duration::from_secs(5)).await;
    let mut run = LatencyRun {
        errors: errors.count.load(Ordering::Relaxed),
        first_error: errors.first(),
        server_cpu,
        other_cpu,
        window,
        ..Default::default()
    };
    latencies(fakes, &sent, measure_from, &mut run);
    Ok(run)
}

/// The floor: a prompt body approvald sent (fresh id each time) POSTed by the bench straight
/// to each fake, one per platform per tick, at the same rate.
async fn drive_latency_floor(fakes: &[Fake], opts: LatencyOptions) -> anyhow::Result<LatencyRun> {
    let samples: Vec<_> = fakes.iter().map(|f| (f, f.sample())).collect();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let warmup = Duration::from_secs_f64((opts.seconds / 5.0).clamp(0.2, 1.0));
    let measure_from = Instant::now() + warmup;
    let end = measure_from + Duration::from_secs_f64(opts.seconds);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        let id = uuid::Uuid::new_v4().to_string();
        sent.insert(id.clone(), Instant::now());
        for (fake, sample) in &samples {
            let Some(sample) = sample else { continue };
            n += 1;
            let (url, auth) = fake.send_url(&sample.chat);
            let body = sample.body_for(&sample.chat, &id);
            let mut req = client
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            if !auth.is_empty() {
                req = req.header("authorization", auth);
            }
            tasks.push(tokio::spawn(async move { req.send().await.is_ok() }));
        }
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    settle(fakes, n, Duration::from_secs(5)).await;
    let mut run = LatencyRun::default();
    latencies(fakes, &sent, measure_from, &mut run);
    // Platforms without a sample (approvald delivered nothing there) were not sent to.
    let with_sample = samples.iter().filter(|(_, s)| s.is_some()).count() as u64;
    run.expected = run.requests * with_sample;
    Ok(run)
}

// ----- ratelimited-fanout ----------------------------------------------------------------

/// The earliest schedule the limits allow for `each` sends to each of `chats` chats, all ready
/// at time 0: greedy, every send as early as the windows let it go, the chat with the most
/// left first. Answers the time of the last send and (time, chat) of every send, in order.
pub fn minimum_schedule(
    chats: usize,
    each: usize,
    limits: Limits,
) -> (Duration, Vec<(Duration, usize)>) {
    let us = |d: Duration| d.as_micros() as u64;
    let mut left = vec![each; chats];
    let mut per_chat: Vec<VecDeque<u64>> = vec![VecDeque::new(); chats];
    let mut all: VecDeque<u64> = VecDeque::new();
    let mut out = Vec::with_capacity(chats * each);
    let mut remaining = chats * each;
    let mut t = 0u64;
    while remaining > 0 {
        if let Some(l) = limits.overall {
            let w = us(l.window);
            while all.front().is_some_and(|s| s + w <= t) {
                all.pop_front();
            }
        }
        if let Some(l) = limits.per_chat {
            let w = us(l.window);
            for q in per_chat.iter_mut() {
                while q.front().is_some_and(|s| s + w <= t) {
                    q.pop_front();
                }
            }
        }
        loop {
            if limits.overall.is_some_and(|l| all.len() >= l.count) {
                break;
            }
            let pick = (0..chats)
                .filter(|&i| {
                    left[i] > 0 && limits.per_chat.is_none_or(|l| per_chat[i].len() < l.count)
                })
                .max_by_key(|&i| (left[i], Reverse(i)));
            let Some(i) = pick else { break };
            left[i] -= 1;
            remaining -= 1;
            per_chat[i].push_back(t);
            if limits.overall.is_some() {
                all.push_back(t);
            }
            out.push((Duration::from_micros(t), i));
        }
        if remaining == 0 {
            break;
        }
        // The next moment a send leaves a full window.
        let mut next = u64::MAX;
        if let Some(l) = limits.overall
            && all.len() >= l.count
            && let Some(f) = all.front()
        {
            next = next.min(f + us(l.window));
        }
        if let Some(l) = limits.per_chat {
            for (i, q) in per_chat.iter().enumerate() {
                if left[i] > 0
                    && q.len() >= l.count
                    && let Some(f) = q.front()
                {
                    next = next.min(f + us(l.window));
                }
            }
        }
        if next == u64::MAX || next <= t {
            break;
        }
        t = next;
    }
    (Duration::from_micros(t), out)
}

/// One platform's outcome of a burst.
#[derive(Default)]
struct Burst {
    expected: usize,
    /// Distinct (approval, chat) pairs that arrived.
    arrived: usize,
    duplicates: usize,
    lost: usize,
    sends: usize,
    refused: usize,
    refused_overall: usize,
    /// How much too early the 429-answered sends were: p50 and max.
    early_p50: Duration,
    early_max: Duration,
    /// From the first request to the first and last expected prompt's arrival.
    first: Duration,
    last: Duration,
    minimum: Duration,
}

impl Burst {
    fn from_fake(
        fake: &Fake,
        ids: &[String],
        chats: usize,
        t0: Instant,
        minimum: Duration,
    ) -> Self {
        let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let chat_set: HashSet<String> = (0..chats).map(|i| fake.platform.chat(i)).collect();
        let arrivals = fake.arrivals();
        let refusals = fake.refusals();
        let mut seen = HashSet::new();
        let mut b = Burst {
            expected: ids.len() * chats,
            minimum,
            first: Duration::MAX,
            ..Default::default()
        };
        for a in &arrivals {
            let Some(id) = a.approval.as_deref() else {
                continue;
            };
            if !ids.contains(id) || !chat_set.contains(&a.chat) {
                continue;
            }
            if !seen.insert((id.to_string(), a.chat.clone())) {
                b.duplicates += 1;
                continue;
            }
            let at = a.at.saturating_duration_since(t0);
            b.first = b.first.min(at);
            b.last = b.last.max(at);
        }
        if b.first == Duration::MAX {
            b.first = Duration::ZERO;
        }
        b.arrived = seen.len();
        b.lost = b.expected.saturating_sub(b.arrived);
        b.sends = arrivals.len() + refusals.len();
        b.refused = refusals.len();
        b.refused_overall = refusals.iter().filter(|r| r.overall).count();
        let mut early: Vec<Duration> = refusals.iter().map(|r| r.early).collect();
        early.sort();
        b.early_p50 = early.get(early.len() / 2).copied().unwrap_or_default();
        b.early_max = early.last().copied().unwrap_or_default();
        b
    }

    fn refused_pct(&self) -> f64 {
        self.refused as f64 * 100.0 / self.sends.max(1) as f64
    }

    fn time_ratio(&self) -> f64 {
        ratio(self.last.as_secs_f64(), self.minimum.as_secs_f64())
    }
}

/// What one run (approvald or the floor) of `ratelimited-fanout` measured.
struct BurstRun {
    per_platform: Vec<Burst>,
    errors: u64,
    first_error: Option<String>,
    server_cpu: Duration,
    other_cpu: Duration,
    window: Duration,
}

pub async fn run_ratelimited(env: &Env, opts: RateLimitedOptions) -> anyhow::Result<Value> {
    let chats = opts.chats.max(1);
    let requests = opts.prompts.max(1).div_ceil(chats);
    let each = requests * chats;
    println!(
        "\nratelimited-fanout: {requests} requests x {chats} chats = {each} prompts to each of 3 \
         fakes enforcing the published limits; approvald pacing: {}",
        opts.pacing.as_str()
    );
    let fakes = start_fakes(Platform::published_limits).await?;
    let minimums: Vec<Duration> = fakes
        .iter()
        .map(|f| minimum_schedule(chats, requests, f.platform.published_limits()).0)
        .collect();
    let extra = channels_config(&fakes, chats, ServerPacing::Ratelimited(opts.pacing));
    let server = env.approvald_with(&extra).await?;
    // Start-up calls (getMe, auth.test) out of the way first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let main = drive_burst(&server, &fakes, requests, chats, &minimums).await;
    let undelivered = server.log_count("could not be delivered");
    let rate_limit_warnings = server.log_count("429");
    server.stop().await;
    let main = main?;
    let other_calls: serde_json::Map<String, Value> = fakes
        .iter()
        .map(|f| (f.platform.name().to_string(), json!(f.other_calls())))
        .collect();
    for f in &fakes {
        f.clear();
    }
    let floor = drive_burst_floor(&fakes, requests, chats, &minimums).await;
    for f in fakes {
        f.stop();
    }

    let mut r = Report::new(
        "ratelimited-fanout",
        format!(
            "ratelimited-fanout: {each} prompts to each platform ({requests} requests x {chats} \
             chats) under the published limits, approvald pacing {}",
            opts.pacing.as_str()
        ),
    );
    r.field("requests", json!(requests))
        .field("chats", json!(chats))
        .field("prompts_per_platform", json!(each))
        .field("pacing", json!(opts.pacing.as_str()));
    for (i, p) in Platform::ALL.iter().enumerate() {
        let (Some(b), Some(f)) = (main.per_platform.get(i), floor.per_platform.get(i)) else {
            continue;
        };
        let n = p.name();
        r.figure(
            &format!("{n}: prompts arrived"),
            &format!("{n}_arrived"),
            b.arrived as f64,
            "",
        )
        .target(
            &format!("{n}: lost"),
            &format!("{n}_lost"),
            b.lost as f64,
            "",
            Goal::AtMost(0.0),
        )
        .figure(
            &format!("{n}: duplicates"),
            &format!("{n}_duplicates"),
            b.duplicates as f64,
            "",
        )
        .figure(
            &format!("{n}: sends answered 429"),
            &format!("{n}_429"),
            b.refused as f64,
            "",
        )
        .target(
            &format!("{n}: share answered 429"),
            &format!("{n}_429_pct"),
            b.refused_pct(),
            "%",
            Goal::AtMost(1.0),
        )
        .figure(
            &format!("{n}: time to the last prompt"),
            &format!("{n}_time_s"),
            b.last.as_secs_f64(),
            "s",
        )
        .figure(
            &format!("{n}: minimum the limits allow"),
            &format!("{n}_minimum_s"),
            b.minimum.as_secs_f64(),
            "s",
        )
        .target(
            &format!("{n}: ratio to the minimum"),
            &format!("{n}_time_ratio"),
            b.time_ratio(),
            "x",
            Goal::AtMost(1.1),
        )
        .figure(
            &format!("{n}: floor (bench paced) time"),
            &format!("{n}_floor_time_s"),
            f.last.as_secs_f64(),
            "s",
        )
        .figure(
            &format!("{n}: ratio to floor"),
            &format!("{n}_ratio_to_floor"),
            ratio(b.last.as_secs_f64(), f.last.as_secs_f64()),
            "x",
        );
        if b.refused > 0 {
            r.note(&format!(
                "{n}: {} of the 429s for the overall limit, {} for a chat's; sent too early by \
                 p50 {:.1} ms, max {:.1} ms",
                b.refused_overall,
                b.refused - b.refused_overall,
                b.early_p50.as_secs_f64() * 1000.0,
                b.early_max.as_secs_f64() * 1000.0,
            ));
        }
        if f.refused > 0 || f.lost > 0 {
            r.note(&format!(
                "{n}: the floor got {} 429s and lost {}",
                f.refused, f.lost
            ));
        }
        r.field(&format!("{n}_expected"), json!(b.expected))
            .field(&format!("{n}_sends"), json!(b.sends))
            .field(&format!("{n}_429_overall"), json!(b.refused_overall))
            .field(
                &format!("{n}_429_early_max_ms"),
                json!(r3(b.early_max.as_secs_f64() * 1000.0)),
            )
            .field(
                &format!("{n}_first_prompt_s"),
                json!(r3(b.first.as_secs_f64())),
            )
            .field(&format!("{n}_floor_429"), json!(f.refused))
            .field(&format!("{n}_floor_lost"), json!(f.lost));
    }
    r.figure(
        "server CPU per prompt",
        "server_cpu_us_per_prompt",
        main.server_cpu.as_secs_f64() * 1e6 / (each * Platform::ALL.len()).max(1) as f64,
        "us",
    )
    .figure(
        "other processes' CPU (noise)",
        "other_cpu_pct",
        main.other_cpu.as_secs_f64() * 100.0 / main.window.as_secs_f64().max(1e-9),
        "%",
    )
    .figure("request errors", "errors", main.errors as f64, "")
    .figure(
        "prompts approvald logged undeliverable",
        "undelivered_logged",
        undelivered as f64,
        "",
    );
    r.field("server_log_lines_429", json!(rate_limit_warnings))
        .field("fake_other_calls", json!(other_calls));
    if let Some(e) = &main.first_error {
        r.note(&format!("first error: {e}"));
        r.field("first_error", json!(e));
    }
    Ok(r.finish())
}

/// Wait until every fake holds `each` sends, nothing arrived for `idle`, or `cap` passed.
async fn wait_for_prompts(fakes: &[Fake], each: usize, t0: Instant, idle: Duration, cap: Duration) {
    let mut last_total = 0;
    let mut last_progress = Instant::now();
    loop {
        let counts: Vec<usize> = fakes.iter().map(Fake::accepted).collect();
        if counts.iter().all(|c| *c >= each) {
            return;
        }
        let total: usize = counts.iter().sum();
        if total != last_total {
            last_total = total;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > idle || t0.elapsed() > cap {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn drive_burst(
    server: &ServerProcess,
    fakes: &[Fake],
    requests: usize,
    chats: usize,
    minimums: &[Duration],
) -> anyhow::Result<BurstRun> {
    let rpc = Arc::new(HttpRpc::new(&server.base_url(), CALLER_TOKEN, false));
    let errors = Arc::new(Errors::default());
    let ids: Vec<String> = (0..requests)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let (cpu_start, self_start, busy_start) = (server.cpu(), self_cpu(), machine_busy());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let rpc = rpc.clone();
        let errors = errors.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move { ask(&rpc, id, n, &errors).await }));
    }
    // approvald gives up on a delivery after 60 s (engine.rs DELIVERY_TIMEOUT); nothing that
    // has not arrived 20 s after the last arrival is still coming.
    wait_for_prompts(
        fakes,
        requests * chats,
        t0,
        Duration::from_secs(20),
        Duration::from_secs(300),
    )
    .await;
    let window = t0.elapsed();
    let server_cpu = server.cpu().saturating_sub(cpu_start);
    let other_cpu = machine_busy()
        .saturating_sub(busy_start)
        .saturating_sub(server_cpu)
        .saturating_sub(self_cpu().saturating_sub(self_start));
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let per_platform = fakes
        .iter()
        .zip(minimums)
        .map(|(f, m)| Burst::from_fake(f, &ids, chats, t0, *m))
        .collect();
    Ok(BurstRun {
        per_platform,
        errors: errors.count.load(Ordering::Relaxed),
        first_error: errors.first(),
        server_cpu,
        other_cpu,
        window,
    })
}

/// The floor: the bench sends each platform's load straight to its fake on the minimum
/// schedule stretched by [`FLOOR_STRETCH`], retrying a 429 after a second (up to 5 times).
async fn drive_burst_floor(
    fakes: &[Fake],
    requests: usize,
    chats: usize,
    minimums: &[Duration],
) -> BurstRun {
    let ids: Vec<String> = (0..requests)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let client = match reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(_) => reqwest::Client::new(),
    };
    // Every platform's sends as (offset, url, body, auth), connections opened first.
    let mut loads = Vec::new();
    for fake in fakes {
        let Some(sample) = fake.sample() else {
            continue;
        };
        let (_, schedule) = minimum_schedule(chats, requests, fake.platform.published_limits());
        // As many connections open as the largest burst needs, so the first burst does not
        // arrive later (connecting) than the next one.
        let mut burst = HashMap::<Duration, usize>::new();
        for (at, _) in &schedule {
            *burst.entry(*at).or_default() += 1;
        }
        let warm = burst.values().copied().max().unwrap_or(1);
        let warming: Vec<_> = (0..warm)
            .map(|_| client.get(fake.warm_url()).send())
            .collect();
        let _ = futures::future::join_all(warming).await;
        let mut next_of_chat = vec![0usize; chats];
        let sends: Vec<(Duration, String, String, String)> = schedule
            .into_iter()
            .filter_map(|(at, chat)| {
                let j = next_of_chat.get_mut(chat)?;
                let id = ids.get(*j)?;
                *j += 1;
                let chat = fake.platform.chat(chat);
                let (url, auth) = fake.send_url(&chat);
                let body = sample.body_for(&chat, id);
                Some((at.mul_f64(FLOOR_STRETCH), url, body, auth))
            })
            .collect();
        loads.push(sends);
    }
    let t0 = Instant::now() + Duration::from_millis(50);
    let mut platforms = Vec::new();
    for sends in loads {
        let client = client.clone();
        platforms.push(tokio::spawn(async move {
            let mut tasks = Vec::new();
            for (at, url, body, auth) in sends {
                tokio::time::sleep_until((t0 + at).into()).await;
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..6 {
                        let mut req = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone());
                        if !auth.is_empty() {
                            req = req.header("authorization", auth.clone());
                        }
                        match req.send().await {
                            Ok(resp) if resp.status().as_u16() == 429 => {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            _ => return,
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
            }
        }));
    }
    for p in platforms {
        let _ = p.await;
    }
    let per_platform = fakes
        .iter()
        .zip(minimums)
        .map(|(f, m)| Burst::from_fake(f, &ids, chats, t0, *m))
        .collect();
    BurstRun {
        per_platform,
        errors: 0,
        first_error: None,
        server_cpu: Duration::ZERO,
        other_cpu: Duration::ZERO,
        window: t0.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn minimum_schedules_for_the_published_limits() {
        // Telegram: 30/s overall binds: 1,000 sends in bursts of 30, the last at 33 s.
        let (t, s) = minimum_schedule(40, 25, Platform::Telegram.published_limits());
        assert_eq!(secs(t), 33.0);
        assert_eq!(s.len(), 1000);
        // Slack: 1/s per channel only: 25 each, the last at 24 s.
        let (t, _) = minimum_schedule(40, 25, Platform::Slack.published_limits());
        assert_eq!(secs(t), 24.0);
        // Discord: 5 per 5 s per channel caps 40 channels at 40/s; 50/s overall.
        let (t, s) = minimum_schedule(40, 25, Platform::Discord.published_limits());
        assert!((23.0..=24.0).contains(&secs(t)), "{t:?}");
        assert_eq!(s.len(), 1000);
        // No limits: everything at once.
        let (t, _) = minimum_schedule(3, 3, Limits::default());
        assert_eq!(t, Duration::ZERO);
    }

    #[test]
    fn a_minimum_schedule_keeps_every_window() {
        for p in Platform::ALL {
            let limits = p.published_limits();
            let (_, s) = minimum_schedule(10, 10, limits);
            for (k, (t, chat)) in s.iter().enumerate() {
                if let Some(l) = limits.overall {
                    let n = s[..=k].iter().filter(|(u, _)| *u + l.window > *t).count();
                    assert!(n <= l.count, "{p:?} overall at {t:?}");
                }
                if let Some(l) = limits.per_chat {
                    let n = s[..=k]
                        .iter()
                        .filter(|(u, c)| c == chat && *u + l.window > *t)
                        .count();
                    assert!(n <= l.count, "{p:?} chat {chat} at {t:?}");
                }
            }
        }
    }
}
