//! Platform faults (issue 9, test 2): each platform's fake answers approvald's calls with 5xx,
//! 429 in the platform's own retry-after form, a connection reset, a request held past the
//! channel's request timeout, a 200 whose body is not JSON, and a call carried out but answered
//! only after the client gave up. The real service runs with its platform channel built from
//! config, exactly as `approvald serve` does.
//!
//! What must hold, on every platform:
//! - nothing panics, and the service still answers `/healthz` and further requests;
//! - every prompt is delivered in the end (transient faults) or reported undeliverable to
//!   operators (an `approvald.delivery_failed` event, a `delivery_failed` audit entry, and the
//!   target missing from `delivered_to`): never silently dropped;
//! - no prompt is sent twice to one chat for one request where the platform answered success
//!   (`accepted` calls: the fake did the work and its readable success answer came in time).
//!
//! The one case where a platform holds a message the client never heard of is a send carried
//! out but answered after the client's timeout ([`Fault::SlowOk`]): the client cannot tell it
//! from a send that was lost, and sends again. Discord de-duplicates such a resend by the
//! message nonce approvald sends with `enforce_nonce`, so its chat holds one message. The
//! Telegram Bot API and Slack's Web API have no idempotency key: approvald resends (a prompt
//! reaching its approvers matters more than a stray copy), so the chat holds a second copy that
//! approvald does not know about; the tests pin that behaviour down.

#[path = "support/fake_discord.rs"]
mod fake_discord;
#[path = "support/fake_slack.rs"]
mod fake_slack;
#[path = "support/fake_telegram.rs"]
mod fake_telegram;
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use approvald::config::Config;
use approvald::server::platform_channels;
use approvald_channel::Channel;
use serde_json::{Value, json};
use support::*;

/// How long a faulty call is held: far beyond every channel's request timeout here (2 s).
const HOLD: Duration = Duration::from_secs(8);
const HOLD_MS: u64 = 8000;

// ----- what every platform's test shares -------------------------------------------------------

