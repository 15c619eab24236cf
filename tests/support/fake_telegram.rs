//! A fake Telegram Bot API server for approvald's Telegram tests.
//!
//! It answers `POST /bot<TOKEN>/<method>` (method names case-insensitive, as the real API)
//! like the real one does for the methods approvald uses: getMe, getUpdates (offsets, long-poll
//! timeout, 409 when a second poller or a webhook is active), sendMessage, editMessageText,
//! editMessageReplyMarkup, answerCallbackQuery, setWebhook, deleteWebhook. It checks what the
//! real API checks and approvald could get wrong (HTML that does not parse, text over 4096
//! characters, callback data over 64 bytes, unknown chats and messages, unchanged edits), records
//! every call, and can be told to fail the next calls of a method (429 with retry_after, 5xx,
//! an HTML error page from a proxy, a connection reset, a request held past the client's
//! timeout, an answer that is not JSON, or the work done but answered late).
//!
//! It runs on its own thread and runtime, so it outlives a test's approvald instances (a restart
//! test drops the first instance's runtime and starts a second on the same fake).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The bot the fake plays.
pub const BOT_ID: u64 = 9_000_001;
pub const BOT_USERNAME: &str = "approvald_test_bot";

/// A person in a Telegram chat.
#[derive(Debug, Clone)]
pub struct TgUser {
    pub id: u64,
    pub first_name: &'static str,
    pub last_name: Option<&'static str>,
    pub username: Option<&'static str>,
}

impl TgUser {
    fn json(&self) -> Value {
        let mut v = json!({ "id": self.id, "is_bot": false, "first_name": self.first_name, "language_code": "en" });
        if let Some(l) = self.last_name {
            v["last_name"] = json!(l);
        }
        if let Some(u) = self.username {
            v["username"] = json!(u);
        }
        v
    }
}

/// One recorded API call.
#[derive(Debug, Clone)]
pub struct Call {
    /// Lowercased method name (`sendmessage`).
    pub method: String,
    pub body: Value,
    pub at: Instant,
    /// The HTTP status the fake answered (0: none, the connection was dropped or held).
    pub status: u16,
    /// The answer was held back ([`Fault::SlowOk`]): the work was done, but the client had
    /// most likely given up waiting by the time it came.
    pub late: bool,
    /// The answer was 200 with a body that is not a Bot API answer ([`Fault::Garbage`]).
    pub garbled: bool,
}

impl Call {
    /// The platform did what was asked and the client got a readable success answer in time.
    pub fn accepted(&self) -> bool {
        self.status == 200 && !self.late && !self.garbled
    }
}

/// A message the bot sent, as it stands now.
#[derive(Debug, Clone)]
pub struct Sent {
    pub chat_id: i64,
    pub message_id: i64,
    pub thread_id: Option<i64>,
    /// The HTML as approvald sent it (latest edit).
    pub html: String,
    /// The inline keyboard, if any (None once removed).
    pub keyboard: Option<Value>,
    pub reply_to: Option<i64>,
    /// How many times it was edited.
    pub edits: usize,
}

impl Sent {
    /// The `callback_data` of every button, in order.
    pub fn button_data(&self) -> Vec<String> {
        self.buttons().into_iter().map(|(_, d)| d).collect()
    }

