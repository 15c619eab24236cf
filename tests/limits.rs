//! Abuse protection: request rate limits per token, agent and session (error kind
//! `rate_limited` with a retry-after, 429 on the assistant protocol, counted and audited), and
//! anti-fatigue folding of identical pending requests (one prompt, every caller answered, never
//! across requesters or sessions).

mod support;

use std::time::Duration;

use approvald_channel::{TestChannel, Transport};
use serde_json::{Value, json};
use support::*;

const TARGETS: &str = r#"
[delivery]
mode = "targets"
targets = [{ channel = "chat-a", to = "ops" }]
"#;

#[tokio::test]
async fn requests_over_a_tokens_or_sessions_rate_are_refused_with_when_to_retry() {
    let chat = TestChannel::new("chat-a", Transport::Discord);
    let s = TestServer::start(
        &format!(
            "{TARGETS}\n[limits]\nrequests_per_minute_per_token = 60\nrequests_per_minute_per_session = 2\nburst = 3\nfold_identical = false\n"
        ),
        as_channels(&[&chat]),
    )
    .await;
    for n in 0..3 {
        s.request(json!({ "tool": "shell", "command": format!("echo {n}") }))
            .await;
    }
    let (kind, err) = s
        .error_kind(
            GATEWAY,
            "tool.approval.request",
            json!({ "tool": "shell", "command": "echo 4", "wait": false }),
        )
        .await;
    assert_eq!(kind, "rate_limited", "{err}");
    assert_eq!(err["data"]["scope"], "token");
    assert!(err["data"]["retry_after_seconds"].as_u64().unwrap() >= 1);
    assert!(err["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    // Another token has its own bucket; a session's bucket is per session.
    for n in 0..3 {
        s.call(
            BOTH,
            "tool.approval.request",
            json!({ "tool": "t", "command": format!("s1 {n}"), "session_key": "s1", "wait": false }),
        )
        .await;
    }
    let (kind, err) = s
        .error_kind(
            BOTH,
            "tool.approval.request",
            json!({ "tool": "t", "command": "s1 4", "session_key": "s1", "wait": false }),
        )
        .await;
    assert_eq!(
        (kind.as_str(), &err["data"]["scope"]),
        ("rate_limited", &json!("session"))
    );

    // The assistant protocol answers 429 with Retry-After and its own shape.
    let resp = s
        .http()
        .post(format!("{}/api/approve", s.url))
        .bearer_auth(GATEWAY)
        .json(&json!({ "task_id": "t-9", "task_type": "chat" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["approved"], false);
    assert_eq!(body["kind"], "rate_limited");
    assert!(body["retry_after_seconds"].as_u64().unwrap() >= 1);

    // Nothing refused was stored or prompted; operators see it in the audit log and metrics.
    let list = s.call(ADMIN, "tool.approval.list", json!({})).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 6);
    assert_eq!(chat.deliveries().len(), 6);
    let audit = s.call(ADMIN, "audit.list", json!({})).await;
    let limited: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "rate_limited")
        .collect();
    assert_eq!(
        limited.len(),
        2,
        "once per scope and key in a window: {limited:?}"
    );
    assert_eq!(limited[0]["detail"]["token"], "gateway");
    let metrics = s
        .http()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("approvald_rate_limited_total{scope=\"token\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn identical_pending_requests_fold_into_one_prompt_and_every_caller_gets_the_decision() {
    let chat = TestChannel::new("chat-a", Transport::Discord);
    let s = TestServer::start(TARGETS, as_channels(&[&chat])).await;
    let ask = json!({
        "tool": "shell", "command": "rm -rf /srv/cache", "agent_id": "cleaner",
        "session_key": "agent:cleaner:main", "requester": { "id": "dave@example.com" },
    });
    let first = s.request(ask.clone()).await;
    let second = s.request(ask.clone()).await;
    assert_eq!(second["id"], first["id"], "folded into the pending one");
    let id = first["id"].as_str().unwrap().to_string();
    // A caller that brings its own id folds too, and is answered with the pending one's id.
    let mut with_id = ask.clone();
    with_id["id"] = json!("0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e");
    let third = s.request(with_id).await;
    assert_eq!(third["id"], first["id"]);
    // Its own id still works everywhere: it names the request it was folded into.
    let by_own_id = s.get("0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e").await;
    assert_eq!(by_own_id["id"], first["id"]);

    // Not folded: another requester, another session, another command.
    let mut other_person = ask.clone();
    other_person["requester"] = json!({ "id": "alice@example.com" });
    let mut other_session = ask.clone();
    other_session["session_key"] = json!("agent:cleaner:other");
    let mut other_command = ask.clone();
    other_command["command"] = json!("rm -rf /srv/tmp");
    for other in [other_person, other_session, other_command] {
        let r = s.request(other).await;
        assert_ne!(r["id"], first["id"]);
    }
    chat.wait_until(Duration::from_secs(5), "four prompts", |c| c.len() >= 4)
        .await;
    let prompts: Vec<String> = chat
        .deliveries()
        .iter()
        .map(|(_, p, _)| p.view.approval_id.clone())
        .collect();
    assert_eq!(
        prompts.iter().filter(|p| **p == id).count(),
        1,
        "one prompt"
    );

    // Two callers waiting on the folded request both get the one decision.
    let a = s.spawn_wait(&id);
    let b = s.spawn_wait("0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e");
    s.call(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve-once" }),
    )
    .await;
    for w in [a, b] {
        let r = w.await.unwrap();
        assert_eq!(r["result"]["status"], "approved", "{r}");
    }
    let audit = events_of(&s.audit(&id).await);
    assert_eq!(
        audit.iter().filter(|e| *e == "folded").count(),
        2,
        "{audit:?}"
    );

    // Once decided, the same ask is a new request again.
    let after = s.request(ask).await;
    assert_ne!(after["id"], first["id"]);
    assert_eq!(after["status"], "pending");
}

#[tokio::test]
async fn folding_can_be_turned_off() {
    let s = TestServer::start("[limits]\nfold_identical = false\n", vec![]).await;
    let ask = json!({ "tool": "shell", "command": "make deploy" });
    let a = s.request(ask.clone()).await;
    let b = s.request(ask).await;
    assert_ne!(a["id"], b["id"]);
}
