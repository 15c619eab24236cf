//! Small fakes of the three chat platforms approvald sends prompts to, run in the bench
//! process on loopback: the Telegram Bot API (`sendMessage`, plus `getMe` and friends that
//! approvald calls at start), the Slack Web API (`chat.postMessage`, `auth.test`) and Discord's
//! REST API (`POST /api/v10/channels/{id}/messages`).
//!
//! Each records every send: when it arrived (`Instant`, taken first thing in the handler), the
//! chat it was for, and the approval id its buttons carry (`v1:<id>:<o|a|d>`). Optionally it
//! enforces rate limits as sliding windows (at most N sends in any window of W, per chat and
//! overall; a refused send does not count) and answers a send over a limit with a 429 shaped
//! like the real API's:
//!
//! - Telegram: HTTP 429, `{"ok":false,"error_code":429,"description":"Too Many Requests: retry
//!   after N","parameters":{"retry_after":N}}` (whole seconds, at least 1).
//! - Slack: HTTP 429 with `Retry-After: N` (whole seconds) and `{"ok":false,"error":"ratelimited"}`.
//! - Discord: HTTP 429, `{"message":"You are being rate limited.","retry_after":S,"global":B}`
//!   (seconds, 3 decimals) with `Retry-After` and `X-RateLimit-*` headers (`X-RateLimit-Global`
//!   and scope `global` for the overall limit). Accepted sends carry `X-RateLimit-Limit`,
//!   `-Remaining`, `-Reset`, `-Reset-After` and `-Bucket` for the channel's window, as Discord
//!   does, so a client can pace itself by them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::serve::ListenerExt;
use serde_json::{Value, json};

/// The tokens written into approvald's config (the fakes do not check them).
pub const TELEGRAM_TOKEN: &str = "424242:bench-telegram-token";
pub const SLACK_TOKEN: &str = "xoxb-bench-slack-token";
pub const SLACK_SIGNING_SECRET: &str = "bench-slack-signing-secret";
pub const DISCORD_TOKEN: &str = "bench-discord-token";
pub const DISCORD_APPLICATION_ID: &str = "100000000000000001";
/// A valid Ed25519 public key (RFC 8032, test 1): approvald checks the shape at load.
pub const DISCORD_PUBLIC_KEY: &str =
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

/// The three platforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    Telegram,
    Slack,
    Discord,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Telegram, Platform::Slack, Platform::Discord];

    pub fn name(self) -> &'static str {
        match self {
            Platform::Telegram => "telegram",
            Platform::Slack => "slack",
            Platform::Discord => "discord",
        }
    }

    /// The published limits on sending messages: Telegram about 1/s per chat and 30/s
    /// overall; Slack about 1/s per channel (no published overall figure); Discord 5 per 5 s
    /// per channel and 50/s for the whole bot.
    pub fn published_limits(self) -> Limits {
        let limit = |count, secs| {
            Some(Limit {
                count,
                window: Duration::from_secs(secs),
            })
        };
        match self {
            Platform::Telegram => Limits {
                per_chat: limit(1, 1),
                overall: limit(30, 1),
            },
            Platform::Slack => Limits {
                per_chat: limit(1, 1),
                overall: None,
            },
            Platform::Discord => Limits {
                per_chat: limit(5, 5),
                overall: limit(50, 1),
            },
        }
    }

    /// The i-th chat (channel) id on this platform, all of one width so a body keeps its size
    /// when one is swapped for another. Telegram ids are positive (private chats, so the
    /// 20-a-minute group limit does not apply); Discord's are snowflakes.
    pub fn chat(self, i: usize) -> String {
        match self {
            Platform::Telegram => format!("{}", 7_000_000_000u64 + i as u64),
            Platform::Slack => format!("CBENCH{i:05}"),
            Platform::Discord => format!("{}", 900_000_000_000_000_000u64 + i as u64),
        }
    }
}

/// At most `count` sends in any window of length `window`: a send at `t` counts until
/// `t + window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub count: usize,
    pub window: Duration,
}

/// The limits a fake enforces; `None` for none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub per_chat: Option<Limit>,
    pub overall: Option<Limit>,
}

