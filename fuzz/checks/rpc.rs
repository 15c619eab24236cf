//! JSON-RPC request decoding: `approvald::api::handle_message` (what `POST /rpc` and the
//! WebSocket run) on a real engine with a SQLite store in a temporary directory, rules, a
//! budget, and two channels that check every prompt the engine renders from the caller's text.
//!
//! Input: the first byte picks the caller (`a` Alice, who may resolve; `A` an admin; `b` a
//! token that may request and resolve; anything else the gateway, which may request); the
//! rest is the body.
//!
//! What must hold: the answer is a well-formed JSON-RPC 2.0 response (or batch of them), or
//! nothing only for notifications; every error has a documented `error.data.kind` and none is
//! `internal`; invalid JSON is a `parse_error`; nothing hangs; nothing panics (also in the
//! engine's background tasks); every prompt and notice sent is escaped for its markup.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use approvald::api::{AppContext, handle_message};
use approvald::config::Config;
use approvald::directory::Caller;
use approvald_channel::{
    ActionData, Channel, ChannelError, Markup, MessageRef, Prompt, Target, Transport,
};
use serde_json::Value;

use super::common::{install_panic_counter, panics_on, runtime, telegram_html};

const THREADS: &str = "fuzz-rpc";

/// Every `error.data.kind` the API documents.
const KINDS: &[&str] = &[
    "parse_error",
    "invalid_request",
    "method_not_found",
    "payload_too_large",
    "invalid_params",
    "unauthorized",
    "unknown_id",
    "ambiguous_id",
    "expired",
    "already_resolved",
    "not_an_approver",
    "self_approval",
    "duplicate_id",
    "invalid_transition",
    "rate_limited",
    "shutting_down",
    "too_many_clients",
];

const CONFIG: &str = r#"
[approvals]
default_timeout_ms = 20
max_timeout_ms = 20
allow_always = true

[tasks]
approve_wait_ms = 10

[budget]
daily_usd = 20.0
task_type_limits = { chat = 1.0, workflow = 10.0 }

[delivery]
mode = "both"
wait_ms = 50
targets = [{ channel = "chat-a", to = "room-1" }]
timeout_notice_targets = [{ channel = "chat-b", to = "ops" }]

[[tokens]]
name = "gateway"
token = "gateway-token"
scopes = ["request"]

[[tokens]]
name = "alice-cli"
token = "alice-token"
scopes = ["resolve"]
person = "alice"

[[tokens]]
name = "admin"
token = "admin-token"
scopes = ["admin"]

[[tokens]]
name = "both"
token = "both-token"
scopes = ["request", "resolve"]

[[people]]
name = "alice"
display_name = "Alice <b>&amp; @everyone"
ids = ["alice@example.com"]
telegram = ["5678"]

[[rules]]
tool = "ls"
action = "allow"

[[rules]]
tool = "/^rm/"
command = "-rf /$"
action = "deny"

[channels.chat-a]
approvers = ["999"]

[channels.chat-b]
"#;

/// A channel that accepts everything and checks what it is given is escaped for its markup.
struct CheckingChannel {
    name: &'static str,
    markup: Markup,
}

impl CheckingChannel {
    fn check_text(&self, text: &str) {
        match self.markup {
            Markup::TelegramHtml => {
                if let Err(e) = telegram_html(text, &["b", "code", "pre"]) {
                    panic!(
                        "{}: the engine sent unsafe Telegram HTML: {e}\n{text}",
                        self.name
                    );
                }
            }
            Markup::SlackMrkdwn => assert!(
                !text.contains('<') && !text.contains('>'),
                "{}: raw '<' or '>' in mrkdwn the engine sent: {text}",
                self.name
            ),
            _ => {}
        }
    }

    fn check_prompt(&self, prompt: &Prompt) {
        self.check_text(&prompt.text);
        for a in &prompt.actions {
            let data: ActionData = a
                .data
                .parse()
                .unwrap_or_else(|e| panic!("button data {:?} does not parse: {e}", a.data));
            assert_eq!(data.approval_id, prompt.view.approval_id);
            assert!(a.data.len() <= 64, "button data over Telegram's 64 bytes");
        }
    }

    fn message(&self, to: &str) -> MessageRef {
        MessageRef {
            channel: self.name.to_string(),
            to: to.to_string(),
            thread_id: None,
            message_id: "1".into(),
        }
    }
}

