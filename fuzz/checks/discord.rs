//! Discord interactions through the channel's real endpoint (`DiscordChannel::routes`:
//! Ed25519 check, the lenient interaction reader, presses, slash commands, autocomplete),
//! correctly signed with the application's key, against a fake engine.
//!
//! Input: by default the whole input is the interaction body, signed with a current
//! timestamp. A first byte `h` makes the rest three lines, timestamp header, signature header
//! and body, sent as they are (forged). `t` makes the rest two lines, a timestamp text and the
//! body, correctly signed (what Discord itself could send).
//!
//! What must hold: no panic; a signed request gets 200 (PONG, or an answer) or 400, never 401
//! or 5xx (a stale timestamp aside); a forged one 401 and nothing happens; every answer is a
//! valid interaction response with no pings allowed (`allowed_mentions.parse` empty),
//! content within 2000 characters, autocomplete within Discord's limits; ids handed to the
//! engine are trimmed and not empty.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use approvald_channel::{Channel, InboundSink};
use approvald_discord::DiscordChannel;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::Value;

use super::common::{
    FakeApi, FakeSink, call, install_panic_counter, lossy, mode, panics_on, post, runtime, settle,
};

const THREADS: &str = "fuzz-discord";
const PATH: &str = "/discord/interactions";
/// A new channel (and so an empty replay memory) after this many requests or seconds.
const RENEW_EVERY: i64 = 200;
const RENEW_AFTER_S: i64 = 60;

struct Fixture {
    rt: tokio::runtime::Runtime,
    api: FakeApi,
    sink: Arc<FakeSink>,
    key: SigningKey,
    channel: Mutex<Current>,
}

/// The channel in use, and the timestamps it was given: `base`, `base - 1`, ... so that no
/// two requests carry the same signature (a repeat would rightly be refused as a replay).
struct Current {
    channel: Arc<DiscordChannel>,
    base: i64,
    used: i64,
}

fn answer(_path: &str) -> String {
    r#"{"id":"1234567890"}"#.into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_channel(api: &FakeApi, key: &SigningKey) -> Arc<DiscordChannel> {
    let table: toml::Table = toml::from_str(&format!(
        r#"
        bot_token = "fuzz-bot-token"
        application_id = "123456789012345678"
        public_key = "{}"
        api_url = "{}/api/v10"
        interaction_wait_ms = 1
        register_commands = false
        max_retries = 0
        "#,
        hex(&key.verifying_key().to_bytes()),
        api.url
    ))
    .expect("toml");
    Arc::new(
        DiscordChannel::from_config("discord", &table, &["999".to_string()])
            .expect("discord config"),
    )
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        install_panic_counter();
        let rt = runtime(THREADS);
        let api = FakeApi::start(&rt, answer);
        let key = SigningKey::from_bytes(&[7; 32]);
        let channel = Mutex::new(Current {
            channel: new_channel(&api, &key),
            base: chrono::Utc::now().timestamp(),
            used: 0,
        });
        Fixture {
            rt,
            api,
            sink: FakeSink::new(),
            key,
            channel,
        }
    })
}

/// The routes of the current channel, and a timestamp no request to it had.
fn router(f: &Fixture) -> (axum::Router, i64) {
    let now = chrono::Utc::now().timestamp();
    let mut cur = f.channel.lock().unwrap_or_else(|p| p.into_inner());
    if cur.used >= RENEW_EVERY || now - cur.base > RENEW_AFTER_S {
        *cur = Current {
            channel: new_channel(&f.api, &f.key),
            base: now,
            used: 0,
        };
    }
    let ts = cur.base - cur.used;
    cur.used += 1;
    let routes = cur
        .channel
        .routes(f.sink.clone() as Arc<dyn InboundSink>)
        .expect("interactions endpoint mode has routes");
    (routes, ts)
}