/// A send the fake accepted.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub at: Instant,
    pub chat: String,
    pub approval: Option<String>,
}

/// A send the fake answered with 429.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The overall limit (Discord: global), not the chat's.
    pub overall: bool,
    /// How much later the send would have been within the limits.
    pub early: Duration,
}

/// One accepted send's body, kept to replay it (same size, same shape) in the floors.
#[derive(Clone, Debug)]
pub struct Sample {
    pub body: String,
    pub chat: String,
    pub approval: String,
}

impl Sample {
    /// The same body for another chat and approval id.
    pub fn body_for(&self, chat: &str, approval: &str) -> String {
        self.body
            .replace(&self.approval, approval)
            .replace(&self.chat, chat)
    }
}

#[derive(Default)]
struct Record {
    arrivals: Vec<Arrival>,
    refusals: Vec<Refusal>,
    /// Start-up and other calls that are not sends (getMe, auth.test, ...), by name.
    other_calls: BTreeMap<String, u64>,
    sample: Option<Sample>,
    next_id: u64,
    chat_windows: HashMap<String, VecDeque<Instant>>,
    overall_window: VecDeque<Instant>,
}

struct Shared {
    limits: Mutex<Limits>,
    record: Mutex<Record>,
}

/// What the limits said about one send.
enum Admission {
    Accepted {
        id: u64,
        /// (limit, remaining, reset after) of the chat's window.
        chat_window: Option<(usize, usize, Duration)>,
    },
    Refused {
        overall: bool,
        wait: Duration,
        limit: usize,
    },
}

impl Shared {
    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn other_call(&self, name: &str) {
        *self
            .record()
            .other_calls
            .entry(name.to_string())
            .or_default() += 1;
    }

    /// Check a send arriving at `at` against the limits; count it if it passes.
    fn admit(&self, at: Instant, chat: &str, body: &Bytes) -> Admission {
        let limits = *self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let approval = approval_id(body);
        let mut r = self.record();
        // Sends that left their windows no longer count.
        let prune = |q: &mut VecDeque<Instant>, w: Duration| {
            while q.front().is_some_and(|t| *t + w <= at) {
                q.pop_front();
            }
        };
        let mut chat_wait = Duration::ZERO;
        if let Some(l) = limits.per_chat {
            let q = r.chat_windows.entry(chat.to_string()).or_default();
            prune(q, l.window);
            if q.len() >= l.count
                && let Some(oldest) = q.get(q.len() - l.count)
            {
                chat_wait = (*oldest + l.window).saturating_duration_since(at);
            }
        }
        let mut overall_wait = Duration::ZERO;
        if let Some(l) = limits.overall {
            prune(&mut r.overall_window, l.window);
            let q = &r.overall_window;
            if q.len() >= l.count
                && let Some(oldest) = q.get(q.len() - l.count)
            {
                overall_wait = (*oldest + l.window).saturating_duration_since(at);
            }
        }
        let over_chat = limits
            .per_chat
            .is_some_and(|l| r.chat_windows.get(chat).is_some_and(|q| q.len() >= l.count));
        let over_all = limits
            .overall
            .is_some_and(|l| r.overall_window.len() >= l.count);
        if over_chat || over_all {
            let overall = over_all && (!over_chat || overall_wait >= chat_wait);
            let wait = if overall { overall_wait } else { chat_wait };
            let limit = if overall {
                limits.overall.map_or(0, |l| l.count)
            } else {
                limits.per_chat.map_or(0, |l| l.count)
            };
            r.refusals.push(Refusal {
                overall,
                early: wait,
            });
            return Admission::Refused {
                overall,
                wait,
                limit,
            };
        }
        if limits.overall.is_some() {
            r.overall_window.push_back(at);
        }
        let mut chat_window = None;
        if let Some(l) = limits.per_chat {
            let q = r.chat_windows.entry(chat.to_string()).or_default();
            q.push_back(at);
            let remaining = l.count.saturating_sub(q.len());
            // Until a send leaves the window (the oldest that still counts).
            let reset_after = q.front().map_or(Duration::ZERO, |t| {
                (*t + l.window).saturating_duration_since(at)
            });
            chat_window = Some((l.count, remaining, reset_after));
        }
        if r.sample.is_none()
            && let (Some(a), Ok(text)) = (&approval, std::str::from_utf8(body))
        {
            r.sample = Some(Sample {
                body: text.to_string(),
                chat: chat.to_string(),
                approval: a.clone(),
            });
        }
        r.arrivals.push(Arrival {
            at,
            chat: chat.to_string(),
            approval,
        });
        r.next_id += 1;
        Admission::Accepted {
            id: r.next_id,
            chat_window,
        }
    }
}

