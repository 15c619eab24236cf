//! The ToolApprovalForwarder's behaviour (issue items 1-10 and 12), through the public
//! JSON-RPC API with in-process test channels standing in for chat platforms.

mod support;

use std::time::{Duration, Instant};

use approvald_channel::{
    ActionData, Decision, InboundReply, Markup, RefusalKind, TestChannel, Transport,
};
use futures::StreamExt;
use serde_json::{Value, json};
use support::*;

const TARGETS_A_B: &str = r#"
[delivery]
mode = "targets"
targets = [{ channel = "chat-a", to = "ops" }, { channel = "chat-b", to = "C-ops" }]
"#;

fn delivered(result: &Value) -> Vec<(String, String)> {
    result["delivered_to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["channel"].as_str().unwrap().to_string(),
                d["to"].as_str().unwrap().to_string(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn origin_a() -> Value {
    json!({ "channel": "chat-a", "to": "dm-42" })
}

// ----- 1. delivery modes, filters, dedupe, nowhere to deliver ----------------------------

#[tokio::test]
async fn delivery_modes_session_targets_both_with_dedupe() {
    let (a, b) = channels();
    for (mode, want) in [
        ("session", vec![("chat-a", "dm-42")]),
        ("targets", vec![("chat-a", "ops"), ("chat-b", "C-ops")]),
        (
            "both",
            vec![("chat-a", "dm-42"), ("chat-a", "ops"), ("chat-b", "C-ops")],
        ),
    ] {
        let extra = format!(
            "[delivery]\nmode = \"{mode}\"\ntargets = [{{ channel = \"chat-a\", to = \"ops\" }}, {{ channel = \"chat-b\", to = \"C-ops\" }}, {{ channel = \"chat-a\", to = \"ops\" }}]\n"
        );
        let s = TestServer::start(&extra, as_channels(&[&a, &b])).await;
        let r = s
            .request(json!({ "tool": "shell", "command": "make deploy", "origin": origin_a() }))
            .await;
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .collect();
        assert_eq!(delivered(&r), want, "mode {mode}");
        // The duplicated target got exactly one prompt.
        assert_eq!(
            r["delivered_to"].as_array().unwrap().len(),
            want.len(),
            "mode {mode}"
        );
    }
    // Origin equal to a target in `both` mode is delivered once.
    let extra =
        "[delivery]\nmode = \"both\"\ntargets = [{ channel = \"chat-a\", to = \"dm-42\" }]\n";
    let s = TestServer::start(extra, as_channels(&[&a, &b])).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "x", "origin": origin_a() }))
        .await;
    assert_eq!(r["delivered_to"].as_array().unwrap().len(), 1, "{r}");
}

#[tokio::test]
async fn agent_and_session_filters_gate_forwarding_but_requests_stay_recorded() {
    let (a, b) = channels();
    let extra = r#"
[delivery]
mode = "targets"
agent_filter = ["ops", "/^prod-[0-9]+$/"]
session_filter = ["main"]
targets = [{ channel = "chat-a", to = "ops" }]
"#;
    let s = TestServer::start(extra, as_channels(&[&a, &b])).await;
    let hit = s
        .request(json!({ "tool": "t", "command": "c", "agent_id": "prod-42", "session_key": "agent:prod-42:main" }))
        .await;
    assert_eq!(hit["delivered_to"].as_array().unwrap().len(), 1);
    let substring = s
        .request(
            json!({ "tool": "t", "command": "c", "agent_id": "my-ops-bot", "session_key": "main" }),
        )
        .await;
    assert_eq!(substring["delivered_to"].as_array().unwrap().len(), 1);
    let wrong_agent = s
        .request(
            json!({ "tool": "t", "command": "c", "agent_id": "prod-x", "session_key": "main" }),
        )
        .await;
    let wrong_session = s
        .request(json!({ "tool": "t", "command": "c", "agent_id": "ops", "session_key": "side" }))
        .await;
    for r in [&wrong_agent, &wrong_session] {
        assert_eq!(r["delivered_to"], json!([]), "{r}");
        assert_eq!(r["status"], "pending");
        // Still recorded and visible to operators.
        let got = s.get(r["id"].as_str().unwrap()).await;
        assert_eq!(got["status"], "pending");
    }
    let pending = s
        .call(ALICE, "tool.approval.list", json!({ "status": "pending" }))
        .await;
    assert_eq!(pending["items"].as_array().unwrap().len(), 4);
    assert_eq!(a.deliveries().len(), 2);
}

#[tokio::test]
async fn no_target_and_no_watcher_still_records_and_says_delivered_to_empty() {
    let s = TestServer::start("", vec![]).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "rm -rf build", "origin": origin_a() }))
        .await;
    assert_eq!(r["status"], "pending");
    assert_eq!(r["delivered_to"], json!([]));
    let id = r["id"].as_str().unwrap();
    let approved = s
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    assert_eq!(approved["status"], "approved");
}

#[tokio::test]
async fn unknown_target_channel_is_a_config_error_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[storage]\ndata_dir = {:?}\n[delivery]\ntargets = [{{ channel = \"nope\", to = \"x\" }}]\n",
        tmp.path().display().to_string()
    );
    let config = approvald::config::Config::from_toml_str(&text).unwrap();
    let err = approvald::server::build_engine(config, vec![])
        .await
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("delivery.targets[0].channel"),
        "{err}"
    );
}

// ----- 2. concurrent fan-out, failures isolated, deliveries kept -------------------------

