//! `receive = "gateway"`: serenity's client keeps a websocket to Discord open, for installs
//! without a public URL. Interactions arrive as events and go through the same handler as the
//! HTTP endpoint; answers go back through the REST callback route.
//!
//! Not covered by the offline tests: nothing on this machine can serve Discord's gateway.

use std::sync::Arc;
use std::time::Duration;

use approvald_channel::InboundSink;
use async_trait::async_trait;
use serenity::all::{
    ConnectionStage, Context, EventHandler, GatewayIntents, Ready, ShardManager,
    ShardStageUpdateEvent,
};
use serenity::client::ClientBuilder;
use serenity::http::{HttpBuilder, LightMethod, Route};
use serenity::model::id::{ApplicationId, InteractionId};

use crate::Shared;
use crate::inbound::Interactions;
use crate::interaction::Interaction;

/// Run the gateway client until stopped, reconnecting with backoff when serenity
/// gives up (bad token, Discord unreachable).
pub fn spawn(shared: Arc<Shared>, sink: Arc<dyn InboundSink>) -> Gateway {
    let manager: Arc<std::sync::Mutex<Option<Arc<ShardManager>>>> = Arc::default();
    let current = manager.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let http = HttpBuilder::new(shared.settings.bot_token.expose())
                .proxy(shared.settings.api_url.clone())
                .ratelimiter_disabled(true)
                .client(shared.http.clone())
                .application_id(ApplicationId::new(shared.settings.application_id))
                .build();
            // Interactions need no privileged intents.
            let built = ClientBuilder::new_with_http(http, GatewayIntents::empty()).event_handler(
                Handler {
                    interactions: Interactions {
                        shared: shared.clone(),
                        sink: sink.clone(),
                    },
                },
            );
            let error = match built.await {
                Ok(mut client) => {
                    if let Ok(mut m) = current.lock() {
                        *m = Some(client.shard_manager.clone());
                    }
                    match client.start().await {
                        Ok(()) => "the gateway connection ended".to_string(),
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            let error = shared.client.redact(&format!("discord gateway: {error}"));
            tracing::warn!(channel = %shared.name, error = %error, retry_in = ?backoff, "Discord gateway down");
            shared.health.gateway(false, Some(&error));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(300));
        }
    });
    Gateway {
        task: task.abort_handle(),
        manager,
    }
}

/// The running gateway connection, so it can be closed when this instance stops being the
/// leader: serenity's shard runners are tasks of their own, so the shards are shut down
/// before the reconnect loop is aborted.
pub struct Gateway {
    task: tokio::task::AbortHandle,
    manager: Arc<std::sync::Mutex<Option<Arc<ShardManager>>>>,
}

impl Gateway {
    pub async fn shutdown(self) {
        let manager = self.manager.lock().ok().and_then(|mut m| m.take());
        if let Some(manager) = manager {
            manager.shutdown_all().await;
        }
        self.task.abort();
    }
}

/// serenity's event handler: readiness for health, interactions for decisions.
struct Handler {
    interactions: Interactions,
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, _ready: Ready) {
        self.interactions.shared.health.gateway(true, None);
    }

    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        let up = matches!(event.new, ConnectionStage::Connected);
        self.interactions.shared.health.gateway(up, None);
    }

    async fn interaction_create(&self, _ctx: Context, interaction: serenity::all::Interaction) {
        let shared = &self.interactions.shared;
        let parsed =
            serde_json::to_value(&interaction).and_then(serde_json::from_value::<Interaction>);
        let i = match parsed {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(channel = %shared.name, error = %e, "gateway interaction that cannot be read");
                return;
            }
        };
        let Some(id) = crate::config::parse_snowflake(&i.id) else {
            return;
        };
        let response = self.interactions.handle(&i).await;
        let route = Route::InteractionResponse {
            interaction_id: InteractionId::new(id),
            token: &i.token,
        };
        // The label leaves the interaction token out.
        let label = format!("POST /interactions/{id}/<token>/callback");
        if let Err(e) = shared
            .client
            .call_no_content(LightMethod::Post, route, &label, Some(&response), false)
            .await
        {
            tracing::warn!(channel = %shared.name, error = %e, "cannot answer an interaction");
        }
    }
}
