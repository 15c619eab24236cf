//! Receiving: button presses and text commands, whether they arrive by long polling or by
//! webhook, turned into decisions for the engine and answered in Telegram's own way (a
//! callback answer for a press, a reply message for a command).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvald_channel::{
    ActionData, Decision, InboundAction, InboundReply, InboundSink, MessageRef, PlatformUser,
    RefusalKind,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use teloxide_core::payloads::{
    AnswerCallbackQuery, AnswerCallbackQuerySetters, DeleteWebhook, GetMe, GetUpdates,
    GetUpdatesSetters, SetWebhook, SetWebhookSetters,
};
use teloxide_core::types::{AllowedUpdate, CallbackQuery, Message, Update, UpdateKind, User};

use crate::Shared;
use crate::client::ApiFailure;
use crate::commands::{self, Command};
use crate::render::escape;

/// What a press on a button we cannot read (old format, garbage, unknown request) answers.
pub const INVALID_BUTTON: &str = "This button is no longer valid.";

/// Telegram shows at most 200 characters in a callback answer.
const MAX_CALLBACK_TEXT: usize = 200;

/// The header Telegram sends the webhook secret in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// The only updates approvald reads; everything else is not even sent to it.
const ALLOWED: [AllowedUpdate; 2] = [AllowedUpdate::Message, AllowedUpdate::CallbackQuery];

/// Update ids seen lately, so an update delivered twice (a webhook retried after a slow answer,
/// a replayed request) is acted on once.
#[derive(Default)]
struct Seen {
    order: VecDeque<u32>,
    ids: HashSet<u32>,
}

const SEEN_CAPACITY: usize = 4096;

/// Turns updates into decisions and answers. One per receiving path (poller or webhook).
pub struct Receiver {
    shared: Arc<Shared>,
    sink: Arc<dyn InboundSink>,
    seen: Mutex<Seen>,
}

impl Receiver {
    pub fn new(shared: Arc<Shared>, sink: Arc<dyn InboundSink>) -> Self {
        Self {
            shared,
            sink,
            seen: Mutex::default(),
        }
    }

    /// True the first time an update id is seen.
    fn first_sighting(&self, id: u32) -> bool {
        let mut s = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !s.ids.insert(id) {
            return false;
        }
        s.order.push_back(id);
        if s.order.len() > SEEN_CAPACITY
            && let Some(old) = s.order.pop_front()
        {
            s.ids.remove(&old);
        }
        true
    }

    pub async fn handle(&self, update: Update) {
        if !self.first_sighting(update.id.0) {
            tracing::debug!(update_id = update.id.0, "update seen before; ignored");
            return;
        }
        match update.kind {
            UpdateKind::CallbackQuery(q) => self.on_press(q).await,
            UpdateKind::Message(m) => self.on_message(m).await,
            // Only messages and presses are asked for: anything else is one we cannot read.
            UpdateKind::Error(_) => tracing::warn!(
                channel = %self.shared.name,
                update_id = update.id.0,
                "an update approvald cannot read was skipped"
            ),
            _ => {}
        }
    }

    // ----- button presses -------------------------------------------------------------

    async fn on_press(&self, q: CallbackQuery) {
        let action = q.data.as_deref().map(str::parse::<ActionData>);
        let Some(Ok(action)) = action else {
            tracing::info!(
                channel = %self.shared.name,
                user = q.from.id.0,
                "press on a button that is not (or no longer) valid"
            );
            self.answer(&q, INVALID_BUTTON, true).await;
            return;
        };
        let chat = q.message.as_ref().map(|m| m.chat().id.0.to_string());
        let reply = self
            .sink
            .decide(InboundAction {
                channel: self.shared.name.clone(),
                approval: action.approval_id,
                decision: action.decision,
                user: platform_user(&q.from, chat),
                reason: None,
                abort: action.abort,
            })
            .await;
        let (text, alert) = match reply {
            InboundReply::Accepted { message, .. } => (message, false),
            // A request this store does not know (a wiped database): the button is dead.
            InboundReply::Refused {
                kind: RefusalKind::UnknownId,
                ..
            } => (INVALID_BUTTON.to_string(), true),
            InboundReply::Refused { message, .. } => (message, true),
        };
        self.answer(&q, &text, alert).await;
    }