/// Panics anywhere outside the test code itself (approvald's tasks, the channel crates).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/"));
            if !in_tests {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The service with the platform channels this config builds, as `approvald serve` does.
async fn start(extra: &str) -> TestServer {
    watch_panics();
    init_logs();
    let config =
        Config::from_toml_str(&format!("{}\n{extra}", base_for_binary())).expect("valid config");
    let channels: Vec<Arc<dyn Channel>> =
        platform_channels(&config).expect("the platform channel builds");
    assert_eq!(channels.len(), 1);
    TestServer::start(extra, channels).await
}

/// Poll `f` for up to 30 s (a persistent fault takes several request timeouts to give up on).
async fn until<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A new pending request; its id.
async fn ask(s: &TestServer, what: &str) -> String {
    let r = s
        .request(json!({ "tool": "shell", "command": format!("echo {what}") }))
        .await;
    r["id"].as_str().expect("an id").to_string()
}

/// Wait until the request's one prompt is recorded as delivered; its message reference.
async fn delivered(s: &TestServer, id: &str, what: &str) -> Value {
    until(&format!("the prompt ({what}) to be delivered"), || async {
        let r = s.get(id).await;
        r["delivered_to"].as_array().is_some_and(|d| !d.is_empty())
            || r["deliveries"][0]["error"].is_string()
    })
    .await;
    let r = s.get(id).await;
    let to = r["delivered_to"].as_array().cloned().unwrap_or_default();
    assert_eq!(to.len(), 1, "{what}: delivered once, not failed: {r}");
    assert_eq!(r["deliveries"].as_array().map(Vec::len), Some(1), "{r}");
    let audit = events_of(&s.audit(id).await);
    assert!(
        !audit.contains(&"delivery_failed".into()),
        "{what}: {audit:?}"
    );
    to[0].clone()
}

/// Wait until the request's one prompt is reported undeliverable, everywhere operators look;
/// the error text.
async fn reported(s: &TestServer, events: &EventLog, id: &str, what: &str) -> String {
    until(
        &format!("the failed delivery ({what}) to be reported"),
        || async { s.get(id).await["deliveries"][0]["error"].is_string() },
    )
    .await;
    let r = s.get(id).await;
    assert_eq!(r["delivered_to"], json!([]), "{what}: {r}");
    assert_eq!(r["status"], "pending", "{what}: still there to decide");
    let audit = s.audit(id).await;
    assert!(
        events_of(&audit).contains(&"delivery_failed".into()),
        "{what}: {audit:?}"
    );
    until(&format!("the delivery_failed event ({what})"), || async {
        !events.about("approvald.delivery_failed", id).is_empty()
    })
    .await;
    r["deliveries"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// After the faults: no panic, `/healthz` answers, and a new request is delivered.
async fn still_serving(s: &TestServer) -> Value {
    let health = s
        .http()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .expect("healthz answers");
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.expect("healthz is JSON");
    let id = ask(s, "after the storm").await;
    delivered(s, &id, "after the faults").await;
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "something panicked (see the output above)"
    );
    health
}

// ----- Telegram ---------------------------------------------------------------------------------

mod telegram {
    use super::*;
    use fake_telegram::{FakeTelegram, Fault, TgUser};

    const TOKEN: &str = "123456:TESTtokenSECRETvalue_abc";
    const GROUP: i64 = -1001;
    const TOM: TgUser = TgUser {
        id: 7777,
        first_name: "Tom",
        last_name: None,
        username: Some("tom_ops"),
    };

    fn config(fake: &FakeTelegram) -> String {
        format!(
            r#"
[delivery]
mode = "targets"
wait_ms = 50

[channels.telegram]
bot_token = "{TOKEN}"
api_url = "{url}"
approvers = ["7777"]
targets = ["{GROUP}"]
request_timeout_secs = 2
max_retries = 2
retry_base_ms = 20
chat_interval_ms = 20
poll_timeout_secs = 1
max_retry_after_secs = 5
"#,
            url = fake.url
        )
    }

    /// sendMessage calls for this request to the group the fake did and answered in time.
    fn accepted_sends(fake: &FakeTelegram, id: &str) -> usize {
        sends(fake, id).iter().filter(|c| c.accepted()).count()
    }

    fn sends(fake: &FakeTelegram, id: &str) -> Vec<fake_telegram::Call> {
        fake.calls_of("sendMessage")
            .into_iter()
            .filter(|c| c.body["chat_id"] == GROUP && c.body.to_string().contains(id))
            .collect()
    }

    #[tokio::test]
    async fn every_fault_ends_in_one_prompt_or_a_report_never_a_silent_loss() {
        let fake = FakeTelegram::start(TOKEN);
        let s = start(&config(&fake)).await;
        let events = EventLog::start(&s);

        // Transient faults: retried, delivered once.
        let transient: Vec<(&str, Vec<Fault>)> = vec![
            ("500", vec![Fault::Server(500)]),
            ("a proxy's HTML 502", vec![Fault::BadGatewayHtml]),
            ("429 retry_after", vec![Fault::RetryAfter(1)]),
            ("connection reset", vec![Fault::Reset]),
            ("no answer within the timeout", vec![Fault::Hang(HOLD)]),
            ("reset, then 503", vec![Fault::Reset, Fault::Server(503)]),
        ];
        let mut first = None;
        for (what, faults) in &transient {
            for f in faults {
                fake.fail_next("sendMessage", f.clone());
            }
            let id = ask(&s, what).await;
            let message = delivered(&s, &id, what).await;
            let tried = sends(&fake, &id);
            assert_eq!(tried.len(), faults.len() + 1, "{what}: {tried:?}");
            assert_eq!(accepted_sends(&fake, &id), 1, "{what}");
            let prompts = fake.prompts_for(&id);
            assert_eq!(prompts.len(), 1, "{what}: one message in the chat");
            assert_eq!(
                message["message_id"],
                prompts[0].message_id.to_string(),
                "{what}"
            );
            first.get_or_insert(id);
        }

        // Carried out, answered late: the client cannot know, and sends again. Telegram has no
        // idempotency key, so the chat gets a second copy; approvald holds (and will edit) the
        // one Telegram answered, and no send was answered twice.
        fake.fail_next("sendMessage", Fault::SlowOk(HOLD));
        let id = ask(&s, "answered late").await;
        let message = delivered(&s, &id, "answered late").await;
        let tried = sends(&fake, &id);
        assert_eq!(tried.len(), 2, "{tried:?}");
        assert!(tried[0].late && !tried[1].late);
        assert_eq!(accepted_sends(&fake, &id), 1);
        let copies = fake.prompts_for(&id);
        assert_eq!(copies.len(), 2, "the late one was sent all the same");
        assert_eq!(message["message_id"], copies[1].message_id.to_string());

        // A 200 that is not a Bot API answer: not retried (it may have been sent), reported.
        fake.fail_next("sendMessage", Fault::Garbage);
        let id = ask(&s, "garbled").await;
        let error = reported(&s, &events, &id, "garbled answer").await;
        assert!(error.contains("not a Bot API answer"), "{error}");
        assert_eq!(sends(&fake, &id).len(), 1);
        assert_eq!(accepted_sends(&fake, &id), 0);

        // Faults that do not go away: bounded retries (first try + 2), then reported.
        let persistent: Vec<(&str, Fault, usize, &str)> = vec![
            ("resets", Fault::Reset, 3, "network error"),
            ("no answers", Fault::Hang(HOLD), 3, "timed out"),
            ("5xx", Fault::Server(502), 3, "502"),
            ("429 asking too long", Fault::RetryAfter(60), 1, "429"),
        ];
        for (what, fault, tries, says) in persistent {
            for _ in 0..tries {
                fake.fail_next("sendMessage", fault.clone());
            }
            let id = ask(&s, what).await;
            let error = reported(&s, &events, &id, what).await;
            assert!(error.contains(says), "{what}: {error}");
            assert!(!error.contains("SECRETvalue"), "{error}");
            assert_eq!(sends(&fake, &id).len(), tries, "{what}");
            assert_eq!(accepted_sends(&fake, &id), 0, "{what}");
            assert!(fake.prompts_for(&id).is_empty(), "{what}");
        }

        // Edits under faults end in the outcome, buttons removed.
        let id = first.expect("a delivered request");
        for f in [Fault::Reset, Fault::SlowOk(HOLD)] {
            fake.fail_next("editMessageText", f);
        }
        s.call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
        until("the prompt edited to the outcome", || async {
            let p = &fake.prompts_for(&id)[0];
            p.keyboard.is_none() && p.text().contains("Approved")
        })
        .await;

        let health = still_serving(&s).await;
        assert!(!health.to_string().contains("SECRETvalue"), "{health}");
    }

    /// Polling through getUpdates faults, and an update the poller gets twice: acted on once.
    #[tokio::test]
    async fn polling_survives_faults_and_acts_on_each_update_once() {
        let fake = FakeTelegram::start(TOKEN);
        let s = start(&config(&fake)).await;
        let id = ask(&s, "poll me").await;
        delivered(&s, &id, "before the faults").await;
        let prompt = fake.prompts_for(&id).remove(0);

        let faults = [
            Fault::Server(500),
            Fault::Garbage,
            Fault::Reset,
            Fault::RetryAfter(1),
            Fault::Hang(HOLD),
            Fault::BadGatewayHtml,
        ];
        let before = fake.calls_of("getUpdates").len();
        for f in &faults {
            fake.fail_next("getUpdates", f.clone());
        }
        until("the poller to go through every fault", || async {
            fake.calls_of("getUpdates").len() > before + faults.len()
        })
        .await;

        // Tom presses; the update comes twice (as after a lost offset confirmation).
        let (cb, update) = fake.press_update(&TOM, GROUP, prompt.message_id, &format!("v1:{id}:o"));
        fake.push(update.clone());
        fake.push(update);
        until("the press decided the request", || async {
            s.get(&id).await["status"] == "approved"
        })
        .await;
        until("the press answered", || async {
            fake.answer_to(&cb).is_some()
        })
        .await;
        until("the updates confirmed", || async {
            fake.unconfirmed() == 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fake.calls_of("answerCallbackQuery").len(), 1);
        let audit = events_of(&s.audit(&id).await);
        assert_eq!(
            audit.iter().filter(|e| *e == "decision").count(),
            1,
            "{audit:?}"
        );
        let health = still_serving(&s).await;
        let telegram = &health["channels"][0];
        assert_eq!(telegram["connected"], true, "{health}");
    }
}

// ----- Slack ------------------------------------------------------------------------------------

mod slack {
    use super::*;
    use fake_slack::{BOT_TOKEN, FakeSlack, Fault};

    const CHANNEL: &str = "C0OPS";

    fn config(fake: &FakeSlack) -> String {
        format!(
            r#"
[delivery]
mode = "targets"
wait_ms = 50

[channels.slack]
bot_token = "{BOT_TOKEN}"
signing_secret = "test-signing-secret-8f742231b10e"
api_url = "{api}"
targets = ["{CHANNEL}"]
per_channel_interval_ms = 10
global_interval_ms = 0
backoff_base_ms = 10
backoff_max_ms = 40
max_retries = 2
max_retry_after_ms = 5000
request_timeout_ms = 2000
"#,
            api = fake.api_url()
        )
    }

    /// chat.postMessage calls for this request to the channel.
    fn posts(fake: &FakeSlack, id: &str) -> Vec<fake_slack::Call> {
        fake.calls("chat.postMessage")
            .into_iter()
            .filter(|c| c.body["channel"] == CHANNEL && c.body.to_string().contains(id))
            .collect()
    }

    /// Posts Slack carried out and answered `ok` in time.
    fn accepted(fake: &FakeSlack, id: &str) -> usize {
        posts(fake, id).iter().filter(|c| c.outcome == "ok").count()
    }

    /// Messages the channel holds for this request (answered in time or not).
    fn copies(fake: &FakeSlack, id: &str) -> usize {
        posts(fake, id)
            .iter()
            .filter(|c| c.outcome.starts_with("ok"))
            .count()
    }

    #[tokio::test]
    async fn every_fault_ends_in_one_prompt_or_a_report_never_a_silent_loss() {
        let fake = FakeSlack::start().await;
        let s = start(&config(&fake)).await;
        let events = EventLog::start(&s);

        let transient: Vec<(&str, Vec<Fault>)> = vec![
            ("500", vec![Fault::Status(500)]),
            ("503 from the edge", vec![Fault::Status(503)]),
            ("429 Retry-After", vec![Fault::RateLimited(1)]),
            ("connection reset", vec![Fault::Reset]),
            ("no answer within the timeout", vec![Fault::Hang(HOLD_MS)]),
            (
                "Slack's own transient error",
                vec![Fault::Api("internal_error")],
            ),
            ("reset, then 502", vec![Fault::Reset, Fault::Status(502)]),
        ];
        let mut first = None;
        for (what, faults) in &transient {
            fake.fail_next("chat.postMessage", faults);
            let id = ask(&s, what).await;
            let message = delivered(&s, &id, what).await;
            let tried = posts(&fake, &id);
            assert_eq!(tried.len(), faults.len() + 1, "{what}: {tried:?}");
            assert_eq!(accepted(&fake, &id), 1, "{what}");
            assert_eq!(copies(&fake, &id), 1, "{what}: one message in the channel");
            let ts = message["message_id"].as_str().unwrap().to_string();
            assert!(fake.message(CHANNEL, &ts).is_some(), "{what}: {message}");
            first.get_or_insert((id, ts));
        }

        // Carried out, answered late: resent (Slack has no idempotency key), so the channel
        // holds a copy approvald does not know of; no post was answered `ok` twice.
        fake.fail_next("chat.postMessage", &[Fault::SlowOk(HOLD_MS)]);
        let id = ask(&s, "answered late").await;
        delivered(&s, &id, "answered late").await;
        let tried = posts(&fake, &id);
        assert_eq!(tried.len(), 2, "{tried:?}");
        assert_eq!(tried[0].outcome, "ok (late)");
        assert_eq!(accepted(&fake, &id), 1);
        assert_eq!(copies(&fake, &id), 2);

        // A 200 that is not JSON: not retried (it may have been posted), reported.
        fake.fail_next("chat.postMessage", &[Fault::Garbage]);
        let id = ask(&s, "garbled").await;
        let error = reported(&s, &events, &id, "garbled answer").await;
        assert!(error.contains("unexpected answer"), "{error}");
        assert_eq!(posts(&fake, &id).len(), 1);
        assert_eq!(accepted(&fake, &id), 0);

        let persistent: Vec<(&str, Fault, usize, &str)> = vec![
            ("resets", Fault::Reset, 3, "network error"),
            ("no answers", Fault::Hang(HOLD_MS), 3, "no answer within"),
            ("5xx", Fault::Status(502), 3, "HTTP 502"),
            (
                "429 asking too long",
                Fault::RateLimited(60),
                1,
                "rate limited",
            ),
        ];
        for (what, fault, tries, says) in persistent {
            fake.fail_next("chat.postMessage", &vec![fault; tries]);
            let id = ask(&s, what).await;
            let error = reported(&s, &events, &id, what).await;
            assert!(error.contains(says), "{what}: {error}");
            assert!(!error.contains(BOT_TOKEN), "{error}");
            assert_eq!(posts(&fake, &id).len(), tries, "{what}");
            assert_eq!(copies(&fake, &id), 0, "{what}");
        }

        // Edits under faults end in the outcome, buttons removed.
        let (id, ts) = first.expect("a delivered request");
        fake.fail_next("chat.update", &[Fault::Reset, Fault::SlowOk(HOLD_MS)]);
        s.call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "deny" }),
        )
        .await;
        until("the message updated to the outcome", || async {
            fake.calls("chat.update")
                .iter()
                .any(|c| c.outcome == "ok" && c.body["ts"] == ts.as_str())
        })
        .await;
        let now = fake.message(CHANNEL, &ts).unwrap();
        let text = now.to_string();
        assert!(text.contains("Denied"), "{text}");
        assert!(
            !now["blocks"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["type"] == "actions"),
            "buttons removed: {now}"
        );

        let health = still_serving(&s).await;
        assert!(!health.to_string().contains(BOT_TOKEN), "{health}");
    }
}