    /// (label, callback_data) of every button, in order.
    pub fn buttons(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(rows) = self
            .keyboard
            .as_ref()
            .and_then(|k| k["inline_keyboard"].as_array())
        {
            for row in rows {
                for b in row.as_array().into_iter().flatten() {
                    out.push((
                        b["text"].as_str().unwrap_or_default().to_string(),
                        b["callback_data"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
        }
        out
    }

    /// The text as a person sees it (tags removed, entities decoded).
    pub fn text(&self) -> String {
        visible_text(&self.html)
    }
}

/// A scripted failure for the next call of a method.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with `parameters.retry_after`.
    RetryAfter(u64),
    /// A 5xx with a Bot API JSON body.
    Server(u16),
    /// A 502 HTML page, as a proxy in front of the Bot API sends.
    BadGatewayHtml,
    /// 409 Conflict (another getUpdates poller).
    Conflict,
    /// A 400 with this description (e.g. "Bad Request: message is not modified").
    BadRequest(&'static str),
    /// The TCP connection is dropped (RST) without an answer; nothing is done.
    Reset,
    /// The request is held this long without an answer, nothing done, then the connection is
    /// dropped (a Bot API that hangs; the client's timeout should be shorter).
    Hang(Duration),
    /// HTTP 200 with a body that is not JSON (a broken proxy); nothing is done.
    Garbage,
    /// The call is carried out at once (a message is really sent), but the answer comes only
    /// after this long: a client that gave up and sends again makes a second message.
    SlowOk(Duration),
}

/// An answer to a button press.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub callback_id: String,
    pub text: Option<String>,
    pub show_alert: bool,
}

/// Everything the fake knows: what was called, what was sent, what is queued and scripted.
#[derive(Default)]
struct FakeState {
    calls: Vec<Call>,
    next_message_id: i64,
    messages: BTreeMap<(i64, i64), Sent>,
    /// Updates not yet confirmed by a getUpdates offset.
    updates: VecDeque<Value>,
    next_update_id: u64,
    faults: HashMap<String, VecDeque<Fault>>,
    webhook: Option<(String, Option<String>)>,
    unknown_chats: HashSet<i64>,
    callbacks: HashSet<String>,
    answers: Vec<Answer>,
    /// Generation of the current long poll; a newer poll ends an older one with 409.
    poll_generation: u64,
    next_callback: u64,
}

/// What the server's handlers and the test's handle share.
struct Shared {
    token: String,
    state: Mutex<FakeState>,
    changed: Notify,
}

/// The running fake. Dropping it stops the server.
pub struct FakeTelegram {
    /// Base URL for `api_url`.
    pub url: String,
    pub token: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeTelegram {
    pub fn start(token: &str) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            token: token.to_string(),
            state: Mutex::new(FakeState {
                next_message_id: 100,
                next_update_id: 5000,
                ..FakeState::default()
            }),
            changed: Notify::new(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/{bot}/{method}", axum::routing::post(handle))
            .with_state(shared.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("fake runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                crate::support::serve_resettable(listener, app, async move {
                    let _ = rx.await;
                })
                .await;
            });
        });
        Self {
            url: format!("http://{addr}"),
            token: token.to_string(),
            shared,
            stop: Some(tx),
        }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ----- scripting -------------------------------------------------------------------

    /// The next call of `method` (any case) fails with `fault`; queue several for several calls.
    pub fn fail_next(&self, method: &str, fault: Fault) {
        self.state()
            .faults
            .entry(method.to_ascii_lowercase())
            .or_default()
            .push_back(fault);
    }

    /// sendMessage to this chat answers 400 "chat not found".
    pub fn forget_chat(&self, chat_id: i64) {
        self.state().unknown_chats.insert(chat_id);
    }

    /// Someone presses a button (its callback_data) on a message the bot sent, via getUpdates.
    /// Returns the callback query id.
    pub fn press(&self, user: &TgUser, chat_id: i64, message_id: i64, data: &str) -> String {
        let (id, update) = self.press_update(user, chat_id, message_id, data);
        self.push(update);
        id
    }

    /// The update a press produces, without queueing it (to POST it to a webhook).
    pub fn press_update(
        &self,
        user: &TgUser,
        chat_id: i64,
        message_id: i64,
        data: &str,
    ) -> (String, Value) {
        let mut s = self.state();
        s.next_callback += 1;
        let id = format!("cbq-{}", s.next_callback);
        s.callbacks.insert(id.clone());
        let message = match s.messages.get(&(chat_id, message_id)) {
            Some(m) => message_json(m),
            None => json!({
                "message_id": message_id, "date": now(), "chat": chat_json(chat_id),
                "from": bot_json(), "text": "(an old message)",
            }),
        };
        s.next_update_id += 1;
        let update = json!({
            "update_id": s.next_update_id,
            "callback_query": {
                "id": id, "from": user.json(), "message": message,
                "chat_instance": format!("ci{chat_id}"), "data": data,
            }
        });
        (id, update)
    }

    /// Someone types `text` in a chat (optionally as a reply to a message), via getUpdates.
    pub fn type_text(&self, user: &TgUser, chat_id: i64, text: &str, reply_to: Option<i64>) {
        let update = self.text_update(user, chat_id, text, reply_to);
        self.push(update);
    }

    /// The update a typed message produces, without queueing it.
    pub fn text_update(
        &self,
        user: &TgUser,
        chat_id: i64,
        text: &str,
        reply_to: Option<i64>,
    ) -> Value {
        let mut s = self.state();
        s.next_message_id += 1;
        let mut msg = json!({
            "message_id": s.next_message_id, "date": now(), "chat": chat_json(chat_id),
            "from": user.json(), "text": text,
        });
        if let Some(cmd) = text
            .split_whitespace()
            .next()
            .filter(|w| w.starts_with('/'))
        {
            msg["entities"] = json!([{ "type": "bot_command", "offset": 0, "length": cmd.encode_utf16().count() }]);
        }
        if let Some(r) = reply_to {
            msg["reply_to_message"] = match s.messages.get(&(chat_id, r)) {
                Some(m) => message_json(m),
                None => {
                    json!({ "message_id": r, "date": now(), "chat": chat_json(chat_id), "from": user.json(), "text": "earlier" })
                }
            };
        }
        s.next_update_id += 1;
        json!({ "update_id": s.next_update_id, "message": msg })
    }

    /// Queue a raw update for getUpdates.
    pub fn push(&self, update: Value) {
        self.state().updates.push_back(update);
        self.shared.changed.notify_waiters();
    }

    // ----- inspection ------------------------------------------------------------------

    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Calls of one method (any case).
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        let m = method.to_ascii_lowercase();
        self.calls().into_iter().filter(|c| c.method == m).collect()
    }

    /// Every message the bot sent, in order of sending.
    pub fn messages(&self) -> Vec<Sent> {
        let mut all: Vec<Sent> = self.state().messages.values().cloned().collect();
        all.sort_by_key(|m| m.message_id);
        all
    }

    /// Messages in one chat, in order.
    pub fn messages_in(&self, chat_id: i64) -> Vec<Sent> {
        self.messages()
            .into_iter()
            .filter(|m| m.chat_id == chat_id)
            .collect()
    }

    /// Prompts (messages with buttons, or edited ones) about one approval id.
    pub fn prompts_for(&self, approval_id: &str) -> Vec<Sent> {
        self.messages()
            .into_iter()
            .filter(|m| m.html.contains(approval_id) && m.reply_to.is_none())
            .collect()
    }

    pub fn answers(&self) -> Vec<Answer> {
        self.state().answers.clone()
    }

    pub fn answer_to(&self, callback_id: &str) -> Option<Answer> {
        self.answers()
            .into_iter()
            .find(|a| a.callback_id == callback_id)
    }

    pub fn webhook(&self) -> Option<(String, Option<String>)> {
        self.state().webhook.clone()
    }

    /// Updates not yet confirmed by a poller.
    pub fn unconfirmed(&self) -> usize {
        self.state().updates.len()
    }
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.shared.changed.notify_waiters();
    }
}

