//! A fake Discord REST API (v10) for approvald's Discord tests.
//!
//! It answers the calls approvald makes the way Discord does: create message, edit message,
//! open a DM channel, bulk-overwrite slash commands (global and guild), interaction callbacks.
//! It checks the bot token (401 with Discord's error body otherwise), keeps every message as
//! it stands after edits, records every call with its time, and sends rate-limit headers
//! (`X-RateLimit-Limit/Remaining/Reset-After/Bucket`). A test can give routes a limit, and a
//! client that ignores the headers then gets 429s as from the real API; it can also script
//! faults for the next calls of an operation (429 with `retry_after`, global or not; 5xx; a
//! connection reset; a request held past the client's timeout; a 200 whose body is not JSON;
//! the work done but answered late) or for all of them, and mark channels the bot may not post
//! in (403 Missing Access, 50001). Like Discord, it honours `enforce_nonce` on new messages: a
//! second message with the same nonce is not created, the first one is answered instead.
#![allow(dead_code)]
// Handlers return ready answers as errors; their size does not matter in a test fake.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post, put};
use serde_json::{Value, json};

/// The bot token the fake accepts (as `Authorization: Bot <token>`).
pub const BOT_TOKEN: &str = "MTAxNDI0.fake-discord-bot-token.s3cr3t-XyZ";
pub const APP_ID: &str = "4242000000000001";
pub const BOT_USER_ID: &str = "4242000000000002";

/// The operations the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    CreateMessage,
    EditMessage,
    OpenDm,
    RegisterCommands,
    InteractionCallback,
}

/// A scripted failure.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with `retry_after` (seconds) in the body and the headers.
    RateLimited { retry_after: f64, global: bool },
    /// A server error with Discord's JSON body.
    Status(u16),
    /// The TCP connection is dropped (RST) without an answer; nothing is done.
    Reset,
    /// Held this long without an answer, nothing done, then the connection is dropped (the
    /// client's timeout should be shorter).
    Hang(Duration),
    /// HTTP 200 with a body that is not JSON; nothing is done.
    Garbage,
    /// Carried out at once (a message is really created), answered only after this long: a
    /// client that gave up and sends again makes a second message, unless it sent a nonce
    /// with `enforce_nonce`.
    SlowOk(Duration),
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    pub op: Op,
    pub method: &'static str,
    /// The path after `/api/v10`.
    pub path: String,
    pub body: Value,
    pub at: Instant,
    /// What the fake answered (0: nothing, the connection was dropped or held).
    pub status: u16,
    /// The answer was held back ([`Fault::SlowOk`]): the work was done, but the client had
    /// most likely given up waiting by the time it came.
    pub late: bool,
    /// The answer was 200 with a body that is not JSON ([`Fault::Garbage`]).
    pub garbled: bool,
}

impl Call {
    /// Discord did what was asked and the client got a readable success answer in time.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status) && !self.late && !self.garbled
    }
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    next_faults: HashMap<Op, VecDeque<Fault>>,
    always: HashMap<Op, Fault>,
    forbidden_channels: HashSet<String>,
    /// Message id -> the message as it stands.
    messages: HashMap<String, Value>,
    /// Message id -> how many times it was edited.
    edits: HashMap<String, usize>,
    /// User id -> DM channel id.
    dms: HashMap<String, String>,
    next_id: u64,
    /// Per-route limit (requests per window) the fake enforces, like Discord's buckets.
    limit: Option<(u32, Duration)>,
    buckets: HashMap<String, (u32, Instant)>,
    /// 429s the fake had to send because a client went over a limit it had announced.
    violations: usize,
    /// Nonces of messages created with `enforce_nonce`, and the message each made.
    nonces: HashMap<String, String>,
}