// ----- Discord ----------------------------------------------------------------------------------

mod discord {
    use super::*;
    use fake_discord::{APP_ID, BOT_TOKEN, FakeDiscord, Fault, Op};

    const CHANNEL: &str = "1100000000000000001";
    /// Any valid Ed25519 public key: this test sends no interactions.
    const PUBLIC_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn config(fake: &FakeDiscord) -> String {
        format!(
            r#"
[delivery]
mode = "targets"
wait_ms = 50
targets = [{{ channel = "discord", to = "{CHANNEL}" }}]

[channels.discord]
bot_token = "{BOT_TOKEN}"
application_id = "{APP_ID}"
public_key = "{PUBLIC_KEY}"
api_url = "{url}"
register_commands = false
retry_base_ms = 20
retry_max_ms = 200
max_retries = 2
max_retry_after_ms = 5000
request_timeout_ms = 2000
global_per_second = 1000
"#,
            url = fake.url
        )
    }

    /// Create-message calls for this request to the channel.
    fn creates(fake: &FakeDiscord, id: &str) -> Vec<fake_discord::Call> {
        fake.calls(Op::CreateMessage)
            .into_iter()
            .filter(|c| c.path.contains(CHANNEL) && c.body.to_string().contains(id))
            .collect()
    }

    fn accepted(fake: &FakeDiscord, id: &str) -> usize {
        creates(fake, id).iter().filter(|c| c.accepted()).count()
    }