#[tokio::test]
async fn fan_out_is_concurrent_and_one_failing_or_stalled_target_blocks_nobody() {
    let (a, b) = channels();
    a.fail_target("broken");
    a.stall_target("slow");
    let extra = r#"
[delivery]
mode = "targets"
wait_ms = 400
targets = [{ channel = "chat-a", to = "broken" }, { channel = "chat-a", to = "slow" }, { channel = "chat-a", to = "ops" }, { channel = "chat-b", to = "C-ops" }]
"#;
    let s = TestServer::start(extra, as_channels(&[&a, &b])).await;
    let started = Instant::now();
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy" }))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a stalled target held the caller"
    );
    assert_eq!(
        delivered(&r),
        vec![
            ("chat-a".to_string(), "ops".to_string()),
            ("chat-b".to_string(), "C-ops".to_string())
        ]
    );
    let id = r["id"].as_str().unwrap();
    let got = s.get(id).await;
    let failed: Vec<_> = got["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["error"].is_string())
        .collect();
    assert_eq!(failed.len(), 1, "{got}");
    assert_eq!(failed[0]["target"]["to"], "broken");
    let audit = events_of(&s.audit(id).await);
    assert!(audit.contains(&"delivery_failed".to_string()), "{audit:?}");
    assert_eq!(audit.iter().filter(|e| *e == "delivered").count(), 2);
    // The kept message references are what resolution edits.
    s.call(
        BOB,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "deny" }),
    )
    .await;
    a.wait_until(Duration::from_secs(5), "edit on chat-a", |_| {
        a.updates().len() == 1
    })
    .await;
    b.wait_until(Duration::from_secs(5), "edit on chat-b", |_| {
        b.updates().len() == 1
    })
    .await;
}

// ----- 3. shared templates, per-platform escaping ---------------------------------------

#[tokio::test]
async fn prompt_shows_id_tool_command_risk_requester_agent_expiry_and_reply_with_platform_escaping()
{
    let a = TestChannel::new("chat-a", Transport::Telegram).with_markup(Markup::TelegramHtml);
    let b = TestChannel::new("chat-b", Transport::Slack);
    let s = TestServer::start(TARGETS_A_B, as_channels(&[&a, &b])).await;
    let r = s
        .request(json!({
            "tool": "shell", "command": "echo '<b>pwned</b>' && rm -rf build", "risk_class": "critical",
            "agent_id": "release-bot", "requester": { "id": "u-7", "display_name": "Eve" },
        }))
        .await;
    let id = r["id"].as_str().unwrap();
    let (_, html, _) = a.deliveries().into_iter().next().unwrap();
    let (_, plain, _) = b.deliveries().into_iter().next().unwrap();
    for p in [&html, &plain] {
        assert!(p.text.contains(id), "{}", p.text);
        assert!(p.text.contains(&id[..8]));
        assert!(p.text.contains("shell"));
        assert!(p.text.to_lowercase().contains("critical"));
        assert!(p.text.contains("Eve (u-7)"));
        assert!(p.text.contains("release-bot"));
        assert!(p.text.contains("Expires in"));
        assert!(p.text.contains(&format!("/approve {}", &id[..8])));
        // Buttons carry versioned, secret-free data naming the approval and decision.
        let decisions: Vec<Decision> = p.actions.iter().map(|a| a.decision).collect();
        assert_eq!(decisions, Decision::ALL.to_vec());
        for action in &p.actions {
            let data: ActionData = action.data.parse().unwrap();
            assert_eq!(data.approval_id, id);
            assert!(action.data.len() <= 64);
        }
    }
    assert!(
        html.text.contains("&lt;b&gt;pwned&lt;/b&gt;"),
        "{}",
        html.text
    );
    assert!(!html.text.contains("<b>pwned"), "{}", html.text);
    assert!(plain.text.contains("echo '<b>pwned</b>'"), "{}", plain.text);
}

#[tokio::test]
async fn allowed_decisions_limit_the_buttons_and_the_answers() {
    let (a, b) = channels();
    let s = TestServer::start(TARGETS_A_B, as_channels(&[&a, &b])).await;
    let r = s
        .request(json!({ "tool": "t", "command": "c", "allowed_decisions": ["approve-once"] }))
        .await;
    let (_, p, _) = a.deliveries().into_iter().next().unwrap();
    let buttons: Vec<_> = p.actions.iter().map(|a| a.decision).collect();
    assert_eq!(buttons, vec![Decision::ApproveOnce, Decision::Deny]);
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": r["id"], "decision": "approve-always" }),
        )
        .await;
    assert_eq!(kind, "invalid_params");
    assert_eq!(s.get(r["id"].as_str().unwrap()).await["status"], "pending");
}

// ----- 4. first wins, atomically; distinct error; idempotent repeat ---------------------

