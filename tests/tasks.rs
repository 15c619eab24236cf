//! Tasks through to their end over the assistant protocol and JSON-RPC: enqueue, a human
//! decision, constraints, start, reports, the queue figures, budgets, aborts from every
//! operator surface, constraint violations, invalid transitions and idempotent retries.

mod support;

use std::time::Duration;

use approvald_channel::{TestChannel, Transport};
use futures::StreamExt;
use serde_json::{Value, json};
use support::*;

const TASKS: &str = r#"
[budget]
daily_usd = 20.0
task_type_limits = { chat = 1.0, workflow = 10.0 }
default_time_limit_ms = 60000
token_limit = 4000
parallelism = 2

[tasks]
approve_wait_ms = 200
retry_after_seconds = 3

[delivery]
mode = "targets"
targets = [{ channel = "chat-a", to = "ops" }]
"#;

/// Auto-approve `batch` tasks so spend can be built up without people.
const BATCH_RULE: &str = r#"
[[rules]]
name = "batch-auto"
tool = "batch"
action = "allow"
"#;

/// What is sent, with which token, where; the status and error kind expected.
type BadCase<'a> = (&'a str, Option<&'a str>, &'a str, String, u16, &'a str);

async fn start(extra: &str) -> (TestServer, TestChannel) {
    let chat = TestChannel::new("chat-a", Transport::Discord);
    let s = TestServer::start(&format!("{TASKS}\n{extra}"), as_channels(&[&chat])).await;
    (s, chat)
}

