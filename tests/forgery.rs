//! Forged or replayed inbound traffic on every webhook (issue 9, test 3), one table per
//! platform with every case in one place:
//!
//! - Slack (`POST /slack/interactions`, `/slack/commands`, HMAC-SHA256 over `v0:{ts}:{body}`)
//!   and Discord (`POST /discord/interactions`, Ed25519 over `{ts}{body}`): a wrong signature,
//!   missing headers, a stale or future timestamp, a valid signature over a different body (or
//!   for another timestamp), and a replayed body are all 401.
//! - Telegram (webhook mode, `POST /telegram/<name>/webhook`): no signature or timestamp, only
//!   the secret header: a missing or wrong secret is 401. A replayed update (the same update_id
//!   again, with the right secret) is acknowledged (Telegram itself resends updates it got no
//!   200 for) and changes nothing: no second decision, no second answer, no second edit.
//!
//! In every case nothing changes: the approval stays pending, the audit log has no decision,
//! and no edit or answer goes to the platform. A replay is of a genuine request that did its
//! work once; after the replay that work is still done exactly once.

#[path = "support/fake_discord.rs"]
mod fake_discord;
#[path = "support/fake_slack.rs"]
mod fake_slack;
#[path = "support/fake_telegram.rs"]
mod fake_telegram;
mod support;

use std::sync::Arc;
use std::time::Duration;

use approvald::config::Config;
use approvald::server::platform_channels;
use approvald_channel::Channel;
use serde_json::{Value, json};
use support::*;

