//! Item 11: nothing is lost on restart. Pending requests survive (kill -9 included), timers
//! are re-armed from the stored deadline, buttons sent before the restart still work, and a
//! caller that reconnects with `tool.approval.wait` gets the decision.

mod support;

use std::io::Write;
use std::time::Duration;

use approvald_channel::{ActionData, Decision, InboundReply, TestChannel, Transport};
use serde_json::json;
use support::daemon::Daemon;
use support::*;

const TARGET_A: &str =
    "[delivery]\nmode = \"targets\"\ntargets = [{ channel = \"chat-a\", to = \"ops\" }]\n";

/// The first instance runs on its own runtime, which is then dropped with every task on it
/// (timers, in-flight work): as abrupt as a crash, for everything that lives in memory.
#[test]
fn pending_requests_survive_restart_with_timers_rearmed_and_old_buttons_working() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();

    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let (long_id, short_id, old_button) = rt1.block_on(async {
        let a = TestChannel::new("chat-a", Transport::Discord);
        let s = TestServer::start_in(&dir, TARGET_A, as_channels(&[&a])).await;
        let long = s
            .request(json!({ "tool": "deploy", "command": "deploy prod", "timeout_ms": 60_000 }))
            .await;
        let short = s
            .request(json!({ "tool": "deploy", "command": "deploy staging", "timeout_ms": 1_500 }))
            .await;
        let (_, prompt, _) = a
            .deliveries()
            .into_iter()
            .find(|(_, p, _)| p.view.approval_id == long["id"].as_str().unwrap())
            .unwrap();
        let button = prompt
            .actions
            .iter()
            .find(|x| x.decision == Decision::ApproveOnce)
            .unwrap()
            .data
            .clone();
        (
            long["id"].as_str().unwrap().to_string(),
            short["id"].as_str().unwrap().to_string(),
            button,
        )
    });
    rt1.shutdown_background();

    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        let a = TestChannel::new("chat-a", Transport::Discord);
        let s = TestServer::start_in(&dir, TARGET_A, as_channels(&[&a])).await;
        assert_eq!(s.get(&long_id).await["status"], "pending");
        // The short one's timer was re-armed from the stored deadline: it expires on its own.
        let waited = s
            .call(
                GATEWAY,
                "tool.approval.wait",
                json!({ "id": short_id, "timeout_ms": 10_000 }),
            )
            .await;
        assert_eq!(waited["status"], "expired");
        assert_eq!(waited["decision"], "timeout");
        // Its prompt, sent by the previous process, is edited by this one.
        a.wait_until(Duration::from_secs(5), "expired edit after restart", |_| {
            a.updates()
                .iter()
                .any(|(m, p)| m.message_id == "m2" && p.view.status == "expired")
        })
        .await;

        // A caller reconnects and waits; a button pressed on the old prompt resolves it.
        let waiter = s.spawn_wait(&long_id);
        let data: ActionData = old_button.parse().unwrap();
        let reply = a.press(&data.approval_id, data.decision, user("222")).await;
        assert!(matches!(reply, InboundReply::Accepted { .. }), "{reply:?}");
        let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer["result"]["status"], "approved");
        assert_eq!(answer["result"]["decided_by"]["person"], "bob");
        a.wait_until(
            Duration::from_secs(5),
            "approved edit of the pre-restart prompt",
            |_| {
                a.updates()
                    .iter()
                    .any(|(m, p)| m.message_id == "m1" && p.view.status == "approved")
            },
        )
        .await;
    });
}

// ----- the real binary, killed with SIGKILL ---------------------------------------------