/// A running fake. Cheap to clone; the server lives as long as the test's runtime.
#[derive(Clone)]
pub struct FakeDiscord {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeDiscord {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            next_id: 1_300_000_000_000_000_000,
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/api/v10/channels/{channel}/messages", post(create_message))
            .route(
                "/api/v10/channels/{channel}/messages/{message}",
                patch(edit_message),
            )
            .route("/api/v10/users/@me/channels", post(open_dm))
            .route("/api/v10/applications/{app}/commands", put(global_commands))
            .route(
                "/api/v10/applications/{app}/guilds/{guild}/commands",
                put(guild_commands),
            )
            .route(
                "/api/v10/interactions/{id}/{token}/callback",
                post(interaction_callback),
            )
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({ "message": "404: Not Found", "code": 0 })),
                )
            })
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake discord");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(crate::support::serve_resettable(
            listener,
            app,
            std::future::pending(),
        ));
        Self { url, inner }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake discord state")
    }

    /// Fail the next calls of `op`, in order.
    pub fn fail_next(&self, op: Op, faults: &[Fault]) {
        self.lock()
            .next_faults
            .entry(op)
            .or_default()
            .extend(faults.iter().cloned());
    }

    /// Fail every call of `op` from now on (`None` to stop).
    pub fn fail_always(&self, op: Op, fault: Option<Fault>) {
        let mut s = self.lock();
        match fault {
            Some(f) => s.always.insert(op, f),
            None => s.always.remove(&op),
        };
    }

    /// The bot may not post in this channel (403, code 50001).
    pub fn forbid_channel(&self, channel: &str) {
        self.lock().forbidden_channels.insert(channel.to_string());
    }

    /// Enforce `limit` requests per `window` on every route bucket (and announce it in headers).
    pub fn limit_routes(&self, limit: u32, window: Duration) {
        self.lock().limit = Some((limit, window));
    }

    pub fn calls(&self, op: Op) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.op == op)
            .cloned()
            .collect()
    }

    pub fn all_calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Messages created in a channel (DM channels included), oldest first, as they stand now.
    pub fn messages_in(&self, channel: &str) -> Vec<Value> {
        let s = self.lock();
        let mut out: Vec<Value> = s
            .messages
            .values()
            .filter(|m| m["channel_id"] == channel)
            .cloned()
            .collect();
        out.sort_by_key(|m| m["id"].as_str().unwrap_or("").parse::<u64>().unwrap_or(0));
        out
    }

    pub fn message(&self, id: &str) -> Option<Value> {
        self.lock().messages.get(id).cloned()
    }

    pub fn edits_of(&self, id: &str) -> usize {
        self.lock().edits.get(id).copied().unwrap_or(0)
    }

    /// The DM channel the fake opened for a user, if any.
    pub fn dm_channel_of(&self, user: &str) -> Option<String> {
        self.lock().dms.get(user).cloned()
    }

    pub fn violations(&self) -> usize {
        self.lock().violations
    }
}

type Shared = State<Arc<Mutex<Inner>>>;

fn discord_error(status: StatusCode, code: u64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "message": message, "code": code })),
    )
        .into_response()
}

type Kill = Option<axum::Extension<crate::support::ConnKill>>;

/// A call the fake goes on to carry out.
struct Admitted {
    /// Rate-limit headers for the answer.
    headers: HeaderMap,
    /// Hold the answer this long ([`Fault::SlowOk`]).
    late: Option<Duration>,
}

impl Admitted {
    /// Send `answer`, after the hold if there is one.
    async fn answer(self, answer: Response) -> Response {
        if let Some(hold) = self.late {
            tokio::time::sleep(hold).await;
        }
        answer
    }
}

/// What to do instead of carrying out a call.
enum Refusal {
    Answer(Response),
    Reset,
    Hang(Duration),
    Garbage,
}

impl Refusal {
    async fn answer(self, kill: Kill) -> Response {
        let drop_connection = |kill: Kill| async move {
            match kill {
                Some(axum::Extension(kill)) => {
                    kill.reset();
                    std::future::pending::<Response>().await
                }
                None => StatusCode::BAD_GATEWAY.into_response(),
            }
        };
        match self {
            Refusal::Answer(r) => r,
            Refusal::Reset => drop_connection(kill).await,
            Refusal::Hang(hold) => {
                tokio::time::sleep(hold).await;
                drop_connection(kill).await
            }
            Refusal::Garbage => (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"id\": \"13000",
            )
                .into_response(),
        }
    }
}

