//! The Telegram channel (issue 4), end to end: the real approvald service with its Telegram
//! channel built by `platform_channels` from config, talking to a fake Bot API server
//! (tests/support/fake_telegram.rs). Only `api_url` differs from production.

#[path = "support/fake_telegram.rs"]
mod fake_telegram;
mod support;

use std::sync::Arc;
use std::time::Duration;

use approvald::config::Config;
use approvald::server::platform_channels;
use approvald_channel::Channel;
use fake_telegram::{BOT_USERNAME, FakeTelegram, Fault, Sent, TgUser};
use serde_json::{Value, json};
use support::*;

const TOKEN: &str = "123456:TESTtokenSECRETvalue_abc";

/// Linked to the person "erin" (`telegram = ["4242"]`).
const ERIN: TgUser = TgUser {
    id: 4242,
    first_name: "Erin",
    last_name: Some("Ek"),
    username: Some("erin_ek"),
};
/// Not a linked person, but listed in `channels.telegram.approvers`.
const TOM: TgUser = TgUser {
    id: 7777,
    first_name: "Tom",
    last_name: None,
    username: Some("tom_ops"),
};
/// Nobody: may not decide.
const MALLORY: TgUser = TgUser {
    id: 6666,
    first_name: "Mallory",
    last_name: None,
    username: Some("mallory"),
};

const GROUP: i64 = -1001;
const TOPIC_GROUP: i64 = -1002;

/// `[[people]]` and `[channels.telegram]` pointing at the fake, with fast test pacing.
/// `settings` go into the channel table (overriding the test pacing); `rest` (other
/// sections) after it.
fn config(fake: &FakeTelegram, settings: &str, rest: &str) -> String {
    let defaults: String = [
        ("poll_timeout_secs", "1"),
        ("chat_interval_ms", "20"),
        ("retry_base_ms", "20"),
    ]
    .iter()
    .filter(|(key, _)| !settings.contains(key))
    .map(|(key, value)| format!("{key} = {value}\n"))
    .collect();
    format!(
        r#"
[[people]]
name = "erin"
display_name = "Erin"
telegram = ["4242"]

[channels.telegram]
bot_token = "{TOKEN}"
api_url = "{url}"
approvers = ["7777"]
{settings}
{defaults}

{rest}
"#,
        url = fake.url
    )
}

/// The channels approvald builds from this config, exactly as `approvald serve` does.
fn telegram_channels(extra: &str) -> Vec<Arc<dyn Channel>> {
    let config =
        Config::from_toml_str(&format!("{}\n{extra}", base_for_binary())).expect("config is valid");
    platform_channels(&config).expect("the telegram channel builds")
}

async fn start(extra: &str) -> TestServer {
    // Logs show with a failing test's output (RUST_LOG=approvald_telegram=debug for more).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    TestServer::start(extra, telegram_channels(extra)).await
}

/// A caller blocked in `tool.approval.request` (wait = true), in the background.
fn ask(s: &TestServer, params: Value) -> tokio::task::JoinHandle<Value> {
    let url = s.url.clone();
    tokio::spawn(async move { rpc_at(&url, GATEWAY, "tool.approval.request", params).await })
}

async fn answer_of(waiter: tokio::task::JoinHandle<Value>) -> Value {
    let r = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the caller got an answer in time")
        .expect("caller task");
    match r.get("result") {
        Some(v) => v.clone(),
        None => panic!("request failed: {r}"),
    }
}

/// Wait until the fake holds `n` prompts for `id`; return them.
async fn prompts(fake: &FakeTelegram, id: &str, n: usize) -> Vec<Sent> {
    eventually(&format!("{n} prompts for {id}"), || async {
        fake.prompts_for(id).len() >= n
    })
    .await;
    fake.prompts_for(id)
}

fn data(id: &str, code: char) -> String {
    format!("v1:{id}:{code}")
}