/// A running fake. Stopping (or dropping) it ends the server.
pub struct Fake {
    pub platform: Platform,
    /// The base URL approvald's `api_url` points at.
    pub api_url: String,
    base: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Fake {
    pub async fn start(platform: Platform, limits: Limits) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            limits: Mutex::new(limits),
            record: Mutex::default(),
        });
        let app = match platform {
            // Any HTTP method: slack-morphism GETs auth.test.
            Platform::Telegram => Router::new().route("/{bot}/{method}", any(telegram)),
            Platform::Slack => Router::new().route("/api/{method}", any(slack)),
            Platform::Discord => Router::new()
                .route("/api/v10/channels/{channel}/messages", post(discord))
                .fallback(discord_other),
        }
        .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        let api_url = match platform {
            Platform::Slack => format!("{base}/api"),
            Platform::Telegram | Platform::Discord => base.clone(),
        };
        Ok(Self {
            platform,
            api_url,
            base,
            shared,
            stop: Some(stop),
        })
    }

    /// Where a send to `chat` goes, and the auth header approvald would send with it.
    pub fn send_url(&self, chat: &str) -> (String, String) {
        match self.platform {
            Platform::Telegram => (
                format!("{}/bot{TELEGRAM_TOKEN}/sendMessage", self.base),
                String::new(),
            ),
            Platform::Slack => (
                format!("{}/api/chat.postMessage", self.base),
                format!("Bearer {SLACK_TOKEN}"),
            ),
            Platform::Discord => (
                format!("{}/api/v10/channels/{chat}/messages", self.base),
                format!("Bot {DISCORD_TOKEN}"),
            ),
        }
    }

    /// A call that is not a send (getMe, auth.test, an unknown Discord route), to open
    /// connections before a measured burst.
    pub fn warm_url(&self) -> String {
        match self.platform {
            Platform::Telegram => format!("{}/bot{TELEGRAM_TOKEN}/getMe", self.base),
            Platform::Slack => format!("{}/api/auth.test", self.base),
            Platform::Discord => format!("{}/api/v10/gateway", self.base),
        }
    }

    /// Forget every send and window (the sample is kept).
    pub fn clear(&self) {
        let mut r = self.shared.record();
        let sample = r.sample.take();
        *r = Record {
            sample,
            ..Record::default()
        };
    }

    /// Sends accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.record().arrivals.len()
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.record().arrivals.clone()
    }

    pub fn refusals(&self) -> Vec<Refusal> {
        self.shared.record().refusals.clone()
    }

    /// Calls other than sends, by name.
    pub fn other_calls(&self) -> BTreeMap<String, u64> {
        self.shared.record().other_calls.clone()
    }

    pub fn sample(&self) -> Option<Sample> {
        self.shared.record().sample.clone()
    }

    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The approval id in a prompt: the buttons carry `v1:<36-character id>:<o|a|d>`.
