//! Socket Mode: for installs without a public URL, approvald opens a WebSocket to Slack
//! (`apps.connections.open` with the app-level token answers its URL) and receives the same
//! interactions and slash commands over it. slack-morphism keeps the connection up and
//! acknowledges each envelope when our callback returns, so callbacks only hand the work to a
//! task and return at once, well inside Slack's 3 seconds. No signature is involved: the
//! connection itself is authenticated by the app token.

use std::sync::Arc;

use slack_morphism::prelude::*;

use crate::client::{Connector, SlackApi};
use crate::inbound::{CommandRequest, Inbound};

/// The running listener, kept for as long as the channel lives: it owns the connection.
pub struct SocketMode {
    listener: SlackClientSocketModeListener<Connector>,
}

impl SocketMode {
    /// Connect with `app_token` and route everything to `inbound`.
    pub async fn start(
        api: Arc<SlackApi>,
        app_token: &str,
        inbound: Arc<Inbound>,
    ) -> Result<Self, String> {
        let mut callbacks =
            SlackSocketModeListenerCallbacks::<Connector>::new().with_hello_events(on_hello);
        let for_actions = inbound.clone();
        callbacks.interaction_callback = Box::new(move |ev: SlackInteractionEvent, _c, _s| {
            let inbound = for_actions.clone();
            async move {
                tokio::spawn(async move { inbound.on_interaction(ev).await });
                Ok(SlackInteractionResponse::Empty)
            }
        });
        let for_commands = inbound;
        callbacks.command_callback = Box::new(move |ev: SlackCommandEvent, _c, _s| {
            let inbound = for_commands.clone();
            async move {
                tokio::spawn(async move { inbound.on_command(CommandRequest::from(ev)).await });
                // An empty acknowledgement; the answer follows through response_url.
                Ok(SlackCommandEventResponse::new(SlackMessageContent::new()))
            }
        });
        let environment = Arc::new(
            SlackClientEventsListenerEnvironment::new(api.client())
                .with_error_handler(on_error)
                .with_user_state(api.clone()),
        );
        let config = SlackClientSocketModeConfig::new()
            .with_max_connections_count(1)
            .with_reconnect_timeout_in_seconds(5);
        let listener = SlackClientSocketModeListener::new(&config, environment, callbacks);
        let token = SlackApiToken::new(SlackApiTokenValue::new(app_token.to_string()));
        listener
            .listen_for(&token)
            .await
            .map_err(|e| api.redact(&format!("Socket Mode: {e}")))?;
        listener.start().await;
        Ok(Self { listener })
    }

    /// Close the connection (this instance stopped being the leader).
    pub async fn shutdown(self) {
        self.listener.shutdown().await;
    }
}

/// Slack said hello on a new connection: the channel is connected. (The hello event's type is
/// not exported by slack-morphism, hence the generic parameter.)
async fn on_hello<E>(
    _hello: E,
    _client: Arc<SlackClient<Connector>>,
    state: SlackClientEventsUserState,
) {
    tracing::info!("Slack Socket Mode connected");
    if let Some(api) = state.read().await.get_user_state::<Arc<SlackApi>>() {
        api.set_connected(true, None);
    }
}

/// Socket Mode errors, logged with token-shaped strings scrubbed; the envelope is still
/// acknowledged (a frame that failed once fails again).
fn on_error(
    err: Box<dyn std::error::Error + Send + Sync>,
    _client: Arc<SlackClient<Connector>>,
    _state: SlackClientEventsUserState,
) -> axum::http::StatusCode {
    tracing::warn!(error = %crate::client::redact_token_shapes(&err.to_string()), "Slack Socket Mode error");
    axum::http::StatusCode::OK
}