async fn health(s: &TestServer) -> Value {
    let h: Value = s
        .http()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    h["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "telegram").cloned())
        .unwrap_or(Value::Null)
}

/// Replies the bot sent to commands in a chat.
fn replies(fake: &FakeTelegram, chat: i64) -> Vec<Sent> {
    fake.messages_in(chat)
        .into_iter()
        .filter(|m| m.reply_to.is_some())
        .collect()
}

// ----- prompts, presses, identity, edits -------------------------------------------------

#[tokio::test]
async fn approver_press_resolves_the_waiting_caller_with_telegram_identity_and_edits_every_prompt()
{
    let fake = FakeTelegram::start(TOKEN);
    let extra = config(
        &fake,
        r#"targets = ["-1001", { to = "-1002", thread_id = "7" }]"#,
        "[delivery]\nmode = \"both\"\n",
    );
    let s = start(&extra).await;
    let id = "0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
    let caller = ask(
        &s,
        json!({ "id": id, "tool": "shell", "command": "rm -rf ./build && echo '<done>'",
                "risk_class": "high", "origin": { "channel": "telegram", "to": "555" } }),
    );

    // One prompt per chat: the session's origin (a private chat), a group, a forum topic.
    let sent = prompts(&fake, id, 3).await;
    let mut chats: Vec<i64> = sent.iter().map(|m| m.chat_id).collect();
    chats.sort();
    assert_eq!(chats, vec![TOPIC_GROUP, GROUP, 555]);
    for m in &sent {
        assert_eq!(
            m.buttons(),
            vec![
                ("Approve once".to_string(), data(id, 'o')),
                ("Always approve".to_string(), data(id, 'a')),
                ("Deny".to_string(), data(id, 'd')),
            ]
        );
        assert!(m.html.contains("<b>Approval required</b>"), "{}", m.html);
        // Untrusted text is escaped, so it shows as typed.
        assert!(
            m.text().contains("rm -rf ./build && echo '<done>'"),
            "{}",
            m.text()
        );
        let topic = if m.chat_id == TOPIC_GROUP {
            Some(7)
        } else {
            None
        };
        assert_eq!(m.thread_id, topic);
    }
    let sends = fake.calls_of("sendMessage");
    assert!(sends.iter().all(|c| c.body["parse_mode"] == "HTML"));

    let group_prompt = sent.iter().find(|m| m.chat_id == GROUP).unwrap();
    let cb = fake.press(&ERIN, GROUP, group_prompt.message_id, &data(id, 'o'));

    let result = answer_of(caller).await;
    assert_eq!(result["status"], "approved");
    assert_eq!(result["scope"], "once");
    let by = &result["decided_by"];
    assert_eq!(by["transport"], "telegram");
    assert_eq!(by["person"], "erin");
    assert_eq!(by["display_name"], "Erin");
    assert_eq!(by["platform_user_id"], "4242");
    assert_eq!(by["channel_id"], GROUP.to_string());

    eventually("the press is answered", || async {
        fake.answer_to(&cb).is_some()
    })
    .await;
    let answer = fake.answer_to(&cb).unwrap();
    assert_eq!(answer.text.as_deref(), Some("Approved by Erin"));
    assert!(!answer.show_alert);

    // Every prompt, in every chat, shows the outcome and who decided, buttons gone.
    eventually("all three prompts edited", || async {
        let p = fake.prompts_for(id);
        p.len() == 3 && p.iter().all(|m| m.edits >= 1 && m.keyboard.is_none())
    })
    .await;
    for m in fake.prompts_for(id) {
        assert!(m.text().contains("Approved (once)"), "{}", m.text());
        assert!(m.text().contains("Erin via telegram"), "{}", m.text());
    }
    let h = health(&s).await;
    assert_eq!(h["connected"], true, "{h}");
    assert_eq!(h["last_error"], Value::Null, "{h}");
}

#[tokio::test]
async fn refused_presses_get_plain_alerts_and_change_nothing() {
    let fake = FakeTelegram::start(TOKEN);
    let extra = config(
        &fake,
        r#"targets = ["-1001"]"#,
        "[delivery]\nmode = \"targets\"\n",
    );
    let s = start(&extra).await;
    let id = "1c2d3e4f-0000-4000-8000-000000000001";
    // Erin asks, so Erin may not decide.
    let caller = ask(
        &s,
        json!({ "id": id, "tool": "deploy", "command": "deploy prod",
                "requester": { "id": "telegram:4242", "display_name": "Erin" } }),
    );
    let prompt = prompts(&fake, id, 1).await.remove(0);
    let press = |user: &TgUser, d: &str| fake.press(user, GROUP, prompt.message_id, d);
    let answered = |cb: String| {
        let fake = &fake;
        async move {
            eventually("the press is answered", || async {
                fake.answer_to(&cb).is_some()
            })
            .await;
            fake.answer_to(&cb).unwrap()
        }
    };

    let a = answered(press(&MALLORY, &data(id, 'o'))).await;
    assert!(a.show_alert);
    assert_eq!(
        a.text.as_deref(),
        Some("You are not authorised to decide on this request.")
    );
    let a = answered(press(&ERIN, &data(id, 'o'))).await;
    assert!(a.show_alert);
    assert_eq!(
        a.text.as_deref(),
        Some("You asked for this yourself, so someone else must decide.")
    );
    for stale in [
        format!("v0:{id}:o"),
        "garbage".to_string(),
        data("2c2d3e4f-0000-4000-8000-00000000dead", 'o'),
    ] {
        let a = answered(press(&TOM, &stale)).await;
        assert!(a.show_alert, "{stale}");
        assert_eq!(
            a.text.as_deref(),
            Some("This button is no longer valid."),
            "{stale}"
        );
    }
    // Nothing changed: still pending, prompt untouched, buttons in place.
    assert_eq!(s.get(id).await["status"], "pending");
    let now = fake.prompts_for(id).remove(0);
    assert_eq!(now.edits, 0);
    assert_eq!(now.button_data().len(), 3);
    let audit = events_of(&s.audit(id).await);
    assert_eq!(
        audit.iter().filter(|e| *e == "refused").count(),
        2,
        "{audit:?}"
    );

    // An approver denies; a late press on the old buttons is told it is settled.
    let a = answered(press(&TOM, &data(id, 'd'))).await;
    assert_eq!(a.text.as_deref(), Some("Denied by Tom"));
    let result = answer_of(caller).await;
    assert_eq!(result["status"], "denied");
    assert_eq!(result["decided_by"]["display_name"], "Tom");
    assert_eq!(result["decided_by"]["platform_user_id"], "7777");
    assert_eq!(result["decided_by"]["approver_id"], "telegram:7777");
    let a = answered(press(&TOM, &data(id, 'o'))).await;
    assert!(a.show_alert);
    assert!(
        a.text
            .as_deref()
            .is_some_and(|t| t.contains("already denied by Tom")),
        "{a:?}"
    );
    assert_eq!(s.get(id).await["status"], "denied");
}

// ----- text commands -----------------------------------------------------------------------

#[tokio::test]
async fn commands_by_prefix_in_either_order_as_replies_and_pending() {
    let fake = FakeTelegram::start(TOKEN);
    let extra = config(
        &fake,
        r#"targets = ["-1001"]"#,
        "[delivery]\nmode = \"targets\"\n",
    );
    let s = start(&extra).await;
    let a = "a1b2c3d4-0000-4000-8000-00000000000a";
    let b = "b1b2c3d4-0000-4000-8000-00000000000b";
    let caller_a = ask(
        &s,
        json!({ "id": a, "tool": "shell", "command": "make release" }),
    );
    let caller_b = ask(
        &s,
        json!({ "id": b, "tool": "shell", "command": "make clean" }),
    );
    let prompt_b = prompts(&fake, b, 1).await.remove(0);
    prompts(&fake, a, 1).await;

    let replies_so_far = |n: usize| {
        let fake = &fake;
        async move {
            eventually(&format!("{n} replies"), || async {
                replies(fake, GROUP).len() >= n
            })
            .await;
            replies(fake, GROUP)
        }
    };

    // A non-approver is refused with a reply, and nothing changes.
    fake.type_text(&MALLORY, GROUP, &format!("/deny {}", &b[..8]), None);
    let r = replies_so_far(1).await;
    assert_eq!(
        r[0].text(),
        "You are not authorised to decide on this request."
    );
    assert_eq!(s.get(b).await["status"], "pending");

    // Addressed to this bot, decision first, id prefix last.
    fake.type_text(
        &TOM,
        GROUP,
        &format!("/approve@{BOT_USERNAME} always {}", &a[..8]),
        None,
    );
    let result = answer_of(caller_a).await;
    assert_eq!(result["status"], "approved");
    assert_eq!(result["scope"], "always");
    assert_eq!(result["decided_by"]["platform_user_id"], "7777");
    let r = replies_so_far(2).await;
    assert!(r.iter().any(|m| m.text() == "Approved by Tom"), "{r:?}");

    // A command for another bot in the group is not ours; /pending lists what is left.
    fake.type_text(
        &TOM,
        GROUP,
        &format!("/approve@other_bot {}", &b[..8]),
        None,
    );
    fake.type_text(&TOM, GROUP, "/pending", None);
    let r = replies_so_far(3).await;
    let pending = r
        .iter()
        .find(|m| m.text().starts_with("Waiting for a decision"))
        .expect("a /pending reply");
    assert!(pending.text().contains(&b[..8]), "{}", pending.text());
    assert!(!pending.text().contains(&a[..8]), "{}", pending.text());
    assert_eq!(s.get(b).await["status"], "pending");

    // No id and not a reply: told how.
    fake.type_text(&TOM, GROUP, "/approve", None);
    let r = replies_so_far(4).await;
    assert!(
        r.iter().any(|m| m.text().starts_with("Which request?")),
        "{r:?}"
    );

    // A reply to the prompt needs no id; "facade" is a word of the reason, not an id.
    fake.type_text(
        &TOM,
        GROUP,
        "/deny facade broken",
        Some(prompt_b.message_id),
    );
    let result = answer_of(caller_b).await;
    assert_eq!(result["status"], "denied");
    assert_eq!(result["reason"], "facade broken");
    let r = replies_so_far(5).await;
    assert!(r.iter().any(|m| m.text() == "Denied by Tom"), "{r:?}");
    // Exactly one reply per command of ours: the other bot's command got none.
    assert_eq!(r.len(), 5, "{r:?}");
    eventually("b's prompt shows the denial", || async {
        let p = fake.prompts_for(b).remove(0);
        p.keyboard.is_none() && p.text().contains("Denied") && p.text().contains("facade broken")
    })
    .await;
}

// ----- webhook mode --------------------------------------------------------------------------

#[tokio::test]
async fn webhook_mode_registers_at_start_and_refuses_missing_or_wrong_secrets() {
    let fake = FakeTelegram::start(TOKEN);
    let secret = "wh-Secret_0123456789";
    let public = "https://approvals.example.com/telegram/telegram/webhook";
    let extra = config(
        &fake,
        &format!(
            "targets = [\"-1001\"]\nreceive = \"webhook\"\nwebhook_secret = \"{secret}\"\nwebhook_url = \"{public}\""
        ),
        "[delivery]\nmode = \"targets\"\n",
    );
    let s = start(&extra).await;
    eventually("setWebhook with the secret", || async {
        fake.webhook() == Some((public.to_string(), Some(secret.to_string())))
    })
    .await;
    eventually("health says connected", || async {
        health(&s).await["connected"] == true
    })
    .await;

    let id = "c1c2c3c4-0000-4000-8000-00000000000c";
    let caller = ask(
        &s,
        json!({ "id": id, "tool": "shell", "command": "reboot" }),
    );
    let prompt = prompts(&fake, id, 1).await.remove(0);
    let (cb, update) = fake.press_update(&TOM, GROUP, prompt.message_id, &data(id, 'o'));
    let hook = format!("{}/telegram/telegram/webhook", s.url);
    let post = |secret: Option<&str>, body: String| {
        let mut req = s
            .http()
            .post(&hook)
            .header("content-type", "application/json")
            .body(body);
        if let Some(v) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", v);
        }
        req.send()
    };

    for wrong in [None, Some("nope"), Some("wh-Secret_0123456788"), Some("")] {
        let r = post(wrong, update.to_string()).await.unwrap();
        assert_eq!(r.status(), 401, "{wrong:?}");
        let body = r.text().await.unwrap();
        assert!(body.contains("X-Telegram-Bot-Api-Secret-Token"), "{body}");
    }
    // The right secret with a body that is not an update: 400, no panic.
    for junk in ["not json", "{}", "{\"update_id\": -1}"] {
        let r = post(Some(secret), junk.to_string()).await.unwrap();
        assert_eq!(r.status(), 400, "{junk}");
    }
    assert_eq!(s.get(id).await["status"], "pending");
    assert!(fake.answers().is_empty());

    let r = post(Some(secret), update.to_string()).await.unwrap();
    assert_eq!(r.status(), 200);
    let result = answer_of(caller).await;
    assert_eq!(result["status"], "approved");
    assert_eq!(result["decided_by"]["platform_user_id"], "7777");
    assert_eq!(
        fake.answer_to(&cb).and_then(|a| a.text).as_deref(),
        Some("Approved by Tom")
    );
    // The same update again (a retry or a replay) is acknowledged and acted on once.
    let r = post(Some(secret), update.to_string()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fake.calls_of("answerCallbackQuery").len(), 1);
    eventually("prompt edited", || async {
        fake.prompts_for(id)[0].keyboard.is_none()
    })
    .await;
    // Webhook mode never polls.
    assert!(fake.calls_of("getUpdates").is_empty());
}

