//! Putting it together: config -> store -> templates -> channels -> engine -> HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use approvald_channel::{Channel, InboundSink};
use tokio::net::TcpListener;

use crate::api::{self, AppContext};
use crate::config::Config;
use crate::engine::ToolApprovalForwarder;
use crate::store::SqliteStore;
use crate::templates::Templates;

/// The chat channels this build can run, from `[channels.*]`: each table's `kind` (or, when
/// absent, its name) picks the platform crate. `enabled = false` leaves a channel out.
pub fn platform_channels(config: &Config) -> anyhow::Result<Vec<Arc<dyn Channel>>> {
    let mut channels: Vec<Arc<dyn Channel>> = Vec::new();
    for (name, channel) in &config.channels {
        if channel.settings.get("enabled").and_then(|v| v.as_bool()) == Some(false) {
            continue;
        }
        let kind = match channel.settings.get("kind") {
            Some(toml::Value::String(kind)) => kind.as_str(),
            Some(_) => anyhow::bail!("config error at channels.{name}.kind: expected a string"),
            None => name.as_str(),
        };
        // Platform crates add their arm here: `"telegram" => channels.push(...)`.
        match kind {
            "telegram" => channels.push(Arc::new(
                approvald_telegram::TelegramChannel::from_config(name, &channel.settings)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )),
            "slack" => channels.push(Arc::new(
                approvald_slack::SlackChannel::from_settings(name, &channel.settings)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )),
            "discord" => channels.push(Arc::new(approvald_discord::DiscordChannel::from_config(
                name,
                &channel.settings,
                &channel.approvers,
            )?)),
            _ => anyhow::bail!(
                "config error at channels.{name}.kind: unknown platform {kind:?} (this build knows: {})",
                KNOWN_PLATFORMS.join(", ")
            ),
        }
    }
    Ok(channels)
}

/// The platform kinds `platform_channels` can build.
const KNOWN_PLATFORMS: &[&str] = &["discord", "slack", "telegram"];

/// Open the store, load templates, build and start the engine.
pub async fn build_engine(
    config: Config,
    channels: Vec<Arc<dyn Channel>>,
) -> anyhow::Result<ToolApprovalForwarder> {
    let templates = Templates::load(config.templates.dir.as_deref())?;
    let store = SqliteStore::open(&config.storage.data_dir).await?;
    let engine =
        ToolApprovalForwarder::new(Arc::new(config), Arc::new(store), templates, channels)?;
    engine.start().await?;
    Ok(engine)
}

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A server bound to its address (port 0 picks a free one), not yet serving.
pub struct BoundServer {
    pub engine: ToolApprovalForwarder,
    pub addr: SocketAddr,
    listener: TcpListener,
}

impl BoundServer {
    pub async fn bind(config: Config, channels: Vec<Arc<dyn Channel>>) -> anyhow::Result<Self> {
        let listen = config.server.listen;
        let engine = build_engine(config, channels).await?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            engine,
            addr,
            listener,
        })
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let ctx = AppContext {
            max_body_bytes: self.engine.config().server.max_body_bytes,
            engine: self.engine.clone(),
        };
        let mut router = api::router(ctx);
        // Webhook receivers (Slack, Discord, Telegram) live on the same listener.
        let sink: Arc<dyn InboundSink> = Arc::new(self.engine.clone());
        for channel in self.engine.channels() {
            if let Some(routes) = channel.routes(sink.clone()) {
                router = router.merge(routes);
            }
        }
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = axum::serve(self.listener, router).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        });
        // Callers blocked in a long wait would hold shutdown open for minutes: give in-flight
        // work a grace period, then stop. Their requests stay pending in the store, and they
        // get their answer with `tool.approval.wait` after reconnecting.
        let grace = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = serve => result?,
            _ = grace => tracing::warn!("grace period over: closing connections still waiting; callers reconnect with tool.approval.wait"),
        }
        Ok(())
    }
}