// ----- the HTTP side -------------------------------------------------------------------

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn bot_json() -> Value {
    json!({ "id": BOT_ID, "is_bot": true, "first_name": "Approvals", "username": BOT_USERNAME })
}

fn chat_json(id: i64) -> Value {
    if id > 0 {
        json!({ "id": id, "type": "private", "first_name": format!("User{id}") })
    } else {
        json!({ "id": id, "type": "supergroup", "title": format!("Group {id}"), "is_forum": true })
    }
}

fn message_json(m: &Sent) -> Value {
    let mut v = json!({
        "message_id": m.message_id, "date": now(), "chat": chat_json(m.chat_id),
        "from": bot_json(), "text": visible_text(&m.html),
    });
    if let Some(t) = m.thread_id {
        v["message_thread_id"] = json!(t);
        v["is_topic_message"] = json!(true);
    }
    if let Some(k) = &m.keyboard
        && k["inline_keyboard"]
            .as_array()
            .is_some_and(|rows| !rows.is_empty())
    {
        v["reply_markup"] = k.clone();
    }
    v
}

fn ok(result: Value) -> (StatusCode, Value) {
    (StatusCode::OK, json!({ "ok": true, "result": result }))
}

fn err(code: u16, description: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        json!({ "ok": false, "error_code": code, "description": description }),
    )
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((bot, method)): Path<(String, String)>,
    kill: Option<axum::Extension<crate::support::ConnKill>>,
    body: Bytes,
) -> Response {
    let method = method.to_ascii_lowercase();
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                let (status, v) = err(400, "Bad Request: invalid JSON body");
                return (status, axum::Json(v)).into_response();
            }
        }
    };
    let record_as = |status: u16, body: &Value, late: bool, garbled: bool| {
        let mut s = shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        s.calls.push(Call {
            method: method.clone(),
            body: body.clone(),
            at: Instant::now(),
            status,
            late,
            garbled,
        });
    };
    let record = |status: u16, body: &Value| record_as(status, body, false, false);
    if bot != format!("bot{}", shared.token) {
        let (status, v) = err(401, "Unauthorized");
        record(401, &body);
        return (status, axum::Json(v)).into_response();
    }
    let fault = {
        let mut s = shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        s.faults.get_mut(&method).and_then(|q| q.pop_front())
    };
    let mut late = None;
    if let Some(fault) = fault {
        let (status, v) = match fault {
            Fault::Reset => {
                record(0, &body);
                return drop_connection(kill).await;
            }
            Fault::Hang(hold) => {
                record(0, &body);
                tokio::time::sleep(hold).await;
                return drop_connection(kill).await;
            }
            Fault::Garbage => {
                record_as(200, &body, false, true);
                return (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    "{\"ok\":true,\"result\":{\"message_id\":",
                )
                    .into_response();
            }
            Fault::SlowOk(hold) => {
                late = Some(hold);
                (StatusCode::OK, Value::Null)
            }
            Fault::RetryAfter(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({ "ok": false, "error_code": 429, "description": format!("Too Many Requests: retry after {secs}"), "parameters": { "retry_after": secs } }),
            ),
            Fault::Server(code) => err(code, "Internal Server Error"),
            Fault::BadRequest(description) => err(400, description),
            Fault::Conflict => err(
                409,
                "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
            ),
            Fault::BadGatewayHtml => {
                record(502, &body);
                return (
                    StatusCode::BAD_GATEWAY,
                    [("content-type", "text/html")],
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                )
                    .into_response();
            }
        };
        if late.is_none() {
            record(status.as_u16(), &body);
            return (status, axum::Json(v)).into_response();
        }
    }
    let (status, v) = if method == "getupdates" {
        let answer = get_updates(&shared, &body).await;
        record_as(answer.0.as_u16(), &body, false, false);
        answer
    } else {
        let mut s = shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let answer = dispatch(&mut s, &method, &body);
        // Recorded under the same lock as its effect: a test that sees the message also
        // sees the call that made it.
        s.calls.push(Call {
            method: method.clone(),
            body: body.clone(),
            at: Instant::now(),
            status: answer.0.as_u16(),
            late: late.is_some(),
            garbled: false,
        });
        answer
    };
    if let Some(hold) = late {
        // Done and recorded already: whether the client still listens makes no difference.
        tokio::time::sleep(hold).await;
    }
    (status, axum::Json(v)).into_response()
}