#[tokio::test]
async fn first_resolution_wins_later_ones_get_already_resolved_and_repeats_are_idempotent() {
    let s = TestServer::start("", vec![]).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy" }))
        .await;
    let id = r["id"].as_str().unwrap();
    let won = s
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": &id[..8], "decision": "allow-once", "reason": "ok" }),
        )
        .await;
    assert_eq!(won["status"], "approved");
    assert_eq!(won["decision"], "approve");
    assert_eq!(won["scope"], "once");
    assert_eq!(won["approvals"][0]["approver"]["person"], "alice");
    assert_eq!(won["approvals"][0]["approver"]["transport"], "api");
    assert_eq!(won["approvals"][0]["reason"], "ok");

    let (kind, err) = s
        .error_kind(
            BOB,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "deny" }),
        )
        .await;
    assert_eq!(kind, "already_resolved");
    assert_eq!(err["data"]["decided_by"]["person"], "alice");
    assert_eq!(err["data"]["decision"], "approve");

    let again = s
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve-once" }),
        )
        .await;
    assert_eq!(again["status"], "approved");
    assert_eq!(again["approvals"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_resolutions_have_exactly_one_winner() {
    let s = TestServer::start("", vec![]).await;
    for round in 0..5 {
        let r = s
            .request(json!({ "tool": "t", "command": format!("c{round}") }))
            .await;
        let id = r["id"].as_str().unwrap().to_string();
        let tokens = [ALICE, BOB, DAVE, ALICE, BOB, DAVE];
        let decisions = [
            "approve",
            "deny",
            "approve-always",
            "deny",
            "approve",
            "deny",
        ];
        let attempts = tokens.iter().zip(decisions).map(|(t, d)| {
            let s = &s;
            let id = id.clone();
            async move {
                s.rpc(
                    t,
                    "tool.approval.resolve",
                    json!({ "id": id, "decision": d }),
                )
                .await
            }
        });
        let answers = futures::future::join_all(attempts).await;
        let final_state = s.get(&id).await;
        assert_ne!(final_state["status"], "pending");
        let winner = &final_state["decided_by"]["person"];
        let recorded = final_state["approvals"].as_array().unwrap();
        assert_eq!(
            recorded.len(),
            1,
            "exactly one decision stored: {final_state}"
        );
        for a in answers {
            if let Some(res) = a.get("result") {
                // Successes are the winner or the winner's idempotent repeat.
                assert_eq!(&res["decided_by"]["person"], winner, "{a}");
            } else {
                assert_eq!(a["error"]["data"]["kind"], "already_resolved", "{a}");
            }
        }
    }
}

// ----- 5. quorum -----------------------------------------------------------------------

#[tokio::test]
async fn quorum_needs_distinct_people_shows_progress_and_any_deny_rejects() {
    let (a, b) = channels();
    let extra = format!("[approvals]\nmin_approvals = 2\n{TARGETS_A_B}");
    let s = TestServer::start(&extra, as_channels(&[&a, &b])).await;
    let mut events = s.engine.events().subscribe();
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy prod" }))
        .await;
    let id = r["id"].as_str().unwrap();

    let one = s
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    assert_eq!(one["status"], "pending");
    // Watchers are told of the progress.
    let update = loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event in time")
            .unwrap();
        if ev.method == "tool.approval.updated" {
            break ev;
        }
    };
    assert_eq!(update.params()["approval"]["id"], id);
    assert_eq!(update.params()["progress"], "1 of 2 approvals: Alice");
    // Prompts everywhere show the progress.
    a.wait_until(Duration::from_secs(5), "progress edit", |_| {
        a.updates()
            .iter()
            .any(|(_, p)| p.text.contains("1 of 2 approvals: Alice") && !p.actions.is_empty())
    })
    .await;

    // Alice again, from another surface (her discord id): still one approval.
    let reply = a.press(id, Decision::ApproveOnce, user("111")).await;
    assert!(
        matches!(reply, InboundReply::Accepted { ref status, .. } if status == "pending"),
        "{reply:?}"
    );
    let now = s.get(id).await;
    assert_eq!(now["status"], "pending");
    assert_eq!(now["approvals"].as_array().unwrap().len(), 1);

    let two = s
        .call(
            BOB,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    assert_eq!(two["status"], "approved");
    assert_eq!(two["approvals"].as_array().unwrap().len(), 2);

    // A deny rejects at once, whatever the approvals so far.
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy staging" }))
        .await;
    let id = r["id"].as_str().unwrap();
    s.call(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve" }),
    )
    .await;
    let denied = s
        .call(
            BOB,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "reject", "reason": "not today" }),
        )
        .await;
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reason"], "not today");
}

/// The same with the caller blocked in `tool.approval.request` and no chat channel: the path
/// where decisions are checked against the engine's copy of the request rather than the store.
#[tokio::test]
async fn quorum_with_a_caller_blocked_on_its_request_counts_each_person_once() {
    let s = TestServer::start("[approvals]\nmin_approvals = 2\n", vec![]).await;
    let id = "5f0c7a52-1111-4e0e-9a5e-000000000001";
    let caller = {
        let url = s.url.clone();
        tokio::spawn(async move {
            rpc_at(
                &url,
                GATEWAY,
                "tool.approval.request",
                json!({ "id": id, "tool": "shell", "command": "deploy prod" }),
            )
            .await
        })
    };
    eventually("the request is stored", || async {
        s.rpc(ADMIN, "tool.approval.get", json!({ "id": id })).await["result"]["status"]
            == "pending"
    })
    .await;
    for (token, left) in [(ALICE, "pending"), (ALICE, "pending"), (BOB, "approved")] {
        let r = s
            .call(
                token,
                "tool.approval.resolve",
                json!({ "id": id, "decision": "approve" }),
            )
            .await;
        assert_eq!(r["status"], left, "{r}");
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), caller)
        .await
        .expect("the caller is answered")
        .unwrap();
    assert_eq!(answer["result"]["status"], "approved", "{answer}");
    let approvers: Vec<&str> = answer["result"]["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approver"]["display_name"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, ["Alice", "Bob"]);
    assert_eq!(s.get(id).await["approvals"].as_array().unwrap().len(), 2);
    // Settled: a late decision is refused, as stored.
    let (kind, _) = s
        .error_kind(
            CAROL,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "deny" }),
        )
        .await;
    assert!(
        kind == "already_resolved" || kind == "not_an_approver",
        "{kind}"
    );
    let (kind, _) = s
        .error_kind(
            BOB,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "deny" }),
        )
        .await;
    assert_eq!(kind, "already_resolved");
}

