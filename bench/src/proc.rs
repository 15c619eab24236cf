//! The servers under test as separate processes (this binary re-executed with `__serve` or
//! `__echo`), so their CPU time and memory can be read from `/proc/<pid>` apart from the load
//! clients', and so a restart is a real process start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, ChildStdin, Command};

/// The tokens written into the bench config.
pub const CALLER_TOKEN: &str = "bench-caller-token";
pub const RESOLVER_TOKEN: &str = "bench-alice-token";
pub const ADMIN_TOKEN: &str = "bench-admin-token";

/// Which server a [`ServerProcess`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// approvald itself, on a data dir.
    Approvald,
    /// The bare axum echo server: the floor.
    Echo,
}

/// A server under test running as a child process. Stopping it closes its stdin (the child
/// shuts down gracefully on EOF); dropping it kills it, so nothing outlives the bench.
pub struct ServerProcess {
    pub kind: Kind,
    pub pid: u32,
    pub port: u16,
    /// From spawn to the first successful `GET /healthz`.
    pub startup: Duration,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free loopback port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// The approvald config the bench runs with: loopback, durable SQLite in `data_dir`, one
/// token per role, Alice an approver, no channels.
pub fn write_config(dir: &Path, data_dir: &Path, port: u16) -> PathBuf {
    write_config_with(dir, data_dir, port, "")
}

/// [`write_config`] with `extra` TOML appended (channels, `[delivery]`).
pub fn write_config_with(dir: &Path, data_dir: &Path, port: u16, extra: &str) -> PathBuf {
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
max_body_bytes = 1048576

[storage]
data_dir = {data_dir:?}

[approvals]
default_timeout_ms = 600000

[[tokens]]
name = "bench-caller"
token = "{CALLER_TOKEN}"
scopes = ["request"]

[[tokens]]
name = "bench-alice"
token = "{RESOLVER_TOKEN}"
scopes = ["resolve"]
person = "alice"

[[tokens]]
name = "bench-admin"
token = "{ADMIN_TOKEN}"
scopes = ["admin"]

[[people]]
name = "alice"
display_name = "Alice"
approver = true
"#,
        data_dir = data_dir.display().to_string()
    );
    text.push_str(extra);
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write bench config");
    path
}

impl ServerProcess {
    /// Start approvald on `config` (written by [`write_config`]); `port` must match it.
    pub async fn approvald(config: &Path, port: u16, log_dir: &Path) -> anyhow::Result<Self> {
        let args = vec!["__serve".to_string(), config.display().to_string()];
        Self::spawn(Kind::Approvald, args, port, log_dir).await
    }

    /// Start the echo floor on a free port.
    pub async fn echo(log_dir: &Path) -> anyhow::Result<Self> {
        let port = free_port();
        let args = vec!["__echo".to_string(), port.to_string()];
        Self::spawn(Kind::Echo, args, port, log_dir).await
    }

    async fn spawn(
        kind: Kind,
        args: Vec<String>,
        port: u16,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locate own executable")?;
        let log = log_dir.join(format!("{kind:?}-{port}.log").to_lowercase());
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .context("open server log")?;
        // APPROVALD_BENCH_WRAP="valgrind --tool=callgrind" (or "perf record -g -o f --")
        // runs the server under a profiler. The pid then is the wrapper's.
        let wrap = std::env::var("APPROVALD_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(first) => {
                let mut c = Command::new(first);
                c.args(words).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(&args)
            .env(
                "APPROVALD_LOG",
                std::env::var("APPROVALD_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().context("spawn server process")?;
        let pid = child.id().context("server pid")?;
        let stdin = child.stdin.take();
        let mut me = Self {
            kind,
            pid,
            port,
            startup: Duration::ZERO,
            child,
            stdin,
            log,
        };
        me.startup = me.wait_healthy(started).await?;
        Ok(me)
    }

    /// Poll `GET /healthz` every 2 ms until it answers 200; the time since `started`.
    async fn wait_healthy(&mut self, started: Instant) -> anyhow::Result<Duration> {
        let deadline = started + Duration::from_secs(120);
        loop {
            if healthz(self.port).await {
                return Ok(started.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "{:?} server exited with {status} before serving; log {}:\n{}",
                    self.kind,
                    self.log.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("{:?} server not serving after 120 s", self.kind);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/rpc/ws", self.port)
    }

    /// CPU time used so far (user + system).
    pub fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/{}/stat", self.pid)).unwrap_or_default()
    }

    /// What the server has written so far (`/proc/<pid>/io`).
    pub fn io(&self) -> IoCounts {
        io_of(self.pid).unwrap_or_default()
    }

    /// Resident memory now, in MiB.
    pub fn rss_mb(&self) -> f64 {
        status_kb(self.pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0
    }

    /// Peak resident memory, in MiB.
    pub fn peak_rss_mb(&self) -> f64 {
        status_kb(self.pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0
    }

    /// CPU time by thread name (tokio workers, SQLite connection threads, ...).
    pub fn thread_cpu(&self) -> BTreeMap<String, Duration> {
        thread_cpu(self.pid)
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// How many lines the server logged (at warn: one per unwatched request, see BENCHMARKS.md).
    pub fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// How many lines of the server's log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// Close stdin (graceful shutdown) and wait up to 15 s, then kill. The time it took.
    pub async fn stop(mut self) -> Duration {
        let t = Instant::now();
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "{:?} server did not stop within 15 s: killing it",
                    self.kind
                );
                let _ = self.child.kill().await;
            }
        }
        t.elapsed()
    }
}

/// One `GET /healthz` on a fresh connection: true on 200.
pub async fn healthz(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => got += n,
        }
    }
    buf.starts_with(b"HTTP/1.1 200")
}

/// Clock ticks per second for `/proc/*/stat` times.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is touched.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime + stime of a `/proc/.../stat` file.
fn cpu_of(path: &str) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    let (_, _, utime, stime) = parse_stat(&text)?;
    let ticks = utime + stime;
    Some(Duration::from_micros(
        ticks * 1_000_000 / ticks_per_second(),
    ))
}

/// (comm, state, utime, stime) of a stat line; comm may hold spaces and parentheses, so the
/// fields are counted from the last ')'.
fn parse_stat(text: &str) -> Option<(String, char, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let state = rest.first()?.chars().next()?;
    let utime = rest.get(11)?.parse().ok()?;
    let stime = rest.get(12)?.parse().ok()?;
    Some((comm, state, utime, stime))
}

/// The CPU time of this (the load-generating) process so far.
pub fn self_cpu() -> Duration {
    cpu_of("/proc/self/stat").unwrap_or_default()
}

/// CPU time the whole machine spent busy so far (all cores; idle and iowait excluded), to
/// tell how much of the run other processes took.
pub fn machine_busy() -> Duration {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user). Idle and
    // iowait are not busy; irq and softirq are left out because the loopback traffic of the
    // bench itself is handled there, unaccounted to any process.
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| !(3..=6).contains(i))
        .map(|(_, v)| *v)
        .sum();
    Duration::from_micros(busy * 1_000_000 / ticks_per_second())
}