pub fn approval_id(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some(pos) = rest.windows(3).position(|w| w == b"v1:") {
        let candidate = rest.get(pos + 3..pos + 3 + 36);
        if let Some(c) = candidate
            && c.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-')
            && rest.get(pos + 39) == Some(&b':')
        {
            return std::str::from_utf8(c).ok().map(str::to_string);
        }
        rest = &rest[pos + 3..];
    }
    None
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whole seconds to wait, at least one (Telegram and Slack give whole seconds).
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

/// Seconds with three decimals, rounded up (Discord).
fn seconds_3(wait: Duration) -> f64 {
    (wait.as_secs_f64() * 1000.0).ceil() / 1000.0
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

// ----- Telegram -------------------------------------------------------------------------

fn tg_ok(result: Value) -> Response {
    json_response(StatusCode::OK, json!({ "ok": true, "result": result }))
}

fn tg_error(code: u16, description: &str) -> Response {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        json!({ "ok": false, "error_code": code, "description": description }),
    )
}

fn tg_bot() -> Value {
    json!({ "id": 424242, "is_bot": true, "first_name": "Bench", "username": "bench_bot" })
}

fn tg_message(id: u64, chat: i64) -> Value {
    json!({
        "message_id": id, "date": unix_now() as i64,
        "chat": { "id": chat, "type": "private", "first_name": "Bench" },
        "from": tg_bot(), "text": "prompt",
    })
}

async fn telegram(
    State(s): State<Arc<Shared>>,
    Path((_bot, method)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let method = method.to_ascii_lowercase();
    if method != "sendmessage" {
        s.other_call(&method);
        return match method.as_str() {
            "getme" => {
                let mut me = tg_bot();
                for k in [
                    "can_join_groups",
                    "can_read_all_group_messages",
                    "supports_inline_queries",
                    "can_connect_to_business",
                    "has_main_web_app",
                ] {
                    me[k] = json!(k == "can_join_groups");
                }
                tg_ok(me)
            }
            "getupdates" => {
                // Not called in webhook mode; a poller gets a long poll with nothing in it.
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let secs = v["timeout"].as_u64().unwrap_or(0).min(25);
                tokio::time::sleep(Duration::from_secs(secs)).await;
                tg_ok(json!([]))
            }
            "editmessagetext" | "editmessagereplymarkup" => {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                tg_ok(tg_message(
                    v["message_id"].as_u64().unwrap_or(1),
                    v["chat_id"].as_i64().unwrap_or(0),
                ))
            }
            _ => tg_ok(json!(true)),
        };
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return tg_error(400, "Bad Request: invalid JSON body");
    };
    let chat = match &v["chat_id"] {
        Value::Number(n) => n.to_string(),
        Value::String(t) => t.clone(),
        _ => return tg_error(400, "Bad Request: chat_id is empty"),
    };
    match s.admit(at, &chat, &body) {
        Admission::Accepted { id, .. } => tg_ok(tg_message(id, chat.parse().unwrap_or(0))),
        Admission::Refused { wait, .. } => {
            let secs = whole_seconds(wait);
            json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "ok": false, "error_code": 429,
                    "description": format!("Too Many Requests: retry after {secs}"),
                    "parameters": { "retry_after": secs },
                }),
            )
        }
    }
}

// ----- Slack ----------------------------------------------------------------------------