/// A resolver handed the id at once (as a gateway's own approver bot may be) decides while the
/// request is still being stored, again and again: every blocked caller still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decision_racing_the_request_it_decides_still_answers_the_caller() {
    let s = TestServer::start("", vec![]).await;
    let url = s.url.clone();
    let rounds =
        futures::stream::iter(0..1500).map(|i| {
            let url = url.clone();
            async move {
                let id = uuid::Uuid::new_v4().to_string();
                let caller =
                    {
                        let (url, id) = (url.clone(), id.clone());
                        tokio::spawn(async move {
                            rpc_at(&url, GATEWAY, "tool.approval.request",
                        json!({ "id": id, "tool": "shell", "command": format!("race {i}") })).await
                        })
                    };
                loop {
                    let r = rpc_at(
                        &url,
                        ALICE,
                        "tool.approval.resolve",
                        json!({ "id": id, "decision": "approve" }),
                    )
                    .await;
                    match r["error"]["data"]["kind"].as_str() {
                        Some("unknown_id") => tokio::task::yield_now().await,
                        None => break,
                        Some(other) => panic!("resolve refused: {other}: {r}"),
                    }
                }
                let answer = tokio::time::timeout(Duration::from_secs(10), caller)
                    .await
                    .unwrap_or_else(|_| panic!("the caller of round {i} was never answered"))
                    .unwrap();
                assert_eq!(answer["result"]["status"], "approved", "{answer}");
            }
        });
    rounds.buffer_unordered(16).collect::<Vec<_>>().await;
}

// ----- 6. only approvers ---------------------------------------------------------------

#[tokio::test]
async fn only_configured_approvers_may_decide_and_refusals_change_nothing() {
    let (a, b) = channels();
    let s = TestServer::start(TARGETS_A_B, as_channels(&[&a, &b])).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy" }))
        .await;
    let id = r["id"].as_str().unwrap();

    // Carol is a person but not an approver; a stranger on chat-a is nobody.
    let (kind, _) = s
        .error_kind(
            CAROL,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "not_an_approver");
    let reply = a.press(id, Decision::ApproveOnce, user("555")).await;
    assert!(
        matches!(
            reply,
            InboundReply::Refused {
                kind: RefusalKind::NotAnApprover,
                ..
            }
        ),
        "{reply:?}"
    );
    let reply = a.press(id, Decision::Deny, user("333")).await;
    assert!(matches!(
        reply,
        InboundReply::Refused {
            kind: RefusalKind::NotAnApprover,
            ..
        }
    ));
    // A request-only token cannot decide either.
    let (kind, _) = s
        .error_kind(
            GATEWAY,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "not_an_approver");
    // Alice's slack id is not an approver id on the discord-like surface of someone else.
    let reply = b.press(id, Decision::ApproveOnce, user("111")).await;
    assert!(matches!(
        reply,
        InboundReply::Refused {
            kind: RefusalKind::NotAnApprover,
            ..
        }
    ));

    let now = s.get(id).await;
    assert_eq!(now["status"], "pending");
    assert_eq!(now["approvals"], json!([]));
    let refused = s
        .audit(id)
        .await
        .into_iter()
        .filter(|e| e["event"] == "refused")
        .count();
    assert_eq!(refused, 5);

    // An id listed as approver on the channel may decide, with platform identity.
    let reply = a.press(&id[..6], Decision::ApproveOnce, user("999")).await;
    assert!(
        matches!(reply, InboundReply::Accepted { ref status, .. } if status == "approved"),
        "{reply:?}"
    );
    let now = s.get(id).await;
    let who = &now["decided_by"];
    assert_eq!(who["transport"], "discord");
    assert_eq!(who["platform_user_id"], "999");
    assert_eq!(who["channel_id"], "room");
}

// ----- 7. self-approval ----------------------------------------------------------------

