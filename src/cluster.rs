//! Several approvald instances on one PostgreSQL database, behind a load balancer.
//!
//! The database decides every race (first decision wins, expiry happens once, a fan-out has
//! one owner). This module keeps the instances in step around it:
//! - every event one instance publishes is written to `cluster_events` and announced with
//!   `NOTIFY approvald_events`; the others hear it on a `LISTEN` connection, wake their
//!   waiters, time new requests and re-send the event to their own SSE and WebSocket clients,
//!   within milliseconds (no polling);
//! - one instance at a time is the leader, holding a session advisory lock on a connection of
//!   its own; only the leader runs receivers one process may run (Telegram long polling, the
//!   Discord gateway, Slack Socket Mode). When it dies its connection closes, the lock is
//!   freed and another instance takes over within [`LEAD_RETRY`];
//! - old `cluster_events` rows are deleted after a few minutes.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;

use crate::ToolApprovalForwarder;
use crate::events::{self, PeerEvent};

/// The NOTIFY channel events are announced on.
const CHANNEL: &str = "approvald_events";
/// The advisory lock key of the leader (an arbitrary constant: "approvald" in ASCII).
const LEADER_KEY: i64 = 0x0061_7070_726f_7661;
/// How often a follower tries to become the leader, and the leader checks it still is.
pub const LEAD_RETRY: Duration = Duration::from_secs(2);

/// Join the cluster: forward this engine's events to the others, hear theirs, and take part
/// in the leader election when some channel needs a leader. Runs until the process ends.
pub async fn join(
    engine: ToolApprovalForwarder,
    pool: PgPool,
    instance: String,
) -> anyhow::Result<()> {
    // Listen before announcing anything, so nothing published from now on is missed.
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;

    let (tx, rx) = mpsc::unbounded_channel();
    engine.events().forward_to_peers(tx);
    tokio::spawn(announce(pool.clone(), instance.clone(), rx));
    tokio::spawn(hear(
        engine.clone(),
        pool.clone(),
        listener,
        instance.clone(),
    ));
    if engine.has_exclusive_receivers() {
        tokio::spawn(lead(engine.clone(), pool.clone()));
    }
    tokio::spawn(prune(pool));
    tracing::info!(instance = %instance, "joined the cluster on PostgreSQL");
    Ok(())
}

/// The control UI's session key, the same on every instance: made by the first instance that
/// asks, read by the others.
pub async fn shared_ui_key(pool: &PgPool) -> anyhow::Result<crate::ui::SessionKey> {
    let fresh = crate::ui::SessionKey::random();
    sqlx::query("INSERT INTO cluster_keys (name, value) VALUES ('ui_session', $1) ON CONFLICT (name) DO NOTHING")
        .bind(fresh.bytes().to_vec())
        .execute(pool)
        .await?;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT value FROM cluster_keys WHERE name = 'ui_session'")
            .fetch_one(pool)
            .await?;
    let key: [u8; 32] = stored
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("the stored control UI session key is not 32 bytes"))?;
    Ok(crate::ui::SessionKey::from_bytes(key))
}

/// Write each event published here and NOTIFY the others, in order.
async fn announce(pool: PgPool, instance: String, mut rx: mpsc::UnboundedReceiver<PeerEvent>) {
    while let Some((method, params)) = rx.recv().await {
        // Retried briefly: a waiter on another instance depends on this announcement (it
        // would otherwise learn of the decision only from its own expiry timer).
        for attempt in 0..5u32 {
            let sent = sqlx::query(
                "WITH e AS (INSERT INTO cluster_events (origin, method, params)
                            VALUES ($1, $2, $3::jsonb) RETURNING seq)
                 SELECT pg_notify($4, (SELECT seq FROM e)::text || ' ' || $1)",
            )
            .bind(&instance)
            .bind(method)
            .bind(params.as_ref())
            .bind(CHANNEL)
            .execute(&pool)
            .await;
            match sent {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(method, attempt, error = %e, "cannot announce an event to the other instances");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    }
}

/// Hear the others' announcements; after a dropped connection, resynchronise from the store.
async fn hear(
    engine: ToolApprovalForwarder,
    pool: PgPool,
    mut listener: PgListener,
    instance: String,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(note)) => {
                let Some((seq, origin)) = note.payload().split_once(' ') else {
                    continue;
                };
                if origin == instance {
                    continue;
                }
                let Ok(seq) = seq.parse::<i64>() else {
                    continue;
                };
                let row: Result<Option<(String, String)>, _> = sqlx::query_as(
                    "SELECT method, params::text FROM cluster_events WHERE seq = $1",
                )
                .bind(seq)
                .fetch_optional(&pool)
                .await;
                match row {
                    Ok(Some((method, params))) => {
                        let Some(method) = events::known_method(&method) else {
                            tracing::warn!(method, "an unknown event from another instance");
                            continue;
                        };
                        engine.on_peer_event(method, params).await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "cannot read an announced event");
                        engine.resync_with_peers().await;
                    }
                }
            }
            // The connection dropped; sqlx reconnects on the next call, and whatever was
            // announced meanwhile is read back from the store.
            Ok(None) => {
                tracing::warn!("lost the connection that hears other instances; resynchronising");
                engine.resync_with_peers().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear other instances; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                engine.resync_with_peers().await;
            }
        }
    }
}

/// Take the leader lock when free and run the exclusive receivers while holding it.
async fn lead(engine: ToolApprovalForwarder, pool: PgPool) {
    let options = pool.connect_options();
    loop {
        let mut conn = match PgConnection::connect_with(&options).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "leader election: cannot connect");
                tokio::time::sleep(LEAD_RETRY).await;
                continue;
            }
        };
        loop {
            let got: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_KEY)
                .fetch_one(&mut conn)
                .await;
            match got {
                Ok(true) => break,
                Ok(false) => tokio::time::sleep(LEAD_RETRY).await,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: lost the connection");
                    break;
                }
            }
        }
        if conn.ping().await.is_err() {
            continue;
        }
        tracing::info!("this instance is now the leader");
        engine.start_exclusive_receivers().await;
        // The lock lives as long as this connection: check it is still there.
        loop {
            tokio::time::sleep(LEAD_RETRY).await;
            let held: Result<bool, _> = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
                   AND pid = pg_backend_pid() AND granted
                   AND ((classid::bigint << 32) | objid::bigint) = $1)",
            )
            .bind(LEADER_KEY)
            .fetch_one(&mut conn)
            .await;
            if !matches!(held, Ok(true)) {
                tracing::warn!("this instance lost the leader lock");
                break;
            }
        }
        engine.stop_exclusive_receivers().await;
    }
}

/// Delete announced events older than five minutes (nobody reads them after a few ms), once a
/// minute.
async fn prune(pool: PgPool) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        if let Err(e) =
            sqlx::query("DELETE FROM cluster_events WHERE at < now() - interval '5 minutes'")
                .execute(&pool)
                .await
        {
            tracing::warn!(error = %e, "cannot prune cluster events");
        }
    }
}
