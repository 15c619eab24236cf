//! Slack for approvald: prompts as Block Kit messages with Approve once / Always approve /
//! Deny buttons, decisions from signed button presses and slash commands (over HTTP or
//! Socket Mode), and `chat.update` of every message of an approval when it ends, wherever it
//! ended. An incoming webhook (`APPROVAL_SLACK_WEBHOOK_URL`) can take operator notices.
//!
//! The engine decides who may approve; this crate passes the Slack identity faithfully and
//! shows the person the engine's answer.

mod client;
mod config;
mod inbound;
mod pacing;
mod render;
mod signature;
mod socket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use approvald_channel::{
    Channel, ChannelError, ChannelHealth, InboundSink, Markup, MessageRef, Prompt, Target,
    Transport,
};
use async_trait::async_trait;

pub use client::redact_token_shapes;
pub use config::{
    DEFAULT_API_URL, ReceiveMode, SettingsError, SlackSettings, WEBHOOK_ENV, WEBHOOK_TARGET,
};
pub use render::action_id;
pub use signature::{SignatureError, Verifier, sign};

use client::SlackApi;
use inbound::Inbound;
use signature::Verifier as RequestVerifier;
use socket::SocketMode;

/// A configured Slack workspace (one `[channels.NAME]` table).
pub struct SlackChannel {
    settings: SlackSettings,
    api: Arc<SlackApi>,
    /// User id -> the DM channel `conversations.open` gave for them.
    dms: Mutex<HashMap<String, String>>,
    socket: tokio::sync::Mutex<Option<SocketMode>>,
}

impl std::fmt::Debug for SlackChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackChannel")
            .field("settings", &self.settings)
            .finish()
    }
}

impl SlackChannel {
    /// Build from `[channels.NAME]` settings; `APPROVAL_SLACK_WEBHOOK_URL` is read from the
    /// process environment when `webhook_url` is not set.
    pub fn from_settings(name: &str, table: &toml::Table) -> Result<Self, SettingsError> {
        let settings = SlackSettings::from_table(name, table, &|k| std::env::var(k).ok())?;
        Self::new(settings)
    }

    pub fn new(settings: SlackSettings) -> Result<Self, SettingsError> {
        let api = SlackApi::new(&settings).map_err(|e| SettingsError {
            channel: settings.name.clone(),
            key: "api_url".into(),
            problem: e.message,
        })?;
        Ok(Self {
            settings,
            api: Arc::new(api),
            dms: Mutex::new(HashMap::new()),
            socket: tokio::sync::Mutex::new(None),
        })
    }

    pub fn settings(&self) -> &SlackSettings {
        &self.settings
    }

    /// The conversation to post into: channel ids as they are, user ids via their DM.
    async fn conversation(&self, to: &str) -> Result<String, ChannelError> {
        if !is_user_id(to) {
            return Ok(to.to_string());
        }
        if let Some(dm) = self.dms.lock().ok().and_then(|m| m.get(to).cloned()) {
            return Ok(dm);
        }
        let dm = self.api.open_dm(to).await?;
        if let Ok(mut m) = self.dms.lock() {
            m.insert(to.to_string(), dm.clone());
        }
        Ok(dm)
    }
}