// ----- outcomes from elsewhere ---------------------------------------------------------------

#[tokio::test]
async fn expiry_and_decisions_made_elsewhere_edit_the_telegram_prompts() {
    let fake = FakeTelegram::start(TOKEN);
    let extra = config(
        &fake,
        r#"targets = ["-1001", { to = "-1002", thread_id = "7" }]"#,
        "[delivery]\nmode = \"targets\"\n",
    );
    let s = start(&extra).await;

    let expiring = "d1d2d3d4-0000-4000-8000-00000000000d";
    let caller = ask(
        &s,
        json!({ "id": expiring, "tool": "shell", "command": "sleep 1", "timeout_ms": 1200 }),
    );
    prompts(&fake, expiring, 2).await;
    let result = answer_of(caller).await;
    assert_eq!(result["status"], "expired");
    eventually("both prompts show the expiry", || async {
        let p = fake.prompts_for(expiring);
        p.len() == 2
            && p.iter()
                .all(|m| m.keyboard.is_none() && m.text().contains("Expired"))
    })
    .await;

    let elsewhere = "e1e2e3e4-0000-4000-8000-00000000000e";
    let caller = ask(
        &s,
        json!({ "id": elsewhere, "tool": "shell", "command": "make deploy" }),
    );
    prompts(&fake, elsewhere, 2).await;
    let resolved = s
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": elsewhere, "decision": "approve", "transport": "cli" }),
        )
        .await;
    assert_eq!(resolved["status"], "approved");
    assert_eq!(answer_of(caller).await["status"], "approved");
    eventually(
        "both prompts show Alice's approval from the CLI",
        || async {
            let p = fake.prompts_for(elsewhere);
            p.len() == 2
                && p.iter().all(|m| {
                    m.keyboard.is_none()
                        && m.text().contains("Approved")
                        && m.text().contains("Alice via cli")
                })
        },
    )
    .await;
}