    /// Every press gets an answer, or the person's client spins until it gives up.
    async fn answer(&self, q: &CallbackQuery, text: &str, alert: bool) {
        let text: String = text.chars().take(MAX_CALLBACK_TEXT).collect();
        let req = AnswerCallbackQuery::new(q.id.clone())
            .text(text)
            .show_alert(alert);
        if let Err(e) = self.shared.api.call(None, &req).await {
            // Usually "query is too old": the person waited over ~15 s. Nothing to do.
            tracing::warn!(channel = %self.shared.name, error = %e, "cannot answer a button press");
        }
    }

    // ----- text commands --------------------------------------------------------------

    async fn on_message(&self, m: Message) {
        let Some(text) = m.text() else { return };
        let me = self.shared.bot_username();
        let Some(parsed) = commands::parse(text, me.as_deref()) else {
            return;
        };
        // Channel posts have no person behind them; bots cannot approve.
        let Some(from) = m.from.as_ref().filter(|u| !u.is_bot) else {
            return;
        };
        let user = platform_user(from, Some(m.chat.id.0.to_string()));
        let replied = match m.reply_to_message() {
            Some(prompt) => {
                self.sink
                    .approval_for_message(&MessageRef {
                        channel: self.shared.name.clone(),
                        to: m.chat.id.0.to_string(),
                        thread_id: None,
                        message_id: prompt.id.0.to_string(),
                    })
                    .await
            }
            None => None,
        };
        let which = "Which request? Reply to its prompt with the command, or give its id: /approve <id> [once|always], /deny <id> [reason]. /pending lists them.";
        let answer = match parsed {
            Err(usage) => escape(&usage),
            Ok(Command::Help) => escape(commands::USAGE),
            Ok(Command::Pending) => self.pending_text(&user).await,
            Ok(Command::Approve { id, decision }) => match id.or(replied) {
                Some(id) => self.decide(id, decision, user, None).await,
                None => escape(which),
            },
            Ok(Command::Deny { id, reason, words }) => {
                let (id, reason) = match (id, replied) {
                    // Replying to a prompt, a first word like "decade" is a word, not an id.
                    (Some(id), Some(prompt)) if !prompt.starts_with(&id) => {
                        (Some(prompt), Some(words.join(" ")))
                    }
                    (Some(id), _) => (Some(id), reason),
                    (None, prompt) => (prompt, reason),
                };
                match id {
                    Some(id) => self.decide(id, Decision::Deny, user, reason).await,
                    None => escape(which),
                }
            }
        };
        self.shared.reply(&m, answer).await;
    }

    async fn decide(
        &self,
        approval: String,
        decision: Decision,
        user: PlatformUser,
        reason: Option<String>,
    ) -> String {
        let reply = self
            .sink
            .decide(InboundAction {
                channel: self.shared.name.clone(),
                approval,
                decision,
                user,
                reason,
                abort: false,
            })
            .await;
        match reply {
            InboundReply::Accepted { message, .. } | InboundReply::Refused { message, .. } => {
                escape(&message)
            }
        }
    }

    async fn pending_text(&self, user: &PlatformUser) -> String {
        let views = match self.sink.pending(&self.shared.name, user).await {
            Ok(v) => v,
            Err(InboundReply::Refused { message, .. } | InboundReply::Accepted { message, .. }) => {
                return escape(&message);
            }
        };
        if views.is_empty() {
            return "Nothing is waiting for a decision.".into();
        }
        let mut out = format!("<b>Waiting for a decision ({})</b>\n", views.len());
        for v in &views {
            let what = v.summary.as_deref().or(v.command.as_deref()).unwrap_or("");
            let what: String = what.chars().take(80).collect();
            out.push_str(&format!(
                "<code>{}</code> {} · {} risk · {}\n",
                escape(&v.short_id),
                escape(&v.tool),
                escape(&v.risk),
                escape(&what)
            ));
        }
        out.push_str(&escape(
            "Decide with /approve <id> [once|always] or /deny <id> [reason].",
        ));
        out
    }
}

/// The person behind a press or a command, as the engine needs them.
fn platform_user(user: &User, chat_id: Option<String>) -> PlatformUser {
    PlatformUser {
        id: user.id.0.to_string(),
        username: user.username.clone(),
        display_name: Some(user.full_name()).filter(|n| !n.trim().is_empty()),
        chat_id,
        workspace_id: None,
        roles: Vec::new(),
    }
}

// ----- long polling -------------------------------------------------------------------