/// Slack user ids start with U (or W on Enterprise Grid); channels with C, G or D.
fn is_user_id(to: &str) -> bool {
    (to.starts_with('U') || to.starts_with('W'))
        && to.len() > 1
        && to
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[async_trait]
impl Channel for SlackChannel {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn transport(&self) -> Transport {
        Transport::Slack
    }

    fn markup(&self) -> Markup {
        Markup::SlackMrkdwn
    }

    fn exclusive_receiver(&self) -> bool {
        // One Socket Mode connection per app: Slack would spread events over several.
        self.settings.receive == ReceiveMode::SocketMode && self.settings.app_token.is_some()
    }

    async fn stop(&self) {
        let socket = self.socket.lock().await.take();
        if let Some(socket) = socket {
            socket.shutdown().await;
            tracing::info!(channel = %self.settings.name, "Slack Socket Mode stopped");
        }
    }

    async fn start(&self, sink: Arc<dyn InboundSink>) -> Result<(), ChannelError> {
        if !self.api.has_bot_token() {
            return Ok(());
        }
        // Checked in the background: a Slack outage must not keep approvald from starting;
        // health shows the answer.
        let api = self.api.clone();
        let name = self.settings.name.clone();
        tokio::spawn(async move {
            match api.auth_test().await {
                Ok(me) => {
                    tracing::info!(channel = %name, team = %me.team, bot_user = %me.user_id, "Slack bot token works")
                }
                Err(e) => {
                    tracing::error!(channel = %name, error = %e, "Slack bot token check (auth.test) failed")
                }
            }
        });
        if self.settings.receive == ReceiveMode::SocketMode
            && let Some(app_token) = &self.settings.app_token
        {
            let inbound = Arc::new(Inbound::new(&self.settings.name, sink, self.api.clone()));
            match SocketMode::start(self.api.clone(), app_token, inbound).await {
                Ok(listener) => *self.socket.lock().await = Some(listener),
                Err(e) => {
                    self.api.set_connected(false, Some(e.clone()));
                    return Err(ChannelError::permanent(e));
                }
            }
        }
        Ok(())
    }

    async fn deliver(&self, target: &Target, prompt: &Prompt) -> Result<MessageRef, ChannelError> {
        if target.to == WEBHOOK_TARGET {
            return Err(ChannelError::permanent(
                "target \"webhook\" is notification-only (an incoming webhook cannot show buttons); use it in delivery.timeout_notice_targets",
            ));
        }
        let conversation = self.conversation(&target.to).await?;
        let (channel_id, ts) = self
            .api
            .post_message(
                &conversation,
                target.thread_id.as_deref(),
                render::message(prompt),
            )
            .await?;
        Ok(MessageRef {
            channel: self.settings.name.clone(),
            to: channel_id,
            thread_id: target.thread_id.clone(),
            message_id: ts,
        })
    }

    async fn update(&self, message: &MessageRef, prompt: &Prompt) -> Result<(), ChannelError> {
        if message.to == WEBHOOK_TARGET {
            return Ok(());
        }
        self.api
            .update_message(&message.to, &message.message_id, render::message(prompt))
            .await
    }

    async fn notify(&self, target: &Target, text: &str) -> Result<MessageRef, ChannelError> {
        if target.to == WEBHOOK_TARGET {
            self.api.post_webhook(text).await?;
            return Ok(MessageRef {
                channel: self.settings.name.clone(),
                to: WEBHOOK_TARGET.to_string(),
                thread_id: None,
                // Incoming webhooks answer no message id; nothing edits a notice.
                message_id: format!("webhook-{}", chrono::Utc::now().timestamp_millis()),
            });
        }
        let conversation = self.conversation(&target.to).await?;
        let (channel_id, ts) = self
            .api
            .post_message(
                &conversation,
                target.thread_id.as_deref(),
                render::notice(text),
            )
            .await?;
        Ok(MessageRef {
            channel: self.settings.name.clone(),
            to: channel_id,
            thread_id: target.thread_id.clone(),
            message_id: ts,
        })
    }

    fn routes(&self, sink: Arc<dyn InboundSink>) -> Option<axum::Router> {
        if self.settings.receive != ReceiveMode::EventsApi || !self.api.has_bot_token() {
            return None;
        }
        let secret = self.settings.signing_secret.as_deref()?;
        let inbound = Arc::new(Inbound::new(&self.settings.name, sink, self.api.clone()));
        Some(inbound::router(
            inbound,
            Arc::new(RequestVerifier::new(secret)),
            &self.settings.path,
        ))
    }

    fn health(&self) -> ChannelHealth {
        self.api.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_go_through_a_dm_channel_ids_do_not() {
        assert!(is_user_id("U012ABC"));
        assert!(is_user_id("W0123"));
        assert!(!is_user_id("C0123"));
        assert!(!is_user_id("D0123"));
        assert!(!is_user_id("U"));
        assert!(!is_user_id("webhook"));
    }
}