#[async_trait::async_trait]
impl Channel for CheckingChannel {
    fn name(&self) -> &str {
        self.name
    }
    fn transport(&self) -> Transport {
        Transport::Telegram
    }
    fn markup(&self) -> Markup {
        self.markup
    }
    async fn deliver(&self, target: &Target, prompt: &Prompt) -> Result<MessageRef, ChannelError> {
        self.check_prompt(prompt);
        Ok(self.message(&target.to))
    }
    async fn update(&self, _message: &MessageRef, prompt: &Prompt) -> Result<(), ChannelError> {
        self.check_prompt(prompt);
        Ok(())
    }
    async fn notify(&self, target: &Target, text: &str) -> Result<MessageRef, ChannelError> {
        self.check_text(text);
        Ok(self.message(&target.to))
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    ctx: AppContext,
    callers: [Caller; 4],
}

fn data_dir() -> std::path::PathBuf {
    let root = std::env::temp_dir().join("approvald-fuzz");
    // Directories of earlier processes that are gone.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("rpc-")
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!("rpc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the data dir");
    dir
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        install_panic_counter();
        let rt = runtime(THREADS);
        let dir = data_dir();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n{CONFIG}",
            dir.display().to_string()
        );
        let config = Config::from_toml_str(&text).expect("fuzz config is valid");
        let channels: Vec<Arc<dyn Channel>> = vec![
            Arc::new(CheckingChannel {
                name: "chat-a",
                markup: Markup::TelegramHtml,
            }),
            Arc::new(CheckingChannel {
                name: "chat-b",
                markup: Markup::SlackMrkdwn,
            }),
        ];
        let engine = rt
            .block_on(approvald::server::build_engine(config, channels))
            .expect("engine starts");
        let ctx = AppContext {
            max_body_bytes: 65536,
            stream_slots: Arc::new(tokio::sync::Semaphore::new(4)),
            engine,
            ui_key: approvald::ui::SessionKey::random(),
        };
        let caller = |t: &str| ctx.engine.directory().authenticate(t).expect("token");
        let callers = [
            caller("gateway-token"),
            caller("alice-token"),
            caller("admin-token"),
            caller("both-token"),
        ];
        Fixture { rt, ctx, callers }
    })
}

pub fn check(data: &[u8]) {
    let f = fixture();
    let (who, body) = super::common::mode(data);
    let caller = match who {
        b'a' => &f.callers[1],
        b'A' => &f.callers[2],
        b'b' => &f.callers[3],
        _ => &f.callers[0],
    };
    let panics = panics_on(THREADS);
    let answer =
        f.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                handle_message(&f.ctx, caller, body),
            )
            .await
        })
        .unwrap_or_else(|_| panic!("handle_message did not answer within 20 s"));
    // Every answer is JSON text; what it says is checked on the parsed value.
    let answer = answer.map(|text| {
        serde_json::from_str::<Value>(&text)
            .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {text}"))
    });
    check_answer(body, answer.as_ref());
    // Let the engine's background work for this input (deliveries, edits, expiry) run.
    std::thread::sleep(Duration::from_millis(1));
    assert_eq!(
        panics_on(THREADS),
        panics,
        "a background task of the engine panicked"
    );
}

fn check_answer(body: &[u8], answer: Option<&Value>) {
    let parsed = serde_json::from_slice::<Value>(body);
    let Ok(request) = parsed else {
        let a = answer.expect("invalid JSON gets an answer");
        assert_eq!(kind(a), Some("parse_error"), "{a}");
        assert_eq!(a["id"], Value::Null);
        return;
    };
    match answer {
        None => match &request {
            Value::Object(o) => {
                assert!(!o.contains_key("id"), "a request with an id got no answer")
            }
            Value::Array(items) => {
                assert!(!items.is_empty(), "an empty batch got no answer");
                for item in items {
                    assert!(
                        item.as_object().is_some_and(|o| !o.contains_key("id")),
                        "a batch with a request got no answer"
                    );
                }
            }
            other => panic!("{other} got no answer"),
        },
        Some(Value::Array(answers)) => {
            let Value::Array(items) = &request else {
                panic!("a batch answer to a single request");
            };
            assert!(!answers.is_empty() && answers.len() <= items.len());
            for a in answers {
                check_response(a);
            }
        }
        Some(a) => {
            check_response(a);
            if let Value::Object(o) = &request
                && let Some(id @ (Value::String(_) | Value::Number(_))) = o.get("id")
                && o.get("jsonrpc") == Some(&Value::String("2.0".into()))
            {
                assert_eq!(&a["id"], id, "the answer has another id");
            }
        }
    }
}

fn kind(a: &Value) -> Option<&str> {
    a.get("error")?.get("data")?.get("kind")?.as_str()
}

fn check_response(a: &Value) {
    let o = a
        .as_object()
        .unwrap_or_else(|| panic!("answer {a} is not an object"));
    assert_eq!(o.get("jsonrpc"), Some(&Value::String("2.0".into())), "{a}");
    assert!(
        matches!(
            o.get("id"),
            Some(Value::Null | Value::String(_) | Value::Number(_))
        ),
        "{a}"
    );
    match (o.get("result"), o.get("error")) {
        (Some(_), None) => {}
        (None, Some(e)) => {
            assert!(e["code"].is_i64(), "{a}");
            assert!(e["message"].is_string(), "{a}");
            let k = kind(a).unwrap_or_else(|| panic!("error without data.kind: {a}"));
            assert_ne!(k, "internal", "an internal error from input: {a}");
            assert!(KINDS.contains(&k), "undocumented error kind {k:?}: {a}");
        }
        _ => panic!("an answer needs exactly one of result and error: {a}"),
    }
}