/// No answer at all: reset the connection (when served by `serve_resettable`), else hang up
/// with an empty 502 as the closest thing.
async fn drop_connection(kill: Option<axum::Extension<crate::support::ConnKill>>) -> Response {
    match kill {
        Some(axum::Extension(kill)) => {
            kill.reset();
            std::future::pending::<Response>().await
        }
        None => StatusCode::BAD_GATEWAY.into_response(),
    }
}

fn dispatch(s: &mut FakeState, method: &str, body: &Value) -> (StatusCode, Value) {
    match method {
        "getme" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "Approvals", "username": BOT_USERNAME,
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "can_connect_to_business": false,
            "has_main_web_app": false,
        })),
        "sendmessage" => send_message(s, body),
        "editmessagetext" => edit(s, body, true),
        "editmessagereplymarkup" => edit(s, body, false),
        "answercallbackquery" => {
            let id = body["callback_query_id"].as_str().unwrap_or_default();
            if !s.callbacks.remove(id) {
                return err(
                    400,
                    "Bad Request: query is too old and response timeout expired or query ID is invalid",
                );
            }
            if let Some(text) = body["text"].as_str()
                && text.chars().count() > 200
            {
                return err(400, "Bad Request: MESSAGE_TOO_LONG");
            }
            s.answers.push(Answer {
                callback_id: id.to_string(),
                text: body["text"].as_str().map(str::to_string),
                show_alert: body["show_alert"].as_bool().unwrap_or(false),
            });
            ok(json!(true))
        }
        "setwebhook" => {
            let Some(url) = body["url"].as_str() else {
                return err(400, "Bad Request: bad webhook: URL must be provided");
            };
            s.webhook = Some((
                url.to_string(),
                body["secret_token"].as_str().map(str::to_string),
            ));
            ok(json!(true))
        }
        "deletewebhook" => {
            s.webhook = None;
            ok(json!(true))
        }
        _ => err(404, "Not Found"),
    }
}

