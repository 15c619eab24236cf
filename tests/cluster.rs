//! Several approvald instances on one PostgreSQL database (issue 10): a request taken by one
//! instance is decided on another and the caller waiting on the first hears at once; first-wins
//! and expiry hold across instances; standing rules and live events reach every instance; a
//! fan-out left by a dead instance is finished by another; only the leader long-polls Telegram
//! and another takes over when it dies.
//!
//! They need `APPROVALD_TEST_DATABASE_URL` (CI sets it); without it each says loudly that it
//! was skipped.

mod support;

#[path = "support/fake_telegram.rs"]
mod fake_telegram;

use std::io::Write;
use std::time::{Duration, Instant};

use approvald_channel::{Decision, TestChannel, Transport};
use fake_telegram::{FakeTelegram, Fault};
use futures::StreamExt;
use serde_json::{Value, json};
use support::daemon::Daemon;
use support::*;

/// Prompts go to one room of the test channel; timeouts are announced in another.
const EXTRA: &str = r#"
[delivery]
mode = "targets"
targets = [{ channel = "chat-a", to = "room" }]
timeout_notice_targets = [{ channel = "chat-a", to = "ops" }]
"#;

/// `n` instances on a fresh database, each with its own test channel `chat-a`. The database
/// is dropped when the cluster is.
struct Cluster {
    nodes: Vec<(TestServer, TestChannel)>,
    _db: pg::TestDatabase,
}

impl std::ops::Deref for Cluster {
    type Target = Vec<(TestServer, TestChannel)>;
    fn deref(&self) -> &Self::Target {
        &self.nodes
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The servers go before their database.
        self.nodes.clear();
    }
}

async fn cluster(n: usize, extra: &str) -> Option<Cluster> {
    let server = pg::server_url("cluster test")?;
    let db = pg::TestDatabase::create(&server).await;
    let mut nodes = Vec::new();
    for _ in 0..n {
        let chat = TestChannel::new("chat-a", Transport::Discord);
        let s = TestServer::start_on_database(&db.url, extra, as_channels(&[&chat])).await;
        nodes.push((s, chat));
    }
    Some(Cluster { nodes, _db: db })
}

