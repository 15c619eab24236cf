//! The Discord channel end to end: the real approvald service, its Discord channel built by
//! `platform_channels` from config (only `api_url` differs from production: it points at a fake
//! Discord REST API), interactions signed with a real Ed25519 key generated per test.

#[path = "support/fake_discord.rs"]
mod fake_discord;
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use approvald::config::Config;
use approvald::server::platform_channels;
use ed25519_dalek::{Signer, SigningKey};
use fake_discord::{APP_ID, BOT_TOKEN, FakeDiscord, Fault, Op};
use serde_json::{Value, json};
use support::*;

const CHANNEL: &str = "1100000000000000001";
const THREAD_PARENT: &str = "1100000000000000005";
const THREAD: &str = "1100000000000000006";
const GUILD: &str = "1200000000000000001";
const APPROVER_ROLE: &str = "1300000000000000001";
const OTHER_ROLE: &str = "1300000000000000002";
/// Listed in the channel's `approvers`, and DMed with `dm_approvers`.
const DM_APPROVER: &str = "555";

/// Signature headers of one request.
type Headers<'a> = Vec<(&'a str, String)>;

/// One test's world: the fake Discord, the application's signing key, approvald.
struct Discord {
    fake: FakeDiscord,
    key: SigningKey,
    server: TestServer,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh Ed25519 key, as Discord holds for an application.
fn new_key() -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    SigningKey::from_bytes(&seed)
}

/// Start the fake and approvald with `[channels.discord]` (plus `channel_keys`) and `rest`.
async fn start(channel_keys: &str, rest: &str) -> Discord {
    let fake = FakeDiscord::start().await;
    let key = new_key();
    let extra = format!(
        r#"
[channels.discord]
bot_token = "{BOT_TOKEN}"
application_id = "{APP_ID}"
public_key = "{public}"
api_url = "{url}"
commands_guild_id = "{GUILD}"
approvers = ["{DM_APPROVER}"]
approver_roles = ["{APPROVER_ROLE}"]
retry_base_ms = 20
retry_max_ms = 200
global_per_second = 1000
{channel_keys}
{rest}
"#,
        public = hex(key.verifying_key().as_bytes()),
        url = fake.url,
    );
    let config = Config::from_toml_str(&format!("{}\n{extra}", base_for_binary()))
        .expect("discord test config is valid");
    let channels = platform_channels(&config).expect("the discord channel builds");
    let server = TestServer::start(&extra, channels).await;
    Discord { fake, key, server }
}

/// Someone on Discord.
#[derive(Clone)]
struct Who {
    id: &'static str,
    username: &'static str,
    global_name: Option<&'static str>,
    roles: Vec<&'static str>,
}

fn alice() -> Who {
    Who {
        id: "111",
        username: "alice",
        global_name: Some("Alice Liddell"),
        roles: vec![],
    }
}
fn bob() -> Who {
    Who {
        id: "222",
        username: "bob",
        global_name: Some("Bob"),
        roles: vec![],
    }
}
/// Linked to a person with `approver = false`.
fn carol() -> Who {
    Who {
        id: "333",
        username: "carol",
        global_name: None,
        roles: vec![OTHER_ROLE],
    }
}
/// Nobody approvald knows, but holding the approver role.
fn role_holder() -> Who {
    Who {
        id: "777",
        username: "rolly",
        global_name: Some("Role Holder"),
        roles: vec![APPROVER_ROLE],
    }
}
fn stranger() -> Who {
    Who {
        id: "888",
        username: "mallory",
        global_name: Some("Mallory"),
        roles: vec![OTHER_ROLE],
    }
}

fn user_json(w: &Who) -> Value {
    json!({ "id": w.id, "username": w.username, "global_name": w.global_name, "discriminator": "0", "avatar": null, "public_flags": 0 })
}

static NEXT_INTERACTION: AtomicU64 = AtomicU64::new(1_400_000_000_000_000_000);