#[tokio::test]
async fn self_approval_is_refused_by_person_token_and_platform_id() {
    let (a, b) = channels();
    let s = TestServer::start(TARGETS_A_B, as_channels(&[&a, &b])).await;

    // The requester is alice (by her requester id): she cannot approve from any surface.
    let r = s
        .request(json!({ "tool": "t", "command": "c", "requester": { "id": "alice@example.com" } }))
        .await;
    let id = r["id"].as_str().unwrap();
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "self_approval");
    let reply = a.press(id, Decision::ApproveOnce, user("111")).await;
    assert!(
        matches!(
            reply,
            InboundReply::Refused {
                kind: RefusalKind::SelfApproval,
                ..
            }
        ),
        "{reply:?}"
    );
    let reply = b.press(id, Decision::ApproveOnce, user("U111")).await;
    assert!(matches!(
        reply,
        InboundReply::Refused {
            kind: RefusalKind::SelfApproval,
            ..
        }
    ));
    assert_eq!(s.get(id).await["status"], "pending");
    // Someone else can.
    s.call(
        BOB,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve" }),
    )
    .await;

    // Requester given as a platform id of an unlinked person.
    let r = s
        .request(json!({ "tool": "t", "command": "c2", "requester": { "id": "discord:999" } }))
        .await;
    let reply = a
        .press(
            r["id"].as_str().unwrap(),
            Decision::ApproveOnce,
            user("999"),
        )
        .await;
    assert!(
        matches!(
            reply,
            InboundReply::Refused {
                kind: RefusalKind::SelfApproval,
                ..
            }
        ),
        "{reply:?}"
    );

    // The same token asking and approving.
    let r = s
        .call(
            BOTH,
            "tool.approval.request",
            json!({ "tool": "t", "command": "c3", "wait": false }),
        )
        .await;
    let (kind, _) = s
        .error_kind(
            BOTH,
            "tool.approval.resolve",
            json!({ "id": r["id"], "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "self_approval");
}

// ----- 8. expiry -----------------------------------------------------------------------

#[tokio::test]
async fn expiry_resolves_as_timeout_edits_prompts_notifies_operators_and_is_audited() {
    let (a, b) = channels();
    let extra = r#"
[approvals]
default_timeout_ms = 60000
max_timeout_ms = 120000
[delivery]
mode = "targets"
targets = [{ channel = "chat-a", to = "ops" }, { channel = "chat-b", to = "C-ops" }]
timeout_notice_targets = [{ channel = "chat-b", to = "C-oncall" }]
"#;
    let s = TestServer::start(extra, as_channels(&[&a, &b])).await;
    let mut events = s.engine.events().subscribe();
    let started = Instant::now();
    let r = s
        .call(
            GATEWAY,
            "tool.approval.request",
            json!({ "tool": "shell", "command": "sleep", "timeout_ms": 300 }),
        )
        .await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(r["status"], "expired");
    assert_eq!(r["decision"], "timeout", "a timeout is never a denial");
    let id = r["id"].as_str().unwrap();

    for ch in [&a, &b] {
        ch.wait_until(Duration::from_secs(5), "expired edit", |_| {
            ch.updates().iter().any(|(_, p)| {
                p.actions.is_empty() && p.view.status == "expired" && p.text.contains("Expired")
            })
        })
        .await;
    }
    b.wait_until(Duration::from_secs(5), "timeout notice", |_| {
        b.notices()
            .iter()
            .any(|(t, text)| t.to == "C-oncall" && text.contains("timed out") && text.contains(id))
    })
    .await;
    let mut saw_expired = false;
    while let Ok(ev) = events.try_recv() {
        if ev.method == "tool.approval.expired" && ev.params()["id"] == id {
            saw_expired = true;
        }
    }
    assert!(saw_expired);
    // The notice is audited once the platform has answered, a moment after it arrives there.
    eventually("the timeout notice in the audit log", || async {
        events_of(&s.audit(id).await).contains(&"timeout_notice".to_string())
    })
    .await;
    let audit = events_of(&s.audit(id).await);
    assert!(audit.contains(&"expired".to_string()), "{audit:?}");

    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "expired");
    let reply = a.press(id, Decision::ApproveOnce, user("111")).await;
    assert!(matches!(
        reply,
        InboundReply::Refused {
            kind: RefusalKind::Expired,
            ..
        }
    ));

    // Per-request timeouts are capped by max_timeout_ms.
    let r = s
        .request(json!({ "tool": "t", "command": "c", "timeout_ms": 10_000_000 }))
        .await;
    let created: chrono::DateTime<chrono::Utc> = r["created_at"].as_str().unwrap().parse().unwrap();
    let expires: chrono::DateTime<chrono::Utc> = r["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((expires - created).num_milliseconds(), 120_000);
}

// ----- 9. resolved anywhere, updated everywhere ----------------------------------------

#[tokio::test]
async fn a_decision_on_one_surface_edits_every_prompt_on_every_surface() {
    let (a, b) = channels();
    let extra = r#"
[delivery]
mode = "both"
targets = [{ channel = "chat-a", to = "ops" }, { channel = "chat-b", to = "C-ops" }, { channel = "chat-b", to = "U-bob-dm" }]
"#;
    let s = TestServer::start(extra, as_channels(&[&a, &b])).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy", "origin": origin_a() }))
        .await;
    let id = r["id"].as_str().unwrap();
    assert_eq!(r["delivered_to"].as_array().unwrap().len(), 4);
    // Bob clicks in the slack-like surface.
    let reply = b.press(id, Decision::ApproveOnce, user("U222")).await;
    assert!(matches!(reply, InboundReply::Accepted { .. }), "{reply:?}");
    a.wait_until(Duration::from_secs(5), "both chat-a edits", |_| {
        a.updates().len() == 2
    })
    .await;
    b.wait_until(Duration::from_secs(5), "both chat-b edits", |_| {
        b.updates().len() == 2
    })
    .await;
    let edited: std::collections::BTreeSet<String> = a
        .updates()
        .into_iter()
        .chain(b.updates())
        .map(|(m, p)| {
            assert!(p.actions.is_empty(), "buttons removed");
            assert!(p.text.contains("Approved"), "{}", p.text);
            assert!(p.text.contains("Bob via slack"), "{}", p.text);
            format!("{}/{}/{}", m.channel, m.to, m.message_id)
        })
        .collect();
    let sent: std::collections::BTreeSet<String> = a
        .deliveries()
        .into_iter()
        .chain(b.deliveries())
        .map(|(_, _, m)| format!("{}/{}/{}", m.channel, m.to, m.message_id))
        .collect();
    assert_eq!(
        edited, sent,
        "every sent message, and only those, was edited"
    );
}

// ----- 10. rules-based approver and standing rules --------------------------------------

#[tokio::test]
async fn rules_allow_deny_ask_and_approve_always_adds_a_revocable_standing_rule() {
    let (a, b) = channels();
    let extra = format!(
        r#"
{TARGETS_A_B}
[[rules]]
name = "ls-is-fine"
tool = "shell"
command = '^ls( |$)'
risk = ["low"]
action = "allow"

[[rules]]
name = "no-root-wipe"
tool = "/^(shell|exec)$/"
command = 'rm\s+-rf\s+/$'
action = "deny"

[[rules]]
name = "bots-ask"
agent = "bot"
action = "ask"
"#
    );
    let s = TestServer::start(&extra, as_channels(&[&a, &b])).await;
    let allowed = s
        .call(
            GATEWAY,
            "tool.approval.request",
            json!({ "tool": "shell", "command": "ls -la", "risk_class": "low" }),
        )
        .await;
    assert_eq!(allowed["status"], "approved");
    assert_eq!(allowed["decided_by"]["transport"], "rules");
    assert_eq!(
        allowed["delivered_to"],
        json!([]),
        "nobody is asked when a rule decides"
    );
    let denied = s
        .call(
            GATEWAY,
            "tool.approval.request",
            json!({ "tool": "exec", "command": "rm -rf /" }),
        )
        .await;
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["decided_by"]["approver_id"], "rules:no-root-wipe");
    // Same command at higher risk: the allow rule does not match, so people are asked.
    let asked = s
        .request(json!({ "tool": "shell", "command": "ls -la", "risk_class": "high" }))
        .await;
    assert_eq!(asked["status"], "pending");

    // approve-always: a standing rule for this agent + tool + exact command.
    let first = s
        .request(json!({ "tool": "deploy", "command": "deploy web", "agent_id": "ci" }))
        .await;
    let resolved = s
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": first["id"], "decision": "allow-always" }),
        )
        .await;
    assert_eq!(resolved["scope"], "always");
    let rules = s.call(ALICE, "rules.list", json!({})).await;
    let standing = rules["standing"].as_array().unwrap();
    assert_eq!(standing.len(), 1, "{rules}");
    assert_eq!(standing[0]["command"], "deploy web");
    assert_eq!(standing[0]["created_by"]["person"], "alice");
    let rule_id = standing[0]["id"].as_str().unwrap().to_string();

    let again = s
        .call(
            GATEWAY,
            "tool.approval.request",
            json!({ "tool": "deploy", "command": "deploy web", "agent_id": "ci" }),
        )
        .await;
    assert_eq!(again["status"], "approved");
    assert_eq!(
        again["decided_by"]["approver_id"],
        format!("rules:standing:{rule_id}")
    );
    // A different command or agent is not covered.
    for other in [
        json!({ "tool": "deploy", "command": "deploy web --force", "agent_id": "ci" }),
        json!({ "tool": "deploy", "command": "deploy web", "agent_id": "other" }),
    ] {
        assert_eq!(s.request(other).await["status"], "pending");
    }
    // Revoking needs admin, and then the call is asked again.
    let (kind, _) = s
        .error_kind(ALICE, "rules.revoke", json!({ "id": rule_id }))
        .await;
    assert_eq!(kind, "unauthorized");
    s.call(ADMIN, "rules.revoke", json!({ "id": &rule_id[..8] }))
        .await;
    let after = s
        .request(json!({ "tool": "deploy", "command": "deploy web", "agent_id": "ci" }))
        .await;
    assert_eq!(after["status"], "pending");
    let rules = s.call(ADMIN, "rules.list", json!({})).await;
    assert!(rules["standing"][0]["revoked_at"].is_string());
}