async fn send(
    s: &TestServer,
    method: reqwest::Method,
    token: Option<&str>,
    path: &str,
    body: Option<String>,
) -> (u16, Value) {
    let mut req = s.http().request(method, format!("{}{path}", s.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post(s: &TestServer, token: &str, path: &str, body: Value) -> (u16, Value) {
    send(
        s,
        reqwest::Method::POST,
        Some(token),
        path,
        Some(body.to_string()),
    )
    .await
}

async fn get(s: &TestServer, token: &str, path: &str) -> (u16, Value) {
    send(s, reqwest::Method::GET, Some(token), path, None).await
}

fn task(id: &str, kind: &str, cost: f64) -> Value {
    json!({
        "task_id": id, "task_type": kind, "description": format!("{kind} task {id}"),
        "estimated_cost": cost, "estimated_duration_ms": 5000,
        "context": { "agent_id": "planner", "command": format!("run {id}") },
        "timestamp": "2026-11-29T10:00:00Z",
    })
}

async fn enqueue(s: &TestServer, body: Value) -> Value {
    let (status, answer) = post(s, GATEWAY, "/api/approve", body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn status_of(s: &TestServer, task_id: &str) -> String {
    let (code, v) = get(s, ADMIN, &format!("/api/queue/task/{task_id}")).await;
    assert_eq!(code, 200, "{v}");
    v["data"]["status"].as_str().unwrap().to_string()
}

fn constraint(answer: &Value, kind: &str) -> Option<f64> {
    answer["constraints"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?
        .get("value")?
        .as_f64()
}

/// An auto-approved batch task run to completion with this actual cost.
async fn spend(s: &TestServer, task_id: &str, cost: f64) {
    let answer = enqueue(s, task(task_id, "batch", 0.0)).await;
    assert_eq!(answer["approved"], true, "{answer}");
    let (code, r) = post(
        s,
        GATEWAY,
        "/api/execution-report",
        json!({ "task_id": task_id, "status": "completed", "actual_cost": cost, "duration_ms": 1000 }),
    )
    .await;
    assert_eq!((code, &r["success"]), (200, &json!(true)), "{r}");
}

#[tokio::test]
async fn a_task_waits_for_a_human_then_runs_reports_and_is_counted_in_the_queue() {
    let (s, chat) = start("").await;

    let first = enqueue(&s, task("t-1", "workflow", 2.5)).await;
    assert_eq!(first["approved"], false, "{first}");
    assert_eq!(first["pending"], true);
    assert_eq!(first["retry_after_seconds"], 3);
    assert_eq!(first["status"], "pending_approval");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("Awaiting human decision"),
        "{first}"
    );
    assert!(first["constraints"].is_null());
    chat.wait_until(Duration::from_secs(5), "the prompt", |c| !c.is_empty())
        .await;

    // A retry is the same task: same approval, no second prompt.
    let again = enqueue(&s, task("t-1", "workflow", 2.5)).await;
    assert_eq!(again["approval_id"], first["approval_id"]);
    assert_eq!(again["pending"], true);
    assert_eq!(chat.deliveries().len(), 1, "one prompt for one task");
    let prompt = &chat.deliveries()[0].1;
    assert!(prompt.text.contains("workflow task t-1"), "{}", prompt.text);

    // Alice approves through the queue endpoint, with her identity.
    let (code, approved) = post(&s, ALICE, "/api/queue/approve/t-1", json!({})).await;
    assert_eq!(code, 200, "{approved}");
    assert_eq!(approved["success"], true);
    assert_eq!(approved["data"]["status"], "approved");
    assert_eq!(
        approved["data"]["approval"]["decided_by"]["person"],
        "alice"
    );

    // The gateway asks again and gets the decision with constraints: the workflow limit
    // ($10) is tighter than what is left of today's $20.
    let decided = enqueue(&s, task("t-1", "workflow", 2.5)).await;
    assert_eq!(decided["approved"], true, "{decided}");
    assert_eq!(decided["pending"], false);
    assert!(decided["retry_after_seconds"].is_null());
    assert_eq!(constraint(&decided, "cost_limit"), Some(10.0));
    assert_eq!(constraint(&decided, "time_limit"), Some(60000.0));
    assert_eq!(constraint(&decided, "token_limit"), Some(4000.0));
    assert_eq!(constraint(&decided, "parallelism"), Some(2.0));
    let (_, signal) = get(&s, GATEWAY, "/api/abort-signal/t-1").await;
    assert_eq!(signal, json!({ "should_abort": false, "reason": null }));

    // Native start, then the protocol's report.
    let started = s
        .call(GATEWAY, "tool.execution.start", json!({ "task_id": "t-1" }))
        .await;
    assert_eq!(started["task"]["status"], "running");
    assert_eq!(started["constraints"].as_array().unwrap().len(), 4);
    let (code, report) = post(
        &s,
        GATEWAY,
        "/api/execution-report",
        json!({
            "task_id": "t-1", "status": "completed", "result": "deployed",
            "actual_cost": 1.25, "duration_ms": 4000, "logs": ["step 1", "step 2"],
            "start_time": "2026-11-29T10:00:01Z", "end_time": "2026-11-29T10:00:05Z",
            "error_message": null,
        }),
    )
    .await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["success"], true);
    assert!(report["message"].as_str().unwrap().contains("completed"));

    let (_, t) = get(&s, ADMIN, "/api/queue/task/t-1").await;
    let t = &t["data"];
    assert_eq!(t["status"], "completed");
    assert_eq!(t["actual_cost"], 1.25);
    assert_eq!(t["result"], "deployed");
    assert_eq!(t["logs"], json!(["step 1", "step 2"]));
    let steps: Vec<&str> = t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "pending",
            "pending_approval",
            "approved",
            "running",
            "completed"
        ]
    );

    // Queue figures.
    let (_, q) = get(&s, ADMIN, "/api/queue/status").await;
    let q = &q["data"];
    assert_eq!(q["total_tasks"], 1);
    assert_eq!(q["by_status"]["completed"], 1);
    assert_eq!(q["by_status"]["pending_approval"], 0);
    assert_eq!(q["total_cost_usd"], 1.25);
    assert_eq!(q["total_execution_time_ms"], 4000);
    assert_eq!(q["running"], 0);
    assert!(q["timestamp"].is_string());

    // The chat prompt followed the task to its end.
    chat.wait_until(Duration::from_secs(5), "the completed edit", |_| {
        chat.updates()
            .iter()
            .any(|(_, p)| p.text.contains("completed in 4.0 s, cost $1.2500"))
    })
    .await;
    let audit = events_of(&s.audit(first["approval_id"].as_str().unwrap()).await);
    assert_eq!(
        audit.iter().filter(|e| *e == "task").count(),
        2,
        "{audit:?}"
    );
}

#[tokio::test]
async fn over_budget_and_over_type_limit_are_rejected_at_once_with_reasons() {
    let (s, chat) = start(BATCH_RULE).await;

    let chat_task = enqueue(&s, task("c-1", "chat", 2.0)).await;
    assert_eq!(chat_task["approved"], false);
    assert_eq!(chat_task["pending"], false);
    assert_eq!(
        chat_task["reason"],
        "Exceeds chat task limit: $1.00 limit, $2.00 estimated"
    );
    assert_eq!(chat_task["status"], "rejected");

    spend(&s, "b-1", 9.75).await;
    spend(&s, "b-2", 9.75).await;
    let over = enqueue(&s, task("w-1", "workflow", 1.0)).await;
    assert_eq!(over["approved"], false, "{over}");
    assert_eq!(
        over["reason"],
        "Exceeds daily budget: $20.00 limit, $19.50 used"
    );
    let retry = over["retry_after_seconds"].as_u64().expect("retry after");
    assert!((1..=86_400).contains(&retry), "{retry}");
    // A repeat gets the same answer, not a prompt.
    let again = enqueue(&s, task("w-1", "workflow", 1.0)).await;
    assert_eq!(again["reason"], over["reason"]);
    assert!(
        chat.deliveries().is_empty(),
        "policy decided; nobody was asked"
    );

    // An allowed task gets what is left of today's budget as its cost limit.
    let small = enqueue(&s, task("b-3", "batch", 0.1)).await;
    assert_eq!(small["approved"], true);
    assert_eq!(constraint(&small, "cost_limit"), Some(0.5));

    let (_, q) = get(&s, ADMIN, "/api/queue/status").await;
    assert_eq!(q["data"]["by_status"]["rejected"], 2);
    assert_eq!(q["data"]["by_status"]["completed"], 2);
    assert_eq!(q["data"]["by_status"]["approved"], 1);
    assert_eq!(q["data"]["spent_today_usd"], 19.5);
    let (_, rejected) = get(&s, ADMIN, "/api/queue/tasks?status=rejected").await;
    let ids: Vec<&str> = rejected["data"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w-1", "c-1"]);
    let audit = s.audit(over["approval_id"].as_str().unwrap()).await;
    let resolved = audit.iter().find(|e| e["event"] == "resolved").unwrap();
    assert_eq!(resolved["actor"]["approver_id"], "rules:daily-budget");
}

#[tokio::test]
async fn invalid_transitions_and_bad_input_are_refused_and_change_nothing() {
    let (s, _chat) = start(BATCH_RULE).await;
    enqueue(&s, task("p-1", "workflow", 1.0)).await;

    // Not approved yet: no report, no start, no abort.
    let report = json!({ "task_id": "p-1", "status": "completed", "actual_cost": 1.0 });
    let (code, err) = post(&s, GATEWAY, "/api/execution-report", report.clone()).await;
    assert_eq!(
        (code, err["kind"].as_str()),
        (409, Some("invalid_transition")),
        "{err}"
    );
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("waiting for approval")
    );
    let (kind, _) = s
        .error_kind(GATEWAY, "tool.execution.start", json!({ "task_id": "p-1" }))
        .await;
    assert_eq!(kind, "invalid_transition");
    let (code, err) = post(&s, ADMIN, "/api/queue/abort/p-1", json!({})).await;
    assert_eq!(
        (code, err["kind"].as_str()),
        (409, Some("invalid_transition"))
    );
    assert_eq!(status_of(&s, "p-1").await, "pending_approval");

    // Rejected by Bob: never runs.
    let (code, r) = post(
        &s,
        BOB,
        "/api/queue/reject/p-1",
        json!({ "reason": "not now" }),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["data"]["status"], "rejected");
    let (kind, _) = s
        .error_kind(GATEWAY, "tool.execution.start", json!({ "task_id": "p-1" }))
        .await;
    assert_eq!(kind, "invalid_transition");
    let (_, signal) = get(&s, GATEWAY, "/api/abort-signal/p-1").await;
    assert_eq!(signal["should_abort"], true, "a rejected task must not run");

    // A failure reported straight from approved passes through running, then ends.
    enqueue(&s, task("f-1", "batch", 0.0)).await;
    let (code, r) = post(
        &s,
        GATEWAY,
        "/api/execution-report",
        json!({ "task_id": "f-1", "status": "failed", "error_message": "disk full", "duration_ms": 10 }),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    let (_, t) = get(&s, ADMIN, "/api/queue/task/f-1").await;
    assert_eq!(t["data"]["status"], "failed");
    assert_eq!(t["data"]["error_message"], "disk full");
    assert_eq!(t["data"]["execution_text"], "failed: disk full");
    // Ended is ended.
    for (path, body) in [
        (
            "/api/execution-report",
            json!({ "task_id": "f-1", "status": "completed" }),
        ),
        ("/api/queue/abort/f-1", json!({})),
    ] {
        let token = if path.contains("abort") {
            ADMIN
        } else {
            GATEWAY
        };
        let (code, err) = post(&s, token, path, body).await;
        assert_eq!(
            (code, err["kind"].as_str()),
            (409, Some("invalid_transition")),
            "{path}: {err}"
        );
    }
    assert_eq!(status_of(&s, "f-1").await, "failed");

    // Bad input of every shape: a clear error, nothing stored.
    let cases: Vec<BadCase> = vec![
        (
            "no token",
            None,
            "/api/approve",
            task("x-1", "chat", 0.1).to_string(),
            401,
            "unauthorized",
        ),
        (
            "wrong token",
            Some("nope-nope-nope"),
            "/api/approve",
            task("x-1", "chat", 0.1).to_string(),
            401,
            "unauthorized",
        ),
        (
            "resolver may not enqueue",
            Some(ALICE),
            "/api/approve",
            task("x-1", "chat", 0.1).to_string(),
            401,
            "unauthorized",
        ),
        (
            "malformed",
            Some(GATEWAY),
            "/api/approve",
            "{\"task_id\":".into(),
            400,
            "parse_error",
        ),
        (
            "missing task_type",
            Some(GATEWAY),
            "/api/approve",
            r#"{"task_id":"x-1"}"#.into(),
            400,
            "invalid_params",
        ),
        (
            "cost is text",
            Some(GATEWAY),
            "/api/approve",
            r#"{"task_id":"x-1","task_type":"chat","estimated_cost":"lots"}"#.into(),
            400,
            "invalid_params",
        ),
        (
            "negative cost",
            Some(GATEWAY),
            "/api/approve",
            r#"{"task_id":"x-1","task_type":"chat","estimated_cost":-1}"#.into(),
            400,
            "invalid_params",
        ),
        (
            "empty task id",
            Some(GATEWAY),
            "/api/approve",
            r#"{"task_id":" ","task_type":"chat"}"#.into(),
            400,
            "invalid_params",
        ),
        (
            "unknown status",
            Some(GATEWAY),
            "/api/execution-report",
            r#"{"task_id":"f-1","status":"done-ish"}"#.into(),
            400,
            "invalid_params",
        ),
        (
            "bad time",
            Some(GATEWAY),
            "/api/execution-report",
            r#"{"task_id":"f-1","status":"completed","end_time":"yesterday"}"#.into(),
            400,
            "invalid_params",
        ),
        (
            "unknown task",
            Some(GATEWAY),
            "/api/execution-report",
            r#"{"task_id":"nobody-knows","status":"completed"}"#.into(),
            404,
            "unknown_id",
        ),
        (
            "gateway may not approve",
            Some(GATEWAY),
            "/api/queue/approve/p-1",
            "{}".into(),
            401,
            "unauthorized",
        ),
        (
            "bad scope",
            Some(ALICE),
            "/api/queue/approve/p-1",
            r#"{"scope":"forever"}"#.into(),
            400,
            "invalid_params",
        ),
    ];
    for (what, token, path, body, status, kind) in cases {
        let (code, err) = send(&s, reqwest::Method::POST, token, path, Some(body)).await;
        assert_eq!(
            (code, err["kind"].as_str()),
            (status, Some(kind)),
            "{what}: {err}"
        );
        assert!(err["error"].is_string(), "{what}");
    }
    let (code, err) = get(&s, ADMIN, "/api/queue/task/unknown-task").await;
    assert_eq!((code, err["kind"].as_str()), (404, Some("unknown_id")));
    let (code, err) = get(&s, ADMIN, "/api/queue/tasks?status=done").await;
    assert_eq!((code, err["kind"].as_str()), (400, Some("invalid_params")));
    let (_, q) = get(&s, ADMIN, "/api/queue/status").await;
    assert_eq!(q["data"]["total_tasks"], 2, "nothing else was stored: {q}");
    // X-Auth-Token works like Bearer for the queue.
    let resp = s
        .http()
        .get(format!("{}/api/queue/status", s.url))
        .header("x-auth-token", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let health: Value = s
        .http()
        .get(format!("{}/health", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
}

#[tokio::test]
async fn operators_abort_from_the_queue_and_rpc_and_executors_hear_it_both_ways() {
    let (s, chat) = start(BATCH_RULE).await;

    // The executor listens on the WebSocket.
    let req = s.ws_request(GATEWAY, "");
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    // Running task aborted by an admin through the queue endpoint.
    enqueue(&s, task("a-1", "batch", 0.0)).await;
    s.call(GATEWAY, "tool.execution.start", json!({ "task_id": "a-1" }))
        .await;
    let (code, r) = post(
        &s,
        ADMIN,
        "/api/queue/abort/a-1",
        json!({ "reason": "wrong target" }),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["data"]["status"], "aborted");
    let (_, signal) = get(&s, GATEWAY, "/api/abort-signal/a-1").await;
    assert_eq!(
        signal,
        json!({ "should_abort": true, "reason": "wrong target" })
    );
    let note = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a notification in time")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v["method"] == "tool.execution.abort" {
            break v;
        }
    };
    assert_eq!(note["params"]["task_id"], "a-1");
    assert_eq!(note["params"]["reason"], "wrong target");

    // The executor's late report is recorded but the abort stands.
    let (code, r) = post(
        &s,
        GATEWAY,
        "/api/execution-report",
        json!({ "task_id": "a-1", "status": "aborted", "actual_cost": 0.02, "logs": "stopped\n" }),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("had been aborted"),
        "{r}"
    );
    assert_eq!(status_of(&s, "a-1").await, "aborted");

    // Approved (not started) task aborted by Alice over JSON-RPC, as `approvald abort` does.
    enqueue(&s, task("a-2", "batch", 0.0)).await;
    let t = s
        .call(
            ALICE,
            "tool.task.abort",
            json!({ "task_id": "a-2", "transport": "cli" }),
        )
        .await;
    assert_eq!(t["status"], "aborted");
    assert_eq!(t["abort"]["by"]["person"], "alice");
    assert_eq!(t["abort"]["by"]["transport"], "cli");
    assert_eq!(t["execution_text"], "aborted by Alice");
    let (kind, _) = s
        .error_kind(GATEWAY, "tool.execution.start", json!({ "task_id": "a-2" }))
        .await;
    assert_eq!(kind, "invalid_transition");

    // Carol is a person but not an approver; the gateway is not an operator.
    enqueue(&s, task("a-3", "batch", 0.0)).await;
    let (kind, _) = s
        .error_kind(CAROL, "tool.task.abort", json!({ "task_id": "a-3" }))
        .await;
    assert_eq!(kind, "not_an_approver");
    let (code, _) = post(&s, GATEWAY, "/api/queue/abort/a-3", json!({})).await;
    assert_eq!(code, 403);
    assert_eq!(status_of(&s, "a-3").await, "approved");

    // A task asked for natively (tool.approval.request) is a task too: approve, start, abort.
    let native = s
        .request(json!({ "tool": "shell", "command": "make deploy" }))
        .await;
    let id = native["id"].as_str().unwrap().to_string();
    s.call(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve-once" }),
    )
    .await;
    s.call(GATEWAY, "tool.execution.start", json!({ "task_id": id }))
        .await;
    let t = s
        .call(
            BOB,
            "tool.task.abort",
            json!({ "task_id": &id[..8], "reason": "stop it" }),
        )
        .await;
    assert_eq!(t["status"], "aborted");
    chat.wait_until(Duration::from_secs(5), "the aborted edit", |_| {
        chat.updates()
            .iter()
            .any(|(_, p)| p.text.contains("aborted by Bob: stop it"))
    })
    .await;
    let audit = s.audit(&id).await;
    let aborted = audit
        .iter()
        .find(|e| e["event"] == "task" && e["detail"]["to"] == "aborted")
        .expect("the abort is audited");
    assert_eq!(aborted["actor"]["person"], "bob");
}

#[tokio::test]
async fn going_over_a_constraint_while_running_aborts_the_task_and_is_audited() {
    let (s, _chat) = start(BATCH_RULE).await;
    let answer = enqueue(&s, task("v-1", "batch", 1.0)).await;
    assert_eq!(constraint(&answer, "cost_limit"), Some(20.0));
    s.call(GATEWAY, "tool.execution.start", json!({ "task_id": "v-1" }))
        .await;
    let mut events = s.engine.events().subscribe();

    // Progress within limits changes nothing.
    let r = s
        .call(
            GATEWAY,
            "tool.execution.report",
            json!({ "task_id": "v-1", "status": "running", "actual_cost": 3.0, "logs": ["half way"] }),
        )
        .await;
    assert_eq!(r["should_abort"], false);
    assert_eq!(r["task"]["status"], "running");

    // Over the cost limit: aborted, audited, announced.
    let r = s
        .call(
            GATEWAY,
            "tool.execution.report",
            json!({ "task_id": "v-1", "status": "running", "actual_cost": 21.5 }),
        )
        .await;
    assert_eq!(r["should_abort"], true, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("constraint violated")
    );
    assert_eq!(r["task"]["status"], "aborted");
    let (_, signal) = get(&s, GATEWAY, "/api/abort-signal/v-1").await;
    assert_eq!(signal["should_abort"], true);
    assert!(
        signal["reason"]
            .as_str()
            .unwrap()
            .contains("over the $20.00 limit"),
        "{signal}"
    );
    let mut saw_abort = false;
    while let Ok(ev) = events.try_recv() {
        saw_abort |= ev.method == "tool.execution.abort";
    }
    assert!(saw_abort, "executors on the WebSocket are told");
    let audit = events_of(&s.audit(r["task"]["approval_id"].as_str().unwrap()).await);
    assert!(
        audit.contains(&"constraint_violation".to_string()),
        "{audit:?}"
    );
    let (_, q) = get(&s, ADMIN, "/api/queue/status").await;
    assert_eq!(q["data"]["by_status"]["aborted"], 1);
    assert_eq!(q["data"]["total_cost_usd"], 21.5);
}

#[tokio::test]
async fn the_first_answer_waits_briefly_and_a_quick_decision_is_answered_at_once() {
    let chat = TestChannel::new("chat-a", Transport::Discord);
    let config = TASKS.replace("approve_wait_ms = 200", "approve_wait_ms = 3000");
    let s = TestServer::start(&config, as_channels(&[&chat])).await;
    let s2 = s.url.clone();
    let caller = tokio::spawn(async move {
        let http = reqwest::Client::new();
        http.post(format!("{s2}/api/approve"))
            .bearer_auth(GATEWAY)
            .json(&task("q-1", "workflow", 1.0))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    chat.wait_until(Duration::from_secs(5), "the prompt", |c| !c.is_empty())
        .await;
    let id = chat.deliveries()[0].1.view.approval_id.clone();
    s.call(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve-once" }),
    )
    .await;
    let answer = caller.await.unwrap();
    assert_eq!(answer["approved"], true, "{answer}");
    assert_eq!(answer["reason"], "Approved by Alice");
}

#[tokio::test]
async fn chat_prompts_show_an_abort_button_while_the_task_runs_and_only_approvers_may_press_it() {
    let (s, chat) = start(BATCH_RULE).await;
    let answer = enqueue(&s, task("ch-1", "workflow", 1.0)).await;
    let id = answer["approval_id"].as_str().unwrap().to_string();
    chat.wait_until(Duration::from_secs(5), "the prompt", |c| !c.is_empty())
        .await;
    s.call(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve-once" }),
    )
    .await;
    s.call(
        GATEWAY,
        "tool.execution.start",
        json!({ "task_id": "ch-1" }),
    )
    .await;
    chat.wait_until(
        Duration::from_secs(5),
        "the running edit with Abort",
        |_| {
            chat.updates().iter().any(|(_, p)| {
                p.text.contains("Task: running")
                    && p.actions.len() == 1
                    && p.actions[0].label == "Abort"
                    && p.actions[0].data == format!("v1:{id}:x")
            })
        },
    )
    .await;

    // A stranger's press changes nothing.
    let reply = chat.press_abort(&id, user("4242")).await;
    assert!(
        matches!(
            reply,
            approvald_channel::InboundReply::Refused {
                kind: approvald_channel::RefusalKind::NotAnApprover,
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(status_of(&s, "ch-1").await, "running");

    // The channel's approver stops it; the executor hears it.
    let reply = chat.press_abort(&id, user("999")).await;
    match &reply {
        approvald_channel::InboundReply::Accepted { status, message } => {
            assert_eq!(status, "aborted");
            assert!(message.starts_with("Task aborted by"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let (_, signal) = get(&s, GATEWAY, "/api/abort-signal/ch-1").await;
    assert_eq!(signal["should_abort"], true);
    let t = s
        .call(ADMIN, "tool.task.get", json!({ "task_id": "ch-1" }))
        .await;
    assert_eq!(t["abort"]["by"]["transport"], "discord");
    chat.wait_until(
        Duration::from_secs(5),
        "the aborted edit without buttons",
        |_| {
            chat.updates()
                .iter()
                .any(|(_, p)| p.text.contains("Task: aborted by") && p.actions.is_empty())
        },
    )
    .await;
    let again = chat.press_abort(&id, user("999")).await;
    match again {
        approvald_channel::InboundReply::Refused { message, .. } => {
            assert_eq!(message, "This task is no longer running (it is aborted).")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_task_id_names_its_approval_everywhere_an_id_is_taken() {
    let (s, _chat) = start("").await;
    let answer = enqueue(&s, task("deploy-42", "workflow", 1.0)).await;
    let r = s
        .call(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": "deploy-42", "decision": "approve-once" }),
        )
        .await;
    assert_eq!(r["id"], answer["approval_id"]);
    assert_eq!(r["status"], "approved");
    let again = enqueue(&s, task("deploy-42", "workflow", 1.0)).await;
    assert_eq!(again["approved"], true);
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": "deploy-43", "decision": "deny" }),
        )
        .await;
    assert_eq!(
        kind, "invalid_params",
        "an unknown task id is not an approval id either"
    );
}