    /// Messages the channel holds for this request.
    fn copies(fake: &FakeDiscord, id: &str) -> Vec<Value> {
        fake.messages_in(CHANNEL)
            .into_iter()
            .filter(|m| m.to_string().contains(id))
            .collect()
    }

    #[tokio::test]
    async fn every_fault_ends_in_one_prompt_or_a_report_never_a_silent_loss() {
        let fake = FakeDiscord::start().await;
        let s = start(&config(&fake)).await;
        let events = EventLog::start(&s);

        let limited = |secs: f64| Fault::RateLimited {
            retry_after: secs,
            global: false,
        };
        let transient: Vec<(&str, Vec<Fault>)> = vec![
            ("500", vec![Fault::Status(500)]),
            ("502", vec![Fault::Status(502)]),
            ("429 retry_after", vec![limited(0.5)]),
            (
                "global 429",
                vec![Fault::RateLimited {
                    retry_after: 0.3,
                    global: true,
                }],
            ),
            ("connection reset", vec![Fault::Reset]),
            ("no answer within the timeout", vec![Fault::Hang(HOLD)]),
            // Carried out, answered late: the resend carries the same enforced nonce, so
            // Discord answers with the message it already made instead of a second copy.
            ("carried out but answered late", vec![Fault::SlowOk(HOLD)]),
            ("reset, then 503", vec![Fault::Reset, Fault::Status(503)]),
        ];
        let mut first = None;
        for (what, faults) in &transient {
            fake.fail_next(Op::CreateMessage, faults);
            let id = ask(&s, what).await;
            let message = delivered(&s, &id, what).await;
            let tried = creates(&fake, &id);
            assert_eq!(tried.len(), faults.len() + 1, "{what}: {tried:?}");
            assert_eq!(accepted(&fake, &id), 1, "{what}");
            let nonces: std::collections::HashSet<String> =
                tried.iter().map(|c| c.body["nonce"].to_string()).collect();
            assert_eq!(nonces.len(), 1, "{what}: every resend has the same nonce");
            assert!(tried.iter().all(|c| c.body["enforce_nonce"] == true));
            let held = copies(&fake, &id);
            assert_eq!(held.len(), 1, "{what}: one message in the channel");
            assert_eq!(message["message_id"], held[0]["id"], "{what}");
            first.get_or_insert((id, message["message_id"].as_str().unwrap().to_string()));
        }

        // A 200 that is not JSON: reported.
        fake.fail_next(Op::CreateMessage, &[Fault::Garbage]);
        let id = ask(&s, "garbled").await;
        let error = reported(&s, &events, &id, "garbled answer").await;
        assert!(error.contains("unexpected answer"), "{error}");
        assert_eq!(creates(&fake, &id).len(), 1);
        assert_eq!(accepted(&fake, &id), 0);

        let persistent: Vec<(&str, Fault, usize, &str)> = vec![
            ("resets", Fault::Reset, 3, "network error"),
            ("no answers", Fault::Hang(HOLD), 3, "no answer within"),
            ("5xx", Fault::Status(502), 3, "502"),
        ];
        for (what, fault, tries, says) in persistent {
            fake.fail_next(Op::CreateMessage, &vec![fault; tries]);
            let id = ask(&s, what).await;
            let error = reported(&s, &events, &id, what).await;
            assert!(error.contains(says), "{what}: {error}");
            assert!(!error.contains("s3cr3t"), "{error}");
            assert_eq!(creates(&fake, &id).len(), tries, "{what}");
            assert!(copies(&fake, &id).is_empty(), "{what}");
        }

        // Edits under faults end in the outcome, buttons removed.
        let (id, message_id) = first.expect("a delivered request");
        fake.fail_next(Op::EditMessage, &[Fault::Reset, Fault::SlowOk(HOLD)]);
        s.call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
        until("the message edited to the outcome", || async {
            fake.message(&message_id).is_some_and(|m| {
                m["components"] == json!([])
                    && m["embeds"][0]["title"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("Approved"))
            })
        })
        .await;

        let health = still_serving(&s).await;
        assert!(!health.to_string().contains("s3cr3t"), "{health}");

        // A 429 asking longer than max_retry_after_ms: reported at once. Its headers block the
        // channel's bucket for that long, so the next prompt there is reported at once too
        // (without reaching Discord), rather than held until the engine gives up on it.
        fake.fail_next(Op::CreateMessage, &[limited(60.0)]);
        let id = ask(&s, "429 asking too long").await;
        let error = reported(&s, &events, &id, "429 asking too long").await;
        assert!(error.contains("rate limited for 60.0s"), "{error}");
        assert_eq!(creates(&fake, &id).len(), 1);
        let id = ask(&s, "behind a long 429").await;
        let error = reported(&s, &events, &id, "behind a long 429").await;
        assert!(
            error.contains("rate limited for") && error.contains("s more"),
            "{error}"
        );
        assert!(creates(&fake, &id).is_empty(), "not sent into the block");
        assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    }
}