fn chat_of(body: &Value) -> Result<i64, (StatusCode, Value)> {
    match &body["chat_id"] {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| err(400, "Bad Request: chat not found")),
        Value::String(s) => s
            .parse::<i64>()
            .map_err(|_| err(400, "Bad Request: chat not found")),
        _ => Err(err(400, "Bad Request: chat_id is empty")),
    }
}

/// The checks the real API makes on text and keyboard.
fn check_content(body: &Value) -> Result<(String, Option<Value>), (StatusCode, Value)> {
    let html = body["text"].as_str().unwrap_or_default().to_string();
    if body["parse_mode"].as_str() == Some("HTML")
        && let Err(problem) = check_html(&html)
    {
        return Err(err(
            400,
            &format!("Bad Request: can't parse entities: {problem}"),
        ));
    }
    let visible = visible_text(&html);
    if visible.trim().is_empty() {
        return Err(err(400, "Bad Request: message text is empty"));
    }
    if visible.encode_utf16().count() > 4096 {
        return Err(err(400, "Bad Request: message is too long"));
    }
    let keyboard = body.get("reply_markup").cloned();
    if let Some(k) = &keyboard {
        for row in k["inline_keyboard"].as_array().into_iter().flatten() {
            for b in row.as_array().into_iter().flatten() {
                if b["callback_data"]
                    .as_str()
                    .is_some_and(|d| d.is_empty() || d.len() > 64)
                {
                    return Err(err(400, "Bad Request: BUTTON_DATA_INVALID"));
                }
            }
        }
    }
    Ok((html, keyboard))
}

fn send_message(s: &mut FakeState, body: &Value) -> (StatusCode, Value) {
    let chat = match chat_of(body) {
        Ok(c) => c,
        Err(e) => return e,
    };
    if s.unknown_chats.contains(&chat) {
        return err(400, "Bad Request: chat not found");
    }
    let (html, keyboard) = match check_content(body) {
        Ok(c) => c,
        Err(e) => return e,
    };
    s.next_message_id += 1;
    let sent = Sent {
        chat_id: chat,
        message_id: s.next_message_id,
        thread_id: body["message_thread_id"].as_i64(),
        html,
        keyboard,
        reply_to: body["reply_parameters"]["message_id"].as_i64(),
        edits: 0,
    };
    let v = message_json(&sent);
    s.messages.insert((chat, sent.message_id), sent);
    ok(v)
}

