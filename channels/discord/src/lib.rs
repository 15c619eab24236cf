//! approvald's Discord channel (serenity): prompts as an embed with a row of buttons, sent to
//! channels, threads and approvers' DMs; decisions from Ed25519-verified interactions (button
//! presses, `/approve`, `/deny`, `/pending`) or from the gateway; every sent message edited on
//! every outcome.
//!
//! Discord-specific behaviour stays here: the engine sees only the `Channel` trait.

mod client;
mod commands;
pub mod config;
mod edits;
mod gateway;
mod health;
mod inbound;
mod interaction;
mod pacing;
mod render;
mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use approvald_channel::{
    Channel, ChannelError, ChannelHealth, InboundSink, Markup, MessageRef, Prompt, Target,
    Transport,
};
use async_trait::async_trait;
use serde::Deserialize;
use serenity::http::{LightMethod, Route};
use serenity::model::id::{ChannelId, MessageId};

pub use config::{ConfigError, DiscordSettings, ReceiveMode};

use client::RestClient;
use config::parse_snowflake;
use edits::EditWaiters;
use health::Health;
use verify::SignatureCheck;

/// One configured Discord bot (`[channels.NAME]` with kind discord).
pub struct DiscordChannel {
    shared: Arc<Shared>,
    /// The gateway connection while one runs (gateway mode).
    gateway: tokio::sync::Mutex<Option<gateway::Gateway>>,
}

/// State shared by the channel, its interactions endpoint and its gateway task.
pub(crate) struct Shared {
    pub name: String,
    pub settings: DiscordSettings,
    pub client: RestClient,
    /// One connection pool for our REST calls and serenity's gateway client.
    pub http: reqwest::Client,
    pub health: Arc<Health>,
    /// `None` in gateway mode (no endpoint to protect).
    pub signatures: Option<SignatureCheck>,
    pub edits: EditWaiters,
    /// User id -> DM channel id, so a DM channel is opened once per approver.
    dm_channels: Mutex<HashMap<u64, u64>>,
}

/// The part of Discord's answers we use (a message, a DM channel).
#[derive(Deserialize)]
struct Created {
    id: String,
}

impl DiscordChannel {
    /// Build from `[channels.<name>]`: its platform `settings` and its `approvers` (user ids,
    /// DMed when `dm_approvers` is on).
    pub fn from_config(
        name: &str,
        settings: &toml::Table,
        approvers: &[String],
    ) -> Result<Self, ConfigError> {
        let settings = DiscordSettings::from_table(name, settings, approvers)?;
        Self::new(name, settings)
    }

    pub fn new(name: &str, settings: DiscordSettings) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| ConfigError {
                key: format!("channels.{name}"),
                problem: format!("cannot set up an HTTP client: {e}"),
            })?;
        let health = Arc::new(Health::new(settings.receive == ReceiveMode::Gateway));
        let client = RestClient::new(
            http.clone(),
            settings.bot_token.clone(),
            settings.api_url.clone(),
            settings.pacing.clone(),
            health.clone(),
        );
        let signatures = match (settings.receive, &settings.verifier) {
            (ReceiveMode::InteractionsEndpoint, Some(v)) => {
                Some(SignatureCheck::new(v.clone(), settings.signature_max_age))
            }
            _ => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                name: name.to_string(),
                settings,
                client,
                http,
                health,
                signatures,
                edits: EditWaiters::default(),
                dm_channels: Mutex::new(HashMap::new()),
            }),
            gateway: tokio::sync::Mutex::new(None),
        })
    }
}

impl Shared {
    /// The DM channel with a user, opened on first use.
    async fn dm_channel(&self, user: u64) -> Result<u64, ChannelError> {
        if let Some(id) = self
            .dm_channels
            .lock()
            .ok()
            .and_then(|m| m.get(&user).copied())
        {
            return Ok(id);
        }
        let body = serde_json::json!({ "recipient_id": user.to_string() });
        let created: Created = self
            .client
            .call(
                LightMethod::Post,
                Route::UserMeDmChannels,
                "POST /users/@me/channels",
                Some(&body),
            )
            .await?;
        let id = parse_snowflake(&created.id).ok_or_else(|| {
            ChannelError::permanent("discord: the DM channel Discord opened has no usable id")
        })?;
        if let Ok(mut m) = self.dm_channels.lock() {
            m.insert(user, id);
        }
        Ok(id)
    }

    /// Where a target's message goes (channel, thread or DM channel), and the `to` and
    /// `thread_id` its `MessageRef` records (a DM's `to` is the DM channel).
    async fn destination(
        &self,
        target: &Target,
    ) -> Result<(u64, String, Option<String>), ChannelError> {
        let to = target.to.trim();
        let user = to
            .strip_prefix("user:")
            .or_else(|| to.strip_prefix("<@!").and_then(|s| s.strip_suffix('>')))
            .or_else(|| to.strip_prefix("<@").and_then(|s| s.strip_suffix('>')));
        if let Some(user) = user {
            let user = parse_snowflake(user).ok_or_else(|| {
                ChannelError::permanent(format!("discord: {to:?} is not a Discord user id"))
            })?;
            let dm = self.dm_channel(user).await?;
            return Ok((dm, dm.to_string(), None));
        }
        let channel = parse_snowflake(to).ok_or_else(|| {
            ChannelError::permanent(format!(
                "discord: target {to:?} is not a channel id (or user:<id> for a DM)"
            ))
        })?;
        match &target.thread_id {
            Some(thread) => {
                let thread_id = parse_snowflake(thread).ok_or_else(|| {
                    ChannelError::permanent(format!(
                        "discord: thread_id {thread:?} is not a Discord id"
                    ))
                })?;
                Ok((thread_id, channel.to_string(), Some(thread_id.to_string())))
            }
            None => Ok((channel, channel.to_string(), None)),
        }
    }