fn result(r: &Value) -> Value {
    match r.get("result") {
        Some(v) => v.clone(),
        None => panic!("call failed: {r}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_on_one_instance_is_decided_on_another_and_every_instance_hears() {
    let Some(nodes) = cluster(3, EXTRA).await else {
        return;
    };
    let logs: Vec<EventLog> = nodes.iter().map(|(s, _)| EventLog::start(s)).collect();
    let (a, chat_a) = &nodes[0];
    let (_, chat_c) = &nodes[2];

    // A caller blocked on instance A.
    let caller = {
        let url = a.url.clone();
        tokio::spawn(async move {
            rpc_at(
                &url,
                GATEWAY,
                "tool.approval.request",
                json!({ "tool": "shell", "command": "rm -rf /tmp/x", "timeout_ms": 60_000 }),
            )
            .await
        })
    };
    chat_a
        .wait_until(Duration::from_secs(10), "the prompt from A", |c| {
            !c.is_empty()
        })
        .await;
    let (_, prompt, _) = chat_a.deliveries().remove(0);
    let id = prompt.view.approval_id.clone();
    // The other instances heard of it and did not send a prompt of their own.
    for log in &logs[1..] {
        eventually("the request announced everywhere", || {
            let log = log.clone();
            let id = id.clone();
            async move { !log.about("tool.approval.requested", &id).is_empty() }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (_, chat) in &nodes[1..] {
        assert!(
            chat.deliveries().is_empty(),
            "only the instance that took the request sends its prompt"
        );
    }

    // Alice clicks Approve on a platform whose receiver runs on instance C.
    let clicked = Instant::now();
    let reply = chat_c.press(&id, Decision::ApproveOnce, user("111")).await;
    assert!(
        matches!(reply, approvald_channel::InboundReply::Accepted { .. }),
        "the click is accepted on C: {reply:?}"
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), caller)
        .await
        .expect("the caller on A is answered")
        .expect("caller task");
    let heard_after = clicked.elapsed();
    let answer = result(&answer);
    assert_eq!(answer["status"], "approved", "{answer}");
    assert_eq!(answer["decided_by"]["display_name"], "Alice", "{answer}");
    eprintln!("caller on A answered {heard_after:?} after the click on C");

    // Every instance's live stream (SSE and WebSocket clients read this bus) saw the outcome.
    for log in &logs {
        eventually("the outcome announced everywhere", || {
            let log = log.clone();
            let id = id.clone();
            async move { log.about("tool.approval.resolved", &id).len() == 1 }
        })
        .await;
    }
    // The prompt A sent is edited to the outcome (by C, through the shared delivery record).
    eventually("the prompt edited to the outcome", || {
        let nodes_updates: Vec<_> = nodes.iter().flat_map(|(_, c)| c.updates()).collect();
        async move { !nodes_updates.is_empty() }
    })
    .await;
    // A second click on B finds it decided.
    let (b, _) = &nodes[1];
    let late = b
        .rpc(
            BOB,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "deny" }),
        )
        .await;
    assert_eq!(late["error"]["data"]["kind"], "already_resolved", "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_clients_on_every_instance_see_a_request_made_on_one() {
    let Some(nodes) = cluster(2, EXTRA).await else {
        return;
    };
    let (a, _) = &nodes[0];
    let (b, _) = &nodes[1];
    let sse = b
        .http()
        .get(format!("{}/events", b.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("SSE on B");
    assert_eq!(sse.status(), 200);
    let mut sse = sse.bytes_stream();
    let created = a
        .request(json!({ "tool": "deploy", "command": "ship it" }))
        .await;
    let id = created["id"].as_str().expect("id").to_string();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains(&id) {
        let chunk = tokio::time::timeout_at(deadline, sse.next())
            .await
            .expect("B's SSE stream shows A's request in time")
            .expect("stream open")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("tool.approval.requested"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_under_three_instances_happens_once_with_one_notice() {
    let Some(nodes) = cluster(3, EXTRA).await else {
        return;
    };
    let (a, _) = &nodes[0];
    let created = a
        .request(json!({ "tool": "shell", "command": "sleep", "timeout_ms": 1500 }))
        .await;
    let id = created["id"].as_str().expect("id").to_string();
    // A waiter on every instance.
    let waiters: Vec<_> = nodes.iter().map(|(s, _)| s.spawn_wait(&id)).collect();
    for w in waiters {
        let r = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("every waiter is answered at the deadline")
            .expect("waiter task");
        assert_eq!(result(&r)["status"], "expired", "{r}");
    }
    // Give any late second expiry the chance to show itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let notices: Vec<_> = nodes
        .iter()
        .flat_map(|(_, c)| c.notices())
        .filter(|(t, text)| t.to == "ops" && text.contains(&id[..8]))
        .collect();
    assert_eq!(notices.len(), 1, "exactly one timeout notice: {notices:?}");
    let expired = events_of(&a.audit(&id).await)
        .into_iter()
        .filter(|e| e == "expired")
        .count();
    assert_eq!(expired, 1, "one expiry in the audit trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_resolutions_on_three_instances_have_one_winner() {
    let Some(nodes) = cluster(3, EXTRA).await else {
        return;
    };
    let urls: Vec<String> = nodes.iter().map(|(s, _)| s.url.clone()).collect();
    let (a, _) = &nodes[0];
    let created = a
        .request(json!({ "tool": "shell", "command": "race" }))
        .await;
    let id = created["id"].as_str().expect("id").to_string();
    let answers: Vec<Value> = futures::future::join_all((0..100).map(|i| {
        let url = urls[i % 3].clone();
        let id = id.clone();
        async move {
            let (token, decision) = if i % 2 == 0 {
                (ALICE, "approve")
            } else {
                (BOB, "deny")
            };
            rpc_at(
                &url,
                token,
                "tool.approval.resolve",
                json!({ "id": id, "decision": decision }),
            )
            .await
        }
    }))
    .await;
    let final_state = a.get(&id).await;
    let status = final_state["status"].as_str().expect("status").to_string();
    assert!(status == "approved" || status == "denied", "{final_state}");
    // Every successful answer reports the same outcome; every refusal says it was decided.
    for r in &answers {
        match r.get("result") {
            Some(v) => assert_eq!(v["status"], status, "{r}"),
            None => assert_eq!(r["error"]["data"]["kind"], "already_resolved", "{r}"),
        }
    }
    let audit = events_of(&a.audit(&id).await);
    let outcomes = audit.iter().filter(|e| *e == "resolved").count();
    assert_eq!(outcomes, 1, "one resolution in the audit trail: {audit:?}");
    let decisions = final_state["approvals"].as_array().map_or(0, Vec::len);
    assert_eq!(
        decisions, 1,
        "only the winning decision is recorded: {final_state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approve_always_on_one_instance_applies_on_the_others() {
    let Some(nodes) = cluster(2, EXTRA).await else {
        return;
    };
    let (a, _) = &nodes[0];
    let (b, _) = &nodes[1];
    let ask = json!({ "tool": "git", "command": "git status", "agent_id": "coder" });
    let first = a.request(ask.clone()).await;
    let id = first["id"].as_str().expect("id");
    let decided = a
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve-always" }),
        )
        .await;
    assert_eq!(decided["status"], "approved");
    // B learns of the new rule without a restart: the same ask there is approved by it.
    // (Each try in its own session: an identical ask would fold into the earlier pending one.)
    let tries = std::sync::atomic::AtomicUsize::new(0);
    eventually("B applies the standing rule", || {
        let mut ask = ask.clone();
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ask["session_key"] = json!(format!("session-{n}"));
        async move {
            let again = b.request(ask).await;
            again["status"] == "approved"
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_instances_send_one_prompt_per_request() {
    let Some(nodes) = cluster(3, EXTRA).await else {
        return;
    };
    let urls: Vec<String> = nodes.iter().map(|(s, _)| s.url.clone()).collect();
    // A gateway retrying one request (its own id) through the load balancer, and identical
    // asks (folded into one) from several gateways, land on all three instances at once.
    let own_id = "7d1e2f4a-0000-4000-8000-000000000001";
    let asks: Vec<Value> = (0..12)
        .map(|i| {
            if i % 2 == 0 {
                json!({ "id": own_id, "tool": "deploy", "command": "ship v1", "wait": false })
            } else {
                json!({ "tool": "deploy", "command": "ship v2", "agent_id": "ci", "wait": false })
            }
        })
        .collect();
    let answers = futures::future::join_all(asks.into_iter().enumerate().map(|(i, ask)| {
        let url = urls[i % 3].clone();
        async move { rpc_at(&url, GATEWAY, "tool.approval.request", ask).await }
    }))
    .await;
    let mut ids: Vec<String> = answers
        .iter()
        .map(|r| result(r)["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "two requests in all: {answers:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        let prompts: usize = nodes
            .iter()
            .map(|(_, c)| {
                c.deliveries()
                    .iter()
                    .filter(|(_, p, _)| &p.view.approval_id == id)
                    .count()
            })
            .sum();
        assert_eq!(prompts, 1, "one prompt for {id} across the three instances");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_ui_session_made_on_one_instance_works_on_another() {
    let Some(nodes) = cluster(2, EXTRA).await else {
        return;
    };
    let (a, _) = &nodes[0];
    let (b, _) = &nodes[1];
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signed_in = http
        .post(format!("{}/ui/login", a.url))
        .form(&[("token", "alice-ui-token-1")])
        .send()
        .await
        .expect("sign in on A");
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie value")
        .to_string();
    // The load balancer sends the next page to B.
    let page = http
        .get(format!("{}/ui", b.url))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page on B");
    assert_eq!(page.status(), 200, "B accepts the session A made");
    let without = http
        .get(format!("{}/ui", b.url))
        .send()
        .await
        .expect("page on B");
    assert_eq!(
        without.status(),
        303,
        "and still refuses a visitor without one"
    );
}

// ----- real processes: leader election and fan-out takeover ----------------------------------

/// An `approvald serve` process on `database`, with its own data dir (dropped after it).
fn start_instance(database: &str, extra: &str) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("config.toml");
    let mut f = std::fs::File::create(&config).expect("config file");
    write!(
        f,
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\ndata_dir = {:?}\nurl = {database:?}\n{}\n{extra}",
        dir.path().join("data").display().to_string(),
        base_for_binary()
    )
    .expect("write config");
    drop(f);
    let daemon = Daemon::start(&config, &format!("http://127.0.0.1:{port}"));
    (dir, daemon)
}

fn telegram(fake: &FakeTelegram, receive: &str) -> String {
    format!(
        r#"
[[people]]
name = "erin"
display_name = "Erin"
telegram = ["4242"]

[channels.telegram]
bot_token = "{token}"
api_url = "{url}"
targets = ["-1001"]
approvers = ["4242"]
poll_timeout_secs = 1
chat_interval_ms = 20
retry_base_ms = 20
{receive}

[delivery]
mode = "targets"
"#,
        token = fake.token,
        url = fake.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_polls_telegram_and_another_takes_over_when_it_dies() {
    let Some(server) = pg::server_url("leader election test") else {
        return;
    };
    let db = pg::TestDatabase::create(&server).await;
    let fake = FakeTelegram::start("123:leader");
    let extra = telegram(&fake, "");
    let (_first_dir, mut first) = start_instance(&db.url, &extra);
    first.ready().await;
    eventually("the first instance polls", || {
        let n = fake.calls_of("getupdates").len();
        async move { n >= 2 }
    })
    .await;
    let (_second_dir, mut second) = start_instance(&db.url, &extra);
    second.ready().await;
    // Both run for a while: a second poller would make the fake answer 409.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let conflicts = fake
        .calls_of("getupdates")
        .iter()
        .filter(|c| c.status == 409)
        .count();
    assert_eq!(
        conflicts, 0,
        "one poller at a time while both instances run"
    );

    // The leader dies: the other takes over polling within 10 s.
    first.kill9();
    let killed = std::time::Instant::now();
    let deadline = Duration::from_secs(10);
    loop {
        let resumed = fake
            .calls_of("getupdates")
            .iter()
            .any(|c| c.at > killed + Duration::from_millis(500) && c.status == 200);
        if resumed {
            break;
        }
        assert!(
            killed.elapsed() < deadline,
            "polling did not resume within 10 s of the leader's death"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "polling resumed {:?} after the leader was killed",
        killed.elapsed()
    );

    // And a click reaches the new leader: a request made there is decided from Telegram.
    let created = result(
        &rpc_at(
            &second.url,
            GATEWAY,
            "tool.approval.request",
            json!({ "tool": "shell", "command": "ls", "wait": false }),
        )
        .await,
    );
    let id = created["id"].as_str().expect("id").to_string();
    let mut prompt = None;
    for _ in 0..100 {
        if let Some(p) = fake.prompts_for(&id).into_iter().next() {
            prompt = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let prompt = prompt.expect("the prompt reached Telegram");
    let erin = fake_telegram::TgUser {
        id: 4242,
        first_name: "Erin",
        last_name: None,
        username: Some("erin"),
    };
    fake.press(
        &erin,
        prompt.chat_id,
        prompt.message_id,
        &format!("v1:{id}:o"),
    );
    let decided = result(
        &rpc_at(
            &second.url,
            GATEWAY,
            "tool.approval.wait",
            json!({ "id": id, "timeout_ms": 10_000 }),
        )
        .await,
    );
    assert_ne!(
        decided["status"], "pending",
        "the press was received by the new leader: {decided}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_left_by_a_dead_instance_is_finished_by_another() {
    let Some(server) = pg::server_url("fan-out takeover test") else {
        return;
    };
    let db = pg::TestDatabase::create(&server).await;
    let fake = FakeTelegram::start("123:takeover");
    // Webhook mode: no leader business, every instance receives.
    let extra = telegram(
        &fake,
        "receive = \"webhook\"\nwebhook_secret = \"s3cret-s3cret\"\nwebhook_url = \"https://approvald.example/telegram\"",
    );
    let (_first_dir, mut first) = start_instance(&db.url, &extra);
    let (_second_dir, mut second) = start_instance(&db.url, &extra);
    first.ready().await;
    second.ready().await;
    // The first instance's send hangs; it dies with the fan-out unfinished.
    fake.fail_next("sendMessage", Fault::Hang(Duration::from_secs(120)));
    let created = result(
        &rpc_at(
            &first.url,
            GATEWAY,
            "tool.approval.request",
            json!({ "tool": "deploy", "command": "ship", "wait": false, "timeout_ms": 120_000 }),
        )
        .await,
    );
    let id = created["id"].as_str().expect("id").to_string();
    eventually("the first send started", || {
        let n = fake.calls_of("sendmessage").len();
        async move { n >= 1 }
    })
    .await;
    first.kill9();
    let killed = Instant::now();
    let mut delivered = Vec::new();
    while killed.elapsed() < Duration::from_secs(40) {
        delivered = fake.prompts_for(&id);
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        delivered.len(),
        1,
        "the other instance sent the prompt once"
    );
    eprintln!(
        "fan-out finished {:?} after its owner died",
        killed.elapsed()
    );
    // The platform answers the send before the instance records it: wait for the record.
    let url = second.url.clone();
    eventually("the delivery to be recorded", || {
        let (url, id) = (url.clone(), id.clone());
        async move {
            let got = result(&rpc_at(&url, ADMIN, "tool.approval.get", json!({ "id": id })).await);
            got["delivered_to"].as_array().map_or(0, Vec::len) == 1
        }
    })
    .await;
    let got = result(&rpc_at(&second.url, ADMIN, "tool.approval.get", json!({ "id": id })).await);
    let recorded = got["delivered_to"].as_array().map_or(0, Vec::len);
    assert_eq!(recorded, 1, "the delivery is recorded once: {got}");
}
