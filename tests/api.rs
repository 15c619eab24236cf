//! The API contract: JSON-RPC over HTTP and WebSocket, events over SSE, health and metrics,
//! and bad input of every shape answered with the right error kind while nothing changes.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn pending_count(s: &TestServer) -> usize {
    s.call(ADMIN, "tool.approval.list", json!({})).await["items"]
        .as_array()
        .unwrap()
        .len()
}

async fn raw(s: &TestServer, token: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let mut req = s
        .http()
        .post(format!("{}/rpc", s.url))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_input_gets_the_right_error_kind_and_stores_nothing() {
    let s = TestServer::start("", vec![]).await;
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        ("malformed JSON", Some(GATEWAY), "{\"jsonrpc\":".into(), 200, "parse_error"),
        ("not an object", Some(GATEWAY), "42".into(), 200, "invalid_request"),
        ("wrong version", Some(GATEWAY), r#"{"jsonrpc":"1.0","id":1,"method":"tool.approval.get"}"#.into(), 200, "invalid_request"),
        ("unknown method", Some(GATEWAY), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.nope"}"#.into(), 200, "method_not_found"),
        ("params not object", Some(GATEWAY), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":[1]}"#.into(), 200, "invalid_params"),
        ("wrong type", Some(GATEWAY), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"tool":5,"command":"x"}}"#.into(), 200, "invalid_params"),
        ("unknown field", Some(GATEWAY), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"tool":"t","command":"x","colour":"red"}}"#.into(), 200, "invalid_params"),
        ("empty tool", Some(GATEWAY), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"tool":" ","command":"x"}}"#.into(), 200, "invalid_params"),
        ("nothing to show", Some(GATEWAY), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"tool":"t"}}"#.into(), 200, "invalid_params"),
        ("bad risk", Some(GATEWAY), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"tool":"t","command":"x","risk_class":"spicy"}}"#.into(), 200, "invalid_params"),
        ("bad id", Some(GATEWAY), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"id":"not-a-uuid","tool":"t","command":"x"}}"#.into(), 200, "invalid_params"),
        ("negative cost", Some(GATEWAY), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"tool":"t","command":"x","estimated_cost":-1}}"#.into(), 200, "invalid_params"),
        ("no token", None, r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"tool":"t","command":"x"}}"#.into(), 401, "unauthorized"),
        ("wrong token", Some("guess-guess-guess"), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"tool":"t","command":"x"}}"#.into(), 401, "unauthorized"),
        ("wrong scope", Some(ALICE), r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{"tool":"t","command":"x"}}"#.into(), 200, "unauthorized"),
        ("oversized", Some(GATEWAY), format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tool.approval.request","params":{{"tool":"t","command":"{}"}}}}"#, "x".repeat(70_000)), 413, "payload_too_large"),
    ];
    for (what, token, body, status, kind) in cases {
        let (got_status, answer) = raw(&s, token, body).await;
        assert_eq!(got_status, status, "{what}: {answer}");
        assert_eq!(answer["error"]["data"]["kind"], kind, "{what}: {answer}");
        assert_eq!(answer["jsonrpc"], "2.0", "{what}");
    }
    assert_eq!(pending_count(&s).await, 0, "nothing was stored");
    // The server is still fine.
    let r = s.request(json!({ "tool": "t", "command": "x" })).await;
    assert_eq!(r["status"], "pending");
}

#[tokio::test]
async fn ids_unknown_ambiguous_short_and_decisions_unknown() {
    let s = TestServer::start("", vec![]).await;
    let a = "abcdef01-0000-4000-8000-000000000001";
    let b = "abcdef02-0000-4000-8000-000000000002";
    s.request(json!({ "id": a, "tool": "t", "command": "x" }))
        .await;
    s.request(json!({ "id": b, "tool": "t", "command": "y" }))
        .await;
    let (kind, err) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": "abcdef0", "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "ambiguous_id");
    assert_eq!(err["data"]["candidates"].as_array().unwrap().len(), 2);
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": "abc", "decision": "approve" }),
        )
        .await;
    assert_eq!(
        kind, "invalid_params",
        "prefixes shorter than 6 are refused"
    );
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": "ffffffff-0000-4000-8000-000000000000", "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "unknown_id");
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": "'; DROP TABLE approvals; --", "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "invalid_params");
    let (kind, err) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": a, "decision": "maybe" }),
        )
        .await;
    assert_eq!(kind, "invalid_params");
    assert!(err["message"].as_str().unwrap().contains("approve-once"));
    for id in [a, b] {
        assert_eq!(s.get(id).await["status"], "pending");
    }
    // A unique prefix works.
    let ok = s
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": "abcdef01", "decision": "approve" }),
        )
        .await;
    assert_eq!(ok["id"], a);
}

