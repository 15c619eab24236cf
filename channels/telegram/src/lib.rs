//! approvald's Telegram channel.
//!
//! Prompts go out as HTML messages with an inline keyboard (Approve once, Always approve when
//! allowed, Deny) to chats, groups and forum topics; every outcome edits them, buttons removed.
//! People decide by pressing a button or typing `/approve`, `/deny` (also as a reply to a
//! prompt, without an id) and `/pending`. Updates arrive by long polling (the default: no
//! public URL needed) or by webhook on approvald's own listener (`/telegram/<name>/webhook`).
//!
//! Modules: `config` (settings), `client` (HTTP, 429 and retries) with `pacing`, `render`
//! (text limit, keyboard), `commands` (command parsing), `inbound` (presses, commands,
//! polling, webhook), `health`.

mod client;
pub mod commands;
pub mod config;
mod health;
mod inbound;
mod pacing;
pub mod render;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use approvald_channel::{
    Channel, ChannelError, ChannelHealth, InboundSink, Markup, MessageRef, Prompt, Target,
    Transport,
};
use async_trait::async_trait;
use teloxide_core::payloads::{
    EditMessageReplyMarkup, EditMessageReplyMarkupSetters, EditMessageText, EditMessageTextSetters,
    SendMessage, SendMessageSetters,
};
use teloxide_core::types::{
    ChatId, InlineKeyboardMarkup, LinkPreviewOptions, Message, MessageId, ParseMode, Recipient,
    ReplyParameters, ThreadId,
};

use crate::client::{ApiFailure, BotApi};
pub use crate::config::{ConfigError, ReceiveMode, TelegramSettings};
use crate::health::Health;
use crate::inbound::Receiver;

/// What the channel's parts share: settings, the API client, health, the bot's own name.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) settings: TelegramSettings,
    pub(crate) api: BotApi,
    pub(crate) health: Health,
    /// From getMe; `/approve@OtherBot` is for another bot in the same group.
    username: RwLock<Option<String>>,
    /// `start` runs once per process; a second poller would fight the first (409).
    started: AtomicBool,
    /// The running poller, so `stop` can end it when this instance stops being the leader.
    poller: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Shared {
    pub(crate) fn bot_username(&self) -> Option<String> {
        self.username.read().ok().and_then(|u| u.clone())
    }

    /// Ask Telegram who this bot is (and so whether the token works).
    pub(crate) async fn identify(&self) -> Result<(), ApiFailure> {
        let name = inbound::get_me(self).await?;
        if let Ok(mut slot) = self.username.write() {
            *slot = Some(name);
        }
        Ok(())
    }

    /// Send a message, following a group's move to a supergroup once.
    async fn send(
        &self,
        to: &str,
        thread_id: Option<&str>,
        text: &str,
        keyboard: Option<InlineKeyboardMarkup>,
        reply_to: Option<MessageId>,
    ) -> Result<Message, ChannelError> {
        let chat = recipient(to)?;
        let thread = match thread_id {
            None => None,
            Some(t) => Some(t.trim().parse::<i32>().map_err(|_| {
                ChannelError::permanent(format!(
                    "telegram target thread_id {t:?} is not a forum topic id (a number)"
                ))
            })?),
        };
        let mut req = SendMessage::new(chat, render::fit(text, render::MAX_TEXT))
            .parse_mode(ParseMode::Html)
            .link_preview_options(no_preview());
        if let Some(t) = thread {
            req = req.message_thread_id(ThreadId(MessageId(t)));
        }
        if let Some(kb) = keyboard {
            req = req.reply_markup(kb);
        }
        if let Some(id) = reply_to {
            req = req.reply_parameters(ReplyParameters::new(id).allow_sending_without_reply());
        }
        let result = match self.api.call(Some(to), &req).await {
            Err(ApiFailure::Api {
                migrate_to: Some(new_id),
                ..
            }) => {
                tracing::warn!(
                    channel = %self.name,
                    old = to,
                    new = new_id,
                    "telegram group became a supergroup: sending to its new id; update the target in the config"
                );
                req.chat_id = Recipient::Id(ChatId(new_id));
                self.api.call(Some(&new_id.to_string()), &req).await
            }
            other => other,
        };
        result.map_err(|f| self.failed(&format!("sendMessage to chat {to}"), &f))
    }

    /// Answer a command in its chat (and topic), as a reply to it.
    pub(crate) async fn reply(&self, to: &Message, html: String) {
        let thread = to
            .is_topic_message
            .then(|| to.thread_id.map(|t| t.0.0.to_string()))
            .flatten();
        let chat = to.chat.id.0.to_string();
        if let Err(e) = self
            .send(&chat, thread.as_deref(), &html, None, Some(to.id))
            .await
        {
            tracing::warn!(channel = %self.name, error = %e, "cannot reply to a command");
        }
    }

    /// The engine's error for a call that failed for good, recorded in health too. The text
    /// ends up in the audit log and operator events: it is redacted and says what to check.
    fn failed(&self, what: &str, f: &ApiFailure) -> ChannelError {
        let desc = f.description_lower();
        let hint = match f.code() {
            Some(401) | Some(404) => format!(
                " (the bot token was refused: check channels.{}.bot_token)",
                self.name
            ),
            Some(400) if desc.contains("chat not found") => {
                " (is the bot a member of that chat, and is the id right?)".to_string()
            }
            Some(403) => " (the bot was blocked, removed, or may not post there)".to_string(),
            _ => String::new(),
        };
        let message = self
            .api
            .redact(&format!("telegram {what} failed: {f}{hint}"));
        self.health.send_failed(message.clone());
        ChannelError {
            message,
            // A 429 asking for a longer wait than we keep a caller waiting may work later;
            // everything else was retried here already, or will not work by retrying.
            retryable: matches!(f, ApiFailure::RetryAfter { .. }),
        }
    }
}

