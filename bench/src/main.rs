//! `approvald-bench`: load scenarios for approvald, each run on loopback against a server it
//! starts itself, each measured beside its own floor (a bare echo server, same clients, same
//! machine, same run) because these machines are noisy. Prints a summary with targets and
//! PASS/MISS, then one line of JSON with every figure.
//!
//!     cargo run --release -p approvald-bench -- cycle --mode ws --seconds 10
//!     cargo run --release -p approvald-bench -- all --quick

mod client;
mod cluster_wait;
mod cycle;
mod fakes;
mod fanout;
mod pending_scale;
mod proc;
mod serve;
mod stats;
mod wait_latency;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::proc::ServerProcess;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "approvald-bench",
    about = "Load scenarios for approvald, each beside its own floor"
)]
struct Cli {
    /// Short runs for smoke testing: 2-second runs, 10,000 pending, 2,000 expiring, 100
    /// rate-limited prompts per platform.
    #[arg(long, global = true)]
    quick: bool,
    /// Measured seconds per run (default 10; 5 within `all` and for fanout-latency; 2 with
    /// --quick).
    #[arg(long, global = true)]
    seconds: Option<f64>,
    #[command(subcommand)]
    scenario: Scenario,
}

/// The scenarios, and the two hidden roles this binary plays as a child process.
#[derive(Subcommand, Debug)]
enum Scenario {
    /// Request -> resolve -> answer cycles with many in flight (WebSocket or keep-alive HTTP).
    Cycle {
        #[arg(long, value_enum, default_value_t = Mode::Ws)]
        mode: Mode,
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[arg(long, default_value_t = 4)]
        callers: usize,
        /// How the resolver learns the ids: over an in-process channel (retrying
        /// `unknown_id`), or (ws only) from the `tool.approval.requested` notification too.
        #[arg(long, value_enum, default_value_t = cycle::Handoff::Channel)]
        handoff: cycle::Handoff,
        /// WebSocket only: which notifications the caller connections ask for (`none`, as a
        /// gateway that only makes calls would; `all`, as every client got before `?events=`).
        #[arg(long, value_enum, default_value_t = cycle::CallerEvents::None)]
        caller_events: cycle::CallerEvents,
    },
    /// The cycle over HTTP with a new TCP connection for every call.
    CycleNewconn {
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[arg(long, default_value_t = 4)]
        callers: usize,
    },
    /// Time from a resolve to the blocked caller's answer, decisions at a steady rate.
    WaitLatency {
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Requests kept pending ahead of the resolver.
        #[arg(long, default_value_t = 50)]
        ahead: usize,
    },
    /// Memory, start time and expiry lateness with many pending approvals.
    PendingScale {
        #[arg(long)]
        pending: Option<usize>,
        /// Requests made to expire within the same second in part (d).
        #[arg(long)]
        expiring: Option<usize>,
    },
    /// Request -> prompt at each of three fake platforms (Telegram, Slack, Discord), requests
    /// at a steady rate (default 5-second run).
    FanoutLatency {
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// A burst of prompts to three fake platforms that enforce their published rate limits:
    /// nothing lost, few 429s, total time near the minimum the limits allow.
    RatelimitedFanout {
        /// Prompts per platform (default 1,000; 100 with --quick).
        #[arg(long)]
        prompts: Option<usize>,
        /// Chats (channels) per platform, each request goes to all (default 40; 10 with --quick).
        #[arg(long)]
        chats: Option<usize>,
        /// approvald's pacing settings: its defaults, or a little under the limits.
        #[arg(long, value_enum, default_value_t = fanout::Pacing::Default)]
        pacing: fanout::Pacing,
    },
    /// Two instances on PostgreSQL: a caller blocked on one, the decision sent to the other
    /// (needs a PostgreSQL server; not part of `all`).
    ClusterWait {
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Requests kept pending ahead of the resolver.
        #[arg(long, default_value_t = 50)]
        ahead: usize,
        /// The server to make a scratch database on.
        #[arg(long, env = "APPROVALD_BENCH_DATABASE_URL", default_value = cluster_wait::DEFAULT_DATABASE_URL)]
        database_url: String,
    },
    /// Every scenario in turn, with short runs.
    All {
        #[arg(long)]
        pending: Option<usize>,
    },
    /// (internal) run approvald on a config file, as `approvald serve` does.
    #[command(name = "__serve", hide = true)]
    Serve { config: PathBuf },
    /// (internal) run the echo floor on a port.
    #[command(name = "__echo", hide = true)]
    Echo { port: u16 },
}

/// The transport the callers and the resolver use.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    Ws,
    Http,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ws => "ws",
            Mode::Http => "http",
        }
    }
}