/// Poll `getUpdates` forever: one poller per bot token (Telegram answers a second one with
/// 409 Conflict). Each update is handled on its own task so a slow one delays nobody.
pub async fn poll(receiver: Arc<Receiver>) {
    let shared = receiver.shared.clone();
    let name = shared.name.clone();
    // A webhook left from an earlier setup makes getUpdates answer 409.
    match shared
        .api
        .call_once_raw(&DeleteWebhook::new(), Duration::ZERO)
        .await
    {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(channel = %name, error = %e, "deleteWebhook failed; polling anyway")
        }
    }
    let poll_timeout = shared.settings.poll_timeout;
    let mut offset: Option<i32> = None;
    let mut failures = 0u32;
    let mut reported = false;
    loop {
        if shared.bot_username().is_none()
            && let Err(e) = shared.identify().await
        {
            failures = backoff_after(&shared, &e, "getMe", failures, &mut reported).await;
            continue;
        }
        let mut req = GetUpdates::new()
            .timeout(poll_timeout.as_secs() as u32)
            .allowed_updates(ALLOWED);
        if let Some(o) = offset {
            req = req.offset(o);
        }
        match shared.api.call_once_raw(&req, poll_timeout).await {
            Ok(value) => {
                if reported {
                    tracing::info!(channel = %name, "telegram polling works again");
                }
                failures = 0;
                reported = false;
                shared.health.receive_ok();
                let items = match value {
                    serde_json::Value::Array(items) => items,
                    _ => Vec::new(),
                };
                for item in items {
                    let id = item.get("update_id").and_then(|v| v.as_u64());
                    if let Some(id) = id {
                        // Update ids are i32 in the Bot API; one that cannot advance the
                        // offset is skipped rather than wrapping it backwards.
                        if let Some(next) = i32::try_from(id).ok().and_then(|i| i.checked_add(1)) {
                            offset = Some(offset.unwrap_or(0).max(next));
                        }
                    }
                    // Through bytes: teloxide's update reader mis-reads a `serde_json::Value`
                    // (every kind becomes `UpdateKind::Error`).
                    let read = serde_json::to_vec(&item)
                        .and_then(|bytes| serde_json::from_slice::<Update>(&bytes));
                    match read {
                        Ok(update) => {
                            let r = receiver.clone();
                            tokio::spawn(async move { r.handle(update).await });
                        }
                        Err(e) => {
                            tracing::warn!(channel = %name, update_id = ?id, error = %e, "unreadable update skipped")
                        }
                    }
                }
            }
            Err(e) => {
                failures = backoff_after(&shared, &e, "getUpdates", failures, &mut reported).await;
            }
        }
    }
}

/// Record a receive failure, log it once per streak (a 409 would otherwise log every few
/// seconds for as long as the other poller runs), and wait before the next attempt.
async fn backoff_after(
    shared: &Shared,
    e: &ApiFailure,
    method: &str,
    failures: u32,
    reported: &mut bool,
) -> u32 {
    let text = match e.code() {
        Some(409) => format!(
            "409 Conflict on {method}: another poller (or a webhook) is using this bot token; only one approvald may poll a bot token. Backing off and retrying."
        ),
        Some(401) | Some(404) => format!(
            "{method}: the bot token was refused ({e}); check channels.{}.bot_token",
            shared.name
        ),
        _ => format!("{method} failed: {e}"),
    };
    shared.health.receive_failed(text.clone());
    if !*reported {
        *reported = true;
        match e.code() {
            Some(409) | Some(401) | Some(404) => {
                tracing::error!(channel = %shared.name, "{text}")
            }
            _ => tracing::warn!(channel = %shared.name, "telegram receive failed: {text}"),
        }
    }
    let wait = match e {
        ApiFailure::RetryAfter { wait } => *wait,
        _ => shared.api.backoff(failures),
    };
    tokio::time::sleep(wait).await;
    failures.saturating_add(1)
}

// ----- webhook --------------------------------------------------------------------------

/// Webhook mode's start: learn the bot's name, register the webhook URL with its secret
/// (when `webhook_url` is set), retrying with backoff until Telegram accepts.
pub async fn register_webhook(shared: Arc<Shared>) {
    let mut failures = 0u32;
    let mut reported = false;
    loop {
        let result = match shared.identify().await {
            Err(e) => Err((e, "getMe")),
            Ok(()) => match (
                &shared.settings.webhook_url,
                &shared.settings.webhook_secret,
            ) {
                (Some(url), Some(secret)) => {
                    let req = SetWebhook::new(url.clone())
                        .secret_token(secret.clone())
                        .allowed_updates(ALLOWED);
                    shared
                        .api
                        .call(None, &req)
                        .await
                        .map(|_| ())
                        .map_err(|e| (e, "setWebhook"))
                }
                _ => Ok(()),
            },
        };
        match result {
            Ok(()) => {
                shared.health.receive_ok();
                if let Some(url) = &shared.settings.webhook_url {
                    tracing::info!(channel = %shared.name, url = %url, "telegram webhook registered");
                }
                return;
            }
            Err((e, method)) => {
                failures = backoff_after(&shared, &e, method, failures, &mut reported).await;
            }
        }
    }
}