/// Auth, faults and rate limits, common to every route. `Err` is what to do instead.
fn admit(
    inner: &Arc<Mutex<Inner>>,
    headers: &HeaderMap,
    op: Op,
    method: &'static str,
    path: &str,
    bucket: &str,
    body: &Value,
) -> Result<Admitted, Refusal> {
    let mut s = inner.lock().expect("fake discord state");
    let record_as = |s: &mut Inner, status: u16, late: bool, garbled: bool| {
        s.calls.push(Call {
            op,
            method,
            path: path.to_string(),
            body: body.clone(),
            at: Instant::now(),
            status,
            late,
            garbled,
        })
    };
    let record = |s: &mut Inner, status: u16| record_as(s, status, false, false);
    let auth_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bot {BOT_TOKEN}"));
    if !auth_ok {
        record(&mut s, 401);
        return Err(Refusal::Answer(discord_error(
            StatusCode::UNAUTHORIZED,
            0,
            "401: Unauthorized",
        )));
    }
    let fault = match s.next_faults.get_mut(&op).and_then(|q| q.pop_front()) {
        Some(f) => Some(f),
        None => s.always.get(&op).cloned(),
    };
    let late = match &fault {
        Some(Fault::SlowOk(hold)) => Some(*hold),
        _ => None,
    };
    match fault {
        Some(Fault::RateLimited {
            retry_after,
            global,
        }) => {
            record(&mut s, 429);
            return Err(Refusal::Answer(rate_limited(retry_after, global, bucket)));
        }
        Some(Fault::Status(code)) => {
            record(&mut s, code);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(Refusal::Answer(discord_error(
                status,
                0,
                &format!("{code}: {}", status.canonical_reason().unwrap_or("Error")),
            )));
        }
        Some(Fault::Reset) => {
            record(&mut s, 0);
            return Err(Refusal::Reset);
        }
        Some(Fault::Hang(hold)) => {
            record(&mut s, 0);
            return Err(Refusal::Hang(hold));
        }
        Some(Fault::Garbage) => {
            record_as(&mut s, 200, false, true);
            return Err(Refusal::Garbage);
        }
        Some(Fault::SlowOk(_)) | None => {}
    }
    let mut limit_headers = HeaderMap::new();
    if let Some((limit, window)) = s.limit {
        let now = Instant::now();
        let entry = s.buckets.entry(bucket.to_string()).or_insert((0, now));
        if now.duration_since(entry.1) >= window {
            *entry = (0, now);
        }
        let reset_after = window.saturating_sub(now.duration_since(entry.1));
        if entry.0 >= limit {
            s.violations += 1;
            record(&mut s, 429);
            return Err(Refusal::Answer(rate_limited(
                reset_after.as_secs_f64(),
                false,
                bucket,
            )));
        }
        entry.0 += 1;
        let remaining = limit - entry.0;
        for (name, value) in [
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            // Rounded up, as Discord does: waiting this long always reaches the new window.
            (
                "x-ratelimit-reset-after",
                format!(
                    "{:.3}",
                    (reset_after.as_secs_f64() * 1000.0).ceil() / 1000.0
                ),
            ),
            ("x-ratelimit-bucket", format!("bucket-{bucket}")),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                limit_headers.insert(name, v);
            }
        }
    }
    record_as(&mut s, 200, late.is_some(), false);
    Ok(Admitted {
        headers: limit_headers,
        late,
    })
}

fn rate_limited(retry_after: f64, global: bool, bucket: &str) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": global,
        })),
    )
        .into_response();
    let h = r.headers_mut();
    let pairs = [
        ("retry-after", format!("{}", retry_after.ceil() as u64)),
        ("x-ratelimit-limit", "5".to_string()),
        ("x-ratelimit-remaining", "0".to_string()),
        ("x-ratelimit-reset-after", format!("{retry_after:.3}")),
        ("x-ratelimit-bucket", format!("bucket-{bucket}")),
        (
            "x-ratelimit-scope",
            if global { "global" } else { "user" }.to_string(),
        ),
    ];
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    if global && let Ok(v) = HeaderValue::from_str("true") {
        h.insert("x-ratelimit-global", v);
    }
    r
}

fn parse_body(body: &Bytes) -> Result<Value, Response> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|_| {
        discord_error(
            StatusCode::BAD_REQUEST,
            50109,
            "The request body contains invalid JSON.",
        )
    })
}