#[tokio::test]
async fn explicit_ids_are_idempotent_for_the_same_content_and_refused_otherwise() {
    let (chat_a, chat_b) = channels();
    let extra =
        "[delivery]\nmode = \"targets\"\ntargets = [{ channel = \"chat-a\", to = \"ops\" }]\n";
    let s = TestServer::start(extra, as_channels(&[&chat_a, &chat_b])).await;
    let id = "0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
    let first = s
        .request(json!({ "id": id, "tool": "t", "command": "x" }))
        .await;
    let retry = s
        .request(json!({ "id": id, "tool": "t", "command": "x" }))
        .await;
    assert_eq!(first["id"], retry["id"]);
    assert_eq!(
        chat_a.deliveries().len(),
        1,
        "a retry never sends a second prompt"
    );
    let (kind, _) = s
        .error_kind(
            GATEWAY,
            "tool.approval.request",
            json!({ "id": id, "tool": "t", "command": "other", "wait": false }),
        )
        .await;
    assert_eq!(kind, "duplicate_id");
    assert_eq!(s.get(id).await["request"]["command"], "x");
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let extra = r#"
[[tokens]]
name = "old"
token = "old-token-123"
scopes = ["admin"]
expires_at = "2020-01-01T00:00:00Z"
"#;
    let s = TestServer::start(extra, vec![]).await;
    let (status, answer) = raw(
        &s,
        Some("old-token-123"),
        r#"{"jsonrpc":"2.0","id":1,"method":"tool.approval.list"}"#,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(answer["error"]["data"]["kind"], "unauthorized");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test]
async fn wait_blocks_until_resolution_and_get_list_paginate() {
    let s = TestServer::start("", vec![]).await;
    let r = s.request(json!({ "tool": "t", "command": "x" })).await;
    let id = r["id"].as_str().unwrap().to_string();
    let waiter = s.spawn_wait(&id);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!waiter.is_finished());
    let decided = s
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer["result"]["status"], "approved");
    // The waiting caller and the decider are told the same outcome.
    assert_eq!(answer["result"], decided);
    assert_eq!(
        answer["result"]["approvals"][0]["approver"]["person"],
        "alice"
    );
    assert!(answer["result"]["resolved_at"].is_string());

    // wait with a short timeout on a pending one answers pending.
    let p = s.request(json!({ "tool": "t", "command": "y" })).await;
    let w = s
        .call(
            GATEWAY,
            "tool.approval.wait",
            json!({ "id": p["id"], "timeout_ms": 50 }),
        )
        .await;
    assert_eq!(w["status"], "pending");

    for i in 0..5 {
        s.request(json!({ "tool": "t", "command": format!("page{i}") }))
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = s
            .call(
                ADMIN,
                "tool.approval.list",
                json!({ "status": "pending", "limit": 2, "cursor": cursor }),
            )
            .await;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        if page["next_cursor"].is_null() {
            break;
        }
        cursor = page["next_cursor"].clone();
    }
    assert_eq!(seen.len(), 6);
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 6);
}

