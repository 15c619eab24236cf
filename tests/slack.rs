//! The Slack channel end to end: the real approvald service, with its Slack channel built by
//! `platform_channels` from a config whose `api_url` points at a fake Slack (the only
//! difference from production), and people acting through signed HTTP requests or Socket
//! Mode frames exactly as Slack sends them.

#[path = "support/fake_slack.rs"]
mod fake_slack;
mod support;

use std::time::Duration;

use approvald::config::Config;
use approvald::server::platform_channels;
use approvald_channel::{ActionData, Decision};
use fake_slack::{APP_TOKEN, BOT_TOKEN, FakeSlack, Fault};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::*;

/// Extra request headers (name, value).
type Headers = Vec<(&'static str, String)>;

const SECRET: &str = "test-signing-secret-8f742231b10e";

/// Config for a Slack channel on the fake; `delivery` and `channel` add lines to those tables.
/// Pacing and backoff are short so tests run fast; `channel` may override them.
fn config(fake: &FakeSlack, delivery: &str, channel: &str) -> String {
    let defaults: String = [
        "per_channel_interval_ms = 10",
        "global_interval_ms = 0",
        "backoff_base_ms = 10",
        "backoff_max_ms = 40",
        "max_retries = 3",
    ]
    .iter()
    .filter(|line| !channel.contains(line.split(' ').next().unwrap_or_default()))
    .map(|line| format!("{line}\n"))
    .collect();
    format!(
        r#"
[delivery]
mode = "targets"
wait_ms = 8000
{delivery}

[channels.slack]
bot_token = "{BOT_TOKEN}"
signing_secret = "{SECRET}"
api_url = "{api}"
{defaults}{channel}
"#,
        api = fake.api_url()
    )
}

/// The service with its platform channels built from the config, as `approvald serve` does.
async fn start(extra: &str) -> TestServer {
    let mut config = Config::from_toml_str(&format!("{BASE}\n{extra}")).expect("valid config");
    // BASE's in-process test channels are not platforms.
    config.channels.retain(|name, _| !name.starts_with("chat-"));
    let channels = platform_channels(&config).expect("slack channel builds");
    assert_eq!(channels.len(), 1);
    TestServer::start(extra, channels).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Slack's request signature, computed here independently of the crate under test.
fn slack_signature(secret: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex(&mac.finalize().into_bytes()))
}

fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn post_raw(s: &TestServer, path: &str, body: &str, headers: &[(&str, String)]) -> u16 {
    let mut req = s
        .http()
        .post(format!("{}{path}", s.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn post_signed(s: &TestServer, path: &str, body: &str) -> u16 {
    let ts = now();
    post_raw(
        s,
        path,
        body,
        &[
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", slack_signature(SECRET, ts, body)),
        ],
    )
    .await
}

/// A block_actions payload as Slack sends it for a press on `action_id` of a message.
fn block_actions(
    fake: &FakeSlack,
    user: (&str, &str),
    channel: &str,
    ts: &str,
    action_id: &str,
    value: &str,
) -> Value {
    json!({
        "type": "block_actions",
        "team": { "id": "T0001", "domain": "fake" },
        "user": { "id": user.0, "username": user.1, "name": user.1, "team_id": "T0001" },
        "api_app_id": "A0001",
        "token": "legacy-verification-token",
        "container": { "type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": false },
        "trigger_id": "1234.5678.abcd",
        "channel": { "id": channel, "name": "ops" },
        "message": { "type": "message", "ts": ts, "text": "Approval required", "bot_id": "B0001" },
        "response_url": format!("{}/response/press-{}", fake.url, user.0),
        "actions": [{ "type": "button", "action_id": action_id, "block_id": "approvald_actions",
                      "value": value, "text": { "type": "plain_text", "text": "x" },
                      "action_ts": "1700000000.1" }]
    })
}

async fn press(
    s: &TestServer,
    fake: &FakeSlack,
    user: (&str, &str),
    channel: &str,
    ts: &str,
    decision: Decision,
    value: &str,
) -> u16 {
    let payload = block_actions(
        fake,
        user,
        channel,
        ts,
        &approvald_slack::action_id(decision),
        value,
    );
    post_signed(
        s,
        "/slack/interactions",
        &form(&[("payload", &payload.to_string())]),
    )
    .await
}

fn command_form(fake: &FakeSlack, user: (&str, &str), command: &str, text: &str) -> String {
    form(&[
        ("token", "legacy-verification-token"),
        ("team_id", "T0001"),
        ("team_domain", "fake"),
        ("channel_id", "C0OPS"),
        ("channel_name", "ops"),
        ("user_id", user.0),
        ("user_name", user.1),
        ("command", command),
        ("text", text),
        ("api_app_id", "A0001"),
        (
            "response_url",
            &format!("{}/response/cmd-{}", fake.url, user.0),
        ),
        ("trigger_id", "1234.5678.abcd"),
    ])
}

/// The (channel id, ts) each prompt of a request was posted as.
fn delivered(r: &Value) -> Vec<(String, String)> {
    r["delivered_to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["to"].as_str().unwrap().to_string(),
                d["message_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The value of the button with this decision in a posted message.
fn button_value(message: &Value, decision: Decision) -> String {
    buttons(message)
        .into_iter()
        .find(|b| b["action_id"] == approvald_slack::action_id(decision))
        .and_then(|b| b["value"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no {decision} button in {message}"))
}

fn buttons(message: &Value) -> Vec<Value> {
    message["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn posted(fake: &FakeSlack, channel: &str) -> Vec<Value> {
    fake.ok_calls("chat.postMessage")
        .into_iter()
        .filter(|c| c.body["channel"] == channel)
        .map(|c| c.body)
        .collect()
}

fn ephemerals_to(fake: &FakeSlack, user: &str) -> Vec<String> {
    fake.ok_calls("chat.postEphemeral")
        .into_iter()
        .filter(|c| c.body["user"] == user)
        .map(|c| c.body["text"].as_str().unwrap_or("").to_string())
        .collect()
}

fn responses(fake: &FakeSlack, id: &str) -> Vec<Value> {
    fake.ok_calls("response_url")
        .into_iter()
        .filter(|c| c.body["_response_id"] == id)
        .map(|c| c.body)
        .collect()
}

const BOB: (&str, &str) = ("U222", "bob");
const ALICE_SLACK: (&str, &str) = ("U111", "alice");
const MALLORY: (&str, &str) = ("U999", "mallory");

// ----- sending, pressing, updating --------------------------------------------------------

#[tokio::test]
async fn approver_click_resolves_with_slack_identity_and_updates_every_message() {
    let fake = FakeSlack::start().await;
    let s = start(&config(
        &fake,
        "",
        r#"targets = ["C0OPS", "U0DM1", { to = "C0THREAD", thread_id = "1699999999.000100" }]"#,
    ))
    .await;
    let r = s
        .request(json!({
            "tool": "shell", "command": "rm -rf ./build && echo <done>",
            "summary": "Clean *build* & <!here> tag", "risk_class": "high", "agent_id": "release-bot",
            "requester": { "id": "dave-requester", "display_name": "Dave" }
        }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let sent = delivered(&r);
    assert_eq!(sent.len(), 3, "{r}");
    let waiter = s.spawn_wait(&id);

    // A user target is reached through the DM conversations.open gives.
    let opened = fake.ok_calls("conversations.open");
    assert_eq!(opened.len(), 1);
    assert!(
        opened[0].body.to_string().contains("U0DM1"),
        "{:?}",
        opened[0].body
    );
    assert!(sent.iter().any(|(to, _)| to == "DU0DM1"), "{sent:?}");
    let threaded = &posted(&fake, "C0THREAD")[0];
    assert_eq!(threaded["thread_ts"], "1699999999.000100");

    // The Block Kit layout: header, untrusted summary as plain_text, escaped code block,
    // context with Slack date formatting, three buttons with versioned data.
    let msg = &posted(&fake, "C0OPS")[0];
    let blocks = msg["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["text"], "Approval required: shell");
    assert_eq!(blocks[1]["text"]["type"], "plain_text");
    assert_eq!(blocks[1]["text"]["text"], "Clean *build* & <!here> tag");
    assert_eq!(
        blocks[2]["text"]["text"],
        "```rm -rf ./build &amp;&amp; echo &lt;done&gt;```"
    );
    let context = blocks[3].to_string();
    assert!(
        context.contains("Requested by Dave (dave-requester)"),
        "{context}"
    );
    assert!(context.contains("HIGH risk"), "{context}");
    assert!(context.contains("<!date^"), "{context}");
    let b = buttons(msg);
    assert_eq!(b.len(), 3, "{msg}");
    assert_eq!(b[0]["style"], "primary");
    assert_eq!(b[2]["style"], "danger");
    assert_eq!(b[2]["confirm"]["confirm"]["text"], "Deny");
    for button in &b {
        let data: ActionData = button["value"].as_str().unwrap().parse().unwrap();
        assert_eq!(data.approval_id, id);
    }
    let fallback = msg["text"].as_str().unwrap();
    assert!(fallback.contains("Approval required"), "{fallback}");
    assert!(
        fallback.contains("&lt;!here&gt;"),
        "escaped in mrkdwn: {fallback}"
    );

    let (ops, ts) = sent.iter().find(|(to, _)| to == "C0OPS").unwrap();
    let value = button_value(msg, Decision::ApproveOnce);
    assert_eq!(
        press(&s, &fake, BOB, ops, ts, Decision::ApproveOnce, &value).await,
        200
    );

    let done = waiter.await.unwrap()["result"].clone();
    assert_eq!(done["status"], "approved", "{done}");
    assert_eq!(done["decision"], "approve");
    assert_eq!(done["scope"], "once");
    let by = &done["decided_by"];
    assert_eq!(by["transport"], "slack", "{by}");
    assert_eq!(by["platform_user_id"], "U222");
    assert_eq!(by["person"], "bob");
    assert_eq!(by["display_name"], "Bob");
    assert_eq!(by["channel_id"], "C0OPS");

    // Every Slack message of the approval now shows the outcome, without buttons.
    eventually("all three messages updated", || async {
        sent.iter().all(|(to, ts)| {
            fake.message(to, ts).is_some_and(|m| {
                buttons(&m).is_empty() && m.to_string().contains("Approved by Bob via slack")
            })
        })
    })
    .await;
    assert_eq!(fake.ok_calls("chat.update").len(), 3);
    assert!(
        fake.calls("chat.postEphemeral").is_empty(),
        "a decision that resolved needs no private notice"
    );
}

#[tokio::test]
async fn a_slack_user_listed_in_approvers_decides_with_the_name_slack_gives() {
    let fake = FakeSlack::start().await;
    let s = start(&config(
        &fake,
        "",
        "targets = [\"C0OPS\"]\napprovers = [\"U0LISTED\"]",
    ))
    .await;
    let r = s
        .request(json!({ "tool": "deploy", "command": "make deploy" }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let (to, ts) = delivered(&r).remove(0);
    let waiter = s.spawn_wait(&id);
    let value = button_value(&posted(&fake, "C0OPS")[0], Decision::Deny);
    assert_eq!(
        press(
            &s,
            &fake,
            ("U0LISTED", "erin"),
            &to,
            &ts,
            Decision::Deny,
            &value
        )
        .await,
        200
    );
    let done = waiter.await.unwrap()["result"].clone();
    assert_eq!(done["status"], "denied", "{done}");
    let by = &done["decided_by"];
    assert_eq!(by["approver_id"], "slack:U0LISTED");
    assert_eq!(by["display_name"], "erin");
    assert_eq!(by["person"], Value::Null);
}

// ----- refusals ---------------------------------------------------------------------------

#[tokio::test]
async fn forged_stale_missing_and_replayed_signatures_get_401_and_change_nothing() {
    let fake = FakeSlack::start().await;
    let s = start(&config(&fake, "", "targets = [\"C0OPS\"]")).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "make deploy" }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let (to, ts) = delivered(&r).remove(0);
    let value = button_value(&posted(&fake, "C0OPS")[0], Decision::ApproveOnce);
    let payload = block_actions(
        &fake,
        BOB,
        &to,
        &ts,
        &approvald_slack::action_id(Decision::ApproveOnce),
        &value,
    );
    let body = form(&[("payload", &payload.to_string())]);
    let t = now();
    let cases: Vec<(&str, Headers, String)> = vec![
        (
            "forged (wrong secret)",
            vec![
                ("x-slack-request-timestamp", t.to_string()),
                (
                    "x-slack-signature",
                    slack_signature("not-the-secret", t, &body),
                ),
            ],
            body.clone(),
        ),
        (
            "stale timestamp (replay after 10 minutes)",
            vec![
                ("x-slack-request-timestamp", (t - 600).to_string()),
                ("x-slack-signature", slack_signature(SECRET, t - 600, &body)),
            ],
            body.clone(),
        ),
        (
            "timestamp from the future",
            vec![
                ("x-slack-request-timestamp", (t + 600).to_string()),
                ("x-slack-signature", slack_signature(SECRET, t + 600, &body)),
            ],
            body.clone(),
        ),
        ("no headers", vec![], body.clone()),
        (
            "signature without timestamp",
            vec![("x-slack-signature", slack_signature(SECRET, t, &body))],
            body.clone(),
        ),
        (
            "body changed after signing",
            vec![
                ("x-slack-request-timestamp", t.to_string()),
                ("x-slack-signature", slack_signature(SECRET, t, &body)),
            ],
            body.replace("U222", "U111"),
        ),
        (
            "garbage signature",
            vec![
                ("x-slack-request-timestamp", t.to_string()),
                ("x-slack-signature", "v0=not-hex".to_string()),
            ],
            body.clone(),
        ),
    ];
    for (what, headers, body) in &cases {
        assert_eq!(
            post_raw(&s, "/slack/interactions", body, headers).await,
            401,
            "{what}"
        );
    }
    let cmd = command_form(&fake, BOB, "/approve", &id);
    assert_eq!(post_raw(&s, "/slack/commands", &cmd, &[]).await, 401);
    let forged_cmd = [
        ("x-slack-request-timestamp", t.to_string()),
        ("x-slack-signature", slack_signature("nope", t, &cmd)),
    ];
    assert_eq!(
        post_raw(&s, "/slack/commands", &cmd, &forged_cmd).await,
        401
    );

    // Correctly signed but malformed: a clear 400, no panic, nothing changes.
    for bad in [
        "payload=%7Bnot-json".to_string(),
        "nothing=here".to_string(),
        form(&[(
            "payload",
            &json!({ "type": "block_actions", "user": 5 }).to_string(),
        )]),
    ] {
        assert_eq!(
            post_signed(&s, "/slack/interactions", &bad).await,
            400,
            "{bad}"
        );
    }
    assert_eq!(post_signed(&s, "/slack/commands", "text=hi").await, 400);

    // A valid request replayed verbatim inside the window is refused the second time.
    let pending = command_form(&fake, BOB, "/pending", "");
    let headers = [
        ("x-slack-request-timestamp", t.to_string()),
        ("x-slack-signature", slack_signature(SECRET, t, &pending)),
    ];
    assert_eq!(
        post_raw(&s, "/slack/commands", &pending, &headers).await,
        200
    );
    assert_eq!(
        post_raw(&s, "/slack/commands", &pending, &headers).await,
        401
    );
    eventually("the one /pending answer", || async {
        !responses(&fake, "cmd-U222").is_empty()
    })
    .await;
    assert_eq!(responses(&fake, "cmd-U222").len(), 1);

    let got = s.get(&id).await;
    assert_eq!(got["status"], "pending", "{got}");
    assert_eq!(got["approvals"], json!([]));
    let events = events_of(&s.audit(&id).await);
    assert!(
        !events.iter().any(|e| e == "decision" || e == "refused"),
        "{events:?}"
    );
    assert!(fake.calls("chat.update").is_empty());
    assert!(fake.calls("chat.postEphemeral").is_empty());
}

#[tokio::test]
async fn non_approver_self_approval_already_resolved_and_expired_each_get_their_own_ephemeral_answer()
 {
    let fake = FakeSlack::start().await;
    let s = start(&config(&fake, "", "targets = [\"C0OPS\"]")).await;
    // Alice asks (as her Slack identity); Bob may approve; Mallory is nobody.
    let r = s
        .request(json!({ "tool": "shell", "command": "make deploy", "requester": { "id": "slack:U111" } }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let (to, ts) = delivered(&r).remove(0);
    let msg = posted(&fake, "C0OPS")[0].clone();
    let approve = button_value(&msg, Decision::ApproveOnce);
    let deny = button_value(&msg, Decision::Deny);

    assert_eq!(
        press(
            &s,
            &fake,
            MALLORY,
            &to,
            &ts,
            Decision::ApproveOnce,
            &approve
        )
        .await,
        200
    );
    eventually("mallory's notice", || async {
        !ephemerals_to(&fake, "U999").is_empty()
    })
    .await;
    let notice = &ephemerals_to(&fake, "U999")[0];
    assert!(notice.contains("not authorised"), "{notice}");
    let e = &fake.ok_calls("chat.postEphemeral")[0].body;
    assert_eq!(e["channel"], "C0OPS");

    assert_eq!(
        press(
            &s,
            &fake,
            ALICE_SLACK,
            &to,
            &ts,
            Decision::ApproveOnce,
            &approve
        )
        .await,
        200
    );
    eventually("alice's notice", || async {
        !ephemerals_to(&fake, "U111").is_empty()
    })
    .await;
    let notice = &ephemerals_to(&fake, "U111")[0];
    assert!(notice.contains("asked for this yourself"), "{notice}");

    // Nothing changed: still pending, prompt untouched.
    assert_eq!(s.get(&id).await["status"], "pending");
    assert!(fake.calls("chat.update").is_empty());

    assert_eq!(
        press(&s, &fake, BOB, &to, &ts, Decision::ApproveOnce, &approve).await,
        200
    );
    eventually("approved", || async {
        s.get(&id).await["status"] == "approved"
    })
    .await;
    assert_eq!(
        press(&s, &fake, ALICE_SLACK, &to, &ts, Decision::Deny, &deny).await,
        200
    );
    eventually("already-resolved notice", || async {
        ephemerals_to(&fake, "U111").len() == 2
    })
    .await;
    let notice = &ephemerals_to(&fake, "U111")[1];
    assert!(notice.contains("already approved by Bob"), "{notice}");
    assert_eq!(s.get(&id).await["status"], "approved");

    let r2 = s
        .request(json!({ "tool": "shell", "command": "make clean", "timeout_ms": 300 }))
        .await;
    let id2 = r2["id"].as_str().unwrap().to_string();
    let (to2, ts2) = delivered(&r2).remove(0);
    let value2 = button_value(&posted(&fake, "C0OPS")[1], Decision::ApproveOnce);
    eventually("expired", || async {
        s.get(&id2).await["status"] == "expired"
    })
    .await;
    assert_eq!(
        press(&s, &fake, BOB, &to2, &ts2, Decision::ApproveOnce, &value2).await,
        200
    );
    eventually("expired notice", || async {
        !ephemerals_to(&fake, "U222").is_empty()
    })
    .await;
    let notice = &ephemerals_to(&fake, "U222")[0];
    assert!(notice.contains("expired"), "{notice}");
    assert_eq!(s.get(&id2).await["status"], "expired");

    // An old or foreign button value is answered, not obeyed.
    assert_eq!(
        press(&s, &fake, BOB, &to, &ts, Decision::ApproveOnce, "v0:abc:o").await,
        200
    );
    eventually("old-button notice", || async {
        ephemerals_to(&fake, "U222").len() == 2
    })
    .await;
    assert!(ephemerals_to(&fake, "U222")[1].contains("older version"));
}

// ----- slash commands ---------------------------------------------------------------------

#[tokio::test]
async fn slash_commands_approve_by_prefix_deny_with_reason_and_list_pending() {
    let fake = FakeSlack::start().await;
    let s = start(&config(&fake, "", "targets = [\"C0OPS\"]")).await;
    let r1 = s
        .request(json!({ "tool": "shell", "command": "make deploy" }))
        .await;
    let r2 = s
        .request(json!({ "tool": "db", "command": "DROP TABLE <tmp>" }))
        .await;
    let (id1, id2) = (
        r1["id"].as_str().unwrap().to_string(),
        r2["id"].as_str().unwrap().to_string(),
    );

    assert_eq!(
        post_signed(
            &s,
            "/slack/commands",
            &command_form(&fake, BOB, "/pending", "")
        )
        .await,
        200
    );
    eventually("/pending answer", || async {
        !responses(&fake, "cmd-U222").is_empty()
    })
    .await;
    let listing = responses(&fake, "cmd-U222")[0].clone();
    assert_eq!(listing["response_type"], "ephemeral");
    let text = listing["text"].as_str().unwrap();
    assert!(
        text.contains(&id1[..8]) && text.contains(&id2[..8]),
        "{text}"
    );
    assert!(text.contains("DROP TABLE &lt;tmp&gt;"), "{text}");

    let w1 = s.spawn_wait(&id1);
    let cmd = command_form(&fake, BOB, "/approve", &format!("{} once", &id1[..8]));
    assert_eq!(post_signed(&s, "/slack/commands", &cmd).await, 200);
    let done = w1.await.unwrap()["result"].clone();
    assert_eq!(done["status"], "approved", "{done}");
    assert_eq!(done["decided_by"]["transport"], "slack");
    assert_eq!(done["decided_by"]["platform_user_id"], "U222");
    assert_eq!(done["decided_by"]["channel_id"], "C0OPS");
    eventually("/approve answer", || async {
        responses(&fake, "cmd-U222").len() == 2
    })
    .await;
    assert!(
        responses(&fake, "cmd-U222")[1]["text"]
            .as_str()
            .unwrap()
            .contains("Approved by Bob")
    );

    let w2 = s.spawn_wait(&id2);
    let cmd = command_form(
        &fake,
        BOB,
        "/deny",
        &format!("{} too risky today", &id2[..7]),
    );
    assert_eq!(post_signed(&s, "/slack/commands", &cmd).await, 200);
    let done = w2.await.unwrap()["result"].clone();
    assert_eq!(done["status"], "denied", "{done}");
    assert_eq!(done["reason"], "too risky today");

    // Both prompts were edited to their outcome.
    eventually("both prompts edited", || async {
        fake.ok_calls("chat.update").len() == 2
    })
    .await;

    // Someone who may not approve learns so, and changes nothing.
    let r3 = s
        .request(json!({ "tool": "shell", "command": "ls -la /etc" }))
        .await;
    let id3 = r3["id"].as_str().unwrap().to_string();
    let cmd = command_form(&fake, MALLORY, "/approve", &id3[..8]);
    assert_eq!(post_signed(&s, "/slack/commands", &cmd).await, 200);
    eventually("refusal", || async {
        !responses(&fake, "cmd-U999").is_empty()
    })
    .await;
    assert!(
        responses(&fake, "cmd-U999")[0]["text"]
            .as_str()
            .unwrap()
            .contains("not authorised")
    );
    assert_eq!(s.get(&id3).await["status"], "pending");

    // Missing id: usage, not a guess.
    let cmd = command_form(&fake, BOB, "/approve", "");
    assert_eq!(post_signed(&s, "/slack/commands", &cmd).await, 200);
    eventually("usage", || async {
        responses(&fake, "cmd-U222").len() == 4
    })
    .await;
    assert!(
        responses(&fake, "cmd-U222")[3]["text"]
            .as_str()
            .unwrap()
            .contains("Usage")
    );
}

// ----- expiry, operators, pacing, failures ------------------------------------------------

#[tokio::test]
async fn expiry_updates_the_message_and_operators_hear_through_the_incoming_webhook() {
    let fake = FakeSlack::start().await;
    let s = start(&config(
        &fake,
        "timeout_notice_targets = [{ channel = \"slack\", to = \"webhook\" }]",
        &format!(
            "targets = [\"C0OPS\"]\nwebhook_url = \"{}\"",
            fake.webhook_url()
        ),
    ))
    .await;
    let r = s
        .request(json!({ "tool": "shell", "command": "make deploy", "timeout_ms": 400 }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let (to, ts) = delivered(&r).remove(0);
    let done = s.spawn_wait(&id).await.unwrap()["result"].clone();
    assert_eq!(done["status"], "expired", "{done}");
    assert_eq!(done["decision"], "timeout");
    eventually("prompt shows the expiry", || async {
        fake.message(&to, &ts).is_some_and(|m| {
            buttons(&m).is_empty() && m["blocks"][0]["text"]["text"] == "Expired: shell"
        })
    })
    .await;
    eventually("webhook notice", || async {
        !fake.ok_calls("webhook").is_empty()
    })
    .await;
    let notice = &fake.ok_calls("webhook")[0].body;
    assert!(
        notice["text"].as_str().unwrap().contains("timed out"),
        "{notice}"
    );
    let audit = s.audit(&id).await;
    let notice_entry = audit
        .iter()
        .find(|e| e["event"] == "timeout_notice")
        .unwrap();
    assert_eq!(
        notice_entry["detail"]["error"],
        Value::Null,
        "{notice_entry}"
    );
}

#[tokio::test]
async fn a_webhook_only_channel_takes_operator_notices_and_refuses_prompts_plainly() {
    let fake = FakeSlack::start().await;
    let extra = format!(
        r#"
[delivery]
mode = "targets"
targets = [{{ channel = "slack", to = "C0OPS" }}]
timeout_notice_targets = [{{ channel = "slack", to = "webhook" }}]

[channels.slack]
webhook_url = "{}"
"#,
        fake.webhook_url()
    );
    let s = start(&extra).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "make deploy", "timeout_ms": 300 }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["delivered_to"], json!([]));
    let got = s.get(&id).await;
    let err = got["deliveries"][0]["error"].as_str().unwrap();
    assert!(err.contains("no bot_token"), "{err}");
    eventually("webhook notice", || async {
        !fake.ok_calls("webhook").is_empty()
    })
    .await;
    assert!(fake.calls("chat.postMessage").is_empty());
}

#[tokio::test]
async fn rate_limits_are_honoured_and_paced_prompts_are_all_delivered() {
    let fake = FakeSlack::start().await;
    fake.fail_next("chat.postMessage", &[Fault::RateLimited(1)]);
    let s = start(&config(
        &fake,
        "",
        "targets = [\"C0OPS\"]\nper_channel_interval_ms = 300",
    ))
    .await;
    let (a, b, c) = tokio::join!(
        s.request(json!({ "tool": "t", "command": "one" })),
        s.request(json!({ "tool": "t", "command": "two" })),
        s.request(json!({ "tool": "t", "command": "three" })),
    );
    for r in [&a, &b, &c] {
        assert_eq!(delivered(r).len(), 1, "nothing lost: {r}");
    }
    let calls = fake.calls("chat.postMessage");
    assert_eq!(calls.len(), 4, "one 429 and three deliveries");
    assert_eq!(calls[0].outcome, "ratelimited");
    let ok: Vec<_> = calls.iter().filter(|c| c.outcome == "ok").collect();
    assert_eq!(ok.len(), 3);
    // Nothing went out before Retry-After had passed, and then one per 300 ms.
    assert!(
        ok[0].at.duration_since(calls[0].at) >= Duration::from_millis(990),
        "retried after {:?}",
        ok[0].at.duration_since(calls[0].at)
    );
    for pair in ok.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_millis(290), "gap {gap:?}");
    }
    let mut commands: Vec<_> = ok
        .iter()
        .map(|c| {
            c.body["blocks"][1]["text"]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    commands.sort();
    assert_eq!(commands, ["```one```", "```three```", "```two```"]);
}

#[tokio::test]
async fn server_errors_are_retried_and_an_undeliverable_prompt_is_reported_without_secrets() {
    let fake = FakeSlack::start().await;
    fake.missing_channel("C0GONE");
    fake.fail_next(
        "chat.postMessage",
        &[Fault::Status(503), Fault::Status(502)],
    );
    let s = start(&config(&fake, "", "targets = [\"C0OPS\", \"C0GONE\"]")).await;
    eventually("auth.test answered", || async {
        s.engine.channel_health()[0]["connected"] == true
    })
    .await;
    let r = s
        .request(json!({ "tool": "shell", "command": "make deploy" }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(
        delivered(&r),
        vec![("C0OPS".to_string(), delivered(&r)[0].1.clone())]
    );
    let outcomes: Vec<_> = fake
        .calls("chat.postMessage")
        .iter()
        .map(|c| c.outcome.clone())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| o.starts_with("http 50")).count(),
        2,
        "{outcomes:?}"
    );

    let got = s.get(&id).await;
    let failed: Vec<_> = got["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["error"].is_string())
        .collect();
    assert_eq!(failed.len(), 1, "{got}");
    assert_eq!(failed[0]["target"]["to"], "C0GONE");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("channel_not_found"),
        "{got}"
    );
    let audit = s.audit(&id).await;
    assert!(
        events_of(&audit).contains(&"delivery_failed".to_string()),
        "{audit:?}"
    );
    let health = s.engine.channel_health();
    assert_eq!(
        health[0]["connected"], true,
        "the workspace is reachable: {health:?}"
    );
    assert!(
        health[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("channel_not_found")
    );

    let everything = format!("{got}{audit:?}{health:?}");
    for secret in [BOT_TOKEN, SECRET] {
        assert!(!everything.contains(secret), "secret leaked: {everything}");
    }
}

#[tokio::test]
async fn persistent_server_errors_end_in_a_final_error_after_bounded_retries() {
    let fake = FakeSlack::start().await;
    fake.fail_next("chat.postMessage", &[Fault::Status(500); 4]);
    let s = start(&config(&fake, "", "targets = [\"C0OPS\"]")).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "make deploy" }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["delivered_to"], json!([]));
    // max_retries = 3: four attempts, then a final error.
    assert_eq!(fake.calls("chat.postMessage").len(), 4);
    let got = s.get(&id).await;
    let err = got["deliveries"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("HTTP 500") && err.contains("4 attempt"),
        "{err}"
    );
    let health = s.engine.channel_health();
    assert_eq!(health[0]["connected"], false, "{health:?}");
    assert!(!format!("{got}{health:?}").contains(BOT_TOKEN));
}

// ----- Socket Mode and config ---------------------------------------------------------------

#[tokio::test]
async fn socket_mode_receives_presses_and_commands_without_a_public_url() {
    let fake = FakeSlack::start().await;
    let extra = format!(
        r#"
[delivery]
mode = "targets"
wait_ms = 8000

[channels.slack]
receive = "socket_mode"
bot_token = "{BOT_TOKEN}"
app_token = "{APP_TOKEN}"
api_url = "{api}"
per_channel_interval_ms = 10
targets = ["C0OPS"]
"#,
        api = fake.api_url()
    );
    let s = start(&extra).await;
    eventually("socket connected", || async {
        fake.socket_connections() == 1
    })
    .await;
    eventually("health connected", || async {
        s.engine.channel_health()[0]["connected"] == true
    })
    .await;
    // No webhook routes without a signing secret.
    assert_eq!(
        post_signed(&s, "/slack/interactions", "payload=x").await,
        404
    );

    let r = s
        .request(json!({ "tool": "shell", "command": "make deploy" }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let (to, ts) = delivered(&r).remove(0);
    let waiter = s.spawn_wait(&id);
    let value = button_value(&posted(&fake, "C0OPS")[0], Decision::ApproveOnce);
    let payload = block_actions(
        &fake,
        BOB,
        &to,
        &ts,
        &approvald_slack::action_id(Decision::ApproveOnce),
        &value,
    );
    fake.socket_send(json!({ "type": "interactive", "envelope_id": "env-1",
                             "accepts_response_payload": false, "payload": payload }));
    let done = waiter.await.unwrap()["result"].clone();
    assert_eq!(done["status"], "approved", "{done}");
    assert_eq!(done["decided_by"]["platform_user_id"], "U222");
    assert_eq!(done["decided_by"]["transport"], "slack");
    eventually("envelope acknowledged", || async {
        fake.socket_received()
            .iter()
            .any(|f| f["envelope_id"] == "env-1")
    })
    .await;
    eventually("prompt updated", || async {
        fake.message(&to, &ts)
            .is_some_and(|m| buttons(&m).is_empty())
    })
    .await;

    fake.socket_send(json!({ "type": "slash_commands", "envelope_id": "env-2",
        "accepts_response_payload": true,
        "payload": { "team_id": "T0001", "channel_id": "C0OPS", "user_id": "U222",
                     "command": "/pending", "text": "",
                     "response_url": format!("{}/response/sock", fake.url),
                     "trigger_id": "1.2.3" } }));
    eventually("/pending answered", || async {
        !responses(&fake, "sock").is_empty()
    })
    .await;
    assert!(
        responses(&fake, "sock")[0]["text"]
            .as_str()
            .unwrap()
            .contains("Nothing is waiting")
    );
    eventually("command acknowledged", || async {
        fake.socket_received()
            .iter()
            .any(|f| f["envelope_id"] == "env-2")
    })
    .await;
}

#[tokio::test]
async fn missing_secrets_are_config_errors_naming_the_key() {
    for (settings, key) in [
        ("bot_token = \"xoxb-1\"", "channels.slack.signing_secret"),
        ("signing_secret = \"s\"", "channels.slack.bot_token"),
        (
            "bot_token = \"xoxb-1\"\nreceive = \"socket_mode\"",
            "channels.slack.app_token",
        ),
        (
            "bot_token = \"xoxb-1\"\nsigning_secret = \"s\"\nsigning_secret_typo = 1",
            "channels.slack.signing_secret_typo",
        ),
    ] {
        let config = Config::from_toml_str(&format!("[channels.slack]\n{settings}\n")).unwrap();
        let err = platform_channels(&config)
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains(key), "{settings}: {err}");
        assert!(!err.contains("xoxb-1"), "{err}");
    }
}