/// The fields every interaction carries; `guild` adds the member object Discord sends in
/// servers, otherwise it is a DM interaction with a `user`.
fn interaction(kind: u8, who: &Who, channel: &str, guild: bool) -> Value {
    let id = NEXT_INTERACTION.fetch_add(1, Ordering::Relaxed);
    let mut v = json!({
        "type": kind,
        "id": id.to_string(),
        "application_id": APP_ID,
        "token": format!("aW50ZXJhY3Rpb246{id}:secret-interaction-token"),
        "version": 1,
        "channel_id": channel,
        "channel": { "id": channel, "type": if guild { 0 } else { 1 } },
        "locale": "en-US",
        "app_permissions": "562949953421311",
        "entitlements": [],
        "attachment_size_limit": 10485760,
        "context": if guild { 0 } else { 1 },
    });
    if guild {
        v["guild_id"] = json!(GUILD);
        v["guild_locale"] = json!("en-US");
        v["member"] = json!({
            "user": user_json(who), "roles": who.roles, "nick": null, "avatar": null,
            "joined_at": "2024-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false,
            "flags": 0, "pending": false, "permissions": "2248473465835073",
        });
    } else {
        v["user"] = user_json(who);
    }
    v
}

/// A press on one of a prompt's buttons (`label`: "Approve once", "Deny", ...).
fn press(who: &Who, message: &Value, label: &str) -> Value {
    let channel = message["channel_id"].as_str().unwrap();
    let guild = channel == CHANNEL || channel == THREAD;
    let mut v = interaction(3, who, channel, guild);
    v["data"] = json!({ "custom_id": custom_id(message, label), "component_type": 2 });
    v["message"] = message.clone();
    v
}

fn command(who: &Who, name: &str, options: Value) -> Value {
    let mut v = interaction(2, who, CHANNEL, true);
    v["data"] = json!({ "id": "770000000000000000", "name": name, "type": 1, "options": options, "guild_id": GUILD });
    v
}

fn custom_id(message: &Value, label: &str) -> String {
    buttons(message)
        .into_iter()
        .find(|b| b["label"] == label)
        .and_then(|b| b["custom_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no {label:?} button on {message}"))
}