#[tokio::test]
async fn websocket_rpc_with_notifications_and_sse_events() {
    let s = TestServer::start("", vec![]).await;
    // SSE first, so it sees everything.
    let sse = s
        .http()
        .get(format!("{}/events", s.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let unauth = s
        .http()
        .get(format!("{}/events", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    let mut sse = sse.bytes_stream();

    let req = s.ws_request(GATEWAY, "");
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // A waiting request over the socket does not block a second message on it.
    ws.send(Message::text(
        json!({ "jsonrpc": "2.0", "id": "w1", "method": "tool.approval.request", "params": { "tool": "t", "command": "over ws" } }).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text("{broken".to_string())).await.unwrap();

    let mut id = None;
    let mut got_parse_error = false;
    let mut got_result = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got_result.is_none() {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("ws answer in time")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v["error"]["data"]["kind"] == "parse_error" {
            got_parse_error = true;
        } else if v["method"] == "tool.approval.requested" {
            let new_id = v["params"]["id"].as_str().unwrap().to_string();
            s.call(
                BOB,
                "tool.approval.resolve",
                json!({ "id": new_id, "decision": "deny" }),
            )
            .await;
            id = Some(new_id);
        } else if v["id"] == "w1" {
            got_result = Some(v);
        }
    }
    assert!(got_parse_error);
    let result = got_result.unwrap();
    assert_eq!(result["result"]["status"], "denied");
    assert_eq!(result["result"]["id"].as_str(), id.as_deref());

    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(text.contains("event: tool.approval.requested")
        && text.contains("event: tool.approval.resolved"))
    {
        let chunk = tokio::time::timeout_at(deadline, sse.next())
            .await
            .expect("sse events in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains(id.as_deref().unwrap()));
}

#[tokio::test]
async fn health_and_metrics() {
    let s = TestServer::start("", vec![]).await;
    let r = s.request(json!({ "tool": "t", "command": "x" })).await;
    s.call(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": r["id"], "decision": "approve" }),
    )
    .await;
    s.request(json!({ "tool": "t", "command": "y" })).await;
    s.rpc(
        CAROL,
        "tool.approval.resolve",
        json!({ "id": r["id"], "decision": "approve" }),
    )
    .await;
    let health: Value = s
        .http()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = s
        .http()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "approvald_requests_total 2",
        "approvald_pending 1",
        "approvald_decisions_total{verdict=\"approve\",transport=\"api\"} 1",
        "approvald_refusals_total{kind=\"not_an_approver\"} 1",
        "approvald_time_to_decision_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn batches_and_notifications() {
    let s = TestServer::start("", vec![]).await;
    let body = json!([
        { "jsonrpc": "2.0", "id": 1, "method": "tool.approval.request", "params": { "tool": "t", "command": "a", "wait": false } },
        { "jsonrpc": "2.0", "id": 2, "method": "no.such" },
        { "jsonrpc": "2.0", "method": "tool.approval.request", "params": { "tool": "t", "command": "b", "wait": false } },
    ]);
    let (status, answer) = raw(&s, Some(GATEWAY), body.to_string()).await;
    assert_eq!(status, 200);
    let answers = answer.as_array().unwrap();
    assert_eq!(
        answers.len(),
        2,
        "the notification gets no answer: {answer}"
    );
    assert_eq!(answers[0]["result"]["status"], "pending");
    assert_eq!(answers[1]["error"]["data"]["kind"], "method_not_found");
    assert_eq!(
        pending_count(&s).await,
        2,
        "the notification was still carried out"
    );
    let (_, answer) = raw(&s, Some(GATEWAY), "[]").await;
    assert_eq!(answer["error"]["data"]["kind"], "invalid_request");
}

/// A stream client picks which notifications it is sent (`?events=`): a gateway that only
/// makes calls asks for none and gets its answers alone; a watcher of outcomes gets only those;
/// a method that does not exist is refused, not taken as "nothing".
#[tokio::test]
async fn stream_clients_choose_their_events() {
    let s = TestServer::start("", vec![]).await;
    let ws_url = |query: &str| s.ws_request(GATEWAY, query);
    let sse = |query: &str| {
        s.http()
            .get(format!("{}/events{query}", s.url))
            .bearer_auth(ADMIN)
            .send()
    };

    // Refused: an unknown method, on either stream.
    match tokio_tungstenite::connect_async(ws_url("?events=tool.approval.bogus")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("tool.approval.bogus"), "{body}");
        }
        other => panic!("an unknown event method was accepted: {other:?}"),
    }
    assert_eq!(sse("?events=nope").await.unwrap().status(), 400);

    let outcomes_sse = sse("?events=tool.approval.resolved").await.unwrap();
    assert_eq!(outcomes_sse.status(), 200);
    let mut outcomes_sse = outcomes_sse.bytes_stream();
    let (mut outcomes, _) =
        tokio_tungstenite::connect_async(ws_url("?events=tool.approval.resolved"))
            .await
            .unwrap();
    let (mut caller, _) = tokio_tungstenite::connect_async(ws_url("?events=none"))
        .await
        .unwrap();

    let id = "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f";
    caller
        .send(Message::text(
            json!({ "jsonrpc": "2.0", "id": "w1", "method": "tool.approval.request",
                    "params": { "id": id, "tool": "t", "command": "quiet" } })
            .to_string(),
        ))
        .await
        .unwrap();
    // Decided once it is pending (until then the id is unknown).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.rpc(ADMIN, "tool.approval.get", json!({ "id": id })).await["result"]["status"]
        != "pending"
    {
        assert!(tokio::time::Instant::now() < deadline, "never pending");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.call(
        BOB,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "deny" }),
    )
    .await;

    // The caller: its answer and nothing else.
    let msg = tokio::time::timeout_at(deadline, caller.next())
        .await
        .expect("answer in time")
        .unwrap()
        .unwrap();
    let answer: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(answer["id"], "w1", "{answer}");
    assert_eq!(answer["result"]["status"], "denied");
    // A second call on it proves nothing else was queued before its answer.
    caller
        .send(Message::text(
            json!({ "jsonrpc": "2.0", "id": "g1", "method": "tool.approval.get",
                    "params": { "id": id } })
            .to_string(),
        ))
        .await
        .unwrap();
    let msg = tokio::time::timeout_at(deadline, caller.next())
        .await
        .expect("answer in time")
        .unwrap()
        .unwrap();
    let next: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(
        next["id"], "g1",
        "a notification reached a client that asked for none: {next}"
    );

    // The outcome watcher: the outcome, not the request.
    let msg = tokio::time::timeout_at(deadline, outcomes.next())
        .await
        .expect("outcome in time")
        .unwrap()
        .unwrap();
    let note: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(note["method"], "tool.approval.resolved", "{note}");
    assert_eq!(note["params"]["id"], id);

    let mut text = String::new();
    while !text.contains("event: tool.approval.resolved") {
        let chunk = tokio::time::timeout_at(deadline, outcomes_sse.next())
            .await
            .expect("sse outcome in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains(id));
    assert!(!text.contains("event: tool.approval.requested"), "{text}");
}