/// What Discord checks on message bodies and approvald could get wrong.
fn check_message_body(body: &Value) -> Result<(), Response> {
    let invalid = |why: &str| {
        Err(discord_error(
            StatusCode::BAD_REQUEST,
            50035,
            &format!("Invalid Form Body: {why}"),
        ))
    };
    if let Some(content) = body["content"].as_str()
        && content.chars().count() > 2000
    {
        return invalid("content: Must be 2000 or fewer in length.");
    }
    for embed in body["embeds"].as_array().into_iter().flatten() {
        let len = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
        if len(&embed["title"]) > 256 || len(&embed["description"]) > 4096 {
            return invalid("embeds: title or description too long.");
        }
        let mut total =
            len(&embed["title"]) + len(&embed["description"]) + len(&embed["footer"]["text"]);
        for f in embed["fields"].as_array().into_iter().flatten() {
            if len(&f["value"]) == 0 || len(&f["value"]) > 1024 || len(&f["name"]) > 256 {
                return invalid("embeds.fields: bad length.");
            }
            total += len(&f["name"]) + len(&f["value"]);
        }
        if total > 6000 {
            return invalid("embeds: Embed size exceeds maximum size of 6000");
        }
    }
    for row in body["components"].as_array().into_iter().flatten() {
        for c in row["components"].as_array().into_iter().flatten() {
            if c["custom_id"].as_str().is_some_and(|id| id.len() > 100) {
                return invalid("components.custom_id: Must be 100 or fewer in length.");
            }
        }
    }
    Ok(())
}

async fn create_message(
    State(inner): Shared,
    Path(channel): Path<String>,
    kill: Kill,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let path = format!("/channels/{channel}/messages");
    let admitted = match admit(
        &inner,
        &headers,
        Op::CreateMessage,
        "POST",
        &path,
        &format!("create:{channel}"),
        &body,
    ) {
        Ok(a) => a,
        Err(r) => return r.answer(kill).await,
    };
    let answer = create(&inner, &channel, &body, admitted.headers.clone());
    admitted.answer(answer).await
}

fn create(inner: &Arc<Mutex<Inner>>, channel: &str, body: &Value, limits: HeaderMap) -> Response {
    let mut s = inner.lock().expect("fake discord state");
    if s.forbidden_channels.contains(channel) {
        if let Some(c) = s.calls.last_mut() {
            c.status = 403;
        }
        return discord_error(StatusCode::FORBIDDEN, 50001, "Missing Access");
    }
    if let Err(r) = check_message_body(body) {
        if let Some(c) = s.calls.last_mut() {
            c.status = 400;
        }
        return r;
    }
    // Discord: "if another message was created by the same author with the same nonce, that
    // message will be returned and no new message will be created".
    let nonce = (body["enforce_nonce"] == true && !body["nonce"].is_null())
        .then(|| body["nonce"].to_string());
    if let Some(n) = &nonce
        && let Some(existing) = s.nonces.get(n).and_then(|id| s.messages.get(id))
    {
        return (limits, axum::Json(existing.clone())).into_response();
    }
    s.next_id += 1;
    let id = s.next_id.to_string();
    let message = json!({
        "id": id,
        "channel_id": channel,
        "type": 0,
        "author": { "id": BOT_USER_ID, "username": "approvald", "global_name": null, "bot": true, "discriminator": "0", "avatar": null },
        "content": body["content"].as_str().unwrap_or(""),
        "embeds": body["embeds"].clone(),
        "components": body["components"].clone(),
        "allowed_mentions": body["allowed_mentions"].clone(),
        "nonce": body["nonce"].clone(),
        "timestamp": "2025-01-01T00:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "pinned": false,
        "flags": 0,
    });
    if let Some(n) = nonce {
        s.nonces.insert(n, id.clone());
    }
    s.messages.insert(id, message.clone());
    (limits, axum::Json(message)).into_response()
}

async fn edit_message(
    State(inner): Shared,
    Path((channel, message_id)): Path<(String, String)>,
    kill: Kill,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let path = format!("/channels/{channel}/messages/{message_id}");
    let admitted = match admit(
        &inner,
        &headers,
        Op::EditMessage,
        "PATCH",
        &path,
        &format!("edit:{channel}"),
        &body,
    ) {
        Ok(a) => a,
        Err(r) => return r.answer(kill).await,
    };
    let answer = edit(
        &inner,
        &channel,
        &message_id,
        &body,
        admitted.headers.clone(),
    );
    admitted.answer(answer).await
}