fn buttons(message: &Value) -> Vec<Value> {
    message["components"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn title(message: &Value) -> String {
    message["embeds"][0]["title"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The approval id behind a prompt (its footer says `ID <uuid>`).
fn approval_id(message: &Value) -> String {
    message["embeds"][0]["footer"]["text"]
        .as_str()
        .and_then(|t| t.strip_prefix("ID "))
        .expect("prompt footer names the id")
        .to_string()
}

impl Discord {
    fn endpoint(&self) -> String {
        format!("{}/discord/interactions", self.server.url)
    }

    fn sign(&self, key: &SigningKey, timestamp: i64, body: &str) -> String {
        hex(&key.sign(format!("{timestamp}{body}").as_bytes()).to_bytes())
    }

    /// POST a body with the given signature headers; (status, body text).
    async fn post(&self, body: &str, headers: &[(&str, String)]) -> (u16, String) {
        let mut req = self
            .server
            .http()
            .post(self.endpoint())
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let r = req.send().await.expect("post interaction");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// Send an interaction as Discord would: signed now by the application's key.
    async fn interact(&self, body: &Value) -> Value {
        let text = body.to_string();
        let ts = chrono::Utc::now().timestamp();
        let headers = [
            ("x-signature-ed25519", self.sign(&self.key, ts, &text)),
            ("x-signature-timestamp", ts.to_string()),
        ];
        let (status, answer) = self.post(&text, &headers).await;
        assert_eq!(status, 200, "interaction answered {status}: {answer}");
        serde_json::from_str(&answer).expect("interaction answer is JSON")
    }

    /// Wait until `n` messages were created in `channel`; they, oldest first.
    async fn wait_messages(&self, channel: &str, n: usize) -> Vec<Value> {
        eventually(&format!("{n} message(s) in {channel}"), || async {
            self.fake.messages_in(channel).len() >= n
        })
        .await;
        self.fake.messages_in(channel)
    }

    async fn dm_channel(&self, user: &str) -> String {
        eventually(&format!("a DM channel with {user}"), || async {
            self.fake.dm_channel_of(user).is_some()
        })
        .await;
        self.fake.dm_channel_of(user).unwrap()
    }

    /// A caller blocked in `tool.approval.request` (wait = true), in the background.
    fn ask(&self, params: Value) -> tokio::task::JoinHandle<Value> {
        let url = self.server.url.clone();
        let mut params = params;
        params["wait"] = json!(true);
        tokio::spawn(async move { rpc_at(&url, GATEWAY, "tool.approval.request", params).await })
    }
}

fn ephemeral_text(answer: &Value) -> String {
    assert_eq!(answer["type"], 4, "expected a message answer: {answer}");
    assert_eq!(
        answer["data"]["flags"], 64,
        "expected an ephemeral answer: {answer}"
    );
    assert_eq!(
        answer["data"]["allowed_mentions"]["parse"],
        json!([]),
        "{answer}"
    );
    answer["data"]["content"].as_str().unwrap_or("").to_string()
}

async fn wait_result(caller: tokio::task::JoinHandle<Value>) -> Value {
    let r = tokio::time::timeout(Duration::from_secs(10), caller)
        .await
        .expect("the caller got an answer")
        .expect("caller task");
    r.get("result")
        .cloned()
        .unwrap_or_else(|| panic!("request failed: {r}"))
}

const SESSION_WITH_DMS: &str = "dm_approvers = true";
fn session_mode() -> String {
    "[delivery]\nmode = \"session\"\n".to_string()
}
fn origin() -> Value {
    json!({ "channel": "discord", "to": CHANNEL })
}

// ----- sending, pressing, editing everywhere ----------------------------------------------

#[tokio::test]
async fn approver_press_approves_with_discord_identity_and_every_message_is_edited() {
    let d = start(SESSION_WITH_DMS, &session_mode()).await;
    let caller = d.ask(json!({
        "tool": "shell", "command": "rm -rf ./build @everyone", "risk_class": "high",
        "agent_id": "release-bot", "origin": origin(),
    }));
    // The session's origin channel and the listed approver's DM both get the prompt.
    let in_channel = d.wait_messages(CHANNEL, 1).await.remove(0);
    let dm = d.dm_channel(DM_APPROVER).await;
    let in_dm = d.wait_messages(&dm, 1).await.remove(0);
    for m in [&in_channel, &in_dm] {
        assert_eq!(title(m), "Approval required: shell");
        assert_eq!(m["embeds"][0]["color"], 0xE67E22, "high risk is orange");
        assert!(
            m["embeds"][0]["description"]
                .as_str()
                .unwrap()
                .contains("rm -rf ./build")
        );
        assert_eq!(
            m["allowed_mentions"]["parse"],
            json!([]),
            "nothing may ping"
        );
        let labels: Vec<_> = buttons(m)
            .iter()
            .map(|b| (b["label"].clone(), b["style"].clone()))
            .collect();
        assert_eq!(
            labels,
            [
                (json!("Approve once"), json!(3)),
                (json!("Always approve"), json!(1)),
                (json!("Deny"), json!(4))
            ]
        );
    }
    let id = approval_id(&in_channel);
    assert_eq!(approval_id(&in_dm), id);

    // Alice (linked person, approver) presses in the server channel.
    let answer = d
        .interact(&press(&alice(), &in_channel, "Approve once"))
        .await;
    assert_eq!(
        answer["type"], 7,
        "the press edits its own message: {answer}"
    );
    assert_eq!(answer["data"]["components"], json!([]), "buttons removed");
    assert_eq!(answer["data"]["embeds"][0]["title"], "Approved: shell");
    assert_eq!(answer["data"]["allowed_mentions"]["parse"], json!([]));

    let result = wait_result(caller).await;
    assert_eq!(result["id"], id.as_str());
    assert_eq!(result["status"], "approved");
    assert_eq!(result["decision"], "approve");
    assert_eq!(result["scope"], "once");
    let by = &result["decided_by"];
    assert_eq!(by["transport"], "discord");
    assert_eq!(by["platform_user_id"], "111");
    assert_eq!(by["person"], "alice");
    assert_eq!(by["channel_id"], CHANNEL);

    // The DM is edited to the same outcome; the pressed message changed once, in the answer.
    eventually("the DM prompt shows the outcome", || async {
        d.fake
            .message(in_dm["id"].as_str().unwrap())
            .is_some_and(|m| title(&m) == "Approved: shell" && m["components"] == json!([]))
    })
    .await;
    assert_eq!(d.fake.edits_of(in_dm["id"].as_str().unwrap()), 1);
    assert_eq!(d.fake.edits_of(in_channel["id"].as_str().unwrap()), 0);
    let dm_now = d.fake.message(in_dm["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        dm_now["embeds"][0], answer["data"]["embeds"][0],
        "every copy shows the same outcome"
    );

    let events = events_of(&d.server.audit(&id).await);
    assert_eq!(
        events.iter().filter(|e| *e == "delivered").count(),
        2,
        "{events:?}"
    );
    assert!(events.contains(&"resolved".to_string()), "{events:?}");
}

#[tokio::test]
async fn a_role_holder_may_approve_and_is_identified_by_discord_names() {
    let d = start("", &format!("[delivery]\nmode = \"targets\"\ntargets = [{{ channel = \"discord\", to = \"{CHANNEL}\" }}]\n")).await;
    let caller = d.ask(json!({ "tool": "deploy", "summary": "ship it" }));
    let prompt = d.wait_messages(CHANNEL, 1).await.remove(0);
    let answer = d
        .interact(&press(&role_holder(), &prompt, "Always approve"))
        .await;
    assert_eq!(answer["type"], 7, "{answer}");
    let result = wait_result(caller).await;
    assert_eq!(result["status"], "approved");
    assert_eq!(result["scope"], "always");
    let by = &result["decided_by"];
    assert_eq!(by["platform_user_id"], "777");
    assert_eq!(
        by["display_name"], "Role Holder",
        "global name as display name"
    );
    assert_eq!(by["approver_id"], "discord:777");
    assert!(by.get("person").is_none(), "{by}");
}

#[tokio::test]
async fn non_approvers_get_a_private_refusal_and_nothing_changes() {
    let d = start(SESSION_WITH_DMS, &session_mode()).await;
    let r = d
        .server
        .request(json!({ "tool": "shell", "command": "make deploy", "origin": origin() }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let prompt = d.wait_messages(CHANNEL, 1).await.remove(0);
    for who in [carol(), stranger()] {
        let answer = d.interact(&press(&who, &prompt, "Approve once")).await;
        let text = ephemeral_text(&answer);
        assert!(text.contains("not authorised"), "{text}");
    }
    assert_eq!(d.server.get(&id).await["status"], "pending");
    assert!(
        d.fake.calls(Op::EditMessage).is_empty(),
        "no message was edited"
    );
    let events = events_of(&d.server.audit(&id).await);
    assert_eq!(
        events.iter().filter(|e| *e == "refused").count(),
        2,
        "{events:?}"
    );
}

#[tokio::test]
async fn self_approval_repeat_press_resolved_and_expired_each_get_their_own_answer() {
    let d = start("", &session_mode()).await;
    // Alice asked (as her Discord id): she may not approve it herself.
    let caller = d.ask(json!({
        "tool": "shell", "command": "drop table", "origin": origin(),
        "requester": { "id": "discord:111" },
    }));
    let prompt = d.wait_messages(CHANNEL, 1).await.remove(0);
    let text = ephemeral_text(&d.interact(&press(&alice(), &prompt, "Approve once")).await);
    assert!(text.contains("asked for this yourself"), "{text}");

    // Bob decides; his second press changes nothing and says so privately.
    let first = d.interact(&press(&bob(), &prompt, "Deny")).await;
    assert_eq!(first["type"], 7);
    assert_eq!(first["data"]["embeds"][0]["title"], "Denied: shell");
    assert_eq!(wait_result(caller).await["status"], "denied");
    let again = ephemeral_text(&d.interact(&press(&bob(), &prompt, "Deny")).await);
    assert!(again.contains("Denied by Bob"), "{again}");
    let late = ephemeral_text(&d.interact(&press(&alice(), &prompt, "Approve once")).await);
    assert!(late.contains("already"), "{late}");

    // A press after the deadline.
    let r = d
        .server
        .request(
            json!({ "tool": "shell", "command": "sleep", "origin": origin(), "timeout_ms": 200 }),
        )
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let prompt = d.wait_messages(CHANNEL, 2).await.remove(1);
    eventually("the request expires", || async {
        d.server.get(&id).await["status"] == "expired"
    })
    .await;
    let text = ephemeral_text(&d.interact(&press(&bob(), &prompt, "Approve once")).await);
    assert!(text.contains("expired"), "{text}");
}

#[tokio::test]
async fn old_or_foreign_buttons_are_refused_without_deciding() {
    let d = start("", &session_mode()).await;
    let r = d
        .server
        .request(json!({ "tool": "shell", "command": "ls -la /", "origin": origin() }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let prompt = d.wait_messages(CHANNEL, 1).await.remove(0);
    for (data, says) in [
        (format!("v0:{id}:o"), "older version"),
        ("not-ours".to_string(), "not valid"),
    ] {
        let mut p = press(&alice(), &prompt, "Approve once");
        p["data"]["custom_id"] = json!(data);
        let text = ephemeral_text(&d.interact(&p).await);
        assert!(text.contains(says), "{text}");
    }
    assert_eq!(d.server.get(&id).await["status"], "pending");
}

// ----- the endpoint's gate -----------------------------------------------------------------

#[tokio::test]
async fn forged_stale_replayed_and_unsigned_interactions_get_401_and_change_nothing() {
    let d = start("", &session_mode()).await;
    let r = d
        .server
        .request(json!({ "tool": "shell", "command": "make deploy", "origin": origin() }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let prompt = d.wait_messages(CHANNEL, 1).await.remove(0);
    // A genuine approver's press, as an attacker would replay or forge it.
    let body = press(&alice(), &prompt, "Approve once").to_string();
    let now = chrono::Utc::now().timestamp();
    let other = new_key();
    let sig = |key: &SigningKey, ts: i64, b: &str| {
        vec![
            ("x-signature-ed25519", d.sign(key, ts, b)),
            ("x-signature-timestamp", ts.to_string()),
        ]
    };
    let tampered = body.replace("Alice Liddell", "Alice L");
    let cases: Vec<(&str, String, Headers)> = vec![
        ("no signature", body.clone(), vec![]),
        ("another key", body.clone(), sig(&other, now, &body)),
        ("tampered body", tampered, sig(&d.key, now, &body)),
        (
            "stale timestamp",
            body.clone(),
            sig(&d.key, now - 400, &body),
        ),
        (
            "future timestamp",
            body.clone(),
            sig(&d.key, now + 400, &body),
        ),
        (
            "garbage signature",
            body.clone(),
            vec![
                ("x-signature-ed25519", "zz".repeat(64)),
                ("x-signature-timestamp", now.to_string()),
            ],
        ),
    ];
    for (what, b, headers) in &cases {
        let (status, _) = d.post(b, headers).await;
        assert_eq!(status, 401, "{what}");
    }
    assert_eq!(d.server.get(&id).await["status"], "pending");
    assert!(d.fake.calls(Op::EditMessage).is_empty());

    // PING is answered with PONG when signed, and a replay of it is refused.
    let ping =
        json!({ "type": 1, "id": "1", "application_id": APP_ID, "token": "t", "version": 1 })
            .to_string();
    let headers = sig(&d.key, now, &ping);
    let (status, answer) = d.post(&ping, &headers).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&answer).unwrap()),
        (200, json!({ "type": 1 }))
    );
    assert_eq!(d.post(&ping, &headers).await.0, 401, "replayed");
    assert_eq!(d.post(&ping, &[]).await.0, 401, "unsigned ping");

    // Signed but unreadable: a clear 400, no panic, nothing decided.
    for junk in ["{not json", r#"{"type":3}"#, "[]"] {
        let (status, _) = d.post(junk, &sig(&d.key, now, junk)).await;
        assert_eq!(status, 400, "{junk}");
    }
    assert_eq!(d.server.get(&id).await["status"], "pending");
}

// ----- slash commands ----------------------------------------------------------------------

#[tokio::test]
async fn slash_commands_registered_at_start_decide_by_prefix_and_autocomplete_pending_ids() {
    let d = start(
        SESSION_WITH_DMS,
        &format!("[delivery]\nmode = \"targets\"\ntargets = [{{ channel = \"discord\", to = \"{CHANNEL}\" }}]\n"),
    )
    .await;
    eventually("slash commands registered", || async {
        d.fake
            .calls(Op::RegisterCommands)
            .iter()
            .any(|c| c.status == 200)
    })
    .await;
    let reg = d.fake.calls(Op::RegisterCommands).remove(0);
    assert_eq!(
        reg.path,
        format!("/applications/{APP_ID}/guilds/{GUILD}/commands")
    );
    let names: Vec<_> = reg
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!("approve"), json!("deny"), json!("pending")]);

    let caller = d.ask(json!({ "tool": "kubectl", "command": "kubectl delete pod web-1" }));
    let prompt = d.wait_messages(CHANNEL, 1).await.remove(0);
    let id = approval_id(&prompt);
    let other = d
        .server
        .request(json!({ "tool": "terraform", "command": "terraform destroy" }))
        .await;
    let other_id = other["id"].as_str().unwrap().to_string();

    // Autocomplete offers pending ids to approvers, matching what was typed.
    let mut ac = command(
        &bob(),
        "approve",
        json!([{ "name": "id", "type": 3, "value": &id[..6], "focused": true }]),
    );
    ac["type"] = json!(4);
    let answer = d.interact(&ac).await;
    assert_eq!(answer["type"], 8, "{answer}");
    let choices = answer["data"]["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1, "{answer}");
    assert_eq!(choices[0]["value"], id.as_str());
    assert!(
        choices[0]["name"].as_str().unwrap().starts_with(&id[..8]),
        "{answer}"
    );
    let mut ac = command(
        &stranger(),
        "approve",
        json!([{ "name": "id", "type": 3, "value": "", "focused": true }]),
    );
    ac["type"] = json!(4);
    assert_eq!(
        d.interact(&ac).await["data"]["choices"],
        json!([]),
        "no suggestions for non-approvers"
    );

    // /pending lists both.
    let listed = ephemeral_text(&d.interact(&command(&bob(), "pending", json!([]))).await);
    assert!(
        listed.contains(&id[..8]) && listed.contains(&other_id[..8]),
        "{listed}"
    );
    assert!(
        ephemeral_text(
            &d.interact(&command(&stranger(), "pending", json!([])))
                .await
        )
        .contains("not authorised")
    );

    // /approve by an 8-character prefix, always.
    let text = ephemeral_text(
        &d.interact(&command(
            &bob(),
            "approve",
            json!([
                { "name": "id", "type": 3, "value": &id[..8] },
                { "name": "decision", "type": 3, "value": "always" },
            ]),
        ))
        .await,
    );
    assert!(text.contains("Approved by Bob"), "{text}");
    let result = wait_result(caller).await;
    assert_eq!(
        (result["status"].as_str(), result["scope"].as_str()),
        (Some("approved"), Some("always"))
    );
    assert_eq!(result["decided_by"]["platform_user_id"], "222");
    // No press carried the edit: every message of it is edited over REST, DM included.
    let dm = d.dm_channel(DM_APPROVER).await;
    let dm_prompt = d
        .wait_messages(&dm, 2)
        .await
        .into_iter()
        .find(|m| approval_id(m) == id)
        .expect("the DM prompt of the approved request");
    for m in [&prompt, &dm_prompt] {
        eventually("the prompt shows the approval", || async {
            d.fake
                .message(m["id"].as_str().unwrap())
                .is_some_and(|m| title(&m) == "Approved: kubectl" && m["components"] == json!([]))
        })
        .await;
    }

    // /deny with a reason.
    let text = ephemeral_text(
        &d.interact(&command(
            &alice(),
            "deny",
            json!([
                { "name": "id", "type": 3, "value": &other_id[..10] },
                { "name": "reason", "type": 3, "value": "not on a Friday" },
            ]),
        ))
        .await,
    );
    assert!(text.contains("Denied by Alice"), "{text}");
    let denied = d.server.get(&other_id).await;
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["reason"], "not on a Friday");
    let unknown = ephemeral_text(
        &d.interact(&command(
            &alice(),
            "approve",
            json!([{ "name": "id", "type": 3, "value": "ffffffff" }]),
        ))
        .await,
    );
    assert!(unknown.to_lowercase().contains("ffffffff"), "{unknown}");
}

// ----- outcomes from elsewhere -------------------------------------------------------------

#[tokio::test]
async fn expiry_and_cli_decisions_edit_every_discord_message_including_threads() {
    let d = start(
        SESSION_WITH_DMS,
        &format!(
            "[delivery]\nmode = \"targets\"\ntargets = [{{ channel = \"discord\", to = \"{THREAD_PARENT}\", thread_id = \"{THREAD}\" }}]\n"
        ),
    )
    .await;
    let caller = d.ask(json!({ "tool": "shell", "command": "sleep 999", "timeout_ms": 400 }));
    let in_thread = d.wait_messages(THREAD, 1).await.remove(0);
    let dm = d.dm_channel(DM_APPROVER).await;
    let in_dm = d.wait_messages(&dm, 1).await.remove(0);
    let result = wait_result(caller).await;
    assert_eq!(
        (result["status"].as_str(), result["decision"].as_str()),
        (Some("expired"), Some("timeout"))
    );
    for m in [&in_thread, &in_dm] {
        eventually("the prompt shows the expiry", || async {
            d.fake.message(m["id"].as_str().unwrap()).is_some_and(|m| {
                title(&m) == "Expired: shell"
                    && m["components"] == json!([])
                    && m["embeds"][0]["color"] == 0x95A5A6
            })
        })
        .await;
    }
    let edit = d
        .fake
        .calls(Op::EditMessage)
        .into_iter()
        .find(|c| c.path.contains(THREAD))
        .expect("thread edit");
    assert_eq!(
        edit.path,
        format!(
            "/channels/{THREAD}/messages/{}",
            in_thread["id"].as_str().unwrap()
        )
    );

    // Decided in the CLI: Discord shows it too.
    let r = d
        .server
        .request(json!({ "tool": "shell", "command": "make" }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let prompt = d.wait_messages(THREAD, 2).await.remove(1);
    d.server
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "deny", "reason": "no" }),
        )
        .await;
    eventually("the thread prompt shows the denial", || async {
        d.fake
            .message(prompt["id"].as_str().unwrap())
            .is_some_and(|m| title(&m) == "Denied: shell" && m["components"] == json!([]))
    })
    .await;
}

// ----- pacing and failures -----------------------------------------------------------------

#[tokio::test]
async fn rate_limits_are_waited_out_and_no_prompt_is_lost() {
    let d = start(
        "max_retries = 8",
        &format!("[delivery]\nmode = \"targets\"\ntargets = [{{ channel = \"discord\", to = \"{CHANNEL}\" }}]\n"),
    )
    .await;
    // Two 429s asking for 300 ms each: the prompt lands, after waiting each out.
    d.fake.fail_next(
        Op::CreateMessage,
        &[
            Fault::RateLimited {
                retry_after: 0.3,
                global: false,
            },
            Fault::RateLimited {
                retry_after: 0.3,
                global: false,
            },
        ],
    );
    let r = d
        .server
        .request(json!({ "tool": "shell", "command": "echo 1" }))
        .await;
    d.wait_messages(CHANNEL, 1).await;
    let creates = d.fake.calls(Op::CreateMessage);
    let statuses: Vec<_> = creates.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 429, 200]);
    for pair in creates.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(290),
            "retried after {gap:?}, asked 300 ms"
        );
    }
    eventually("the delivery is recorded", || async {
        d.server.get(r["id"].as_str().unwrap()).await["delivered_to"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    })
    .await;

    // The route allows 2 requests per 400 ms and says so in its headers: 6 prompts at once
    // are paced by those headers, without a single 429, and all arrive.
    d.fake.limit_routes(2, Duration::from_millis(400));
    let started = Instant::now();
    let burst = (0..6).map(|i| {
        d.server
            .request(json!({ "tool": "shell", "command": format!("echo burst {i}") }))
    });
    let ids: Vec<String> = futures::future::join_all(burst)
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let all = d.wait_messages(CHANNEL, 7).await;
    let took = started.elapsed();
    assert_eq!(
        d.fake.violations(),
        0,
        "the client went over an announced limit"
    );
    let got: std::collections::BTreeSet<_> = all.iter().map(approval_id).collect();
    for id in &ids {
        assert!(got.contains(id), "prompt for {id} lost");
    }
    assert!(
        took >= Duration::from_millis(700),
        "6 prompts at 2 per 400 ms took only {took:?}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_to_operators_without_the_token() {
    let d = start(
        "max_retries = 3",
        &format!("[delivery]\nmode = \"targets\"\ntargets = [{{ channel = \"discord\", to = \"{CHANNEL}\" }}]\n"),
    )
    .await;
    eventually("connected after registering commands", || async {
        let status = d.server.call(ADMIN, "approvald.status", json!({})).await;
        status["channels"][0]["connected"] == true
    })
    .await;

    // Two 5xx, then success: delivered.
    d.fake
        .fail_next(Op::CreateMessage, &[Fault::Status(502), Fault::Status(500)]);
    let r = d
        .server
        .request(json!({ "tool": "shell", "command": "echo ok" }))
        .await;
    assert_eq!(r["delivered_to"].as_array().unwrap().len(), 1, "{r}");
    let statuses: Vec<_> = d
        .fake
        .calls(Op::CreateMessage)
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [502, 500, 200]);

    // Discord stays down: bounded retries, then the failure is audited and shown in health.
    d.fake
        .fail_always(Op::CreateMessage, Some(Fault::Status(503)));
    let r = d
        .server
        .request(json!({ "tool": "shell", "command": "echo down" }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["delivered_to"], json!([]), "{r}");
    assert_eq!(
        d.fake.calls(Op::CreateMessage).len(),
        3 + 4,
        "first try and 3 retries"
    );
    let audit = d.server.audit(&id).await;
    let failed = audit
        .iter()
        .find(|e| e["event"] == "delivery_failed")
        .expect("delivery_failed audited");
    let error = failed.to_string();
    assert!(
        error.contains("503") && error.contains("gave up"),
        "{error}"
    );
    let status = d.server.call(ADMIN, "approvald.status", json!({})).await;
    let health = &status["channels"][0];
    assert_eq!(health["name"], "discord");
    assert_eq!(health["connected"], false, "{health}");
    assert!(
        health["last_error"].as_str().unwrap().contains("503"),
        "{health}"
    );

    // A channel the bot may not post in: refused at once, not retried.
    d.fake.fail_always(Op::CreateMessage, None);
    d.fake.forbid_channel(CHANNEL);
    let before = d.fake.calls(Op::CreateMessage).len();
    let r = d
        .server
        .request(json!({ "tool": "shell", "command": "echo forbidden" }))
        .await;
    assert_eq!(d.fake.calls(Op::CreateMessage).len(), before + 1);
    let audit = d.server.audit(r["id"].as_str().unwrap()).await;
    let failed = audit
        .iter()
        .find(|e| e["event"] == "delivery_failed")
        .expect("audited")
        .to_string();
    assert!(failed.contains("Missing Access (code 50001)"), "{failed}");

    // The bot token appears nowhere operators look.
    let everything = format!(
        "{}{}{}",
        serde_json::to_string(
            &d.server
                .call(ADMIN, "audit.list", json!({ "limit": 500 }))
                .await
        )
        .unwrap(),
        d.server.call(ADMIN, "approvald.status", json!({})).await,
        d.server
            .http()
            .get(format!("{}/healthz", d.server.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(!everything.contains(BOT_TOKEN), "the bot token leaked");
    assert!(
        !everything.contains("s3cr3t"),
        "part of the bot token leaked"
    );
}

#[tokio::test]
async fn missing_settings_are_config_errors_naming_the_key() {
    for (table, key) in [
        (
            "application_id = '1'\npublic_key = '00'",
            "channels.discord.bot_token",
        ),
        (
            "bot_token = 't'\npublic_key = '00'",
            "channels.discord.application_id",
        ),
        (
            "bot_token = 't'\napplication_id = '1'",
            "channels.discord.public_key",
        ),
        (
            "bot_token = 't'\napplication_id = '1'\nreceive = 'gateway'\ndm_approvers = 'yes'",
            "channels.discord.dm_approvers",
        ),
    ] {
        let config = Config::from_toml_str(&format!("[channels.discord]\n{table}\n")).unwrap();
        let err = platform_channels(&config)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(key), "{table}: {err}");
    }
    // enabled = false leaves it out; kind picks the platform for any table name.
    let config = Config::from_toml_str("[channels.discord]\nenabled = false\n").unwrap();
    assert!(platform_channels(&config).unwrap().is_empty());
    let config = Config::from_toml_str(
        "[channels.ops-bot]\nkind = 'discord'\nbot_token = 't'\napplication_id = '1'\nreceive = 'gateway'\n",
    )
    .unwrap();
    let built = platform_channels(&config).unwrap();
    assert_eq!(built[0].name(), "ops-bot");
}
