//! One task through approvald, end to end: ask, wait for a person, obey the limits, watch for an
//! abort while "running", report.
//!
//! ```text
//! approvald serve &                       # in the repository root
//! cargo run -p approvald-client --example walkthrough
//! ```
//!
//! Reads `APPROVAL_SYSTEM_URL` (default `http://127.0.0.1:8001`) and `APPROVAL_API_KEY`
//! (default `dev-gateway-token`, the loopback-only token of the bundled config), plus the other
//! `APPROVAL_*` variables of `ClientConfig::from_env`.

use std::time::Duration;

use approvald_client::{
    ApprovalClient, ClientConfig, ExecutionStatus, ExecutionSummary, ExecutorLimits, TaskRequest,
    apply_constraints,
};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = ClientConfig::from_env()?;
    if std::env::var_os("APPROVAL_API_KEY").is_none() {
        config.api_key = "dev-gateway-token".to_string();
    }
    let client = ApprovalClient::new(config)?;
    println!("approvald at {}", client.config().url);

    let task_id = format!("walkthrough-{}", uuid::Uuid::new_v4());
    let task = TaskRequest::new(
        &task_id,
        "shell",
        "Delete ./build and rebuild the release artefacts",
    )
    .with_estimated_cost(0.40)
    .with_estimated_duration_ms(1_000)
    .with_context(json!({"cwd": "/srv/app", "command": "rm -rf ./build && make release"}));

    // A first ask shows whether a person has to decide; then wait for them (10 minutes at most).
    let (first, first_in_fallback) = client.request_approval(&task).await?;
    if first.is_pending() {
        println!(
            "waiting for a human: approve it in the control UI or with `approvald approve {task_id}`"
        );
    }
    let (answer, in_fallback) = if first.is_pending() {
        client
            .wait_for_approval(&task, Duration::from_secs(10 * 60))
            .await?
    } else {
        (first, first_in_fallback)
    };
    if in_fallback {
        println!("approvald unreachable: answered by the client's fallback");
    }
    if !answer.approved {
        println!("not approved: {}", answer.reason);
        if answer.is_pending() {
            println!("(still pending after 10 minutes)");
        }
        return Ok(());
    }
    println!("approved: {}", answer.reason);

    let mine = ExecutorLimits {
        max_tokens: Some(100_000),
        max_duration_ms: Some(60_000),
        parallelism: Some(4),
        max_cost: Some(1.0),
        resource_multiplier: Some(1.0),
    };
    let limits = apply_constraints(&mine, answer.constraints.as_deref().unwrap_or_default());
    println!("running under {limits:?}");

    // "Run" the task for about a second while listening for an abort.
    let started = chrono::Utc::now();
    let run_for = Duration::from_millis(1_000).min(Duration::from_millis(
        limits.max_duration_ms.unwrap_or(u64::MAX),
    ));
    let outcome = tokio::select! {
        _ = tokio::time::sleep(run_for) => Ok(()),
        abort = client.listen_for_abort(&task_id, run_for + Duration::from_secs(1)) => match abort {
            Ok(Some(reason)) => Err(reason),
            // The listener gave up or failed: let the task finish.
            Ok(None) | Err(_) => {
                tokio::time::sleep(run_for.saturating_sub(
                    (chrono::Utc::now() - started).to_std().unwrap_or_default(),
                ))
                .await;
                Ok(())
            }
        },
    };
    let ended = chrono::Utc::now();

    let (status, mut summary) = match outcome {
        Ok(()) => {
            println!("task completed");
            let mut s = ExecutionSummary::new(&task_id, ExecutionStatus::Completed);
            s.result = Some("release artefacts rebuilt".to_string());
            (ExecutionStatus::Completed, s)
        }
        Err(reason) => {
            println!("task aborted: {reason}");
            let mut s = ExecutionSummary::new(&task_id, ExecutionStatus::Aborted);
            s.error_message = Some(reason);
            (ExecutionStatus::Aborted, s)
        }
    };
    summary.actual_cost = Some(if status == ExecutionStatus::Completed {
        0.31
    } else {
        0.05
    });
    summary.start_time = Some(started);
    summary.end_time = Some(ended);
    summary.duration_ms = u64::try_from((ended - started).num_milliseconds()).ok();
    summary.logs = vec![format!("limits: {limits:?}")];

    let reply = client.report_execution(&summary).await?;
    if reply.queued {
        println!(
            "report queued ({} pending): {}",
            client.pending_reports(),
            reply.message
        );
    } else {
        println!(
            "approvald says: success={} message={:?}",
            reply.success, reply.message
        );
    }
    Ok(())
}