/// A process's write counters: bytes it caused to be written to storage (its WAL appends and
/// checkpoint copies; page-cache writes counted when made, whether or not synced yet), and
/// its `write`/`pwrite` calls (SQLite writes a WAL frame with two; sockets are written with
/// `send`, which is not counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounts {
    pub storage_bytes: u64,
    pub write_calls: u64,
}

impl IoCounts {
    pub fn since(self, earlier: IoCounts) -> IoCounts {
        IoCounts {
            storage_bytes: self.storage_bytes.saturating_sub(earlier.storage_bytes),
            write_calls: self.write_calls.saturating_sub(earlier.write_calls),
        }
    }
}

fn io_of(pid: u32) -> Option<IoCounts> {
    parse_io(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
}

fn parse_io(text: &str) -> Option<IoCounts> {
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .parse()
            .ok()
    };
    Some(IoCounts {
        storage_bytes: field("write_bytes:")?,
        write_calls: field("syscw:")?,
    })
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU per thread name; threads of one name (the tokio workers) are added up. The store's
/// writer and its background checkpointer are threads of their own ("sqlite writer",
/// "sqlite checkpoint", which the kernel cuts to "sqlite checkpoi"); sqlx runs each read
/// connection on a thread named "sqlx-sqlite-worker-N", cut to "sqlx-sqlite-wor": those are
/// added up as one.
pub fn thread_cpu(pid: u32) -> BTreeMap<String, Duration> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    let tps = ticks_per_second();
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((comm, _, u, s)) = parse_stat(&text) else {
            continue;
        };
        let cpu = Duration::from_micros((u + s) * 1_000_000 / tps);
        let name = if comm.starts_with("sqlx-sqlite") {
            "sqlite reader threads".to_string()
        } else if comm.starts_with("sqlite checkpoi") {
            "sqlite checkpoint".to_string()
        } else {
            comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
                .to_string()
        };
        *out.entry(name).or_insert(Duration::ZERO) += cpu;
    }
    out
}

/// Per-thread CPU between two readings, largest first, as "name 41%" of the total.
pub fn thread_share(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
) -> Vec<(String, Duration)> {
    let mut diff: Vec<(String, Duration)> = after
        .iter()
        .map(|(k, v)| {
            let b = before.get(k).copied().unwrap_or_default();
            (k.clone(), v.saturating_sub(b))
        })
        .filter(|(_, d)| !d.is_zero())
        .collect();
    diff.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_counters_parse() {
        let text = "rchar: 10\nwchar: 20\nsyscr: 3\nsyscw: 4\nread_bytes: 0\n\
                    write_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(
            super::parse_io(text),
            Some(super::IoCounts {
                storage_bytes: 8192,
                write_calls: 4
            })
        );
        assert_eq!(super::parse_io("rchar: 10\n"), None);
    }

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "1234 (tokio (rt) worker) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 1";
        let (comm, state, u, s) = parse_stat(line).expect("parses");
        assert_eq!(comm, "tokio (rt) worker");
        assert_eq!(state, 'S');
        assert_eq!((u, s), (250, 31));
    }
}