#[tokio::test]
async fn kill_dash_nine_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = tmp.path().join("config.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\ndata_dir = {:?}\n{}",
        tmp.path().join("data").display().to_string(),
        base_for_binary()
    )
    .unwrap();
    drop(f);

    let mut d = Daemon::start(&config, &url);
    d.ready().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let r = rpc_at(&url, GATEWAY, "tool.approval.request", json!({ "tool": "t", "command": format!("job {i}"), "wait": false, "timeout_ms": 600_000 })).await;
        ids.push(r["result"]["id"].as_str().unwrap().to_string());
    }
    let short = rpc_at(
        &url,
        GATEWAY,
        "tool.approval.request",
        json!({ "tool": "t", "command": "short", "wait": false, "timeout_ms": 1_500 }),
    )
    .await;
    let short_id = short["result"]["id"].as_str().unwrap().to_string();
    // Resolve some; each acknowledged answer must survive.
    for id in &ids[..10] {
        let r = rpc_at(
            &url,
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
        assert_eq!(r["result"]["status"], "approved");
    }
    d.kill9();

    let mut d = Daemon::start(&config, &url);
    d.ready().await;
    for (i, id) in ids.iter().enumerate() {
        let r = rpc_at(&url, ADMIN, "tool.approval.get", json!({ "id": id })).await;
        let want = if i < 10 { "approved" } else { "pending" };
        assert_eq!(r["result"]["status"], want, "{id}: {r}");
        if i < 10 {
            assert_eq!(
                r["result"]["approvals"].as_array().unwrap().len(),
                1,
                "resolved once"
            );
        }
    }
    // Resolving an already-resolved one again is refused, not doubled.
    let r = rpc_at(
        &url,
        BOB,
        "tool.approval.resolve",
        json!({ "id": ids[0], "decision": "deny" }),
    )
    .await;
    assert_eq!(r["error"]["data"]["kind"], "already_resolved");
    // The short one expires after the restart, as a timeout.
    let w = rpc_at(
        &url,
        GATEWAY,
        "tool.approval.wait",
        json!({ "id": short_id, "timeout_ms": 10_000 }),
    )
    .await;
    assert_eq!(w["result"]["status"], "expired", "{w}");
    // A caller reconnecting gets a decision made after the restart.
    let waiter = spawn_wait(&url, &ids[20]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    rpc_at(
        &url,
        BOB,
        "tool.approval.resolve",
        json!({ "id": ids[20], "decision": "deny", "reason": "after restart" }),
    )
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer["result"]["status"], "denied");
    assert_eq!(answer["result"]["reason"], "after restart");
}

/// A crash in the middle of sending prompts: after the restart the prompts that were never
/// sent are sent (once the dead process has been silent long enough), and none twice.
#[test]
fn a_fan_out_cut_short_by_a_crash_is_finished_after_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let two_targets = "[delivery]\nmode = \"targets\"\ntargets = [{ channel = \"chat-a\", to = \"ops\" }, { channel = \"chat-a\", to = \"leads\" }]\n";

    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let id = rt1.block_on(async {
        let a = TestChannel::new("chat-a", Transport::Discord);
        a.stall_target("leads");
        let s = TestServer::start_in(&dir, two_targets, as_channels(&[&a])).await;
        let r = s
            .request(json!({ "tool": "deploy", "command": "deploy prod", "timeout_ms": 120_000 }))
            .await;
        a.wait_until(Duration::from_secs(5), "the prompt to ops", |c| {
            !c.is_empty()
        })
        .await;
        r["id"].as_str().unwrap().to_string()
    });
    rt1.shutdown_background();

    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        let a = TestChannel::new("chat-a", Transport::Discord);
        let s = TestServer::start_in(&dir, two_targets, as_channels(&[&a])).await;
        a.wait_until(
            Duration::from_secs(30),
            "the prompt the crash cut short",
            |_| {
                a.deliveries()
                    .iter()
                    .any(|(t, p, _)| t.to == "leads" && p.view.approval_id == id)
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent: Vec<String> = a.deliveries().into_iter().map(|(t, _, _)| t.to).collect();
        assert_eq!(
            sent,
            vec!["leads".to_string()],
            "ops already had its prompt"
        );
        let got = s.get(&id).await;
        let mut to: Vec<String> = got["delivered_to"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["to"].as_str().unwrap_or_default().to_string())
            .collect();
        to.sort();
        assert_eq!(to, vec!["leads", "ops"], "{got}");
    });
}
