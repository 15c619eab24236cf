//! Secrets never leak: the real binary runs a full scenario (three platforms against their
//! fakes, an unreachable upstream assistant, failing deliveries, forged webhooks, wrong
//! tokens, the control UI, the assistant protocol) with known secret values and debug logging;
//! none of them may appear in its logs, in any API answer, the audit log, the metrics, or the
//! database file.

#[path = "support/fake_discord.rs"]
mod fake_discord;
#[path = "support/fake_slack.rs"]
mod fake_slack;
#[path = "support/fake_telegram.rs"]
mod fake_telegram;
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use fake_discord::FakeDiscord;
use fake_slack::FakeSlack;
use fake_telegram::{FakeTelegram, Fault};
use serde_json::{Value, json};
use support::*;

const TELEGRAM_TOKEN: &str = "7700112233:AAF-telegram-SECRET-token-xyz";
const SLACK_SIGNING: &str = "slack-signing-SECRET-0f9e8d7c";
const UPSTREAM_KEY: &str = "upstream-assistant-SECRET-key-4242";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_answers_audit_metrics_or_the_database() {
    let telegram = FakeTelegram::start(TELEGRAM_TOKEN);
    let slack = FakeSlack::start().await;
    let discord = FakeDiscord::start().await;
    let secrets = [
        GATEWAY,
        ALICE,
        BOB,
        ADMIN,
        BOTH,
        "alice-ui-token-1",
        "bob-ui-token-1",
        TELEGRAM_TOKEN,
        fake_slack::BOT_TOKEN,
        SLACK_SIGNING,
        fake_discord::BOT_TOKEN,
        UPSTREAM_KEY,
    ];

    let public_key: String = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
        .verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let data = tmp.path().join("data");
    let config = tmp.path().join("config.toml");
    let closed = free_port();
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        r#"[server]
listen = "127.0.0.1:{port}"
[storage]
data_dir = {data:?}
[approvals]
allowed_approvers = ["assistant", "user_request", "rules_based"]
[assistant]
url = "http://127.0.0.1:{closed}"
api_key = "{UPSTREAM_KEY}"
max_attempts = 1
timeout_ms = 500
health_check_interval_ms = 200
[tasks]
approve_wait_ms = 100
[delivery]
mode = "targets"
targets = [{{ channel = "telegram", to = "-1001" }}, {{ channel = "slack", to = "C0SECRET" }}, {{ channel = "discord", to = "1100000000000000001" }}]
timeout_notice_targets = [{{ channel = "slack", to = "C0OPS" }}]
{base}
[channels.telegram]
bot_token = "{TELEGRAM_TOKEN}"
api_url = "{tg}"
poll_timeout_secs = 1
retry_base_ms = 10
max_retries = 1
[channels.slack]
bot_token = "{slack_token}"
signing_secret = "{SLACK_SIGNING}"
api_url = "{slack_api}"
backoff_base_ms = 10
max_retries = 1
[channels.discord]
bot_token = "{discord_token}"
application_id = "{app}"
public_key = "{public_key}"
api_url = "{discord_api}"
retry_base_ms = 10
"#,
        data = data.display().to_string(),
        base = base_for_binary(),
        tg = telegram.url,
        slack_token = fake_slack::BOT_TOKEN,
        slack_api = slack.api_url(),
        discord_token = fake_discord::BOT_TOKEN,
        app = fake_discord::APP_ID,
        discord_api = discord.url,
    )
    .unwrap();
    drop(f);

    let log_path = tmp.path().join("approvald.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_approvald"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("APPROVALD_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn approvald");

    let http = reqwest::Client::new();
    let mut seen = String::new();
    let mut ready = false;
    for _ in 0..400 {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await {
            seen.push_str(&r.text().await.unwrap_or_default());
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "approvald did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    // Requests delivered to all three platforms, and one whose Telegram send fails for good.
    let a = rpc_at(
        &url,
        GATEWAY,
        "tool.approval.request",
        json!({ "tool": "shell", "command": "deploy", "wait": false }),
    )
    .await;
    seen.push_str(&a.to_string());
    telegram.fail_next("sendMessage", Fault::Server(500));
    telegram.fail_next("sendMessage", Fault::Server(500));
    telegram.fail_next("sendMessage", Fault::Server(500));
    let b = rpc_at(
        &url,
        GATEWAY,
        "tool.approval.request",
        json!({ "tool": "shell", "command": "reboot", "wait": false, "timeout_ms": 1500 }),
    )
    .await;
    seen.push_str(&b.to_string());
    let id = a["result"]["id"].as_str().unwrap().to_string();
    let r = rpc_at(
        &url,
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve-once" }),
    )
    .await;
    seen.push_str(&r.to_string());

    // The assistant protocol with the upstream down (fallback), a report, the queue.
    for (path, body) in [
        (
            "/api/approve",
            json!({ "task_id": "s-1", "task_type": "chat", "estimated_cost": 0.1 }),
        ),
        (
            "/api/execution-report",
            json!({ "task_id": "s-1", "status": "completed" }),
        ),
    ] {
        let r = http
            .post(format!("{url}{path}"))
            .bearer_auth(GATEWAY)
            .json(&body)
            .send()
            .await
            .unwrap();
        seen.push_str(&r.text().await.unwrap());
    }
    for path in [
        "/api/queue/status",
        "/api/approval/health",
        "/healthz",
        "/metrics",
    ] {
        let r = http
            .get(format!("{url}{path}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        seen.push_str(&r.text().await.unwrap());
    }

    // Wrong and partial tokens, forged webhooks.
    for token in [
        "gateway-token-2",
        "gateway-token",
        "Bearer gateway-token-1x",
    ] {
        let r = rpc_at(&url, token, "tool.approval.list", json!({})).await;
        seen.push_str(&r.to_string());
    }
    for path in ["/slack/interactions", "/discord/interactions"] {
        let r = http
            .post(format!("{url}{path}"))
            .header("x-slack-signature", "v0=00")
            .header("x-slack-request-timestamp", "1")
            .body("payload=%7B%7D")
            .send()
            .await
            .unwrap();
        seen.push_str(&r.text().await.unwrap());
    }

    // The control UI: sign in, look, sign out; a wrong UI token.
    let ui = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = ui
        .post(format!("{url}/ui/login"))
        .form(&[("token", "alice-ui-token-1")])
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
    seen.push_str(&cookie);
    for path in ["/ui", "/ui/history", &format!("/ui/requests/{id}")] {
        let r = ui
            .get(format!("{url}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        seen.push_str(&r.text().await.unwrap());
    }
    let wrong = ui
        .post(format!("{url}/ui/login"))
        .form(&[("token", "alice-ui-token-2")])
        .send()
        .await
        .unwrap();
    seen.push_str(&wrong.text().await.unwrap());

    // Let the short one expire (timeout notice) and the upstream probe fail a few times.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let audit = rpc_at(&url, ADMIN, "audit.list", json!({ "limit": 10000 })).await;
    assert!(audit["result"]["entries"].as_array().unwrap().len() > 10);
    seen.push_str(&audit.to_string());
    let status = rpc_at(&url, ADMIN, "approvald.status", json!({})).await;
    seen.push_str(&status.to_string());
    for id in [&id, b["result"]["id"].as_str().unwrap()] {
        let r = rpc_at(&url, ADMIN, "tool.approval.get", json!({ "id": id })).await;
        seen.push_str(&r.to_string());
    }

    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("DEBUG") || logs.contains("INFO"),
        "debug logs were written"
    );
    let mut database = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        database.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let database = String::from_utf8_lossy(&database);
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
        assert!(!seen.contains(secret), "{secret} appears in an answer");
        assert!(!database.contains(secret), "{secret} is stored");
    }
    // The scenario did what it says: deliveries failed and were reported, fallback happened.
    let answer_text: Value = serde_json::from_str(&audit.to_string()).unwrap();
    let events: Vec<&str> = answer_text["result"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    for want in [
        "delivered",
        "delivery_failed",
        "resolved",
        "expired",
        "fallback",
    ] {
        assert!(events.contains(&want), "{want} in {events:?}");
    }
}