#[tokio::test]
async fn disabled_factors_are_honoured() {
    let extra = r#"
[approvals]
disabled_approvers = ["rules_based"]
[[rules]]
tool = "shell"
action = "allow"
"#;
    let s = TestServer::start(extra, vec![]).await;
    let r = s.request(json!({ "tool": "shell", "command": "ls" })).await;
    assert_eq!(r["status"], "pending", "rules are off");

    let extra = r#"
[approvals]
disabled_approvers = ["user_request"]
"#;
    let s = TestServer::start(extra, vec![]).await;
    let r = s.request(json!({ "tool": "shell", "command": "ls" })).await;
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": r["id"], "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "not_an_approver");
}

// ----- relay by admin ------------------------------------------------------------------

#[tokio::test]
async fn an_admin_may_relay_an_approver_identity_others_may_not() {
    let s = TestServer::start("", vec![]).await;
    let r = s.request(json!({ "tool": "t", "command": "c" })).await;
    let relayed = json!({
        "approver_id": "x", "display_name": "Bob on the phone", "transport": "telegram",
        "platform_user_id": "222", "person": "bob",
    });
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": r["id"], "decision": "approve", "approver": relayed }),
        )
        .await;
    assert_eq!(kind, "unauthorized");
    let ok = s
        .call(
            ADMIN,
            "tool.approval.resolve",
            json!({ "id": r["id"], "decision": "approve", "approver": relayed }),
        )
        .await;
    assert_eq!(ok["decided_by"]["person"], "bob");
    assert_eq!(ok["decided_by"]["transport"], "telegram");
}

// ----- 12. audit -----------------------------------------------------------------------

#[tokio::test]
async fn audit_log_records_request_delivery_refusals_decision_and_resolution_with_identity() {
    let (a, b) = channels();
    let s = TestServer::start(TARGETS_A_B, as_channels(&[&a, &b])).await;
    let r = s
        .request(json!({ "tool": "t", "command": "c", "requester": { "id": "alice@example.com" } }))
        .await;
    let id = r["id"].as_str().unwrap();
    s.rpc(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve" }),
    )
    .await;
    a.press(id, Decision::ApproveOnce, user("555")).await;
    s.call(
        BOB,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "deny", "reason": "no" }),
    )
    .await;
    let entries = s.audit(id).await;
    let kinds = events_of(&entries);
    assert_eq!(
        kinds,
        vec![
            "requested",
            "delivered",
            "delivered",
            "refused",
            "refused",
            "decision",
            "resolved"
        ],
        "{entries:#?}"
    );
    let refused: Vec<&Value> = entries.iter().filter(|e| e["event"] == "refused").collect();
    assert_eq!(refused[0]["detail"]["kind"], "self_approval");
    assert_eq!(refused[0]["actor"]["person"], "alice");
    assert_eq!(refused[1]["detail"]["kind"], "not_an_approver");
    assert_eq!(refused[1]["transport"], "discord");
    let decision = entries.iter().find(|e| e["event"] == "decision").unwrap();
    assert_eq!(decision["actor"]["person"], "bob");
    assert_eq!(decision["detail"]["reason"], "no");
    // Only admins read the audit trail.
    let (kind, _) = s.error_kind(ALICE, "audit.list", json!({})).await;
    assert_eq!(kind, "unauthorized");
}