fn edit(s: &mut FakeState, body: &Value, text: bool) -> (StatusCode, Value) {
    let chat = match chat_of(body) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let Some(id) = body["message_id"].as_i64() else {
        return err(400, "Bad Request: message identifier is not specified");
    };
    let (html, keyboard) = if text {
        match check_content(body) {
            Ok(c) => c,
            Err(e) => return e,
        }
    } else {
        (String::new(), body.get("reply_markup").cloned())
    };
    let Some(m) = s.messages.get_mut(&(chat, id)) else {
        return err(400, "Bad Request: message to edit not found");
    };
    let empty = |k: &Option<Value>| {
        k.as_ref()
            .and_then(|k| k["inline_keyboard"].as_array())
            .is_none_or(|rows| rows.is_empty())
    };
    let same_markup = (empty(&m.keyboard) && empty(&keyboard)) || m.keyboard == keyboard;
    if (!text || m.html == html) && same_markup {
        return err(
            400,
            "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
        );
    }
    if text {
        m.html = html;
    }
    m.keyboard = keyboard.filter(|k| !empty(&Some(k.clone())));
    m.edits += 1;
    ok(message_json(m))
}

async fn get_updates(shared: &Arc<Shared>, body: &Value) -> (StatusCode, Value) {
    let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
    let offset = body["offset"].as_i64();
    let generation = {
        let mut s = shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if s.webhook.is_some() {
            return err(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
            );
        }
        if let Some(offset) = offset {
            s.updates
                .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
        }
        s.poll_generation += 1;
        s.poll_generation
    };
    // A newer poll ends this one, as the real API does with two pollers.
    shared.changed.notify_waiters();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = shared.changed.notified();
        {
            let s = shared
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if s.poll_generation != generation {
                return err(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                );
            }
            if !s.updates.is_empty() {
                return ok(Value::Array(s.updates.iter().cloned().collect()));
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return ok(json!([]));
        }
    }
}

// ----- Telegram HTML -------------------------------------------------------------------

const TAGS: &[&str] = &[
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "code",
    "pre",
    "blockquote",
    "tg-emoji",
];

/// Parse Telegram HTML the way the Bot API does for approvald's purposes: only supported
/// tags, properly nested, and every `<`, `>`, `&` of the text escaped.
pub fn check_html(html: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        match c {
            '<' => {
                let end = rest
                    .find('>')
                    .ok_or_else(|| "unclosed start tag".to_string())?;
                let inner = &rest[1..end];
                if let Some(name) = inner.strip_prefix('/') {
                    let open = stack
                        .pop()
                        .ok_or_else(|| format!("unexpected end tag </{name}>"))?;
                    if open != name.trim() {
                        return Err(format!("unmatched end tag </{name}>, expected </{open}>"));
                    }
                } else {
                    let name = inner.split_whitespace().next().unwrap_or_default();
                    if !TAGS.contains(&name) {
                        return Err(format!("unsupported start tag \"{name}\""));
                    }
                    stack.push(name.to_string());
                }
                rest = &rest[end + 1..];
            }
            '&' => {
                let end = rest
                    .find(';')
                    .filter(|e| *e <= 10)
                    .ok_or_else(|| "unescaped & or broken entity".to_string())?;
                let name = &rest[1..end];
                let known = matches!(name, "lt" | "gt" | "amp" | "quot")
                    || (name.starts_with('#') && name.len() > 1);
                if !known {
                    return Err(format!("unsupported entity &{name};"));
                }
                rest = &rest[end + 1..];
            }
            '>' => return Err("unescaped >".into()),
            _ => rest = &rest[c.len_utf8()..],
        }
    }
    if let Some(open) = stack.pop() {
        return Err(format!(
            "can't find end tag corresponding to start tag \"{open}\""
        ));
    }
    Ok(())
}

/// The text a person sees: tags removed, entities decoded.
pub fn visible_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        if c == '<'
            && let Some(end) = rest.find('>')
        {
            rest = &rest[end + 1..];
            continue;
        }
        if c == '&'
            && let Some(end) = rest.find(';').filter(|e| *e <= 10)
        {
            let decoded = match &rest[1..end] {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                n if n.starts_with("#x") => u32::from_str_radix(&n[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            if let Some(d) = decoded {
                out.push(d);
                rest = &rest[end + 1..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}