/// Header name and value.
type Headers = Vec<(&'static str, String)>;

async fn start(extra: &str) -> TestServer {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let config =
        Config::from_toml_str(&format!("{}\n{extra}", base_for_binary())).expect("valid config");
    let channels: Vec<Arc<dyn Channel>> =
        platform_channels(&config).expect("the platform channel builds");
    assert_eq!(channels.len(), 1);
    TestServer::start(extra, channels).await
}

async fn post(
    s: &TestServer,
    path: &str,
    content_type: &str,
    body: &str,
    headers: &[(&str, String)],
) -> u16 {
    let mut req = s
        .http()
        .post(format!("{}{path}", s.url))
        .header("content-type", content_type)
        .body(body.to_string());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.send().await.expect("post").status().as_u16()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decisions in a request's audit trail.
async fn decisions(s: &TestServer, id: &str) -> usize {
    events_of(&s.audit(id).await)
        .iter()
        .filter(|e| *e == "decision")
        .count()
}

/// The request was not touched: pending, no approval, no decision or refusal in its audit
/// trail.
async fn untouched(s: &TestServer, id: &str, what: &str) {
    let r = s.get(id).await;
    assert_eq!(r["status"], "pending", "{what}: {r}");
    assert_eq!(r["approvals"], json!([]), "{what}: {r}");
    let events = events_of(&s.audit(id).await);
    assert!(
        !events
            .iter()
            .any(|e| ["decision", "refused", "resolved", "expired"].contains(&e.as_str())),
        "{what}: {events:?}"
    );
}

/// Let anything a request set off in the background happen, before checking it did not.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The one decision a genuine request made, and its effects, are still the only ones.
async fn decided_once(s: &TestServer, id: &str, status: &str) {
    let r = s.get(id).await;
    assert_eq!(r["status"], status, "{r}");
    assert_eq!(
        decisions(s, id).await,
        1,
        "{:?}",
        events_of(&s.audit(id).await)
    );
}

// ----- Slack ------------------------------------------------------------------------------------

mod slack {
    use super::*;
    use fake_slack::{BOT_TOKEN, FakeSlack};
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    const SECRET: &str = "test-signing-secret-8f742231b10e";
    const CHANNEL: &str = "C0OPS";
    const BOB: (&str, &str) = ("U222", "bob");
    const FORM: &str = "application/x-www-form-urlencoded";

    /// Slack's request signature, computed independently of the crate under test.
    fn signature(secret: &str, ts: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        format!("v0={}", hex(&mac.finalize().into_bytes()))
    }

    fn signed(secret: &str, ts: i64, body: &str) -> Headers {
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", signature(secret, ts, body)),
        ]
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

    /// A press of the Approve once button of the message `ts`, as Slack posts it.
    fn press(fake: &FakeSlack, id: &str, ts: &str) -> String {
        let payload = json!({
            "type": "block_actions",
            "team": { "id": "T0001", "domain": "fake" },
            "user": { "id": BOB.0, "username": BOB.1, "name": BOB.1, "team_id": "T0001" },
            "api_app_id": "A0001",
            "token": "legacy-verification-token",
            "container": { "type": "message", "message_ts": ts, "channel_id": CHANNEL, "is_ephemeral": false },
            "trigger_id": "1234.5678.abcd",
            "channel": { "id": CHANNEL, "name": "ops" },
            "message": { "type": "message", "ts": ts, "text": "Approval required", "bot_id": "B0001" },
            "response_url": format!("{}/response/press-{}", fake.url, BOB.0),
            "actions": [{ "type": "button",
                          "action_id": approvald_slack::action_id(approvald_channel::Decision::ApproveOnce),
                          "block_id": "approvald_actions", "value": format!("v1:{id}:o"),
                          "text": { "type": "plain_text", "text": "Approve once" },
                          "action_ts": "1700000000.1" }]
        });
        form(&[("payload", &payload.to_string())])
    }

    fn command(fake: &FakeSlack, command: &str, text: &str) -> String {
        form(&[
            ("token", "legacy-verification-token"),
            ("team_id", "T0001"),
            ("team_domain", "fake"),
            ("channel_id", CHANNEL),
            ("channel_name", "ops"),
            ("user_id", BOB.0),
            ("user_name", BOB.1),
            ("command", command),
            ("text", text),
            ("api_app_id", "A0001"),
            (
                "response_url",
                &format!("{}/response/cmd-{}", fake.url, BOB.0),
            ),
            ("trigger_id", "1234.5678.abcd"),
        ])
    }

    /// (request id, message ts) of a new request's one prompt.
    async fn prompted(s: &TestServer, what: &str) -> (String, String) {
        let r = s
            .request(json!({ "tool": "shell", "command": format!("make {what}") }))
            .await;
        let id = r["id"].as_str().unwrap().to_string();
        eventually("the prompt delivered", || async {
            s.get(&id).await["delivered_to"]
                .as_array()
                .is_some_and(|d| d.len() == 1)
        })
        .await;
        let ts = s.get(&id).await["delivered_to"][0]["message_id"]
            .as_str()
            .unwrap()
            .to_string();
        (id, ts)
    }

    /// Everything approvald sent to Slack after the prompts: updates and answers to people.
    fn outbound(fake: &FakeSlack) -> usize {
        ["chat.update", "chat.postEphemeral", "response_url"]
            .iter()
            .map(|m| fake.calls(m).len())
            .sum()
    }

    #[tokio::test]
    async fn forged_stale_and_replayed_requests_get_401_and_change_nothing() {
        let fake = FakeSlack::start().await;
        let s = start(&format!(
            r#"
[delivery]
mode = "targets"
wait_ms = 3000

[channels.slack]
bot_token = "{BOT_TOKEN}"
signing_secret = "{SECRET}"
api_url = "{api}"
targets = ["{CHANNEL}"]
per_channel_interval_ms = 10
global_interval_ms = 0
"#,
            api = fake.api_url()
        ))
        .await;
        let (target, target_ts) = prompted(&s, "target").await;
        let (pressed, pressed_ts) = prompted(&s, "pressed").await;
        let (commanded, _) = prompted(&s, "commanded").await;

        // Genuine requests, captured for replay: Bob approves one request by its button (its
        // message is updated; no answer beyond that) and denies another by a slash command
        // (answered through its response_url).
        let t = now();
        let genuine_press = press(&fake, &pressed, &pressed_ts);
        let press_headers = signed(SECRET, t, &genuine_press);
        assert_eq!(
            post(
                &s,
                "/slack/interactions",
                FORM,
                &genuine_press,
                &press_headers
            )
            .await,
            200
        );
        let genuine_command = command(&fake, "/deny", &format!("{commanded} not today"));
        let command_headers = signed(SECRET, t, &genuine_command);
        assert_eq!(
            post(
                &s,
                "/slack/commands",
                FORM,
                &genuine_command,
                &command_headers
            )
            .await,
            200
        );
        eventually("both genuine requests decided and answered", || async {
            s.get(&pressed).await["status"] == "approved"
                && s.get(&commanded).await["status"] == "denied"
                && fake.calls("chat.update").len() == 2
                && fake.calls("response_url").len() == 1
        })
        .await;
        settle().await;
        let sent_before = outbound(&fake);

        // Every forgery aims at `target`, by button and by command.
        let forged_press = press(&fake, &target, &target_ts);
        let forged_command = command(&fake, "/approve", &target);
        let harmless = command(&fake, "/pending", "");
        let upper = |h: &Headers| -> Headers {
            h.iter()
                .map(|(k, v)| match *k {
                    "x-slack-signature" => (*k, format!("v0={}", v[3..].to_ascii_uppercase())),
                    _ => (*k, v.clone()),
                })
                .collect()
        };
        let mut cases: Vec<(String, &str, String, Headers)> = Vec::new();
        for (path, body) in [
            ("/slack/interactions", &forged_press),
            ("/slack/commands", &forged_command),
        ] {
            let valid_ts = vec![("x-slack-request-timestamp", t.to_string())];
            let rows: Vec<(&str, String, Headers)> = vec![
                ("no headers", body.clone(), vec![]),
                (
                    "signature without timestamp",
                    body.clone(),
                    vec![("x-slack-signature", signature(SECRET, t, body))],
                ),
                (
                    "timestamp without signature",
                    body.clone(),
                    valid_ts.clone(),
                ),
                (
                    "empty signature",
                    body.clone(),
                    [valid_ts.clone(), vec![("x-slack-signature", String::new())]].concat(),
                ),
                (
                    "wrong secret",
                    body.clone(),
                    signed("not-the-secret", t, body),
                ),
                (
                    "stale timestamp",
                    body.clone(),
                    signed(SECRET, t - 600, body),
                ),
                (
                    "future timestamp",
                    body.clone(),
                    signed(SECRET, t + 600, body),
                ),
                (
                    "valid signature over a different body",
                    body.clone(),
                    signed(SECRET, t, &harmless),
                ),
                (
                    "valid signature for another timestamp",
                    body.clone(),
                    vec![
                        ("x-slack-request-timestamp", (t + 1).to_string()),
                        ("x-slack-signature", signature(SECRET, t, body)),
                    ],
                ),
                (
                    "timestamp that is not a number",
                    body.clone(),
                    vec![
                        ("x-slack-request-timestamp", "soon".to_string()),
                        ("x-slack-signature", signature(SECRET, t, body)),
                    ],
                ),
                (
                    "another signature version",
                    body.clone(),
                    vec![
                        ("x-slack-request-timestamp", t.to_string()),
                        (
                            "x-slack-signature",
                            signature(SECRET, t, body).replacen("v0=", "v1=", 1),
                        ),
                    ],
                ),
                (
                    "signature that is not hex",
                    body.clone(),
                    [
                        valid_ts.clone(),
                        vec![("x-slack-signature", "v0=zz".to_string())],
                    ]
                    .concat(),
                ),
            ];
            for (what, b, h) in rows {
                cases.push((format!("{path}: {what}"), path, b, h));
            }
        }
        cases.extend([
            (
                "replayed press".to_string(),
                "/slack/interactions",
                genuine_press.clone(),
                press_headers.clone(),
            ),
            (
                "replayed press, signature in capitals".to_string(),
                "/slack/interactions",
                genuine_press.clone(),
                upper(&press_headers),
            ),
            (
                "replayed command".to_string(),
                "/slack/commands",
                genuine_command.clone(),
                command_headers.clone(),
            ),
            (
                "replayed command to the other endpoint".to_string(),
                "/slack/interactions",
                genuine_command.clone(),
                command_headers.clone(),
            ),
        ]);
        for (what, path, body, headers) in &cases {
            assert_eq!(post(&s, path, FORM, body, headers).await, 401, "{what}");
        }

        settle().await;
        untouched(&s, &target, "every forgery").await;
        decided_once(&s, &pressed, "approved").await;
        decided_once(&s, &commanded, "denied").await;
        assert_eq!(
            outbound(&fake),
            sent_before,
            "nothing more was sent to Slack"
        );
        assert!(
            !fake
                .calls("chat.update")
                .iter()
                .any(|c| c.body["ts"] == target_ts.as_str()),
            "the target's message was never edited"
        );
    }
}

// ----- Discord ----------------------------------------------------------------------------------

mod discord {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use fake_discord::{APP_ID, BOT_TOKEN, FakeDiscord, Op};

    const CHANNEL: &str = "1100000000000000001";
    const GUILD: &str = "1200000000000000001";
    const JSON: &str = "application/json";
    const ENDPOINT: &str = "/discord/interactions";

    fn key() -> SigningKey {
        let mut seed = [0u8; 32];
        seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        SigningKey::from_bytes(&seed)
    }

    fn signature(key: &SigningKey, ts: i64, body: &str) -> String {
        hex(&key.sign(format!("{ts}{body}").as_bytes()).to_bytes())
    }

    fn signed(key: &SigningKey, ts: i64, body: &str) -> Headers {
        vec![
            ("x-signature-ed25519", signature(key, ts, body)),
            ("x-signature-timestamp", ts.to_string()),
        ]
    }

    /// An interaction from Alice (a linked approver) in the server channel.
    fn interaction(kind: u8, n: u64) -> Value {
        json!({
            "type": kind,
            "id": format!("14000000000000000{n:02}"),
            "application_id": APP_ID,
            "token": format!("aW50ZXJhY3Rpb246{n}:secret-interaction-token"),
            "version": 1,
            "channel_id": CHANNEL,
            "channel": { "id": CHANNEL, "type": 0 },
            "guild_id": GUILD,
            "guild_locale": "en-US",
            "locale": "en-US",
            "app_permissions": "562949953421311",
            "entitlements": [],
            "context": 0,
            "member": {
                "user": { "id": "111", "username": "alice", "global_name": "Alice", "discriminator": "0", "avatar": null, "public_flags": 0 },
                "roles": [], "nick": null, "avatar": null,
                "joined_at": "2024-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false,
                "flags": 0, "pending": false, "permissions": "2248473465835073",
            },
        })
    }

    /// Alice presses Approve once on a prompt message.
    fn press(message: &Value, n: u64) -> String {
        let id = message["embeds"][0]["footer"]["text"]
            .as_str()
            .and_then(|t| t.strip_prefix("ID "))
            .expect("the footer names the id");
        let mut v = interaction(3, n);
        v["data"] = json!({ "custom_id": format!("v1:{id}:o"), "component_type": 2 });
        v["message"] = message.clone();
        v.to_string()
    }

    /// Alice types `/deny id:<id>`.
    fn deny(id: &str, n: u64) -> String {
        let mut v = interaction(2, n);
        v["data"] = json!({ "id": "770000000000000000", "name": "deny", "type": 1, "guild_id": GUILD,
                            "options": [{ "name": "id", "type": 3, "value": id }] });
        v.to_string()
    }

    /// (request id, prompt message) of a new request.
    async fn prompted(s: &TestServer, fake: &FakeDiscord, what: &str) -> (String, Value) {
        let r = s
            .request(json!({ "tool": "shell", "command": format!("make {what}") }))
            .await;
        let id = r["id"].as_str().unwrap().to_string();
        eventually("the prompt delivered", || async {
            fake.messages_in(CHANNEL)
                .iter()
                .any(|m| m.to_string().contains(&id))
        })
        .await;
        let message = fake
            .messages_in(CHANNEL)
            .into_iter()
            .find(|m| m.to_string().contains(&id))
            .unwrap();
        (id, message)
    }

    fn edits(fake: &FakeDiscord) -> usize {
        fake.calls(Op::EditMessage).len()
    }

    #[tokio::test]
    async fn forged_stale_and_replayed_interactions_get_401_and_change_nothing() {
        let fake = FakeDiscord::start().await;
        let app = key();
        let s = start(&format!(
            r#"
[delivery]
mode = "targets"
targets = [{{ channel = "discord", to = "{CHANNEL}" }}]

[channels.discord]
bot_token = "{BOT_TOKEN}"
application_id = "{APP_ID}"
public_key = "{public}"
api_url = "{url}"
register_commands = false
global_per_second = 1000
"#,
            public = hex(app.verifying_key().as_bytes()),
            url = fake.url,
        ))
        .await;
        let (target, target_message) = prompted(&s, &fake, "target").await;
        let (pressed, pressed_message) = prompted(&s, &fake, "pressed").await;
        let (commanded, commanded_message) = prompted(&s, &fake, "commanded").await;

        // Genuine interactions, captured for replay: Alice approves one request by its button
        // (answered with the edit itself) and denies another with /deny (edited over REST).
        let t = now();
        let genuine_press = press(&pressed_message, 1);
        let press_headers = signed(&app, t, &genuine_press);
        assert_eq!(
            post(&s, ENDPOINT, JSON, &genuine_press, &press_headers).await,
            200
        );
        let genuine_command = deny(&commanded, 2);
        let command_headers = signed(&app, t, &genuine_command);
        assert_eq!(
            post(&s, ENDPOINT, JSON, &genuine_command, &command_headers).await,
            200
        );
        eventually("both decided, the commanded prompt edited", || async {
            s.get(&pressed).await["status"] == "approved"
                && s.get(&commanded).await["status"] == "denied"
                && fake.edits_of(commanded_message["id"].as_str().unwrap()) == 1
        })
        .await;
        settle().await;
        let edits_before = edits(&fake);

        let body = press(&target_message, 3);
        let other_key = key();
        let sig = signature(&app, t, &body);
        let upper = |h: &Headers| -> Headers {
            h.iter()
                .map(|(k, v)| (*k, v.to_ascii_uppercase()))
                .collect()
        };
        let cases: Vec<(&str, String, Headers)> = vec![
            ("no headers", body.clone(), vec![]),
            (
                "signature without timestamp",
                body.clone(),
                vec![("x-signature-ed25519", sig.clone())],
            ),
            (
                "timestamp without signature",
                body.clone(),
                vec![("x-signature-timestamp", t.to_string())],
            ),
            (
                "empty signature",
                body.clone(),
                vec![
                    ("x-signature-ed25519", String::new()),
                    ("x-signature-timestamp", t.to_string()),
                ],
            ),
            (
                "another application's key",
                body.clone(),
                signed(&other_key, t, &body),
            ),
            (
                "stale timestamp",
                body.clone(),
                signed(&app, t - 400, &body),
            ),
            (
                "future timestamp",
                body.clone(),
                signed(&app, t + 400, &body),
            ),
            (
                "valid signature over a different body",
                body.clone(),
                signed(&app, t, &press(&target_message, 4)),
            ),
            (
                "valid signature for another timestamp",
                body.clone(),
                vec![
                    ("x-signature-ed25519", sig.clone()),
                    ("x-signature-timestamp", (t + 1).to_string()),
                ],
            ),
            (
                "truncated signature",
                body.clone(),
                vec![
                    ("x-signature-ed25519", sig[..126].to_string()),
                    ("x-signature-timestamp", t.to_string()),
                ],
            ),
            (
                "signature that is not hex",
                body.clone(),
                vec![
                    ("x-signature-ed25519", "zz".repeat(64)),
                    ("x-signature-timestamp", t.to_string()),
                ],
            ),
            (
                "replayed press",
                genuine_press.clone(),
                press_headers.clone(),
            ),
            (
                "replayed press, signature in capitals",
                genuine_press.clone(),
                upper(&press_headers),
            ),
            (
                "replayed command",
                genuine_command.clone(),
                command_headers.clone(),
            ),
        ];
        for (what, body, headers) in &cases {
            assert_eq!(post(&s, ENDPOINT, JSON, body, headers).await, 401, "{what}");
        }

        settle().await;
        untouched(&s, &target, "every forgery").await;
        decided_once(&s, &pressed, "approved").await;
        decided_once(&s, &commanded, "denied").await;
        assert_eq!(edits(&fake), edits_before, "no edit sent to Discord");
        assert_eq!(fake.edits_of(target_message["id"].as_str().unwrap()), 0);
        assert!(fake.calls(Op::InteractionCallback).is_empty());
        let target_now = fake
            .message(target_message["id"].as_str().unwrap())
            .unwrap();
        assert_eq!(target_now["components"], target_message["components"]);
    }
}

// ----- Telegram ---------------------------------------------------------------------------------

mod telegram {
    use super::*;
    use fake_telegram::{FakeTelegram, TgUser};

    const TOKEN: &str = "123456:TESTtokenSECRETvalue_abc";
    const SECRET: &str = "wh-Secret_0123456789";
    const HOOK: &str = "/telegram/telegram/webhook";
    const HEADER: &str = "x-telegram-bot-api-secret-token";
    const JSON: &str = "application/json";
    const GROUP: i64 = -1001;
    const TOM: TgUser = TgUser {
        id: 7777,
        first_name: "Tom",
        last_name: None,
        username: Some("tom_ops"),
    };

    /// (request id, message id) of a new request's prompt.
    async fn prompted(s: &TestServer, fake: &FakeTelegram, what: &str) -> (String, i64) {
        let r = s
            .request(json!({ "tool": "shell", "command": format!("make {what}") }))
            .await;
        let id = r["id"].as_str().unwrap().to_string();
        eventually("the prompt delivered", || async {
            fake.prompts_for(&id).len() == 1
        })
        .await;
        let message = fake.prompts_for(&id)[0].message_id;
        (id, message)
    }

    /// Every call approvald made to Telegram other than polling and setup.
    fn outbound(fake: &FakeTelegram) -> Vec<(String, Value)> {
        fake.calls()
            .into_iter()
            .filter(|c| !matches!(c.method.as_str(), "getme" | "setwebhook" | "getupdates"))
            .map(|c| (c.method, c.body))
            .collect()
    }

    #[tokio::test]
    async fn wrong_or_missing_secrets_get_401_and_replayed_updates_change_nothing() {
        let fake = FakeTelegram::start(TOKEN);
        let s = start(&format!(
            r#"
[delivery]
mode = "targets"
wait_ms = 3000

[channels.telegram]
bot_token = "{TOKEN}"
api_url = "{url}"
approvers = ["7777"]
targets = ["{GROUP}"]
receive = "webhook"
webhook_secret = "{SECRET}"
webhook_url = "https://approvals.example.com{HOOK}"
chat_interval_ms = 20
retry_base_ms = 20
"#,
            url = fake.url
        ))
        .await;
        eventually("the webhook registered", || async {
            fake.webhook().is_some()
        })
        .await;
        let (target, target_message) = prompted(&s, &fake, "target").await;
        let (pressed, pressed_message) = prompted(&s, &fake, "pressed").await;
        let (commanded, commanded_message) = prompted(&s, &fake, "commanded").await;
        let right = || vec![(HEADER, SECRET.to_string())];

        // Genuine updates, delivered once: Tom approves one request by its button and denies
        // another by replying /deny to its prompt.
        let (cb, genuine_press) =
            fake.press_update(&TOM, GROUP, pressed_message, &format!("v1:{pressed}:o"));
        let genuine_press = genuine_press.to_string();
        assert_eq!(post(&s, HOOK, JSON, &genuine_press, &right()).await, 200);
        let genuine_command = fake
            .text_update(&TOM, GROUP, "/deny not today", Some(commanded_message))
            .to_string();
        assert_eq!(post(&s, HOOK, JSON, &genuine_command, &right()).await, 200);
        eventually("both decided, answered and edited", || async {
            s.get(&pressed).await["status"] == "approved"
                && s.get(&commanded).await["status"] == "denied"
                && fake.answer_to(&cb).is_some()
                && fake.prompts_for(&pressed)[0].keyboard.is_none()
                && fake.prompts_for(&commanded)[0].keyboard.is_none()
        })
        .await;
        settle().await;
        let sent_before = outbound(&fake);

        // Forgeries aim at `target`.
        let (_, forged) = fake.press_update(&TOM, GROUP, target_message, &format!("v1:{target}:o"));
        let forged = forged.to_string();
        let hook = HOOK.to_string();
        let cases: Vec<(&str, String, String, Headers)> = vec![
            ("no secret", hook.clone(), forged.clone(), vec![]),
            (
                "wrong secret",
                hook.clone(),
                forged.clone(),
                vec![(HEADER, "nope".into())],
            ),
            (
                "empty secret",
                hook.clone(),
                forged.clone(),
                vec![(HEADER, String::new())],
            ),
            (
                "secret in other case",
                hook.clone(),
                forged.clone(),
                vec![(HEADER, SECRET.to_ascii_uppercase())],
            ),
            (
                "secret cut short",
                hook.clone(),
                forged.clone(),
                vec![(HEADER, SECRET[..SECRET.len() - 1].to_string())],
            ),
            (
                "secret with more after it",
                hook.clone(),
                forged.clone(),
                vec![(HEADER, format!("{SECRET}0"))],
            ),
            (
                "the bot token instead of the secret",
                hook.clone(),
                forged.clone(),
                vec![(HEADER, TOKEN.to_string())],
            ),
            (
                "secret under another header",
                hook.clone(),
                forged.clone(),
                vec![("x-telegram-bot-api-secret", SECRET.to_string())],
            ),
            (
                "secret in the query string",
                format!("{HOOK}?secret_token={SECRET}"),
                forged.clone(),
                vec![],
            ),
        ];
        for (what, path, body, headers) in &cases {
            assert_eq!(post(&s, path, JSON, body, headers).await, 401, "{what}");
        }

        // Replays carry the right secret (Telegram has nothing else): acknowledged, ignored.
        let mut same_id_other_content: Value = serde_json::from_str(&forged).unwrap();
        same_id_other_content["update_id"] =
            serde_json::from_str::<Value>(&genuine_press).unwrap()["update_id"].clone();
        let replays: Vec<(&str, String)> = vec![
            ("replayed press", genuine_press.clone()),
            ("replayed press, again", genuine_press.clone()),
            ("replayed command", genuine_command.clone()),
            (
                "a press on the target under a used update_id",
                same_id_other_content.to_string(),
            ),
        ];
        for (what, body) in &replays {
            assert_eq!(post(&s, HOOK, JSON, body, &right()).await, 200, "{what}");
        }

        settle().await;
        untouched(&s, &target, "every forgery and replay").await;
        decided_once(&s, &pressed, "approved").await;
        decided_once(&s, &commanded, "denied").await;
        assert_eq!(
            outbound(&fake),
            sent_before,
            "no answer, reply or edit sent to Telegram"
        );
        assert_eq!(fake.calls_of("answerCallbackQuery").len(), 1);
        let target_now = &fake.prompts_for(&target)[0];
        assert!(target_now.keyboard.is_some() && target_now.edits == 0);
        assert_eq!(fake.prompts_for(&pressed)[0].edits, 1);
        assert_eq!(fake.prompts_for(&commanded)[0].edits, 1);
    }
}
