//! Telegram updates through the channel's real webhook route (`TelegramChannel::routes`:
//! secret check, teloxide's `Update` reader, presses and commands, the answers it sends),
//! against a fake Bot API on loopback and a fake engine that answers with hostile text.
//!
//! Input: the update JSON as the webhook body, with the right secret. A first byte `x` sends
//! the rest with a wrong secret; `p` reads the rest as `getUpdates`' result array and sends
//! each item re-serialised (what the poller does with them).
//! Every input is also read as a chat message by `approvald_telegram::commands::parse`.
//!
//! What must hold: no panic; 200 for an update, 400 for anything else, 401 without the secret
//! (and then nothing reaches the engine or Telegram); every id handed to the engine is one a
//! button or command can carry; every HTML message sent is valid Telegram HTML with only
//! approvald's own tags, whatever the engine's answer or the pending list contained; every
//! callback answer fits Telegram's 200 characters.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use approvald_channel::{Channel, InboundSink};
use approvald_telegram::TelegramChannel;
use approvald_telegram::commands::{self, Command};
use serde_json::Value;

use super::common::{
    FakeApi, FakeSink, call, install_panic_counter, lossy, mode, panics_on, post, runtime, settle,
    telegram_html,
};

const THREADS: &str = "fuzz-telegram";
const SECRET: &str = "fuzz-webhook-secret";
const PATH: &str = "/telegram/tg/webhook";

struct Fixture {
    rt: tokio::runtime::Runtime,
    api: FakeApi,
    sink: Arc<FakeSink>,
    channel: TelegramChannel,
}

fn answer(path: &str) -> String {
    if path.ends_with("/sendMessage") || path.ends_with("/editMessageText") {
        r#"{"ok":true,"result":{"message_id":42,"date":1718000000,"chat":{"id":-100123,"type":"supergroup","title":"Ops"},"text":"ok"}}"#.into()
    } else if path.ends_with("/getMe") {
        r#"{"ok":true,"result":{"id":9000001,"is_bot":true,"first_name":"Approvals","username":"ApprovalBot"}}"#.into()
    } else {
        r#"{"ok":true,"result":true}"#.into()
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        install_panic_counter();
        let rt = runtime(THREADS);
        let api = FakeApi::start(&rt, answer);
        let table: toml::Table = toml::from_str(&format!(
            r#"
            bot_token = "123456:fuzz-token"
            api_url = "{}"
            receive = "webhook"
            webhook_secret = "{SECRET}"
            chat_interval_ms = 0
            global_per_second = 1000
            max_retries = 0
            retry_base_ms = 1
            request_timeout_secs = 5
            "#,
            api.url
        ))
        .expect("toml");
        let channel = TelegramChannel::from_config("tg", &table).expect("telegram config");
        Fixture {
            rt,
            api,
            sink: FakeSink::new(),
            channel,
        }
    })
}

pub fn check(data: &[u8]) {
    check_command_text(&lossy(data));
    let f = fixture();
    let (m, rest) = mode(data);
    let panics = panics_on(THREADS);
    let baseline = f.rt.metrics().num_alive_tasks();
    f.api.take();
    f.sink.take();
    f.sink.set_extra(&lossy(data));
    match m {
        b'x' => {
            for secret in [None, Some(&b"wrong"[..]), Some(&b""[..])] {
                let headers: Vec<(&str, &[u8])> = secret
                    .map(|s| vec![("x-telegram-bot-api-secret-token", s)])
                    .unwrap_or_default();
                let status = send(f, &headers, rest.to_vec());
                if let Some(status) = status {
                    assert_eq!(
                        status, 401,
                        "a webhook call without the secret was not refused"
                    );
                }
            }
            assert!(
                f.sink.take().is_empty(),
                "an unauthenticated update reached the engine"
            );
            assert!(
                f.api.take().is_empty(),
                "an unauthenticated update made Telegram calls"
            );
        }
        b'p' => {
            if let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(rest) {
                for item in items.iter().take(20) {
                    let bytes = serde_json::to_vec(item).expect("re-serialise");
                    webhook(f, bytes);
                }
            }
        }
        _ => webhook(f, data.to_vec()),
    }
    settle(&f.rt, baseline, Duration::from_millis(100));
    assert_eq!(
        panics_on(THREADS),
        panics,
        "a task of the Telegram channel panicked"
    );
}

fn send(f: &Fixture, headers: &[(&str, &[u8])], body: Vec<u8>) -> Option<u16> {
    let router = f
        .channel
        .routes(f.sink.clone() as Arc<dyn InboundSink>)
        .expect("webhook mode has routes");
    let req = post(PATH, headers, body)?;
    let (status, _) = f.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), call(router, req))
            .await
            .expect("the webhook answered within 20 s")
    });
    Some(status.as_u16())
}

fn webhook(f: &Fixture, body: Vec<u8>) {
    let status = send(
        f,
        &[("x-telegram-bot-api-secret-token", SECRET.as_bytes())],
        body,
    )
    .expect("a valid request");
    assert!(
        status == 200 || status == 400,
        "the webhook answered {status} to a signed update"
    );
    for action in f.sink.take() {
        let id = &action.approval;
        assert!(
            !id.is_empty()
                && id.len() <= 64
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "the engine was handed the id {id:?}"
        );
        assert!(!action.user.id.is_empty(), "a decision without a user id");
        assert_eq!(action.channel, "tg");
    }
    for c in f.api.take() {
        let Ok(body) = serde_json::from_slice::<Value>(&c.body) else {
            continue;
        };
        if let Some(text) = body.get("text").and_then(Value::as_str) {
            if body.get("parse_mode").and_then(Value::as_str) == Some("HTML") {
                if let Err(e) = telegram_html(text, &["b", "code", "pre", "i"]) {
                    panic!("{} sent unsafe HTML: {e}\n{text}", c.path);
                }
                assert!(
                    super::common::telegram_visible_units(text)
                        <= approvald_telegram::render::MAX_TEXT,
                    "{} sent a text over Telegram's limit",
                    c.path
                );
            }
            if c.path.ends_with("/answerCallbackQuery") {
                assert!(
                    text.chars().count() <= 200,
                    "a callback answer over 200 characters"
                );
            }
        }
    }
}

/// The text command parser on its own: ids it returns look like ids, lowercased.
fn check_command_text(text: &str) {
    for bot in [None, Some("ApprovalBot")] {
        let Some(Ok(cmd)) = commands::parse(text, bot) else {
            continue;
        };
        let id = match &cmd {
            Command::Approve { id, .. } => id.clone(),
            Command::Deny { id, words, .. } => {
                assert!(words.iter().all(|w| !w.is_empty()));
                id.clone()
            }
            Command::Pending | Command::Help => None,
        };
        if let Some(id) = id {
            assert!(commands::looks_like_id(&id), "{id:?} from {text:?}");
            assert_eq!(id, id.to_ascii_lowercase());
        }
    }
}