    /// Edit a sent message over REST. Editing twice to the same content is harmless.
    async fn edit(&self, message: &MessageRef, prompt: &Prompt) -> Result<(), ChannelError> {
        let (channel, id) = message_location(message)?;
        let label = format!("PATCH /channels/{channel}/messages/{id}");
        let route = Route::ChannelMessage {
            channel_id: ChannelId::new(channel),
            message_id: MessageId::new(id),
        };
        self.client
            .call::<serde_json::Value>(
                LightMethod::Patch,
                route,
                &label,
                Some(&render::edit_message(prompt)),
            )
            .await
            .map(|_| ())
    }

    async fn post(
        &self,
        channel: u64,
        body: &serenity::all::CreateMessage,
    ) -> Result<String, ChannelError> {
        let label = format!("POST /channels/{channel}/messages");
        let route = Route::ChannelMessages {
            channel_id: ChannelId::new(channel),
        };
        let created: Created = self
            .client
            .call(LightMethod::Post, route, &label, Some(body))
            .await?;
        Ok(created.id)
    }
}

/// The channel (thread if any) and message ids of a sent message.
fn message_location(message: &MessageRef) -> Result<(u64, u64), ChannelError> {
    let channel = message.thread_id.as_deref().unwrap_or(&message.to);
    match (
        parse_snowflake(channel),
        parse_snowflake(&message.message_id),
    ) {
        (Some(c), Some(m)) => Ok((c, m)),
        _ => Err(ChannelError::permanent(format!(
            "discord: {channel:?}/{:?} is not a Discord message",
            message.message_id
        ))),
    }
}

#[async_trait]
impl Channel for DiscordChannel {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn transport(&self) -> Transport {
        Transport::Discord
    }

    fn markup(&self) -> Markup {
        Markup::DiscordMarkdown
    }

    /// Register the slash commands (in the background: Discord being slow or down must not
    /// keep approvald from starting; health shows the failure) and, in gateway mode, connect.
    async fn start(&self, sink: Arc<dyn InboundSink>) -> Result<(), ChannelError> {
        if self.shared.settings.register_commands {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                match commands::register(&shared).await {
                    Ok(()) => {
                        tracing::info!(channel = %shared.name, "Discord slash commands registered")
                    }
                    Err(e) => {
                        tracing::warn!(channel = %shared.name, error = %e, "cannot register Discord slash commands")
                    }
                }
            });
        }
        if self.shared.settings.receive == ReceiveMode::Gateway {
            let mut running = self.gateway.lock().await;
            if running.is_none() {
                *running = Some(gateway::spawn(self.shared.clone(), sink));
            }
        }
        Ok(())
    }

    fn exclusive_receiver(&self) -> bool {
        // Each gateway connection would get every interaction: one process answers them.
        self.shared.settings.receive == ReceiveMode::Gateway
    }

    async fn stop(&self) {
        let running = self.gateway.lock().await.take();
        if let Some(gateway) = running {
            gateway.shutdown().await;
            tracing::info!(channel = %self.shared.name, "Discord gateway stopped");
        }
    }

    async fn deliver(&self, target: &Target, prompt: &Prompt) -> Result<MessageRef, ChannelError> {
        let (post_to, to, thread_id) = self.shared.destination(target).await?;
        let message_id = self
            .shared
            .post(post_to, &render::new_message(prompt, post_to))
            .await?;
        Ok(MessageRef {
            channel: self.shared.name.clone(),
            to,
            thread_id,
            message_id,
        })
    }

    async fn update(&self, message: &MessageRef, prompt: &Prompt) -> Result<(), ChannelError> {
        // A press on this message is waiting to answer with exactly this edit.
        if self.shared.edits.hand_over(&message.message_id, prompt) {
            return Ok(());
        }
        self.shared.edit(message, prompt).await
    }

    async fn notify(&self, target: &Target, text: &str) -> Result<MessageRef, ChannelError> {
        let (post_to, to, thread_id) = self.shared.destination(target).await?;
        let message_id = self.shared.post(post_to, &render::notice(text)).await?;
        Ok(MessageRef {
            channel: self.shared.name.clone(),
            to,
            thread_id,
            message_id,
        })
    }

    fn routes(&self, sink: Arc<dyn InboundSink>) -> Option<axum::Router> {
        (self.shared.settings.receive == ReceiveMode::InteractionsEndpoint).then(|| {
            inbound::router(inbound::Interactions {
                shared: self.shared.clone(),
                sink,
            })
        })
    }

    fn health(&self) -> ChannelHealth {
        self.shared.health.snapshot()
    }

    /// With `dm_approvers`, a DM to every approver user id, on every forwarded request.
    fn standing_targets(&self) -> Vec<Target> {
        if !self.shared.settings.dm_approvers {
            return Vec::new();
        }
        self.shared
            .settings
            .approvers
            .iter()
            .map(|id| Target {
                channel: self.shared.name.clone(),
                to: format!("user:{id}"),
                thread_id: None,
                account_id: None,
            })
            .collect()
    }
}
