//! Putting it together: config -> store -> templates -> channels -> engine -> HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use approvald_channel::Channel;
use tokio::net::TcpListener;

use crate::api::{self, AppContext};
use crate::config::Config;
use crate::engine::ToolApprovalForwarder;
use crate::store::SqliteStore;
use crate::templates::Templates;

/// The chat channels this build can run, from `[channels.*]`. Platform crates plug in here.
pub fn platform_channels(config: &Config) -> anyhow::Result<Vec<Arc<dyn Channel>>> {
    if let Some(name) = config
        .channels
        .iter()
        .find(|(_, c)| c.settings.contains_key("kind"))
        .map(|(n, _)| n)
    {
        anyhow::bail!(
            "config error at channels.{name}.kind: this build has no platform channels yet"
        );
    }
    Ok(Vec::new())
}

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
            engine: self.engine,
        };
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let serve =
            axum::serve(self.listener, api::router(ctx)).with_graceful_shutdown(async move {
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