/// Where the servers of one bench run live: a temporary directory holding their data dirs,
/// configs and logs, removed at the end.
pub struct Env {
    tmp: tempfile::TempDir,
    counter: std::sync::atomic::AtomicUsize,
}

impl Env {
    fn new() -> Self {
        Self {
            tmp: tempfile::Builder::new()
                .prefix("approvald-bench-")
                .tempdir()
                .expect("temporary directory"),
            counter: Default::default(),
        }
    }

    /// A fresh, empty data dir.
    pub fn data_dir(&self) -> PathBuf {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.tmp.path().join(format!("server-{n}"));
        std::fs::create_dir_all(&dir).expect("create data dir");
        dir
    }

    /// approvald on a fresh data dir and a free port.
    pub async fn approvald(&self) -> anyhow::Result<ServerProcess> {
        let dir = self.data_dir();
        self.approvald_on(&dir, proc::free_port()).await
    }

    /// approvald on `data_dir` (kept across restarts) and `port`.
    pub async fn approvald_on(&self, data_dir: &Path, port: u16) -> anyhow::Result<ServerProcess> {
        let config = proc::write_config(data_dir, &data_dir.join("db"), port);
        ServerProcess::approvald(&config, port, self.tmp.path()).await
    }

    /// approvald on a fresh data dir and a free port, with `extra` TOML added to its config.
    pub async fn approvald_with(&self, extra: &str) -> anyhow::Result<ServerProcess> {
        let dir = self.data_dir();
        let port = proc::free_port();
        let config = proc::write_config_with(&dir, &dir.join("db"), port, extra);
        ServerProcess::approvald(&config, port, self.tmp.path()).await
    }