// ----- chat commands: /pending and replies to a prompt --------------------------------

#[tokio::test]
async fn chat_receivers_can_list_pending_for_approvers_and_find_the_approval_behind_a_prompt() {
    let (a, b) = channels();
    let s = TestServer::start(TARGETS_A_B, as_channels(&[&a, &b])).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy prod" }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    a.wait_until(Duration::from_secs(5), "the prompt on chat-a", |calls| {
        calls
            .iter()
            .any(|c| matches!(c, approvald_channel::RecordedCall::Deliver { .. }))
    })
    .await;
    let message = a.deliveries()[0].2.clone();

    // A reply to the prompt message finds its approval, also through a fresh lookup by
    // channel, chat and message id; any other message finds nothing.
    let sink = a.sink();
    assert_eq!(sink.approval_for_message(&message).await, Some(id.clone()));
    let mut other = message.clone();
    other.message_id = "no-such-message".into();
    assert_eq!(sink.approval_for_message(&other).await, None);

    // /pending: an approver sees the request; a stranger is refused and sees nothing.
    let views = sink
        .pending("chat-a", &user("999"))
        .await
        .expect("approver");
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].approval_id, id);
    assert_eq!(views[0].command.as_deref(), Some("deploy prod"));
    let refused = sink.pending("chat-a", &user("555")).await;
    assert!(
        matches!(
            refused,
            Err(InboundReply::Refused {
                kind: RefusalKind::NotAnApprover,
                ..
            })
        ),
        "{refused:?}"
    );

    // Once resolved it is no longer pending.
    a.press(&id, Decision::Deny, user("999")).await;
    assert!(
        sink.pending("chat-a", &user("999"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A gateway that picks its own ids may hand one to whoever decides at once, so the decision
/// can arrive while the request is still being written. It waits for the request instead of
/// failing as `unknown_id` (a lost click, or a retry loop for the resolver), and the caller
/// waiting on its request is answered with that decision.
#[tokio::test]
async fn a_decision_that_overtakes_its_request_being_stored_waits_for_it() {
    let s = TestServer::start("", vec![]).await;
    let gateway = s.engine.directory().authenticate(GATEWAY).unwrap();
    let alice = s.engine.directory().authenticate(ALICE).unwrap();
    let by_alice = |id: &str, decision| decided_by(&alice, id, decision);
    // A connection to read with is open already (opening one takes longer than a write).
    let warm = s
        .request(json!({ "tool": "t", "command": "warm-up" }))
        .await;
    s.get(warm["id"].as_str().unwrap()).await;
    // Keep the store's writer busy, so the request below is still queued for writing when
    // the decision looks it up.
    let busy = keep_writer_busy(&s, &gateway, 1000);
    tokio::task::yield_now().await;
    let id = "3f2a6b1c-9d4e-4f7a-8b2c-1d0e9f8a7b6c";
    let ask = s.engine.request_and_wait(ask_for(id, "deploy"), &gateway);
    let decide = s
        .engine
        .resolve(by_alice(id, approvald_channel::Decision::ApproveOnce));
    // The request is started first (its expiry timer armed, its write queued), then the
    // decision, as a resolver handed the id at once would.
    let (asked, decided) = tokio::join!(ask, decide);
    let asked = asked.expect("the request is stored and its caller answered");
    let decided = decided.expect("the decision waits for its request rather than failing");
    assert_eq!(decided.status, approvald::domain::Status::Approved);
    assert_eq!(asked.status, approvald::domain::Status::Approved);
    assert_eq!(
        asked.approvals, decided.approvals,
        "the caller sees Alice's decision"
    );
    assert_eq!(s.get(id).await["status"], "approved");
    for b in busy {
        b.await.unwrap().unwrap();
    }

    // A decision that arrives before its request does (another connection was faster)
    // waits a moment for it too.
    let early_id = "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    let decide = s
        .engine
        .resolve(by_alice(early_id, approvald_channel::Decision::Deny));
    let ask = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.engine
            .request_and_wait(ask_for(early_id, "deploy again"), &gateway)
            .await
    };
    let (decided, asked) = tokio::join!(decide, ask);
    let asked = asked.expect("the request is stored and its caller answered");
    let decided = decided.expect("the early decision waited for its request");
    assert_eq!(decided.status, approvald::domain::Status::Denied);
    assert_eq!(asked.status, approvald::domain::Status::Denied);

    // One that leaves a moment before its request, as a resolver handed the id as the request
    // is sent: the request usually arrives, and is handed over, while the decision waits for
    // it before looking in the store.
    let quick_id = "7e3f4a5b-6c7d-4e8f-a0b1-c2d3e4f5a6b7";
    let (decided, asked) = tokio::join!(
        s.engine
            .resolve(by_alice(quick_id, approvald_channel::Decision::ApproveOnce)),
        s.engine
            .request_and_wait(ask_for(quick_id, "deploy once more"), &gateway),
    );
    let decided = decided.expect("the decision found its request");
    let asked = asked.expect("the caller is answered");
    assert_eq!(decided.status, approvald::domain::Status::Approved);
    assert_eq!(
        asked.approvals, decided.approvals,
        "the caller sees Alice's decision"
    );

    // A decision on a request settled before (a stale button) is refused as settled, after
    // that wait, not as unknown.
    let again = s
        .engine
        .resolve(by_alice(early_id, approvald_channel::Decision::ApproveOnce))
        .await;
    assert!(
        matches!(
            again,
            Err(approvald::error::ApprovalError::AlreadyResolved { .. })
        ),
        "{again:?}"
    );
    assert_eq!(s.get(early_id).await["status"], "denied");

    // An id that never comes is still unknown, after that moment.
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": "6d2e3f4a-5b6c-4d7e-9f8a-0b1c2d3e4f5a", "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "unknown_id");
}

/// A decision handed a request whose insert is still queued (see `Handover::Queued`) is written
/// behind that insert, yet nobody hears of the outcome before the request itself; and when the
/// request it was checked against is not stored in the end (it folded into an identical one),
/// the decision lands on what its id names instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_on_a_request_still_queued_is_announced_after_it_and_follows_a_fold() {
    use approvald::domain::Status;

    let s = TestServer::start("", vec![]).await;
    let gateway = s.engine.directory().authenticate(GATEWAY).unwrap();
    let alice = s.engine.directory().authenticate(ALICE).unwrap();
    let approve = |id: &str| decided_by(&alice, id, approvald_channel::Decision::ApproveOnce);
    let mut events = s.engine.events().subscribe();
    // The store's writer is kept busy, so the requests below are still queued for writing
    // while their decisions are checked.
    let busy = keep_writer_busy(&s, &gateway, 200);
    tokio::task::yield_now().await;

    // Twenty requests, each with its decision sent with it.
    let ids: Vec<String> = (0..20)
        .map(|n| format!("4b5c6d7e-8f90-4a1b-8c2d-3e4f5a6b7c{n:02}"))
        .collect();
    let cycles = ids.iter().map(|id| {
        let (engine, gateway) = (s.engine.clone(), gateway.clone());
        let (ask, decide) = (ask_for(id, &format!("deploy {id}")), approve(id));
        async move {
            tokio::join!(
                engine.request_and_wait(ask, &gateway),
                engine.resolve(decide)
            )
        }
    });
    for (asked, decided) in futures::future::join_all(cycles).await {
        assert_eq!(
            asked.expect("the caller is answered").status,
            Status::Approved
        );
        assert_eq!(
            decided.expect("the decision lands").status,
            Status::Approved
        );
    }
    for b in busy {
        b.await.unwrap().unwrap();
    }
    // Each request was announced before its outcome, and its audit trail is in that order.
    let mut seen: std::collections::HashMap<String, Vec<&str>> = Default::default();
    while let Ok(ev) = events.try_recv() {
        let params = ev.params();
        let id = params["id"]
            .as_str()
            .or_else(|| params["approval"]["id"].as_str())
            .unwrap_or_default()
            .to_string();
        seen.entry(id).or_default().push(ev.method);
    }
    for id in &ids {
        assert_eq!(
            seen.get(id).map(Vec::as_slice),
            Some(&["tool.approval.requested", "tool.approval.resolved"][..]),
            "events of {id}"
        );
        let audit = s.audit(id).await;
        let trail: Vec<&str> = audit
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            trail,
            ["requested", "decision", "resolved"],
            "audit of {id}"
        );
    }

    // A request that folds into an identical pending one while its decision waits for it:
    // the decision approves the pending one, and both callers are answered with that.
    let pending = s
        .engine
        .request(
            ask_for("9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "same ask"),
            &gateway,
        )
        .await
        .expect("stored");
    assert_eq!(pending.status, Status::Pending);
    let twin = "1f2e3d4c-5b6a-4978-8877-665544332211";
    let (decided, asked) = tokio::join!(
        s.engine.resolve(approve(twin)),
        s.engine
            .request_and_wait(ask_for(twin, "same ask"), &gateway),
    );
    let decided = decided.expect("the decision follows the fold");
    let asked = asked.expect("the folded caller is answered");
    assert_eq!(decided.request.id, pending.request.id);
    assert_eq!(decided.status, Status::Approved);
    assert_eq!(asked.request.id, pending.request.id);
    assert_eq!(asked.status, Status::Approved);
    assert_eq!(s.get(twin).await["status"], "approved");
}

