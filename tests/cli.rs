//! The command line, as a new user runs it: the README quickstart (start, request from the CLI,
//! approve from the CLI, the caller unblocks), exit codes, audit JSON lines, check-config, render.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod support;
use support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_approvald");

/// `approvald serve` on the bundled example config, moved to a free port and a temp data dir.
struct Served {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let example =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
        let config = example
            .replace("127.0.0.1:8001", &format!("127.0.0.1:{port}"))
            .replace(
                "data_dir = \"data\"",
                &format!(
                    "data_dir = {:?}",
                    dir.path().join("data").display().to_string()
                ),
            );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let mut child = Command::new(BIN)
            .arg("serve")
            .current_dir(dir.path())
            .env("APPROVALD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self {
                    child,
                    url,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("approvald serve did not start");
    }

    fn cli(&self, token: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("APPROVALD_URL", &self.url)
            .env("APPROVALD_TOKEN", token)
            .output()
            .unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn quickstart_request_waits_until_approved_from_the_cli() {
    let s = Served::start();
    let caller = Command::new(BIN)
        .args([
            "request",
            "--tool",
            "shell",
            "--command",
            "rm -rf ./build",
            "--risk",
            "high",
            "--agent",
            "release-bot",
        ])
        .env("APPROVALD_URL", &s.url)
        .env("APPROVALD_TOKEN", "dev-gateway-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pending = String::new();
    for _ in 0..100 {
        pending = stdout(&s.cli("dev-alice-token", &["pending"]));
        if pending.contains("rm -rf ./build") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pending.contains("rm -rf ./build"), "{pending}");
    let id = pending.split_whitespace().next().unwrap().to_string();
    let approve = s.cli(
        "dev-alice-token",
        &["approve", &id[..8], "--reason", "checked"],
    );
    assert!(approve.status.success(), "{approve:?}");
    assert!(
        stdout(&approve).contains("approved"),
        "{}",
        stdout(&approve)
    );
    let out = caller.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the caller unblocks with exit 0: {out:?}"
    );
    let text = stdout(&out);
    assert!(
        text.contains("approved") && text.contains("Alice via cli"),
        "{text}"
    );

    // Denials and refusals give non-zero exit codes with plain errors.
    let denied = Command::new(BIN)
        .args([
            "request",
            "--tool",
            "shell",
            "--command",
            "shutdown now",
            "--no-wait",
        ])
        .env("APPROVALD_URL", &s.url)
        .env("APPROVALD_TOKEN", "dev-gateway-token")
        .output()
        .unwrap();
    let id = stdout(&denied)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let gateway_try = s.cli("dev-gateway-token", &["deny", &id]);
    assert_eq!(gateway_try.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gateway_try.stderr).contains("not_an_approver"));
    assert!(
        s.cli("dev-alice-token", &["deny", &id, "--reason", "no"])
            .status
            .success()
    );
    let again = s.cli("dev-alice-token", &["approve", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already_resolved"));

    // A rule decides `ls` at low risk on its own; exit code 2 for a denial by rule.
    let ls = s.cli(
        "dev-gateway-token",
        &[
            "request",
            "--tool",
            "shell",
            "--command",
            "ls -la",
            "--risk",
            "low",
        ],
    );
    assert_eq!(ls.status.code(), Some(0), "{ls:?}");
    let wipe = s.cli(
        "dev-gateway-token",
        &["request", "--tool", "shell", "--command", "rm -rf /"],
    );
    assert_eq!(wipe.status.code(), Some(2), "{wipe:?}");

    // The audit log as JSON lines, with identities.
    let audit = s.cli("dev-admin-token", &["audit", "--json"]);
    assert!(audit.status.success());
    let lines: Vec<serde_json::Value> = stdout(&audit)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(lines.iter().any(|e| e["event"] == "decision"
        && e["actor"]["person"] == "alice"
        && e["transport"] == "cli"));
    assert!(
        lines
            .iter()
            .any(|e| e["event"] == "refused" && e["detail"]["kind"] == "not_an_approver")
    );
    let secrets = stdout(&audit);
    assert!(
        !secrets.contains("dev-alice-token") && !secrets.contains("dev-gateway-token"),
        "no secrets in the audit trail"
    );

    let rules = s.cli("dev-admin-token", &["rules", "list"]);
    assert!(stdout(&rules).contains("read-only-listing"));
}

#[test]
fn client_errors_are_clear() {
    let no_server = Command::new(BIN)
        .args(["pending"])
        .env("APPROVALD_URL", format!("http://127.0.0.1:{}", free_port()))
        .env("APPROVALD_TOKEN", "whatever")
        .output()
        .unwrap();
    assert_eq!(no_server.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_server.stderr).contains("cannot reach approvald"));
    let no_token = Command::new(BIN)
        .args(["pending"])
        .env_remove("APPROVALD_TOKEN")
        .output()
        .unwrap();
    assert_eq!(no_token.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("no token"));
}

#[test]
fn check_config_names_the_bad_key_and_render_previews_templates() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[delivery]\nsession_filter = ['/(unclosed/']\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("delivery.session_filter") && err.contains("bad regex"),
        "{err}"
    );