/// A Telegram bot as an approvald channel. See the crate docs.
pub struct TelegramChannel {
    shared: Arc<Shared>,
}

impl TelegramChannel {
    /// Build from `[channels.<name>]`'s platform settings (see [`TelegramSettings`]).
    pub fn from_config(name: &str, settings: &toml::Table) -> Result<Self, ConfigError> {
        let settings = TelegramSettings::from_table(name, settings)?;
        Self::new(name, settings).map_err(|problem| ConfigError {
            key: format!("channels.{name}"),
            problem,
        })
    }

    pub fn new(name: &str, settings: TelegramSettings) -> Result<Self, String> {
        let api = BotApi::new(&settings)?;
        Ok(Self {
            shared: Arc::new(Shared {
                name: name.to_string(),
                settings,
                api,
                health: Health::default(),
                username: RwLock::new(None),
                started: AtomicBool::new(false),
                poller: std::sync::Mutex::new(None),
            }),
        })
    }

    pub fn receive_mode(&self) -> ReceiveMode {
        self.shared.settings.receive
    }
}

#[async_trait]
impl Channel for TelegramChannel {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn transport(&self) -> Transport {
        Transport::Telegram
    }

    fn markup(&self) -> Markup {
        Markup::TelegramHtml
    }

    /// Never blocks approvald's start on Telegram: polling (or webhook registration) runs in
    /// the background, retrying with backoff, and its state shows in `health`.
    async fn start(&self, sink: Arc<dyn InboundSink>) -> Result<(), ChannelError> {
        if self.shared.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let shared = self.shared.clone();
        match shared.settings.receive {
            ReceiveMode::Polling => {
                tracing::info!(channel = %shared.name, "telegram: receiving by long polling (one poller per bot token)");
                let receiver = Arc::new(Receiver::new(shared.clone(), sink));
                let task = tokio::spawn(inbound::poll(receiver));
                if let Ok(mut poller) = shared.poller.lock() {
                    *poller = Some(task.abort_handle());
                }
            }
            ReceiveMode::Webhook => {
                tracing::info!(channel = %shared.name, path = %webhook_path(&shared.name), "telegram: receiving by webhook");
                tokio::spawn(inbound::register_webhook(shared));
            }
        }
        Ok(())
    }

    fn exclusive_receiver(&self) -> bool {
        // Telegram answers 409 to a second concurrent getUpdates on one bot token.
        self.shared.settings.receive == ReceiveMode::Polling
    }

    async fn stop(&self) {
        let task = self.shared.poller.lock().ok().and_then(|mut p| p.take());
        if let Some(task) = task {
            task.abort();
            tracing::info!(channel = %self.shared.name, "telegram: long polling stopped");
        }
        self.shared.started.store(false, Ordering::SeqCst);
    }