fn edit(
    inner: &Arc<Mutex<Inner>>,
    channel: &str,
    message_id: &str,
    body: &Value,
    limits: HeaderMap,
) -> Response {
    let mut s = inner.lock().expect("fake discord state");
    let known = s
        .messages
        .get(message_id)
        .is_some_and(|m| m["channel_id"] == channel);
    if !known {
        if let Some(c) = s.calls.last_mut() {
            c.status = 404;
        }
        return discord_error(StatusCode::NOT_FOUND, 10008, "Unknown Message");
    }
    if let Err(r) = check_message_body(body) {
        return r;
    }
    *s.edits.entry(message_id.to_string()).or_default() += 1;
    let Some(message) = s.messages.get_mut(message_id) else {
        return discord_error(StatusCode::NOT_FOUND, 10008, "Unknown Message");
    };
    for key in ["content", "embeds", "components", "allowed_mentions"] {
        if !body[key].is_null() {
            message[key] = body[key].clone();
        }
    }
    message["edited_timestamp"] = json!("2025-01-01T00:00:01.000000+00:00");
    (limits, axum::Json(message.clone())).into_response()
}

async fn open_dm(State(inner): Shared, kill: Kill, headers: HeaderMap, body: Bytes) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let admitted = match admit(
        &inner,
        &headers,
        Op::OpenDm,
        "POST",
        "/users/@me/channels",
        "dm",
        &body,
    ) {
        Ok(a) => a,
        Err(r) => return r.answer(kill).await,
    };
    let Some(user) = body["recipient_id"].as_str().map(str::to_string) else {
        return discord_error(
            StatusCode::BAD_REQUEST,
            50035,
            "Invalid Form Body: recipient_id",
        );
    };
    let channel = {
        let mut s = inner.lock().expect("fake discord state");
        match s.dms.get(&user) {
            Some(c) => c.clone(),
            None => {
                s.next_id += 1;
                let c = s.next_id.to_string();
                s.dms.insert(user.clone(), c.clone());
                c
            }
        }
    };
    let answer = (
        admitted.headers.clone(),
        axum::Json(json!({
            "id": channel, "type": 1, "last_message_id": null, "flags": 0,
            "recipients": [{ "id": user, "username": format!("user{user}"), "discriminator": "0", "global_name": null, "avatar": null }],
        })),
    )
        .into_response();
    admitted.answer(answer).await
}

fn commands_answer(body: &Value) -> Value {
    let list = body.as_array().cloned().unwrap_or_default();
    Value::Array(
        list.into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                c["id"] = json!(format!("77000000000000000{i}"));
                c["application_id"] = json!(APP_ID);
                c["version"] = json!("1");
                c["type"] = json!(1);
                c
            })
            .collect(),
    )
}

async fn global_commands(
    State(inner): Shared,
    Path(app): Path<String>,
    kill: Kill,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let path = format!("/applications/{app}/commands");
    match admit(
        &inner,
        &headers,
        Op::RegisterCommands,
        "PUT",
        &path,
        "commands",
        &body,
    ) {
        Ok(a) => {
            let answer = (a.headers.clone(), axum::Json(commands_answer(&body))).into_response();
            a.answer(answer).await
        }
        Err(r) => r.answer(kill).await,
    }
}

async fn guild_commands(
    State(inner): Shared,
    Path((app, guild)): Path<(String, String)>,
    kill: Kill,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let path = format!("/applications/{app}/guilds/{guild}/commands");
    match admit(
        &inner,
        &headers,
        Op::RegisterCommands,
        "PUT",
        &path,
        &format!("commands:{guild}"),
        &body,
    ) {
        Ok(a) => {
            let answer = (a.headers.clone(), axum::Json(commands_answer(&body))).into_response();
            a.answer(answer).await
        }
        Err(r) => r.answer(kill).await,
    }
}

async fn interaction_callback(
    State(inner): Shared,
    Path((id, _token)): Path<(String, String)>,
    kill: Kill,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let path = format!("/interactions/{id}/<token>/callback");
    match admit(
        &inner,
        &headers,
        Op::InteractionCallback,
        "POST",
        &path,
        "callback",
        &body,
    ) {
        Ok(a) => {
            let answer = (StatusCode::NO_CONTENT, a.headers.clone()).into_response();
            a.answer(answer).await
        }
        Err(r) => r.answer(kill).await,
    }
}