#[tokio::test]
async fn an_edit_telegram_finds_unchanged_still_removes_the_buttons() {
    let fake = FakeTelegram::start(TOKEN);
    let extra = config(
        &fake,
        r#"targets = ["-1001"]"#,
        "[delivery]\nmode = \"targets\"\n",
    );
    let s = start(&extra).await;
    let id = "ed170000-0000-4000-8000-000000000001";
    s.request(json!({ "id": id, "tool": "t", "command": "x" }))
        .await;
    prompts(&fake, id, 1).await;
    // The text is already the outcome (an edit applied before a restart, say).
    fake.fail_next(
        "editMessageText",
        Fault::BadRequest(
            "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
        ),
    );
    s.call(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "deny" }),
    )
    .await;
    eventually("buttons removed", || async {
        fake.prompts_for(id)[0].keyboard.is_none()
    })
    .await;
    let markup_edits = fake.calls_of("editMessageReplyMarkup");
    assert_eq!(markup_edits.len(), 1);
    assert_eq!(
        markup_edits[0].body["reply_markup"],
        json!({ "inline_keyboard": [] })
    );
    assert!(health(&s).await["last_error"].is_null());
}

// ----- pacing, 429, 5xx, failures -------------------------------------------------------------

#[tokio::test]
async fn rate_limits_and_server_errors_delay_prompts_but_lose_none() {
    let fake = FakeTelegram::start(TOKEN);
    let extra = config(
        &fake,
        "targets = [\"-1001\"]\nchat_interval_ms = 300",
        "[delivery]\nmode = \"targets\"\nwait_ms = 200\n",
    );
    let s = start(&extra).await;
    let ids: Vec<String> = (1..=4)
        .map(|i| format!("f0f0f0f{i}-0000-4000-8000-000000000000"))
        .collect();

    s.request(json!({ "id": ids[0], "tool": "t", "command": "one" }))
        .await;
    prompts(&fake, &ids[0], 1).await;
    // The next send is told to wait a second; two prompts queue up behind it.
    fake.fail_next("sendMessage", Fault::RetryAfter(1));
    for id in &ids[1..3] {
        s.request(json!({ "id": id, "tool": "t", "command": format!("queued {id}") }))
            .await;
    }
    for id in &ids[1..3] {
        prompts(&fake, id, 1).await;
    }
    let sends = fake.calls_of("sendMessage");
    let limited = sends
        .iter()
        .position(|c| c.status == 429)
        .expect("a 429 was answered");
    let after = &sends[limited + 1];
    let waited = after.at - sends[limited].at;
    eprintln!("measured: the send after the 429 came {waited:?} later (retry_after 1 s)");
    assert!(
        waited >= Duration::from_millis(950),
        "sent again after {waited:?}, before retry_after"
    );
    // Never two messages to the chat closer than the configured interval.
    let gaps: Vec<Duration> = sends.windows(2).map(|p| p[1].at - p[0].at).collect();
    eprintln!("measured: gaps between sends to one chat {gaps:?} (interval 300 ms)");
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(280)),
        "{gaps:?}"
    );

    // A 500 and a proxy's HTML 502 are retried with backoff.
    fake.fail_next("sendMessage", Fault::Server(500));
    fake.fail_next("sendMessage", Fault::BadGatewayHtml);
    s.request(json!({ "id": ids[3], "tool": "t", "command": "four" }))
        .await;
    prompts(&fake, &ids[3], 1).await;
    let statuses: Vec<u16> = fake
        .calls_of("sendMessage")
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, vec![200, 429, 200, 200, 500, 502, 200]);

    // Each request has exactly one prompt, recorded as delivered.
    for id in &ids {
        assert_eq!(fake.prompts_for(id).len(), 1, "{id}");
        eventually("delivery recorded", || async {
            s.get(id).await["delivered_to"]
                .as_array()
                .is_some_and(|d| d.len() == 1)
        })
        .await;
    }
}