    async fn deliver(&self, target: &Target, prompt: &Prompt) -> Result<MessageRef, ChannelError> {
        let sent = self
            .shared
            .send(
                &target.to,
                target.thread_id.as_deref(),
                &prompt.text,
                Some(render::keyboard(&prompt.actions)),
                None,
            )
            .await?;
        self.shared.health.send_ok();
        Ok(MessageRef {
            channel: self.shared.name.clone(),
            // The numeric id, also for @channel targets: replies and presses name it.
            to: sent.chat.id.0.to_string(),
            thread_id: target.thread_id.clone(),
            message_id: sent.id.0.to_string(),
        })
    }

    async fn update(&self, message: &MessageRef, prompt: &Prompt) -> Result<(), ChannelError> {
        let s = &self.shared;
        let chat = message.to.trim().parse::<i64>().map_err(|_| {
            ChannelError::permanent(format!(
                "telegram message reference has chat {:?}, not a numeric chat id",
                message.to
            ))
        })?;
        let id = message.message_id.trim().parse::<i32>().map_err(|_| {
            ChannelError::permanent(format!(
                "telegram message reference has message id {:?}, not a number",
                message.message_id
            ))
        })?;
        let keyboard = render::keyboard(&prompt.actions);
        let req = EditMessageText::new(
            ChatId(chat),
            MessageId(id),
            render::fit(&prompt.text, render::MAX_TEXT),
        )
        .parse_mode(ParseMode::Html)
        .link_preview_options(no_preview())
        .reply_markup(keyboard.clone());
        let what = format!("editMessageText of message {id} in chat {chat}");
        match s.api.call(Some(&message.to), &req).await {
            Ok(_) => {}
            Err(f) if f.description_lower().contains("message is not modified") => {
                // Same text (an edit already applied): still make the buttons right.
                let req =
                    EditMessageReplyMarkup::new(ChatId(chat), MessageId(id)).reply_markup(keyboard);
                match s.api.call(Some(&message.to), &req).await {
                    Ok(_) => {}
                    Err(f) if f.description_lower().contains("message is not modified") => {}
                    Err(f) => return Err(s.failed(&what, &f)),
                }
            }
            Err(f) => return Err(s.failed(&what, &f)),
        }
        s.health.send_ok();
        Ok(())
    }

    async fn notify(&self, target: &Target, text: &str) -> Result<MessageRef, ChannelError> {
        let sent = self
            .shared
            .send(&target.to, target.thread_id.as_deref(), text, None, None)
            .await?;
        self.shared.health.send_ok();
        Ok(MessageRef {
            channel: self.shared.name.clone(),
            to: sent.chat.id.0.to_string(),
            thread_id: target.thread_id.clone(),
            message_id: sent.id.0.to_string(),
        })
    }

    fn routes(&self, sink: Arc<dyn InboundSink>) -> Option<axum::Router> {
        if self.shared.settings.receive != ReceiveMode::Webhook {
            return None;
        }
        let receiver = Arc::new(Receiver::new(self.shared.clone(), sink));
        Some(
            axum::Router::new()
                .route(
                    &webhook_path(&self.shared.name),
                    axum::routing::post(inbound::webhook),
                )
                .with_state(receiver),
        )
    }

    fn health(&self) -> ChannelHealth {
        self.shared.health.snapshot()
    }
}

/// Where Telegram posts updates in webhook mode, on approvald's own listener.
pub fn webhook_path(name: &str) -> String {
    format!("/telegram/{name}/webhook")
}

/// A target's `to`: a numeric chat id, or `@channelusername` for public channels.
fn recipient(to: &str) -> Result<Recipient, ChannelError> {
    let to = to.trim();
    if let Ok(id) = to.parse::<i64>() {
        return Ok(Recipient::Id(ChatId(id)));
    }
    if to.len() > 1 && to.starts_with('@') {
        return Ok(Recipient::ChannelUsername(to.to_string()));
    }
    Err(ChannelError::permanent(format!(
        "telegram target {to:?} is not a chat id (a number such as -1001234567890) or an @channelusername"
    )))
}

/// Prompts carry commands and paths, not links worth a preview card.
fn no_preview() -> LinkPreviewOptions {
    LinkPreviewOptions {
        is_disabled: true,
        url: None,
        prefer_small_media: false,
        prefer_large_media: false,
        show_above_text: false,
    }
}
