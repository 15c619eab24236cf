//! Putting it together: config -> store -> templates -> channels -> engine -> HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use approvald_channel::{Channel, InboundSink};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::api::{self, AppContext};
use crate::config::Config;
use crate::engine::ToolApprovalForwarder;
use crate::templates::Templates;
use crate::ui::SessionKey;

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
    Ok(build(config, channels).await?.0)
}

/// The engine and the control UI's session key: in a file under `data_dir` for one instance,
/// in the database when several share PostgreSQL (a session made on one works on all).
async fn build(
    config: Config,
    channels: Vec<Arc<dyn Channel>>,
) -> anyhow::Result<(ToolApprovalForwarder, SessionKey)> {
    let templates = Templates::load(config.templates.dir.as_deref())?;
    let (store, postgres) = crate::store::open(&config.storage).await?;
    let instance = store.instance_id().to_string();
    let data_dir = config.storage.data_dir.clone();
    let engine = ToolApprovalForwarder::new(Arc::new(config), store, templates, channels)?;
    engine.start().await?;
    let ui_key = match postgres {
        Some(pg) => {
            crate::cluster::join(engine.clone(), pg.pool().clone(), instance).await?;
            crate::cluster::shared_ui_key(pg.pool()).await?
        }
        None => SessionKey::load_or_create(&data_dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "control UI sessions will not survive a restart");
            SessionKey::random()
        }),
    };
    Ok((engine, ui_key))
}

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A server bound to its address (port 0 picks a free one), not yet serving.
pub struct BoundServer {
    pub engine: ToolApprovalForwarder,
    pub addr: SocketAddr,
    listener: TcpListener,
    ui_key: SessionKey,
}

impl BoundServer {
    pub async fn bind(config: Config, channels: Vec<Arc<dyn Channel>>) -> anyhow::Result<Self> {
        let listen = config.server.listen;
        let (engine, ui_key) = build(config, channels).await?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            engine,
            addr,
            listener,
            ui_key,
        })
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests.
    ///
    /// Connections are served by hyper directly (not `axum::serve`) for the limits a public
    /// endpoint needs: a client must send each request's headers within
    /// `server.header_timeout_ms` (slow-loris, and idle keep-alive connections) and its body
    /// within the same time ([`api::limit_body_read`]), and on
    /// shutdown every connection is drained gracefully. Callers blocked waiting for a decision
    /// are answered `shutting_down` at once (reconnect, then `tool.approval.wait`); WebSocket
    /// clients get an `approvald.shutdown` notification and a close frame.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let server = &self.engine.config().server;
        let ctx = AppContext {
            max_body_bytes: server.max_body_bytes,
            engine: self.engine.clone(),
            stream_slots: Arc::new(tokio::sync::Semaphore::new(server.max_stream_clients)),
            ui_key: self.ui_key.clone(),
        };
        let header_timeout = Duration::from_millis(server.header_timeout_ms);
        let mut router = api::router(ctx);
        // Webhook receivers (Slack, Discord, Telegram) live on the same listener.
        let sink: Arc<dyn InboundSink> = Arc::new(self.engine.clone());
        for channel in self.engine.channels() {
            if let Some(routes) = channel.routes(sink.clone()) {
                router = router.merge(routes);
            }
        }
        // Bodies by the same limit as headers, on every route (webhooks included).
        let router = router.layer(tower::util::MapRequestLayer::new(
            move |request: axum::extract::Request| api::limit_body_read(request, header_timeout),
        ));
        let mut http =
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, _peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment, keep serving.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            let conn = http
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        // Answer every blocked waiter now, so their connections can finish.
        self.engine.begin_shutdown();
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!(
                "grace period over: closing connections still open; callers reconnect with tool.approval.wait"
            ),
        }
        if let Err(e) = self.engine.store().stopping().await {
            tracing::warn!(error = %e, "the store could not tidy up on the way out (the next start may take longer)");
        }
        Ok(())
    }
}