#[tokio::test]
async fn undeliverable_prompts_are_reported_to_operators_without_the_token() {
    let fake = FakeTelegram::start(TOKEN);
    let extra = config(&fake, "max_retries = 2", "[delivery]\nmode = \"session\"\n");
    let s = start(&extra).await;
    fake.forget_chat(-1009);

    let lost = "a0a0a0a0-0000-4000-8000-000000000001";
    s.request(json!({ "id": lost, "tool": "t", "command": "x",
                      "origin": { "channel": "telegram", "to": "-1009" } }))
        .await;
    // Persistent 5xx: the first try and two retries, then reported.
    for _ in 0..3 {
        fake.fail_next("sendMessage", Fault::Server(500));
    }
    let down = "a0a0a0a0-0000-4000-8000-000000000002";
    s.request(json!({ "id": down, "tool": "t", "command": "y",
                      "origin": { "channel": "telegram", "to": "-1001" } }))
        .await;

    let error_of = |id: &'static str| {
        let s = &s;
        async move {
            eventually("the failed delivery is recorded", || async {
                s.get(id).await["deliveries"][0]["error"].is_string()
            })
            .await;
            s.get(id).await["deliveries"][0]["error"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let e = error_of(lost).await;
    assert!(e.contains("chat not found"), "{e}");
    assert!(e.contains("is the bot a member"), "{e}");
    let e = error_of(down).await;
    assert!(e.contains("500"), "{e}");
    assert_eq!(fake.calls_of("sendMessage").len(), 4);
    for id in [lost, down] {
        let audit = s.audit(id).await;
        assert!(
            events_of(&audit).contains(&"delivery_failed".to_string()),
            "{audit:?}"
        );
        assert!(!Value::Array(audit).to_string().contains("SECRETvalue"));
        assert_eq!(
            s.get(id).await["status"],
            "pending",
            "still there to decide"
        );
    }
    let h = health(&s).await;
    assert!(h["last_error"].is_string(), "{h}");
    assert!(!h.to_string().contains("SECRETvalue"), "{h}");
}

// ----- restart ---------------------------------------------------------------------------------

/// The first instance runs on its own runtime, dropped with everything on it (its poller
/// included) as abruptly as a crash; the second starts on the same data dir and the same fake.
#[test]
fn a_press_after_a_restart_still_resolves_and_edits_every_prompt() {
    let fake = FakeTelegram::start(TOKEN);
    let extra = config(
        &fake,
        r#"targets = ["-1001", { to = "-1002", thread_id = "7" }]"#,
        "[delivery]\nmode = \"targets\"\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let id = "babe0000-0000-4000-8000-000000000001";

    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let prompt = rt1.block_on(async {
        let s = TestServer::start_in(tmp.path(), &extra, telegram_channels(&extra)).await;
        s.request(
            json!({ "id": id, "tool": "deploy", "command": "deploy prod", "timeout_ms": 60_000 }),
        )
        .await;
        prompts(&fake, id, 2)
            .await
            .into_iter()
            .find(|m| m.chat_id == TOPIC_GROUP)
            .unwrap()
    });
    rt1.shutdown_background();

    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        let s = TestServer::start_in(tmp.path(), &extra, telegram_channels(&extra)).await;
        assert_eq!(s.get(id).await["status"], "pending");
        let waiter = s.spawn_wait(id);
        let cb = fake.press(
            &ERIN,
            TOPIC_GROUP,
            prompt.message_id,
            &prompt.button_data()[2],
        );
        let answer = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer["result"]["status"], "denied");
        assert_eq!(answer["result"]["decided_by"]["person"], "erin");
        assert_eq!(
            answer["result"]["decided_by"]["channel_id"],
            TOPIC_GROUP.to_string()
        );
        eventually("the press is answered", || async {
            fake.answer_to(&cb).is_some()
        })
        .await;
        // Both prompts, sent by the first instance, are edited by the second.
        eventually("both pre-restart prompts edited", || async {
            let p = fake.prompts_for(id);
            p.len() == 2
                && p.iter()
                    .all(|m| m.keyboard.is_none() && m.text().contains("Denied by Erin"))
        })
        .await;
    });
}

