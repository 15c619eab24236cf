//! Connection hygiene: a client that never finishes its headers is cut off, streaming clients
//! are capped, and shutdown answers blocked callers at once (`shutting_down`, reconnect) and
//! tells WebSocket clients, while their requests stay pending for after the restart.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(s: &TestServer) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// What the server sends first on `stream` (empty if it closes it), within 5 s.
async fn first_answer(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = [0u8; 2048];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the server answers or closes in time");
    let n = read.unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with_server(dir.path(), "header_timeout_ms = 300", "", vec![]).await;
    let mut slow = tokio::net::TcpStream::connect(addr(&s)).await.unwrap();
    slow.write_all(b"POST /rpc HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = first_answer(&mut slow).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "closed or 408, got {answer:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Everyone else is served as usual.
    let r = s.request(json!({ "tool": "t", "command": "x" })).await;
    assert_eq!(r["status"], "pending");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_body_is_answered_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with_server(dir.path(), "header_timeout_ms = 300", "", vec![]).await;
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tool.approval.request",
        "params": { "id": "5b1b2f0e-7f6c-4a57-9d3e-1a2b3c4d5e6f", "tool": "t", "command": "half" },
    })
    .to_string();
    let mut slow = tokio::net::TcpStream::connect(addr(&s)).await.unwrap();
    // Headers whole, then half the body it announced, then nothing.
    let head = format!(
        "POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let started = Instant::now();
    let answer = first_answer(&mut slow).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.contains("did not arrive within 300 ms"), "{answer}");
    // The half-sent request was not created; everyone else is served as usual.
    let listed = s.call(ADMIN, "tool.approval.list", json!({})).await;
    assert_eq!(listed["items"], json!([]), "{listed}");
    let r = s.request(json!({ "tool": "t", "command": "x" })).await;
    assert_eq!(r["status"], "pending");
}

#[tokio::test]
async fn streaming_clients_are_capped_and_a_freed_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with_server(dir.path(), "max_stream_clients = 2", "", vec![]).await;
    let open = || async {
        s.http()
            .get(format!("{}/events", s.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
    };
    let first = open().await;
    let second = open().await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open().await;
    assert_eq!(third.status(), 503);
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["data"]["kind"], "too_many_clients");
    // The WebSocket shares the cap.
    let req = s.ws_request(GATEWAY, "");
    assert!(tokio_tungstenite::connect_async(req.clone()).await.is_err());

    drop(first);
    eventually("a slot is free again", || async {
        open().await.status() == 200
    })
    .await;
}

#[tokio::test]
async fn shutdown_answers_blocked_callers_at_once_and_their_requests_stay_pending() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path(), "", vec![]).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy" }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let blocked = s.spawn_wait(&id);

    let req = s.ws_request(GATEWAY, "");
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    s.stop();
    let answer = tokio::time::timeout(Duration::from_secs(3), blocked)
        .await
        .expect("the blocked caller is answered before the grace period")
        .unwrap();
    assert_eq!(answer["error"]["data"]["kind"], "shutting_down", "{answer}");
    assert_eq!(answer["error"]["data"]["id"], id.as_str());
    assert_eq!(answer["error"]["data"]["reconnect"], true);
    assert!(started.elapsed() < Duration::from_secs(3));
    let note = loop {
        let msg = tokio::time::timeout(Duration::from_secs(3), ws.next())
            .await
            .expect("the WebSocket client is told")
            .expect("a message")
            .unwrap();
        if let Ok(text) = msg.to_text()
            && let Ok(v) = serde_json::from_str::<Value>(text)
            && v["method"] == "approvald.shutdown"
        {
            break v;
        }
    };
    assert_eq!(note["params"]["reconnect"], true);
    drop(s);

    // After the restart the request is still pending and decidable.
    let s = TestServer::start_in(dir.path(), "", vec![]).await;
    assert_eq!(s.get(&id).await["status"], "pending");
    let waiter = s.spawn_wait(&id);
    s.call(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve-once" }),
    )
    .await;
    assert_eq!(waiter.await.unwrap()["result"]["status"], "approved");
}

/// A graceful stop leaves SQLite's write-ahead log empty (copied into the database file), so
/// the next start does not have to read it all back first: with 100,000 pending requests
/// that read was most of a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_empties_the_sqlite_write_ahead_log() {
    if support::pg::suite_on_postgres().is_some() {
        eprintln!("SKIPPED: SQLite only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path(), "", vec![]).await;
    let mut ids = Vec::new();
    for n in 0..300 {
        let r = s
            .request(json!({ "tool": "shell", "command": format!("echo {n}") }))
            .await;
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let wal = dir.path().join("approvald.db-wal");
    let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(
        size() > 256 * 1024,
        "the log holds the writes: {} bytes",
        size()
    );
    s.stop();
    // Later writes (the instance heartbeat) may add a frame or two again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while size() > 64 * 1024 {
        assert!(
            Instant::now() < deadline,
            "the log still holds {} bytes after the stop",
            size()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing was lost by emptying it.
    let s = TestServer::start_in(dir.path(), "", vec![]).await;
    for id in [&ids[0], &ids[299]] {
        assert_eq!(s.get(id).await["status"], "pending");
    }
}