/// `POST /telegram/<name>/webhook`: the secret header is checked in constant time before the
/// body is even read as JSON; a missing or wrong one is a 401 and changes nothing.
pub async fn webhook(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = receiver
        .shared
        .settings
        .webhook_secret
        .as_deref()
        .unwrap_or_default()
        .as_bytes();
    let given = headers.get(SECRET_HEADER).map(|v| v.as_bytes());
    let authentic = match given {
        Some(given) => !expected.is_empty() && bool::from(given.ct_eq(expected)),
        None => false,
    };
    if !authentic {
        tracing::warn!(
            channel = %receiver.shared.name,
            header_present = given.is_some(),
            "telegram webhook call refused: missing or wrong secret token"
        );
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Telegram-Bot-Api-Secret-Token\n",
        )
            .into_response();
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a Telegram update: {e}\n"),
            )
                .into_response();
        }
    };
    receiver.shared.health.receive_ok();
    // Handled before answering: Telegram resends an update it got no 200 for, so an
    // update is acted on even if approvald stops halfway (the duplicate check drops repeats).
    receiver.handle(update).await;
    (StatusCode::OK, "ok\n").into_response()
}

/// getMe, kept for `/approve@BotName` matching.
pub(crate) async fn get_me(shared: &Shared) -> Result<String, ApiFailure> {
    let me = shared.api.call(None, &GetMe::new()).await?;
    Ok(me.user.username.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callback query as the Bot API sends it (fields beyond the ones approvald reads kept).
    const PRESS: &str = r#"{
        "update_id": 831247519,
        "callback_query": {
            "id": "4382bfdwdsb323b2d9",
            "from": {"id": 4242, "is_bot": false, "first_name": "Erin", "last_name": "Ek",
                     "username": "erin_ek", "language_code": "en", "is_premium": true},
            "message": {
                "message_id": 7001, "message_thread_id": 7, "is_topic_message": true,
                "from": {"id": 9000001, "is_bot": true, "first_name": "Approvals", "username": "approvald_bot"},
                "chat": {"id": -1001234567890, "title": "Ops", "type": "supergroup", "is_forum": true},
                "date": 1718000000, "edit_date": 1718000005,
                "text": "Approval required: shell",
                "entities": [{"offset": 0, "length": 17, "type": "bold"}],
                "reply_markup": {"inline_keyboard": [[{"text": "Approve once", "callback_data": "v1:0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e:o"}]]}
            },
            "chat_instance": "-8329147612378",
            "data": "v1:0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e:o"
        }
    }"#;

    #[test]
    fn a_real_press_update_reads_into_the_person_and_chat() {
        let update: Update = serde_json::from_str(PRESS).unwrap();
        let UpdateKind::CallbackQuery(q) = update.kind else {
            panic!("not a callback query");
        };
        let chat = q.message.as_ref().map(|m| m.chat().id.0.to_string());
        let user = platform_user(&q.from, chat);
        assert_eq!(user.id, "4242");
        assert_eq!(user.username.as_deref(), Some("erin_ek"));
        assert_eq!(user.display_name.as_deref(), Some("Erin Ek"));
        assert_eq!(user.chat_id.as_deref(), Some("-1001234567890"));
        let data: ActionData = q.data.as_deref().unwrap().parse().unwrap();
        assert_eq!(data.decision, Decision::ApproveOnce);
    }

    #[test]
    fn updates_read_from_bytes_not_from_a_value() {
        // The trap the poller avoids: the same JSON read from a Value loses its kind.
        let value: serde_json::Value = serde_json::from_str(PRESS).unwrap();
        let via_value: Update = serde_json::from_value(value.clone()).unwrap();
        assert!(matches!(via_value.kind, UpdateKind::Error(_)));
        let bytes = serde_json::to_vec(&value).unwrap();
        let via_bytes: Update = serde_json::from_slice(&bytes).unwrap();
        assert!(matches!(via_bytes.kind, UpdateKind::CallbackQuery(_)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in ["", "{}", "[]", "{\"update_id\": \"x\"}", "\u{0}"] {
            assert!(serde_json::from_str::<Update>(body).is_err(), "{body:?}");
        }
    }
}