// ----- receiving trouble, long prompts, config ---------------------------------------------------

#[tokio::test]
async fn a_409_conflict_shows_in_health_and_polling_recovers() {
    let fake = FakeTelegram::start(TOKEN);
    for _ in 0..5 {
        fake.fail_next("getUpdates", Fault::Conflict);
    }
    let extra = config(
        &fake,
        "targets = [\"-1001\"]\nretry_base_ms = 60",
        "[delivery]\nmode = \"targets\"\n",
    );
    let s = start(&extra).await;
    eventually("health reports the conflict", || async {
        let h = health(&s).await;
        h["connected"] == false
            && h["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("409 Conflict") && e.contains("one approvald"))
    })
    .await;
    eventually("polling recovers", || async {
        let h = health(&s).await;
        h["connected"] == true && h["last_error"].is_null()
    })
    .await;
    let id = "c0ffee00-0000-4000-8000-000000000001";
    let caller = ask(&s, json!({ "id": id, "tool": "t", "command": "x" }));
    let prompt = prompts(&fake, id, 1).await.remove(0);
    fake.press(&TOM, GROUP, prompt.message_id, &data(id, 'o'));
    assert_eq!(answer_of(caller).await["status"], "approved");
}

#[tokio::test]
async fn a_prompt_over_telegrams_limit_is_cut_safely_and_still_works() {
    let fake = FakeTelegram::start(TOKEN);
    let templates = tempfile::tempdir().unwrap();
    // A custom template that does not fold long commands, as users may write.
    std::fs::write(
        templates.path().join("request.j2"),
        "{{ \"Approval required\" | bold }}: {{ tool | bold }}\n{{ command | code_block }}\nID: {{ approval_id | code }}\n",
    )
    .unwrap();
    let extra = config(
        &fake,
        r#"targets = ["-1001"]"#,
        &format!(
            "[delivery]\nmode = \"targets\"\n[templates]\ndir = {:?}\n",
            templates.path().display().to_string()
        ),
    );
    let s = start(&extra).await;
    let id = "10a90000-0000-4000-8000-000000000001";
    let command = "echo \"<&>\" é 😀 ".repeat(600);
    let caller = ask(&s, json!({ "id": id, "tool": "shell", "command": command }));
    eventually("the long prompt was accepted by Telegram", || async {
        !fake.messages_in(GROUP).is_empty()
    })
    .await;
    let m = fake.messages_in(GROUP).remove(0);
    // The fake refuses text over 4096 characters and HTML that does not parse, so being sent
    // at all proves both; the cut is marked and the buttons are there.
    assert!(m.text().encode_utf16().count() <= 4096);
    assert!(m.text().contains("[cut to fit Telegram"), "{}", m.text());
    assert!(m.html.contains("</pre>"), "the code block is closed");
    assert_eq!(m.button_data()[0], data(id, 'o'));
    fake.press(&TOM, GROUP, m.message_id, &data(id, 'o'));
    assert_eq!(answer_of(caller).await["status"], "approved");
    // The full command is kept for the control UI.
    assert_eq!(s.get(id).await["request"]["command"], command.as_str());
}

#[test]
fn config_errors_name_the_key_and_kind_lets_a_second_bot_have_its_own_name() {
    let build = |text: &str| {
        let config = Config::from_toml_str(text).expect("parses");
        platform_channels(&config)
    };
    let err = build("[channels.telegram]\napi_url = \"http://127.0.0.1:9\"\n")
        .err()
        .expect("no token is an error");
    assert!(
        err.to_string().contains("channels.telegram.bot_token"),
        "{err}"
    );
    let err = build("[channels.telegram]\nbot_token = \"1:abc\"\nreceive = \"webhook\"\n")
        .err()
        .expect("webhook without a secret is an error");
    assert!(
        err.to_string().contains("channels.telegram.webhook_secret"),
        "{err}"
    );
    let err = build("[channels.telegram]\nbot_token = \"1:abc\"\nchat_intervall_ms = 5\n")
        .err()
        .expect("a typo is an error");
    assert!(
        err.to_string()
            .contains("channels.telegram.chat_intervall_ms"),
        "{err}"
    );

    let channels = build(
        "[channels.telegram]\nbot_token = \"1:abc\"\n[channels.ops-bot]\nkind = \"telegram\"\nbot_token = \"2:def\"\n[channels.off]\nkind = \"telegram\"\nenabled = false\n",
    )
    .expect("two telegram bots");
    let names: Vec<&str> = channels.iter().map(|c| c.name()).collect();
    assert_eq!(names, vec!["ops-bot", "telegram"]);
    assert!(
        channels
            .iter()
            .all(|c| c.transport() == approvald_channel::Transport::Telegram)
    );
}

#[tokio::test]
async fn a_running_task_gets_an_abort_button_that_stops_it_for_approvers_only() {
    let fake = FakeTelegram::start(TOKEN);
    let extra = config(
        &fake,
        r#"targets = ["-1001"]"#,
        "[delivery]\nmode = \"targets\"\n",
    );
    let s = start(&extra).await;
    let id = "1b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
    s.request(json!({ "id": id, "tool": "shell", "command": "make reindex" }))
        .await;
    let prompt = prompts(&fake, id, 1).await.remove(0);
    fake.press(&TOM, GROUP, prompt.message_id, &data(id, 'o'));
    eventually("approved", || async {
        s.get(id).await["status"] == "approved"
    })
    .await;
    s.call(GATEWAY, "tool.execution.start", json!({ "task_id": id }))
        .await;
    eventually("the Abort button on the prompt", || async {
        fake.prompts_for(id)
            .first()
            .is_some_and(|m| m.buttons() == vec![("Abort".to_string(), data(id, 'x'))])
    })
    .await;
    assert!(fake.prompts_for(id)[0].text().contains("Task: running"));

    let refused = fake.press(&MALLORY, GROUP, prompt.message_id, &data(id, 'x'));
    eventually("mallory is answered", || async {
        fake.answer_to(&refused).is_some()
    })
    .await;
    assert!(fake.answer_to(&refused).unwrap().show_alert);
    let t = s
        .call(ADMIN, "tool.task.get", json!({ "task_id": id }))
        .await;
    assert_eq!(t["status"], "running");

    let pressed = fake.press(&ERIN, GROUP, prompt.message_id, &data(id, 'x'));
    eventually("erin is answered", || async {
        fake.answer_to(&pressed).is_some()
    })
    .await;
    assert_eq!(
        fake.answer_to(&pressed).unwrap().text.as_deref(),
        Some("Task aborted by Erin")
    );
    let t = s
        .call(ADMIN, "tool.task.get", json!({ "task_id": id }))
        .await;
    assert_eq!(t["status"], "aborted");
    assert_eq!(t["abort"]["by"]["person"], "erin");
    eventually("the prompt shows the abort, buttons gone", || async {
        fake.prompts_for(id)
            .first()
            .is_some_and(|m| m.keyboard.is_none() && m.text().contains("aborted by Erin"))
    })
    .await;
}