    /// The directory logs and configs go to.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub async fn echo(&self) -> anyhow::Result<ServerProcess> {
        ServerProcess::echo(self.tmp.path()).await
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(Some(json)) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Run the scenario; the JSON line to print last (none for the internal roles).
async fn dispatch(cli: Cli) -> anyhow::Result<Option<Value>> {
    let quick = cli.quick;
    let seconds = |within_all: bool| {
        cli.seconds.unwrap_or(if quick {
            2.0
        } else if within_all {
            5.0
        } else {
            10.0
        })
    };
    let pending_default = if quick { 10_000 } else { 100_000 };
    let expiring_default = if quick { 2_000 } else { 10_000 };
    let pending_opts = |pending: Option<usize>, expiring: Option<usize>| {
        let pending = pending.unwrap_or(pending_default);
        pending_scale::PendingOptions {
            pending,
            expiring: expiring.unwrap_or(expiring_default.min(pending.max(1))),
            lead: Duration::from_secs(if quick { 4 } else { 8 }),
            connections: 4,
            window: 64,
        }
    };
    let cycle_opts = |mode, new_connection, in_flight, callers, within_all| cycle::CycleOptions {
        mode,
        new_connection,
        seconds: seconds(within_all),
        in_flight,
        callers,
        handoff: cycle::Handoff::Channel,
        caller_events: cycle::CallerEvents::None,
    };
    let wait_opts = |rate, ahead, within_all| wait_latency::WaitOptions {
        rate,
        seconds: seconds(within_all),
        ahead,
        caller_connections: 2,
    };
    // fanout-latency runs 5 s by default, as within `all`.
    let fanout_latency_opts = |rate| fanout::LatencyOptions {
        rate,
        seconds: seconds(true),
    };
    let ratelimited_opts =
        |prompts: Option<usize>, chats: Option<usize>, pacing| fanout::RateLimitedOptions {
            prompts: prompts.unwrap_or(if quick { 100 } else { 1000 }),
            chats: chats.unwrap_or(if quick { 10 } else { 40 }),
            pacing,
        };
    let json = match cli.scenario {
        Scenario::Serve { config } => {
            serve::serve(&config).await?;
            return Ok(None);
        }
        Scenario::Echo { port } => {
            serve::echo(port).await?;
            return Ok(None);
        }
        Scenario::Cycle {
            mode,
            in_flight,
            callers,
            handoff,
            caller_events,
        } => {
            if handoff == cycle::Handoff::Event && mode != Mode::Ws {
                anyhow::bail!("--handoff event needs --mode ws (HTTP gets no notifications)");
            }
            let opts = cycle::CycleOptions {
                handoff,
                caller_events,
                ..cycle_opts(mode, false, in_flight, callers, false)
            };
            cycle::run(&Env::new(), opts).await?
        }
        Scenario::CycleNewconn { in_flight, callers } => {
            cycle::run(
                &Env::new(),
                cycle_opts(Mode::Http, true, in_flight, callers, false),
            )
            .await?
        }
        Scenario::WaitLatency { rate, ahead } => {
            wait_latency::run(&Env::new(), wait_opts(rate, ahead, false)).await?
        }
        Scenario::ClusterWait {
            rate,
            ahead,
            database_url,
        } => cluster_wait::run(&Env::new(), wait_opts(rate, ahead, false), &database_url).await?,
        Scenario::PendingScale { pending, expiring } => {
            pending_scale::run(&Env::new(), pending_opts(pending, expiring)).await?
        }
        Scenario::FanoutLatency { rate } => {
            fanout::run_latency(&Env::new(), fanout_latency_opts(rate)).await?
        }
        Scenario::RatelimitedFanout {
            prompts,
            chats,
            pacing,
        } => fanout::run_ratelimited(&Env::new(), ratelimited_opts(prompts, chats, pacing)).await?,
        Scenario::All { pending } => {
            let env = Env::new();
            let results = vec![
                cycle::run(&env, cycle_opts(Mode::Ws, false, 64, 4, true)).await?,
                cycle::run(&env, cycle_opts(Mode::Http, false, 64, 4, true)).await?,
                cycle::run(&env, cycle_opts(Mode::Http, true, 64, 4, true)).await?,
                wait_latency::run(&env, wait_opts(200.0, 50, true)).await?,
                pending_scale::run(&env, pending_opts(pending, None)).await?,
                fanout::run_latency(&env, fanout_latency_opts(200.0)).await?,
                fanout::run_ratelimited(
                    &env,
                    ratelimited_opts(None, None, fanout::Pacing::Default),
                )
                .await?,
            ];
            let misses: Vec<Value> = results
                .iter()
                .flat_map(|r| {
                    let scenario = r["scenario"].as_str().unwrap_or("?").to_string();
                    let mode = r["mode"]
                        .as_str()
                        .map(|m| format!("/{m}"))
                        .unwrap_or_default();
                    r["misses"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |m| {
                            json!(format!("{scenario}{mode}:{}", m.as_str().unwrap_or("?")))
                        })
                })
                .collect();
            println!();
            if misses.is_empty() {
                println!("all scenarios: every target met");
            } else {
                println!(
                    "all scenarios: {} target(s) missed: {}",
                    misses.len(),
                    misses
                        .iter()
                        .filter_map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            json!({ "scenario": "all", "misses": misses, "results": results })
        }
    };
    Ok(Some(json))
}
