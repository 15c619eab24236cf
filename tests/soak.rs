//! Load: the real binary under a minute of mixed traffic (requests that wait, decisions over
//! the API and the control UI, requests that expire, SSE and WebSocket watchers) with no
//! errors, and its memory after the run within a stated bound of its memory once warm.
//! `APPROVALD_SOAK_SECONDS` shortens or lengthens the run (default 60).

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use support::*;

/// How much the server's resident memory may grow between warm-up and the end of the run.
const GROWTH_BOUND_KB: u64 = 40 * 1024;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    approved: AtomicU64,
    denied: AtomicU64,
    expired: AtomicU64,
    ui_decisions: AtomicU64,
    events: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn error(&self, what: &str, detail: &Value) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("soak error in {what}: {detail}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_mixed_traffic_has_no_errors_and_bounded_memory() {
    let seconds: u64 = std::env::var("APPROVALD_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = tmp.path().join("config.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\ndata_dir = {:?}\n{}",
        tmp.path().join("data").display().to_string(),
        base_for_binary()
    )
    .unwrap();
    drop(f);
    let child = Command::new(env!("CARGO_BIN_EXE_approvald"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("APPROVALD_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn approvald");
    let pid = child.id();
    let _daemon = Daemon(child);
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tally = Arc::new(Tally::default());
    // Requesters stop first; deciders and watchers go on until the last caller is answered.
    let stop_requests = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut requesters = Vec::new();

    // Watchers: two SSE streams.
    for _ in 0..2 {
        let (url, tally, stop) = (url.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .get(format!("{url}/events"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("events stream");
            let mut body = resp.bytes_stream();
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), body.next()).await {
                    Ok(Some(Ok(_))) => {
                        tally.events.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
        }));
    }

    // Requesters: callers that wait for the decision; every tenth expires on its own.
    for worker in 0..6u64 {
        let (url, tally, stop) = (url.clone(), tally.clone(), stop_requests.clone());
        requesters.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let expiring = n.is_multiple_of(10);
                let timeout = if expiring { 300 } else { 30_000 };
                let r = rpc_at(&url, GATEWAY, "tool.approval.request", json!({
                    "tool": "shell", "command": format!("job {worker}-{n}"), "timeout_ms": timeout,
                    "agent_id": format!("agent-{worker}"),
                }))
                .await;
                tally.requests.fetch_add(1, Ordering::Relaxed);
                match r["result"]["status"].as_str() {
                    Some("approved") => tally.approved.fetch_add(1, Ordering::Relaxed),
                    Some("denied") => tally.denied.fetch_add(1, Ordering::Relaxed),
                    Some("expired") => tally.expired.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        tally.error("request", &r);
                        0
                    }
                };
            }
        }));
    }

    // Deciders: Alice over the API, Bob in the control UI, on whatever is pending.
    {
        let (url, tally, stop) = (url.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let list = rpc_at(
                    &url,
                    ALICE,
                    "tool.approval.list",
                    json!({ "status": "pending", "limit": 50 }),
                )
                .await;
                for item in list["result"]["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    // Leave the short ones to expire.
                    if item["request"]["command"]
                        .as_str()
                        .is_some_and(|c| c.ends_with('0'))
                    {
                        continue;
                    }
                    let id = item["id"].as_str().unwrap_or_default();
                    let r = rpc_at(
                        &url,
                        ALICE,
                        "tool.approval.resolve",
                        json!({ "id": id, "decision": "approve-once" }),
                    )
                    .await;
                    let ok = r.get("result").is_some()
                        || matches!(
                            r["error"]["data"]["kind"].as_str(),
                            Some("already_resolved" | "expired")
                        );
                    if !ok {
                        tally.error("resolve", &r);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    {
        let (url, tally, stop) = (url.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let ui = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let login = ui
                .post(format!("{url}/ui/login"))
                .form(&[("token", "bob-ui-token-1")])
                .send()
                .await
                .unwrap();
            let cookie = login.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string();
            let html = ui
                .get(format!("{url}/ui"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let at = html.find("name=\"csrf-token\" content=\"").expect("csrf") + 27;
            let csrf = html[at..at + html[at..].find('"').unwrap()].to_string();
            while !stop.load(Ordering::Relaxed) {
                let page = ui
                    .get(format!("{url}/ui/fragments/pending"))
                    .header("cookie", &cookie)
                    .send()
                    .await;
                let Ok(page) = page else { continue };
                let html = page.text().await.unwrap_or_default();
                // Deny one pending request per round from the UI, as a person would.
                if let Some(at) = html.find("/ui/requests/") {
                    let id: String = html[at + 13..]
                        .chars()
                        .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
                        .collect();
                    let res = ui
                        .post(format!("{url}/ui/requests/{id}/decide"))
                        .header("cookie", &cookie)
                        .header("accept", "application/json")
                        .form(&[
                            ("csrf", csrf.as_str()),
                            ("decision", "deny"),
                            ("reason", "soak"),
                        ])
                        .send()
                        .await;
                    if let Ok(res) = res {
                        let ok = res.status().is_success() || res.status() == 409;
                        let body: Value = res.json().await.unwrap_or(Value::Null);
                        if ok {
                            tally.ui_decisions.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tally.error("ui decide", &body);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    let warm_at = Duration::from_secs((seconds / 6).max(2));
    tokio::time::sleep(warm_at).await;
    let warm = rss_kb(pid);
    tokio::time::sleep(Duration::from_secs(seconds) - warm_at).await;
    stop_requests.store(true, Ordering::Relaxed);
    for t in requesters {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
    }
    let end = rss_kb(pid);
    let t = &tally;
    eprintln!(
        "soak {seconds}s: {} requests ({} approved, {} denied, {} expired), {} UI decisions, {} events seen, {} errors; RSS warm {} KB, end {} KB",
        t.requests.load(Ordering::Relaxed),
        t.approved.load(Ordering::Relaxed),
        t.denied.load(Ordering::Relaxed),
        t.expired.load(Ordering::Relaxed),
        t.ui_decisions.load(Ordering::Relaxed),
        t.events.load(Ordering::Relaxed),
        t.errors.load(Ordering::Relaxed),
        warm,
        end
    );
    assert_eq!(t.errors.load(Ordering::Relaxed), 0);
    assert!(t.approved.load(Ordering::Relaxed) > 0);
    assert!(t.expired.load(Ordering::Relaxed) > 0);
    assert!(t.ui_decisions.load(Ordering::Relaxed) > 0);
    assert!(t.events.load(Ordering::Relaxed) > 0);
    assert!(warm > 0 && end > 0, "read the server's memory");
    assert!(
        end <= warm + GROWTH_BOUND_KB,
        "memory grew from {warm} KB to {end} KB (bound {GROWTH_BOUND_KB} KB)"
    );
    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
}