async fn slack(State(s): State<Arc<Shared>>, Path(method): Path<String>, body: Bytes) -> Response {
    let at = Instant::now();
    if method != "chat.postMessage" {
        s.other_call(&method);
        return match method.as_str() {
            "auth.test" => json_response(
                StatusCode::OK,
                json!({ "ok": true, "url": "https://bench.slack.com/", "team": "Bench",
                        "user": "approvald", "team_id": "T0001", "user_id": "UBOT", "bot_id": "B0001" }),
            ),
            _ => json_response(StatusCode::OK, json!({ "ok": true })),
        };
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(channel) = v["channel"].as_str().filter(|c| !c.is_empty()) else {
        return json_response(
            StatusCode::OK,
            json!({ "ok": false, "error": "channel_not_found" }),
        );
    };
    match s.admit(at, channel, &body) {
        Admission::Accepted { id, .. } => {
            let ts = format!("{}.{:06}", 1_700_000_000 + id, id % 1_000_000);
            json_response(
                StatusCode::OK,
                json!({ "ok": true, "channel": channel, "ts": ts,
                        "message": { "type": "message", "ts": ts, "bot_id": "B0001", "text": "prompt" } }),
            )
        }
        Admission::Refused { wait, .. } => {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({ "ok": false, "error": "ratelimited" }),
            );
            if let Ok(v) = HeaderValue::from_str(&whole_seconds(wait).to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
            r
        }
    }
}

// ----- Discord --------------------------------------------------------------------------

fn put_headers(h: &mut HeaderMap, pairs: &[(&'static str, String)]) {
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(*name, v);
        }
    }
}

async fn discord(
    State(s): State<Arc<Shared>>,
    Path(channel): Path<String>,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let bucket = format!("bench-{channel}");
    match s.admit(at, &channel, &body) {
        Admission::Accepted { id, chat_window } => {
            let mut r = json_response(
                StatusCode::OK,
                json!({
                    "id": format!("{}", 1_300_000_000_000_000_000u64 + id),
                    "channel_id": channel, "type": 0, "content": "",
                }),
            );
            if let Some((limit, remaining, reset_after)) = chat_window {
                put_headers(
                    r.headers_mut(),
                    &[
                        ("x-ratelimit-limit", limit.to_string()),
                        ("x-ratelimit-remaining", remaining.to_string()),
                        (
                            "x-ratelimit-reset",
                            format!("{:.3}", unix_now() + seconds_3(reset_after)),
                        ),
                        (
                            "x-ratelimit-reset-after",
                            format!("{:.3}", seconds_3(reset_after)),
                        ),
                        ("x-ratelimit-bucket", bucket),
                    ],
                );
            }
            r
        }
        Admission::Refused {
            overall,
            wait,
            limit,
        } => {
            let secs = seconds_3(wait);
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({ "message": "You are being rate limited.", "retry_after": secs, "global": overall }),
            );
            let scope = if overall { "global" } else { "user" };
            let mut pairs = vec![
                ("retry-after", whole_seconds(wait).to_string()),
                ("x-ratelimit-scope", scope.to_string()),
            ];
            if overall {
                pairs.push(("x-ratelimit-global", "true".to_string()));
            } else {
                pairs.extend([
                    ("x-ratelimit-limit", limit.to_string()),
                    ("x-ratelimit-remaining", "0".to_string()),
                    ("x-ratelimit-reset", format!("{:.3}", unix_now() + secs)),
                    ("x-ratelimit-reset-after", format!("{secs:.3}")),
                    ("x-ratelimit-bucket", bucket),
                ]);
            }
            put_headers(r.headers_mut(), &pairs);
            r
        }
    }
}

/// Anything else (approvald calls nothing else with the bench's settings).
async fn discord_other(State(s): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    s.other_call(uri.path());
    json_response(
        StatusCode::NOT_FOUND,
        json!({ "message": "404: Not Found", "code": 0 }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_ids_are_found_in_button_data() {
        let id = "0f8e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
        let body = format!(
            r#"{{"text":"v1: not this","reply_markup":[{{"callback_data":"v1:{id}:o"}}]}}"#
        );
        assert_eq!(approval_id(body.as_bytes()).as_deref(), Some(id));
        assert_eq!(approval_id(b"no buttons"), None);
    }

    #[test]
    fn a_sliding_window_refuses_the_send_over_the_limit_and_says_how_early() {
        let s = Shared {
            limits: Mutex::new(Limits {
                per_chat: Some(Limit {
                    count: 2,
                    window: Duration::from_secs(1),
                }),
                overall: None,
            }),
            record: Mutex::default(),
        };
        let t0 = Instant::now();
        let b = Bytes::new();
        assert!(matches!(s.admit(t0, "a", &b), Admission::Accepted { .. }));
        let t1 = t0 + Duration::from_millis(300);
        assert!(matches!(s.admit(t1, "a", &b), Admission::Accepted { .. }));
        // A third within the second is refused: 700 ms early (the first leaves at t0 + 1 s).
        match s.admit(t0 + Duration::from_millis(300), "a", &b) {
            Admission::Refused { wait, overall, .. } => {
                assert_eq!(wait, Duration::from_millis(700));
                assert!(!overall);
            }
            Admission::Accepted { .. } => panic!("over the limit"),
        }
        // Another chat is not held by this one; at t0 + 1 s the first send has left.
        assert!(matches!(s.admit(t1, "b", &b), Admission::Accepted { .. }));
        assert!(matches!(
            s.admit(t0 + Duration::from_secs(1), "a", &b),
            Admission::Accepted { .. }
        ));
        assert_eq!(s.record().refusals.len(), 1);
    }
}