    let ok = Command::new(BIN)
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");

    let html = Command::new(BIN)
        .args(["render", "--platform", "telegram", "--template", "request"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(html.status.success(), "{html:?}");
    let text = stdout(&html);
    assert!(
        text.contains("<b>Approval required</b>") && text.contains("&lt;done&gt;"),
        "{text}"
    );
}

#[test]
fn watch_prints_live_events_as_json_lines() {
    use std::io::{BufRead, BufReader};
    let s = Served::start();
    let mut watch = Command::new(BIN)
        .args(["watch", "--json"])
        .env("APPROVALD_URL", &s.url)
        .env("APPROVALD_TOKEN", "dev-alice-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Keep asking until the watcher is subscribed and reports the request.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut id = String::new();
    let mut attempts = 0;
    while std::time::Instant::now() < deadline
        && !seen
            .iter()
            .any(|l: &String| l.contains("tool.approval.resolved"))
    {
        if id.is_empty() {
            // A new command each time: an identical ask would fold into the first one, and
            // announce nothing new to a watcher that subscribed after it.
            attempts += 1;
            let command = format!("make release {attempts}");
            let out = s.cli(
                "dev-gateway-token",
                &[
                    "request",
                    "--tool",
                    "shell",
                    "--command",
                    &command,
                    "--no-wait",
                ],
            );
            let candidate = stdout_text(&out)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                seen.push(line);
                id = candidate;
                assert!(s.cli("dev-alice-token", &["approve", &id]).status.success());
            }
        } else if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(line);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let events: Vec<serde_json::Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "tool.approval.requested"),
        "{seen:?}"
    );
    let resolved = events
        .iter()
        .find(|e| e["event"] == "tool.approval.resolved")
        .unwrap_or_else(|| panic!("no resolved event in {seen:?}"));
    assert_eq!(resolved["data"]["id"], id.as_str());
    assert_eq!(resolved["data"]["decided_by"]["person"], "alice");
}

fn stdout_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn operators_follow_and_abort_a_task_from_the_cli() {
    let s = Served::start();
    let created = s.cli(
        "dev-gateway-token",
        &[
            "request",
            "--tool",
            "shell",
            "--command",
            "make deploy",
            "--no-wait",
        ],
    );
    assert!(created.status.success());
    let id = stdout(&created)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    // Still waiting for approval: nothing to abort, and the CLI says why.
    let early = s.cli("dev-alice-token", &["abort", &id]);
    assert_eq!(early.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("invalid_transition"),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    assert!(s.cli("dev-alice-token", &["approve", &id]).status.success());
    let shown = stdout(&s.cli("dev-alice-token", &["task", &id]));
    assert!(shown.contains("status      approved"), "{shown}");

    let aborted = s.cli("dev-alice-token", &["abort", &id, "--reason", "wrong box"]);
    assert!(aborted.status.success(), "{:?}", aborted);
    assert!(
        stdout(&aborted).contains("aborted by Alice: wrong box"),
        "{}",
        stdout(&aborted)
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&s.cli("dev-alice-token", &["task", &id, "--json"]))).unwrap();
    assert_eq!(json["status"], "aborted");
    assert_eq!(json["abort"]["by"]["transport"], "cli");
    let queue = stdout(&s.cli("dev-admin-token", &["queue"]));
    assert!(queue.contains("aborted           1"), "{queue}");
}