/// `n` requests made at once in the background: the store's writer has a queue for a while.
fn keep_writer_busy(
    s: &TestServer,
    gateway: &approvald::directory::Caller,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<(), approvald::error::ApprovalError>>> {
    (0..n)
        .map(|n| {
            let engine = s.engine.clone();
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let new = approvald::engine::NewRequest {
                    tool: "t".into(),
                    command: Some(format!("background {n}")),
                    ..approvald::engine::NewRequest::default()
                };
                engine.request(new, &gateway).await.map(|_| ())
            })
        })
        .collect()
}

/// A request for `command` under the id its gateway picked.
fn ask_for(id: &str, command: &str) -> approvald::engine::NewRequest {
    approvald::engine::NewRequest {
        id: Some(id.into()),
        tool: "shell".into(),
        command: Some(command.into()),
        ..approvald::engine::NewRequest::default()
    }
}

/// `decision` on `id` by the holder of `token`, over the API.
fn decided_by(
    token: &approvald::directory::Caller,
    id: &str,
    decision: approvald_channel::Decision,
) -> approvald::engine::DecisionAttempt {
    approvald::engine::DecisionAttempt {
        id: id.into(),
        decision,
        reason: None,
        actor: approvald::engine::Actor::Caller {
            caller: token.clone(),
            transport: approvald::domain::Transport::Api,
        },
    }
}