pub fn check(data: &[u8]) {
    let f = fixture();
    let (m, rest) = mode(data);
    let panics = panics_on(THREADS);
    let baseline = f.rt.metrics().num_alive_tasks();
    f.sink.take();
    f.sink.set_extra(&lossy(data));
    match m {
        b'h' => forged(f, rest),
        b't' => {
            let mut parts = rest.splitn(2, |b| *b == b'\n');
            let ts = parts.next().unwrap_or_default().to_vec();
            let body = parts.next().unwrap_or_default().to_vec();
            signed(f, Some(ts), body);
        }
        _ => signed(f, None, data.to_vec()),
    }
    settle(&f.rt, baseline, Duration::from_secs(1));
    for action in f.sink.take() {
        let id = &action.approval;
        assert!(
            !id.is_empty() && id.trim() == id,
            "the engine was handed the id {id:?}"
        );
        assert!(!action.user.id.is_empty(), "a decision without a user");
    }
    assert_eq!(
        panics_on(THREADS),
        panics,
        "a task of the Discord channel panicked"
    );
}

/// Send `body` signed with the application's key, at `ts` (the fuzzer's) or at a fresh
/// timestamp of our own.
fn signed(f: &Fixture, ts: Option<Vec<u8>>, body: Vec<u8>) {
    let (routes, fresh_ts) = router(f);
    let fresh = ts.is_none();
    let ts = ts.unwrap_or_else(|| fresh_ts.to_string().into_bytes());
    let mut message = ts.clone();
    message.extend_from_slice(&body);
    let sig = hex(&f.key.sign(&message).to_bytes());
    let Some(req) = post(
        PATH,
        &[
            ("x-signature-ed25519", sig.as_bytes()),
            ("x-signature-timestamp", &ts),
            ("content-type", b"application/json"),
        ],
        body,
    ) else {
        return;
    };
    let (status, answer) = f.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), call(routes, req))
            .await
            .expect("the interactions endpoint answered within 20 s")
    });
    let status = status.as_u16();
    if !fresh && status == 401 {
        return; // A timestamp Discord would not send (stale, or a repeat): refused.
    }
    assert!(
        status == 200 || status == 400,
        "the endpoint answered {status} to a signed interaction"
    );
    if status == 200 {
        check_response(&answer);
    }
}

fn forged(f: &Fixture, rest: &[u8]) {
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let ts = parts.next().unwrap_or_default();
    let sig = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default().to_vec();
    let Some(req) = post(
        PATH,
        &[("x-signature-timestamp", ts), ("x-signature-ed25519", sig)],
        body,
    ) else {
        return;
    };
    let (status, _) = f.rt.block_on(call(router(f).0, req));
    assert_eq!(status, 401, "a forged interaction was not refused");
    assert!(
        f.sink.take().is_empty(),
        "a forged interaction reached the engine"
    );
}

fn check_response(body: &[u8]) {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {}", lossy(body)));
    let kind = v["type"]
        .as_u64()
        .unwrap_or_else(|| panic!("an answer without a type: {v}"));
    let data = &v["data"];
    match kind {
        1 => {}
        4 | 7 => {
            let parse = &data["allowed_mentions"]["parse"];
            assert!(
                parse.as_array().is_some_and(|p| p.is_empty()),
                "an answer that may ping (allowed_mentions {}): {v}",
                data["allowed_mentions"]
            );
            if let Some(content) = data["content"].as_str() {
                assert!(
                    content.chars().count() <= 2000,
                    "content over 2000 characters"
                );
            }
            if kind == 4 {
                assert_eq!(
                    data["flags"].as_u64().map(|f| f & 64),
                    Some(64),
                    "an answer to one person that is not ephemeral: {v}"
                );
            }
        }
        8 => {
            let choices = data["choices"].as_array().cloned().unwrap_or_default();
            assert!(choices.len() <= 25, "more than 25 autocomplete choices");
            for c in &choices {
                let name = c["name"].as_str().unwrap_or_default();
                let n = name.chars().count();
                assert!(
                    (1..=100).contains(&n),
                    "a choice name of {n} characters: {c}"
                );
                let value = c["value"].as_str().unwrap_or_default();
                assert!(
                    !value.is_empty() && value.chars().count() <= 100,
                    "a choice value Discord refuses: {c}"
                );
            }
        }
        other => panic!("an answer of unexpected type {other}: {v}"),
    }
}
