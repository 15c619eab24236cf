//! The storage contract, run against both stores: SQLite always, PostgreSQL when
//! `APPROVALD_TEST_DATABASE_URL` names a server (e.g. `postgres://postgres@127.0.0.1:5432/test`).
//! Each contract is one function; `contract!` makes a `sqlite` and a `postgres` test of it, so
//! a pass on both says the two backends behave alike.
//!
//! "Another handle" is another store opened on the same database, with its own instance id and
//! its own connections: on PostgreSQL, exactly what another approvald instance is. Every
//! PostgreSQL test gets a database of its own (created, then dropped), so tests run in parallel.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use approvald::audit::{AuditEntry, AuditEvent};
use approvald::domain::{
    Approval, ApprovalRecord, ApprovalRequest, ApproverIdentity, Decision, Delivery, MessageRef,
    Requester, Resolution, RiskClass, Scope, Status, Target, Transport, Verdict,
};
use approvald::rules::StandingRule;
use approvald::store::{
    AuditQuery, DecisionWrite, InsertOutcome, ListQuery, PostgresStore, SqliteStore, Store,
};
use approvald::tasks::{TaskRecord, TaskStatus};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::json;
use sqlx::Connection;

mod support;

use support::pg::{TestDatabase, with_database};

const PG_ENV: &str = "APPROVALD_TEST_DATABASE_URL";

// ----- the two backends --------------------------------------------------------------------

enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

/// A database for one test. On PostgreSQL it also holds the test's share of the connection
/// budget, released (after the database is dropped) when the test ends.
struct Db {
    backend: Backend,
    _budget: Option<tokio::sync::SemaphorePermit<'static>>,
}

/// PostgreSQL connections this test binary holds at most at once: the server's limit (100 by
/// default) is shared with the admin connections and whatever else runs against it. Each PG
/// test takes as many permits as the connections it opens at most.
static PG_CONNECTIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(60);

/// Retried a few times while the server says it is full (other test binaries share it).
async fn retry_busy<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut tries = 0;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => {
                let text = e.to_string();
                let busy = text.contains("too many clients") || text.contains("timed out");
                tries += 1;
                if !busy || tries >= 10 {
                    panic!("{what}: {text}");
                }
                eprintln!("{what}: server busy ({text}), retrying");
                tokio::time::sleep(Duration::from_millis(500 * tries)).await;
            }
        }
    }
}

impl Db {
    async fn sqlite() -> Db {
        Db {
            backend: Backend::Sqlite(tempfile::tempdir().expect("tempdir")),
            _budget: None,
        }
    }

    /// A fresh PostgreSQL database for a test opening at most `connections` connections, or
    /// None (said loudly) when no server is configured.
    async fn postgres(connections: u32) -> Option<Db> {
        let Ok(admin_url) = std::env::var(PG_ENV) else {
            // Straight to stderr, once: the test harness would capture `eprintln!` of a passing
            // test, and a skip must not look like a pass.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\nSKIPPED: PostgreSQL store tests: set {PG_ENV}=postgres://user@host:5432/db to run them\n"
                );
            });
            return None;
        };
        let budget = PG_CONNECTIONS
            .acquire_many(connections)
            .await
            .expect("the budget is never closed");
        Some(Db {
            backend: Backend::Postgres(TestDatabase::create(&admin_url).await),
            _budget: Some(budget),
        })
    }

    fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Another handle on this database: a new instance (its own id and connections).
    async fn handle(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Sqlite(dir) => Arc::new(SqliteStore::open(dir.path()).await.expect("open")),
            Backend::Postgres(pg) => {
                Arc::new(retry_busy("connect", || PostgresStore::connect(&pg.url)).await)
            }
        }
    }

    async fn handles(&self, n: usize) -> Vec<Arc<dyn Store>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.handle().await);
        }
        out
    }

    /// The one text cell `sql` selects, read with a plain connection beside the store.
    async fn raw_text(&self, sql: &str) -> String {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &self.backend {
            Backend::Sqlite(dir) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join("approvald.db"));
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .expect("raw sqlite connection");
                sqlx::query_scalar(sql).fetch_one(&mut conn).await
            }
            Backend::Postgres(pg) => {
                let mut conn = sqlx::PgConnection::connect(&pg.url)
                    .await
                    .expect("raw pg connection");
                sqlx::query_scalar(sql).fetch_one(&mut conn).await
            }
        }
        .expect("one text cell")
    }

    /// Run one statement with a plain connection, beside the store: what an operator (or an
    /// attacker with SQL access) could do.
    async fn raw_execute(&self, sql: &str) -> Result<u64, String> {
        match &self.backend {
            Backend::Sqlite(dir) => {
                let path = dir.path().join("approvald.db");
                let mut conn = sqlx::SqliteConnection::connect_with(
                    &sqlx::sqlite::SqliteConnectOptions::new().filename(path),
                )
                .await
                .expect("raw sqlite connection");
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                    .execute(&mut conn)
                    .await;
                done.map(|d| d.rows_affected()).map_err(|e| e.to_string())
            }
            Backend::Postgres(pg) => {
                let mut conn = sqlx::PgConnection::connect(&pg.url)
                    .await
                    .expect("raw pg connection");
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                    .execute(&mut conn)
                    .await;
                done.map(|d| d.rows_affected()).map_err(|e| e.to_string())
            }
        }
    }
}

/// One `sqlite` and one `postgres` test per contract function.
/// `name => n`: `n` is how many PostgreSQL connections the contract opens at most.
macro_rules! contract {
    ($($name:ident => $connections:expr),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(&super::Db::sqlite().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(db) = super::Db::postgres($connections).await {
                    super::$name(&db).await;
                }
            }
        }
    )*};
}

contract!(
    round_trip => 4,
    resolve_race => 52,
    expiry_storm => 3,
    get_many => 3,
    decision_race => 22,
    same_approver_twice => 12,
    decision_behind_its_insert => 4,
    fold_race => 22,
    audit_is_append_only => 3,
    audit_lines_written_whole_still_read => 3,
    audit_paging_misses_nothing => 9,
    claim_unfinished_deliveries => 7,
    task_cas => 12,
    task_queries => 3,
    outbox_order => 4,
    standing_rules => 3,
);

// ----- fixtures ----------------------------------------------------------------------------

fn request_at(id: &str, created_at: DateTime<Utc>) -> ApprovalRequest {
    ApprovalRequest {
        id: id.to_string(),
        tool: "shell".into(),
        summary: Some("clean up".into()),
        command: Some("rm -rf /tmp/build".into()),
        // Escapes, a NUL and non-ASCII text must come back byte for byte.
        args: Some(
            json!({ "cwd": "/srv", "n": [1, 2.5, "x"], "é": null, "s": "a\u{0}b \"q\" 😀" }),
        ),
        risk_class: RiskClass::High,
        agent_id: Some("agent-1".into()),
        session_key: Some("session-1".into()),
        requester: Some(Requester {
            id: "alice".into(),
            display_name: Some("Alice".into()),
        }),
        origin: None,
        estimated_cost: Some(0.25),
        created_at,
        expires_at: created_at + chrono::Duration::hours(1),
        allowed_decisions: vec![
            Decision::ApproveOnce,
            Decision::ApproveAlways,
            Decision::Deny,
        ],
        requested_via_token: Some("agent-token".into()),
    }
}

fn request(id: &str) -> ApprovalRequest {
    request_at(id, Utc::now())
}

fn person(name: &str) -> ApproverIdentity {
    ApproverIdentity {
        approver_id: format!("person:{name}"),
        display_name: name.to_string(),
        transport: Transport::Slack,
        platform_user_id: Some(format!("U-{name}")),
        channel_id: Some("C1".into()),
        person: Some(name.to_string()),
    }
}

fn approval(who: &ApproverIdentity, decision: Decision) -> Approval {
    Approval {
        approver: who.clone(),
        decision,
        reason: Some(format!("{} says so", who.display_name)),
        decided_at: Utc::now(),
    }
}

fn resolution(verdict: Verdict, by: Option<&ApproverIdentity>, reason: &str) -> Resolution {
    Resolution {
        verdict,
        scope: by.map(|_| Scope::Once),
        decided_by: by.cloned(),
        reason: Some(reason.to_string()),
        resolved_at: Utc::now(),
    }
}

fn audit(event: AuditEvent, id: &str, detail: serde_json::Value) -> AuditEntry {
    AuditEntry::new(event, Some(id)).detail(detail)
}

async fn audit_of(store: &dyn Store, id: &str) -> Vec<AuditEntry> {
    store
        .audit_list(&AuditQuery {
            approval_id: Some(id.to_string()),
            after_seq: 0,
            limit: 1000,
        })
        .await
        .expect("audit_list")
}

async fn insert(store: &dyn Store, req: &ApprovalRequest) {
    let out = store
        .insert_request(
            req,
            None,
            &[audit(AuditEvent::Requested, &req.id, json!({}))],
            true,
        )
        .await
        .expect("insert");
    assert!(matches!(out, InsertOutcome::Inserted), "{out:?}");
}

fn ids(records: &[ApprovalRecord]) -> Vec<&str> {
    records.iter().map(|r| r.request.id.as_str()).collect()
}

// ----- the contracts -----------------------------------------------------------------------

/// What goes in comes out: a request, its decisions and deliveries, its resolution, and every
/// way of finding it again.
async fn round_trip(db: &Db) {
    let store = db.handle().await;
    let t0 = Utc::now() - chrono::Duration::minutes(10);
    let a = request_at("aaaa-0001", t0);
    let mut b = request_at("aaab-0002", t0 + chrono::Duration::minutes(1));
    b.tool = "deploy".into();
    b.agent_id = Some("agent-2".into());
    let c = request_at("ab_c-0003", t0 + chrono::Duration::minutes(1));
    let d = request_at("abXc-0004", t0 + chrono::Duration::minutes(2));
    for r in [&a, &b, &c, &d] {
        insert(&*store, r).await;
    }

    assert_eq!(
        store.get("aaaa-0001").await.unwrap(),
        Some(ApprovalRecord::pending(a.clone()))
    );
    assert_eq!(store.get("nope").await.unwrap(), None);
    assert_eq!(
        store.status("aaab-0002").await.unwrap(),
        Some(Status::Pending)
    );
    assert_eq!(store.status("nope").await.unwrap(), None);

    // The same id again: the request as stored, nothing new.
    let mut again = a.clone();
    again.command = Some("something else".into());
    match store.insert_request(&again, None, &[], true).await.unwrap() {
        InsertOutcome::Exists(rec) => assert_eq!(rec.request, a),
        other => panic!("expected Exists, got {other:?}"),
    }

    // Prefixes are literal: `_` is not a wildcard.
    assert_eq!(
        store.ids_with_prefix("aa", 10).await.unwrap(),
        vec!["aaaa-0001", "aaab-0002"]
    );
    assert_eq!(
        store.ids_with_prefix("aa", 1).await.unwrap(),
        vec!["aaaa-0001"]
    );
    assert_eq!(
        store.ids_with_prefix("ab_", 10).await.unwrap(),
        vec!["ab_c-0003"]
    );
    assert!(store.ids_with_prefix("a%", 10).await.unwrap().is_empty());

    // Deliveries, in order, and the approval behind a delivered message.
    let msg = MessageRef {
        channel: "slack".into(),
        to: "C1".into(),
        thread_id: Some("t-1".into()),
        message_id: "m-1".into(),
    };
    let sent = Delivery {
        target: Target {
            channel: "slack".into(),
            to: "C1".into(),
            thread_id: None,
            account_id: None,
        },
        message: Some(msg.clone()),
        error: None,
        at: Utc::now(),
    };
    let failed = Delivery {
        message: None,
        error: Some("channel down".into()),
        ..sent.clone()
    };
    store.record_delivery("aaab-0002", &sent).await.unwrap();
    store.record_delivery("aaab-0002", &failed).await.unwrap();
    let other_thread = MessageRef {
        thread_id: None,
        ..msg.clone()
    };
    assert_eq!(
        store.approval_for_message(&other_thread).await.unwrap(),
        Some("aaab-0002".to_string())
    );
    let unknown = MessageRef {
        message_id: "m-2".into(),
        ..msg.clone()
    };
    assert_eq!(store.approval_for_message(&unknown).await.unwrap(), None);

    // A decision, then the resolution with it.
    let bob = person("bob");
    let carol = person("carol");
    let mut first = approval(&bob, Decision::ApproveOnce);
    first.reason = Some("nul \u{0}, quote \", emoji 😀".into());
    assert_eq!(
        store
            .record_decision("aaab-0002", &bob.approver_id, &first, None, &[])
            .await
            .unwrap(),
        DecisionWrite::Recorded
    );
    let second = approval(&carol, Decision::ApproveOnce);
    let done = resolution(Verdict::Approve, Some(&carol), "quorum");
    assert_eq!(
        store
            .record_decision(
                "aaab-0002",
                &carol.approver_id,
                &second,
                Some(&done),
                &[audit(
                    AuditEvent::Resolved,
                    "aaab-0002",
                    json!({ "by": "carol" })
                )],
            )
            .await
            .unwrap(),
        DecisionWrite::Recorded
    );
    let rec = store.get("aaab-0002").await.unwrap().expect("stored");
    assert_eq!(
        rec,
        ApprovalRecord {
            request: b.clone(),
            status: Status::Approved,
            approvals: vec![first, second],
            resolution: Some(done.clone()),
            deliveries: vec![sent, failed],
        }
    );
    // Another handle (another instance) reads the same.
    let other = db.handle().await;
    assert_eq!(other.get("aaab-0002").await.unwrap(), Some(rec));

    // A timeout.
    let expired = resolution(Verdict::Timeout, None, "deadline");
    assert!(store.resolve("abXc-0004", &expired, &[]).await.unwrap());
    assert_eq!(
        store.status("abXc-0004").await.unwrap(),
        Some(Status::Expired)
    );

    // Listing: newest first (ties by id, descending), filters, pages.
    let all = store
        .list(&ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&all),
        vec!["abXc-0004", "ab_c-0003", "aaab-0002", "aaaa-0001"]
    );
    let pending = store
        .list(&ListQuery {
            status: Some(Status::Pending),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&pending), vec!["ab_c-0003", "aaaa-0001"]);
    let by_agent = store
        .list(&ListQuery {
            agent_id: Some("agent-2".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&by_agent), vec!["aaab-0002"]);
    let by_tool = store
        .list(&ListQuery {
            tool: Some("shell".into()),
            status: Some(Status::Pending),
            agent_id: Some("agent-1".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&by_tool), vec!["ab_c-0003", "aaaa-0001"]);
    let page1 = store
        .list(&ListQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&page1), vec!["abXc-0004", "ab_c-0003"]);
    let last = &page1[1].request;
    let page2 = store
        .list(&ListQuery {
            limit: 2,
            before: Some((last.created_at.timestamp_millis(), last.id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    // "aaab-0002" has the same created_at as "ab_c-0003": the id breaks the tie.
    assert_eq!(ids(&page2), vec!["aaab-0002", "aaaa-0001"]);

    let mut counts = store.count_by_status().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        vec![
            (Status::Approved, 1),
            (Status::Expired, 1),
            (Status::Pending, 2)
        ]
    );
    let deadlines = store.pending_deadlines().await.unwrap();
    assert_eq!(
        deadlines,
        vec![
            ("aaaa-0001".to_string(), a.expires_at),
            ("ab_c-0003".to_string(), c.expires_at),
        ]
        .into_iter()
        .map(|(id, t)| (id, trunc_ms(t)))
        .collect::<Vec<_>>()
    );

    // The audit trail: in order, per request, paged by seq.
    store
        .audit_append(
            &AuditEntry::new(AuditEvent::Fallback, None).detail(json!({ "entered": true })),
        )
        .await
        .unwrap();
    let everything = store
        .audit_list(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let events: Vec<_> = everything
        .iter()
        .map(|e| (e.approval_id.as_deref(), e.event))
        .collect();
    assert_eq!(
        events,
        vec![
            (Some("aaaa-0001"), AuditEvent::Requested),
            (Some("aaab-0002"), AuditEvent::Requested),
            (Some("ab_c-0003"), AuditEvent::Requested),
            (Some("abXc-0004"), AuditEvent::Requested),
            (Some("aaab-0002"), AuditEvent::Resolved),
            (None, AuditEvent::Fallback),
        ]
    );
    assert!(everything.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(everything[4].detail, json!({ "by": "carol" }));
    let of_b = audit_of(&*store, "aaab-0002").await;
    assert_eq!(of_b.len(), 2);
    let after = store
        .audit_list(&AuditQuery {
            approval_id: None,
            after_seq: everything[3].seq,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(after, vec![everything[4].clone()]);
}

/// Timestamps come back at millisecond precision where they are stored as columns.
fn trunc_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).expect("in range")
}

/// 50 instances time one request out at once: exactly one wins, and only its audit is written.
async fn resolve_race(db: &Db) {
    let handles = db.handles(50).await;
    insert(&*handles[0], &request("race-1")).await;
    let results = join_all(handles.iter().enumerate().map(|(i, h)| {
        let h = h.clone();
        async move {
            let r = resolution(Verdict::Timeout, None, &format!("resolver {i}"));
            let audits = [audit(
                AuditEvent::Expired,
                "race-1",
                json!({ "resolver": i }),
            )];
            (i, h.resolve("race-1", &r, &audits).await.expect("resolve"))
        }
    }))
    .await;
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, won)| *won)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let winner = winners[0];
    let rec = handles[0].get("race-1").await.unwrap().expect("stored");
    assert_eq!(rec.status, Status::Expired);
    assert_eq!(
        rec.resolution.and_then(|r| r.reason),
        Some(format!("resolver {winner}"))
    );
    let expiries: Vec<_> = audit_of(&*handles[0], "race-1")
        .await
        .into_iter()
        .filter(|e| e.event == AuditEvent::Expired)
        .collect();
    assert_eq!(expiries.len(), 1);
    assert_eq!(expiries[0].detail, json!({ "resolver": winner }));
    // Settled stays settled.
    let late = resolution(Verdict::Approve, None, "late");
    assert!(!handles[1].resolve("race-1", &late, &[]).await.unwrap());
    assert!(!handles[1].resolve("nope", &late, &[]).await.unwrap());
}

/// An expiry storm on one instance: 200 requests due at once, each expired by two timers
/// racing (300 resolutions in flight, many sharing a write): each request is settled once,
/// with one audit line, and a request already settled is left alone.
async fn expiry_storm(db: &Db) {
    let store = db.handle().await;
    for i in 0..200 {
        insert(&*store, &request(&format!("storm-{i:03}"))).await;
    }
    let early = resolution(Verdict::Approve, Some(&person("bob")), "decided first");
    assert!(store.resolve("storm-000", &early, &[]).await.unwrap());
    let ids: Vec<String> = (0..200)
        .map(|i| format!("storm-{i:03}"))
        .chain((0..100).map(|i| format!("storm-{:03}", i * 2)))
        .collect();
    let results = join_all(ids.iter().map(|id| {
        let store = store.clone();
        async move {
            let r = resolution(Verdict::Timeout, None, "no decision before the deadline");
            let audits = [audit(AuditEvent::Expired, id, json!({}))];
            (
                id.clone(),
                store.resolve(id, &r, &audits).await.expect("resolve"),
            )
        }
    }))
    .await;
    let mut won: Vec<&String> = results
        .iter()
        .filter(|(_, w)| *w)
        .map(|(id, _)| id)
        .collect();
    won.sort();
    let expected: Vec<String> = (1..200).map(|i| format!("storm-{i:03}")).collect();
    assert_eq!(
        won,
        expected.iter().collect::<Vec<_>>(),
        "each settled exactly once"
    );
    for id in &expected {
        let rec = store.get(id).await.unwrap().expect("stored");
        assert_eq!(rec.status, Status::Expired, "{id}");
        let lines = audit_of(&*store, id).await;
        let expiries = lines
            .iter()
            .filter(|e| e.event == AuditEvent::Expired)
            .count();
        assert_eq!(expiries, 1, "{id}: one expiry line");
    }
    let first = store.get("storm-000").await.unwrap().expect("stored");
    assert_eq!(
        first.status,
        Status::Approved,
        "a settled request stays as it was"
    );
    assert!(
        audit_of(&*store, "storm-000")
            .await
            .iter()
            .all(|e| e.event != AuditEvent::Expired)
    );
}

/// Several requests in one read: the ones that exist, whatever their state; unknown ids are
/// left out.
async fn get_many(db: &Db) {
    let store = db.handle().await;
    for id in ["many-a", "many-b", "many-c"] {
        insert(&*store, &request(id)).await;
    }
    let done = resolution(Verdict::Deny, Some(&person("bob")), "no");
    assert!(store.resolve("many-b", &done, &[]).await.unwrap());
    let asked: Vec<String> = ["many-a", "many-b", "nope", "many-a"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut got = store.get_many(&asked).await.unwrap();
    got.sort_by(|x, y| x.request.id.cmp(&y.request.id));
    let ids: Vec<&str> = got.iter().map(|r| r.request.id.as_str()).collect();
    assert_eq!(ids, ["many-a", "many-b"]);
    assert_eq!(got[0], store.get("many-a").await.unwrap().expect("a"));
    assert_eq!(got[1].status, Status::Denied);
    assert!(store.get_many(&[]).await.unwrap().is_empty());
}

/// Twenty approvers on twenty instances each decide with a resolution at once: one decision is
/// recorded and resolves the request; every other answer is NotPending and writes nothing.
async fn decision_race(db: &Db) {
    let handles = db.handles(20).await;
    insert(&*handles[0], &request("race-2")).await;
    let results = join_all(handles.iter().enumerate().map(|(i, h)| {
        let h = h.clone();
        async move {
            let who = person(&format!("approver{i}"));
            let verdict = if i % 2 == 0 {
                Verdict::Approve
            } else {
                Verdict::Deny
            };
            let decision = if i % 2 == 0 {
                Decision::ApproveOnce
            } else {
                Decision::Deny
            };
            let out = h
                .record_decision(
                    "race-2",
                    &who.approver_id,
                    &approval(&who, decision),
                    Some(&resolution(verdict, Some(&who), "decided")),
                    &[audit(AuditEvent::Decision, "race-2", json!({ "i": i }))],
                )
                .await
                .expect("record_decision");
            (i, out)
        }
    }))
    .await;
    let recorded: Vec<usize> = results
        .iter()
        .filter(|(_, o)| *o == DecisionWrite::Recorded)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(recorded.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(i, o)| *i == recorded[0] || *o == DecisionWrite::NotPending),
        "{results:?}"
    );
    let winner = person(&format!("approver{}", recorded[0]));
    let rec = handles[0].get("race-2").await.unwrap().expect("stored");
    assert_eq!(rec.approvals.len(), 1);
    assert_eq!(rec.approvals[0].approver, winner);
    let res = rec.resolution.expect("resolved");
    assert_eq!(res.decided_by, Some(winner));
    assert_eq!(rec.status, res.verdict.status());
    assert_eq!(audit_of(&*handles[0], "race-2").await.len(), 2); // requested + the winner's

    // Once resolved, a decision without a resolution is refused too.
    let late = person("late");
    assert_eq!(
        handles[1]
            .record_decision(
                "race-2",
                &late.approver_id,
                &approval(&late, Decision::Deny),
                None,
                &[]
            )
            .await
            .unwrap(),
        DecisionWrite::NotPending
    );
    assert_eq!(
        handles[1]
            .record_decision(
                "nope",
                &late.approver_id,
                &approval(&late, Decision::Deny),
                None,
                &[]
            )
            .await
            .unwrap(),
        DecisionWrite::NotPending
    );
}

/// One approver counts once: a second decision by the same key changes nothing, even when the
/// two arrive at once on different instances.
async fn same_approver_twice(db: &Db) {
    let handles = db.handles(10).await;
    let store = &handles[0];
    insert(&**store, &request("twice-1")).await;
    let bob = person("bob");
    let yes = approval(&bob, Decision::ApproveOnce);
    assert_eq!(
        store
            .record_decision("twice-1", &bob.approver_id, &yes, None, &[])
            .await
            .unwrap(),
        DecisionWrite::Recorded
    );
    // Again, now with a resolution: refused, and the request stays pending.
    let no = approval(&bob, Decision::Deny);
    let deny = resolution(Verdict::Deny, Some(&bob), "changed my mind");
    assert_eq!(
        handles[1]
            .record_decision(
                "twice-1",
                &bob.approver_id,
                &no,
                Some(&deny),
                &[audit(AuditEvent::Resolved, "twice-1", json!({}))],
            )
            .await
            .unwrap(),
        DecisionWrite::ApproverAlreadyDecided
    );
    let rec = store.get("twice-1").await.unwrap().expect("stored");
    assert_eq!(rec.status, Status::Pending);
    assert_eq!(rec.approvals, vec![yes.clone()]);
    assert_eq!(audit_of(&**store, "twice-1").await.len(), 1);

    // Ten instances, one approver, at once.
    insert(&**store, &request("twice-2")).await;
    let results = join_all(handles.iter().map(|h| {
        let h = h.clone();
        let carol = person("carol");
        async move {
            h.record_decision(
                "twice-2",
                &carol.approver_id,
                &approval(&carol, Decision::ApproveOnce),
                None,
                &[],
            )
            .await
            .expect("record_decision")
        }
    }))
    .await;
    let recorded = results
        .iter()
        .filter(|o| **o == DecisionWrite::Recorded)
        .count();
    let refused = results
        .iter()
        .filter(|o| **o == DecisionWrite::ApproverAlreadyDecided)
        .count();
    assert_eq!((recorded, refused), (1, 9), "{results:?}");
    assert_eq!(
        store
            .get("twice-2")
            .await
            .unwrap()
            .expect("stored")
            .approvals
            .len(),
        1
    );
}

/// A decision queued behind the insert of the request it was checked against: recorded with
/// it where the store's one writer applies writes in turn (SQLite), and never on anything but
/// that request. Every refusal (`NotStored`) changes nothing.
async fn decision_behind_its_insert(db: &Db) {
    let store = db.handle().await;
    let bob = person("bob");
    let yes = approval(&bob, Decision::ApproveOnce);
    let done = resolution(Verdict::Approve, Some(&bob), "fine");
    let lines = |id: &str| {
        vec![
            audit(AuditEvent::Decision, id, json!({ "by": "bob" })),
            audit(AuditEvent::Resolved, id, json!({ "by": "bob" })),
        ]
    };

    // Nothing stored under the id.
    let t = trunc_ms(Utc::now());
    let none = store
        .record_decision_after_insert(
            "behind-0",
            t,
            &bob.approver_id,
            &yes,
            Some(&done),
            &lines("behind-0"),
        )
        .await
        .unwrap();
    assert_eq!(none, DecisionWrite::NotStored);
    assert!(store.get("behind-0").await.unwrap().is_none());
    assert!(audit_of(&*store, "behind-0").await.is_empty());

    // Another request under the id (created at another time): not the one checked.
    let stored = request_at("behind-1", t - chrono::Duration::seconds(5));
    insert(&*store, &stored).await;
    let other = store
        .record_decision_after_insert(
            "behind-1",
            t,
            &bob.approver_id,
            &yes,
            Some(&done),
            &lines("behind-1"),
        )
        .await
        .unwrap();
    assert_eq!(other, DecisionWrite::NotStored);
    let rec = store.get("behind-1").await.unwrap().expect("stored");
    assert_eq!((rec.status, rec.approvals.len()), (Status::Pending, 0));
    assert_eq!(
        audit_of(&*store, "behind-1").await.len(),
        1,
        "only its request line"
    );

    // Queued behind the insert: the insert is polled once (queued), then the decision.
    let req = request_at("behind-2", t);
    let requested = [audit(AuditEvent::Requested, "behind-2", json!({}))];
    let insert = store.insert_request(&req, None, &requested, false);
    let mut insert = std::pin::pin!(insert);
    let first = futures::poll!(insert.as_mut());
    let decided = store
        .record_decision_after_insert(
            "behind-2",
            t,
            &bob.approver_id,
            &yes,
            Some(&done),
            &lines("behind-2"),
        )
        .await
        .unwrap();
    let inserted = match first {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => insert.await,
    };
    assert!(matches!(inserted.unwrap(), InsertOutcome::Inserted));
    let rec = store.get("behind-2").await.unwrap().expect("stored");
    let events: Vec<AuditEvent> = audit_of(&*store, "behind-2")
        .await
        .iter()
        .map(|e| e.event)
        .collect();
    match db.backend {
        Backend::Sqlite(_) => {
            assert_eq!(decided, DecisionWrite::Recorded);
            assert_eq!(rec.status, Status::Approved);
            assert_eq!(rec.approvals, vec![yes.clone()]);
            assert_eq!(
                events,
                vec![
                    AuditEvent::Requested,
                    AuditEvent::Decision,
                    AuditEvent::Resolved
                ]
            );
        }
        // Writes from several instances are not ordered: it says so, and writes nothing.
        Backend::Postgres(_) => {
            assert_eq!(decided, DecisionWrite::NotStored);
            assert_eq!((rec.status, rec.approvals.len()), (Status::Pending, 0));
            assert_eq!(events, vec![AuditEvent::Requested]);
        }
    }
}

/// Twenty identical requests (different ids, one fold key) arrive at once on twenty instances:
/// one is stored, the others fold into it and their ids alias it.
async fn fold_race(db: &Db) {
    let handles = db.handles(20).await;
    let base = request("fold-00");
    let key = base.fold_key();
    let results = join_all(handles.iter().enumerate().map(|(i, h)| {
        let h = h.clone();
        let key = key.clone();
        let mut req = base.clone();
        req.id = format!("fold-{i:02}");
        async move {
            let audits = [audit(AuditEvent::Requested, &req.id, json!({}))];
            let out = h
                .insert_request(&req, Some(&key), &audits, true)
                .await
                .expect("insert_request");
            (req.id, out)
        }
    }))
    .await;
    let inserted: Vec<&str> = results
        .iter()
        .filter(|(_, o)| matches!(o, InsertOutcome::Inserted))
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(inserted.len(), 1, "{results:?}");
    let winner = inserted[0].to_string();
    for (id, out) in &results {
        if *id == winner {
            continue;
        }
        match out {
            InsertOutcome::Folded(rec) => assert_eq!(rec.request.id, winner),
            other => panic!("{id}: expected Folded, got {other:?}"),
        }
        assert_eq!(
            handles[0].alias_target(id).await.unwrap(),
            Some(winner.clone())
        );
        assert_eq!(handles[0].get(id).await.unwrap(), None);
        // A folded caller's id names the request it was folded into.
        let named = handles[0].get_by_any_id(id).await.unwrap().expect("named");
        assert_eq!(named.request.id, winner);
    }
    assert_eq!(handles[0].alias_target(&winner).await.unwrap(), None);
    let own = handles[0].get_by_any_id(&winner).await.unwrap();
    assert_eq!(own.map(|r| r.request.id), Some(winner.clone()));
    assert!(
        handles[0]
            .get_by_any_id("fold-none")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        handles[0].count_by_status().await.unwrap(),
        vec![(Status::Pending, 1)]
    );
    // Only the stored request's audit line was written.
    let audits = handles[0]
        .audit_list(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].approval_id.as_deref(), Some(winner.as_str()));

    // Folding is into a pending request only: once it is settled, the same ask is new.
    let done = resolution(Verdict::Deny, Some(&person("bob")), "no");
    assert!(handles[0].resolve(&winner, &done, &[]).await.unwrap());
    let mut next = base.clone();
    next.id = "fold-next".into();
    let out = handles[1]
        .insert_request(&next, Some(&key), &[], true)
        .await
        .unwrap();
    assert!(matches!(out, InsertOutcome::Inserted), "{out:?}");
    // ... and into one not yet past its deadline.
    let mut stale = request_at("fold-stale", Utc::now() - chrono::Duration::hours(2));
    stale.command = Some("another command".into());
    let stale_key = stale.fold_key();
    let out = handles[0]
        .insert_request(&stale, Some(&stale_key), &[], true)
        .await
        .unwrap();
    assert!(matches!(out, InsertOutcome::Inserted), "{out:?}");
    let mut fresh = stale.clone();
    fresh.id = "fold-fresh".into();
    fresh.created_at = Utc::now();
    fresh.expires_at = fresh.created_at + chrono::Duration::hours(1);
    let out = handles[1]
        .insert_request(&fresh, Some(&stale_key), &[], true)
        .await
        .unwrap();
    assert!(matches!(out, InsertOutcome::Inserted), "{out:?}");
}

/// The audit log refuses any change to a written row, even from a plain SQL connection.
async fn audit_is_append_only(db: &Db) {
    let store = db.handle().await;
    insert(&*store, &request("audit-1")).await;
    let before = audit_of(&*store, "audit-1").await;
    assert_eq!(before.len(), 1);

    let update = db
        .raw_execute("UPDATE audit SET event = 'resolved', entry_json = '{}'")
        .await;
    let err = update.expect_err("an UPDATE on audit must fail");
    assert!(err.contains("append-only"), "{err}");
    let delete = db.raw_execute("DELETE FROM audit").await;
    let err = delete.expect_err("a DELETE on audit must fail");
    assert!(err.contains("append-only"), "{err}");
    if db.is_postgres() {
        let err = db
            .raw_execute("TRUNCATE audit")
            .await
            .expect_err("a TRUNCATE on audit must fail");
        assert!(err.contains("append-only"), "{err}");
    }
    // Appending still works, and what was written is unchanged.
    store
        .audit_append(&audit(AuditEvent::TimeoutNotice, "audit-1", json!({})))
        .await
        .unwrap();
    let after = audit_of(&*store, "audit-1").await;
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], before[0]);
}

/// SQLite stores lines without what their row has columns for; lines written before that (and
/// every line on PostgreSQL) keep every field in their text. Both read back whole, in order,
/// from the same trail.
async fn audit_lines_written_whole_still_read(db: &Db) {
    let store = db.handle().await;
    // 2026-11-30T10:00:00Z, the creation time the raw line below names.
    let created = DateTime::<Utc>::from_timestamp_millis(1_796_032_800_000).expect("time");
    insert(&*store, &request_at("whole-1", created)).await;
    let old_line = r#"{"seq":0,"at":"2026-11-30T10:00:01.000000123Z","approval_id":"whole-1","event":"decision","transport":"slack","actor":{"approver_id":"person:bob","display_name":"bob","transport":"slack","person":"bob"},"detail":{"decision":"deny","reason":null}}"#;
    // A test's own literal text, not input: the line as an earlier build stored it.
    let statement = if db.is_postgres() {
        format!(
            "INSERT INTO audit (at, approval_id, event, transport, entry_json) \
             VALUES (1796032801000, 'whole-1', 'decision', 'slack', '{old_line}')"
        )
    } else {
        format!(
            "INSERT INTO audit (at, approval_id, event, transport, entry_json, approval_created_at) \
             VALUES (1796032801000, 'whole-1', 'decision', 'slack', '{old_line}', 1796032800000)"
        )
    };
    db.raw_execute(&statement).await.expect("an old-form line");
    let denied = audit(
        AuditEvent::Resolved,
        "whole-1",
        json!({ "verdict": "deny" }),
    )
    .actor(&person("carol"));
    store.audit_append(&denied).await.unwrap();
    // As written: short on SQLite; whole on PostgreSQL, where an instance of a cluster still
    // on an earlier build reads every field from the text.
    let raw: serde_json::Value = serde_json::from_str(
        &db.raw_text("SELECT entry_json FROM audit WHERE event = 'resolved'")
            .await,
    )
    .expect("JSON");
    let kept = (raw.get("event").is_some(), raw.get("approval_id").is_some());
    let whole = db.is_postgres();
    assert_eq!(kept, (whole, whole), "{raw}");

    let lines = audit_of(&*store, "whole-1").await;
    let events: Vec<AuditEvent> = lines.iter().map(|l| l.event).collect();
    assert_eq!(
        events,
        [
            AuditEvent::Requested,
            AuditEvent::Decision,
            AuditEvent::Resolved
        ]
    );
    let mut old: AuditEntry = serde_json::from_str(old_line).expect("old line");
    old.seq = lines[1].seq;
    assert_eq!(lines[1], old, "the line written whole reads as written");
    assert_eq!(
        lines[1].at.timestamp_subsec_nanos(),
        123,
        "its time kept to the ns"
    );
    let mut new = denied.clone();
    new.seq = lines[2].seq;
    assert_eq!(lines[2], new, "the stored form reads back whole");
    assert_eq!(lines[2].transport, Some(Transport::Slack));
    assert_eq!(lines[2].approval_id.as_deref(), Some("whole-1"));
}

/// A reader pages the audit log with "after seq N" while several instances append: it sees
/// every entry exactly once. (On PostgreSQL sequence numbers are taken before commit, so
/// without the store's append lock a smaller seq committing after a larger one would be
/// skipped by a reader that had already moved past it.)
async fn audit_paging_misses_nothing(db: &Db) {
    const WRITERS: usize = 6;
    const EACH: usize = 25;
    let handles = db.handles(WRITERS + 1).await;
    let reader = handles[WRITERS].clone();
    let writers: Vec<_> = handles[..WRITERS].to_vec();
    let writing = tokio::spawn(async move {
        join_all(writers.into_iter().enumerate().map(|(w, h)| async move {
            for n in 0..EACH {
                let id = format!("w{w}-{n:03}");
                // Three lines in one transaction, then one on its own.
                let audits: Vec<AuditEntry> = (0..3)
                    .map(|k| {
                        audit(
                            AuditEvent::Requested,
                            &id,
                            json!({ "w": w, "n": n, "k": k }),
                        )
                    })
                    .collect();
                let out = h.insert_request(&request(&id), None, &audits, true).await;
                assert!(matches!(out, Ok(InsertOutcome::Inserted)), "{out:?}");
                h.audit_append(&audit(
                    AuditEvent::Delivered,
                    &id,
                    json!({ "w": w, "n": n, "k": 3 }),
                ))
                .await
                .expect("audit_append");
            }
        }))
        .await;
    });
    let mut seen: Vec<AuditEntry> = Vec::new();
    loop {
        let finished = writing.is_finished();
        let page = reader
            .audit_list(&AuditQuery {
                approval_id: None,
                after_seq: seen.last().map_or(0, |e| e.seq),
                limit: 7,
            })
            .await
            .expect("audit_list");
        if page.is_empty() && finished {
            break;
        }
        seen.extend(page);
    }
    writing.await.expect("writers");
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
    let keys: HashSet<String> = seen.iter().map(|e| e.detail.to_string()).collect();
    assert_eq!(keys.len(), seen.len(), "an entry was read twice");
    assert_eq!(seen.len(), WRITERS * EACH * 4, "entries were skipped");
}

/// Long enough that a claimer's own fresh heartbeat is never stale while it claims.
const STALE: Duration = Duration::from_millis(1000);
const PAST_STALE: Duration = Duration::from_millis(1400);

/// Instance A starts fan-outs and dies; B and C claim them at once and each id goes to exactly
/// one; finished fan-outs and settled requests are never claimed; a claimer that dies in turn
/// is taken over from.
async fn claim_unfinished_deliveries(db: &Db) {
    const FANOUTS: usize = 30;
    let a = db.handle().await;
    for i in 0..FANOUTS {
        insert(&*a, &request(&format!("fan-{i:02}"))).await;
    }
    // Nothing to send: not a fan-out, never claimed (the checks below would list it).
    a.insert_request(&request("quiet-00"), None, &[], false)
        .await
        .unwrap();
    // One finished its fan-out, one was settled: neither needs taking over.
    a.deliveries_finished("fan-00").await.unwrap();
    let done = resolution(Verdict::Approve, Some(&person("bob")), "ok");
    assert!(a.resolve("fan-01", &done, &[]).await.unwrap());
    let (b, c) = (db.handle().await, db.handle().await);
    // A is alive: nothing to take; and nobody takes its own.
    assert!(
        b.claim_unfinished_deliveries(STALE, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        a.claim_unfinished_deliveries(Duration::ZERO, 100)
            .await
            .unwrap()
            .is_empty()
    );

    tokio::time::sleep(PAST_STALE).await; // A stops heartbeating
    b.heartbeat().await.unwrap();
    c.heartbeat().await.unwrap();
    // Two instances claiming at the same moment, many times over, in small batches.
    let (mut got_b, mut got_c) = (Vec::new(), Vec::new());
    loop {
        let (x, y) = tokio::join!(
            b.claim_unfinished_deliveries(STALE, 2),
            c.claim_unfinished_deliveries(STALE, 2)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x.len() <= 2 && y.len() <= 2, "limit: {x:?} {y:?}");
        if x.is_empty() && y.is_empty() {
            break;
        }
        got_b.extend(x);
        got_c.extend(y);
    }
    let mut all: Vec<&String> = got_b.iter().chain(&got_c).collect();
    all.sort();
    let expected: Vec<String> = (2..FANOUTS).map(|i| format!("fan-{i:02}")).collect();
    assert_eq!(
        all,
        expected.iter().collect::<Vec<_>>(),
        "b: {got_b:?}, c: {got_c:?}"
    );
    // Claimed by live instances: nobody takes them again.
    assert!(
        b.claim_unfinished_deliveries(STALE, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        c.claim_unfinished_deliveries(STALE, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // B finishes its fan-outs; C dies mid-way. A newcomer takes only C's.
    for id in &got_b {
        b.deliveries_finished(id).await.unwrap();
    }
    tokio::time::sleep(PAST_STALE).await;
    let d = db.handle().await;
    let mut got_d = d.claim_unfinished_deliveries(STALE, 100).await.unwrap();
    got_d.sort();
    let mut want = got_c.clone();
    want.sort();
    assert_eq!(got_d, want);
    // `limit` bounds a claim.
    let e = db.handle().await;
    tokio::time::sleep(PAST_STALE).await;
    e.heartbeat().await.unwrap();
    if want.len() >= 2 {
        let some = e.claim_unfinished_deliveries(STALE, 1).await.unwrap();
        assert_eq!(some.len(), 1);
        let rest = e.claim_unfinished_deliveries(STALE, 100).await.unwrap();
        assert_eq!(rest.len(), want.len() - 1);
    }
}

fn task(task_id: &str, approval_id: &str) -> TaskRecord {
    let mut t = TaskRecord::for_approval(task_id, approval_id, "chat");
    t.description = Some("summarise".into());
    t.estimated_cost = Some(0.5);
    t.context = json!({ "k": [1, 2] });
    t
}

/// A task moves by compare-and-set on its execution status: of racing transitions on
/// different instances, exactly one wins.
async fn task_cas(db: &Db) {
    let handles = db.handles(10).await;
    let store = &handles[0];
    insert(&**store, &request("task-a")).await;
    let t = task("t-1", "task-a");
    assert!(store.task_insert(&t).await.unwrap());
    assert!(!handles[1].task_insert(&t).await.unwrap());
    assert!(!store.task_insert(&task("t-2", "task-a")).await.unwrap());
    assert_eq!(store.task_by_id("t-1").await.unwrap(), Some(t.clone()));
    assert_eq!(
        store.task_by_approval("task-a").await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(store.task_by_id("t-2").await.unwrap(), None);
    // A task's id names its request; a request's own id wins over a task id spelled the same.
    let named = store.get_by_any_id("t-1").await.unwrap().expect("named");
    assert_eq!(named.request.id, "task-a");
    insert(&**store, &request("t-9")).await;
    // (sorted before "t-9", so an index scan alone would come to it first)
    insert(&**store, &request("a-task-b")).await;
    assert!(store.task_insert(&task("t-9", "a-task-b")).await.unwrap());
    let own = store.get_by_any_id("t-9").await.unwrap().expect("own");
    assert_eq!(own.request.id, "t-9");
    assert!(store.get_by_any_id("t-none").await.unwrap().is_none());

    let results = join_all(handles.iter().enumerate().map(|(i, h)| {
        let h = h.clone();
        let mut next = t.clone();
        next.execution = Some(if i % 2 == 0 {
            TaskStatus::Running
        } else {
            TaskStatus::Aborted
        });
        next.logs = vec![format!("racer {i}")];
        async move { (i, h.task_update(&next, None).await.expect("task_update")) }
    }))
    .await;
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, w)| *w)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let stored = store.task_by_id("t-1").await.unwrap().expect("stored");
    assert_eq!(stored.logs, vec![format!("racer {}", winners[0])]);

    // A stale expectation changes nothing; the right one moves it on.
    let mut wrong = stored.clone();
    wrong.execution = Some(TaskStatus::Completed);
    assert!(!store.task_update(&wrong, None).await.unwrap());
    assert!(
        !store
            .task_update(&wrong, Some(TaskStatus::Completed))
            .await
            .unwrap()
    );
    if stored.execution == Some(TaskStatus::Running) {
        assert!(
            store
                .task_update(&wrong, Some(TaskStatus::Running))
                .await
                .unwrap()
        );
        assert_eq!(store.task_by_id("t-1").await.unwrap(), Some(wrong));
    } else {
        assert_eq!(stored.execution, Some(TaskStatus::Aborted));
    }
}

/// What the task queue endpoints count, sum and page on.
async fn task_queries(db: &Db) {
    let store = db.handle().await;
    let t0 = Utc::now() - chrono::Duration::hours(1);
    // q-0 pending without a task, q-1 approved and running, q-2 approved and completed,
    // q-3 denied, q-4 expired, q-5 approved with a task that has not started.
    for i in 0..6 {
        insert(
            &*store,
            &request_at(&format!("q-{i}"), t0 + chrono::Duration::minutes(i)),
        )
        .await;
    }
    let bob = person("bob");
    for id in ["q-1", "q-2", "q-5"] {
        assert!(
            store
                .resolve(id, &resolution(Verdict::Approve, Some(&bob), "ok"), &[])
                .await
                .unwrap()
        );
    }
    assert!(
        store
            .resolve("q-3", &resolution(Verdict::Deny, Some(&bob), "no"), &[])
            .await
            .unwrap()
    );
    assert!(
        store
            .resolve("q-4", &resolution(Verdict::Timeout, None, "late"), &[])
            .await
            .unwrap()
    );

    let mut running = task("t-q1", "q-1");
    running.execution = Some(TaskStatus::Running);
    running.actual_cost = Some(0.75);
    running.duration_ms = Some(1_000);
    assert!(store.task_insert(&running).await.unwrap());
    let ended = Utc::now() - chrono::Duration::minutes(5);
    let mut completed = task("t-q2", "q-2");
    completed.execution = Some(TaskStatus::Completed);
    completed.actual_cost = Some(1.5);
    completed.duration_ms = Some(2_500);
    completed.ended_at = Some(ended);
    assert!(store.task_insert(&completed).await.unwrap());
    assert!(store.task_insert(&task("t-q5", "q-5")).await.unwrap());

    let mut counts = store.task_status_counts().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        vec![
            (TaskStatus::Approved, 1),
            (TaskStatus::Completed, 1),
            (TaskStatus::Expired, 1),
            (TaskStatus::PendingApproval, 1),
            (TaskStatus::Rejected, 1),
            (TaskStatus::Running, 1),
        ]
    );
    assert_eq!(store.task_totals().await.unwrap(), (2.25, 3_500));
    assert_eq!(
        store
            .spent_since(ended - chrono::Duration::seconds(1))
            .await
            .unwrap(),
        1.5
    );
    assert_eq!(
        store
            .spent_since(ended + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        0.0
    );

    let (page, total) = store.task_page(None, 4, 0).await.unwrap();
    assert_eq!(
        (page, total),
        (
            vec!["q-5", "q-4", "q-3", "q-2"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
            6
        )
    );
    let (page, total) = store.task_page(None, 4, 4).await.unwrap();
    assert_eq!(
        (page, total),
        (vec!["q-1".to_string(), "q-0".to_string()], 6)
    );
    let (page, total) = store
        .task_page(Some(TaskStatus::Running), 10, 0)
        .await
        .unwrap();
    assert_eq!((page, total), (vec!["q-1".to_string()], 1));
    let (page, total) = store
        .task_page(Some(TaskStatus::PendingApproval), 10, 0)
        .await
        .unwrap();
    assert_eq!((page, total), (vec!["q-0".to_string()], 1));
    let (page, total) = store
        .task_page(Some(TaskStatus::Failed), 10, 0)
        .await
        .unwrap();
    assert_eq!((page, total), (Vec::<String>::new(), 0));
}

/// The upstream outbox is a queue: oldest first, removed by sequence number.
async fn outbox_order(db: &Db) {
    let store = db.handle().await;
    assert_eq!(store.outbox_len().await.unwrap(), 0);
    assert!(store.outbox_peek(10).await.unwrap().is_empty());
    let bodies: Vec<serde_json::Value> = (0..5)
        .map(|i| json!({ "task_id": format!("t-{i}"), "cost": i as f64 * 0.5, "nested": { "i": i } }))
        .collect();
    let other = db.handle().await;
    for (i, body) in bodies.iter().enumerate() {
        // Pushed from two instances, in turn.
        let h = if i % 2 == 0 { &store } else { &other };
        h.outbox_push(body).await.unwrap();
    }
    assert_eq!(store.outbox_len().await.unwrap(), 5);
    let first = store.outbox_peek(3).await.unwrap();
    assert_eq!(
        first.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
        bodies[..3].to_vec()
    );
    assert!(first.windows(2).all(|w| w[0].0 < w[1].0));
    store.outbox_remove(first[1].0).await.unwrap();
    store.outbox_remove(first[1].0).await.unwrap(); // twice is harmless
    let rest = other.outbox_peek(10).await.unwrap();
    let want: Vec<serde_json::Value> = [0, 2, 3, 4].iter().map(|&i| bodies[i].clone()).collect();
    assert_eq!(
        rest.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
        want
    );
    assert_eq!(rest[0].0, first[0].0);
    assert_eq!(store.outbox_len().await.unwrap(), 4);
    for (seq, _) in rest {
        store.outbox_remove(seq).await.unwrap();
    }
    assert_eq!(store.outbox_len().await.unwrap(), 0);
}

/// Standing rules: added, listed oldest first, revoked by id or unique prefix, kept revoked.
async fn standing_rules(db: &Db) {
    let store = db.handle().await;
    let bob = person("bob");
    let mut r1 = StandingRule::from_request(&request("rule-src-1"), &bob);
    r1.id = "aaaa1111-rule".into();
    r1.created_at = Utc::now() - chrono::Duration::minutes(2);
    let mut r2 = StandingRule::from_request(&request("rule-src-2"), &bob);
    r2.id = "aaaa2222-rule".into();
    r2.command = None;
    r2.args = Some(json!({ "path": "/tmp" }));
    r2.created_at = Utc::now() - chrono::Duration::minutes(1);
    store.add_standing_rule(&r1).await.unwrap();
    store.add_standing_rule(&r2).await.unwrap();
    assert!(
        store.add_standing_rule(&r1).await.is_err(),
        "an id is added once"
    );

    assert_eq!(
        store.standing_rules(false).await.unwrap(),
        vec![r1.clone(), r2.clone()]
    );
    // Ambiguous or unknown prefixes revoke nothing.
    assert_eq!(store.revoke_standing_rule("aaaa").await.unwrap(), None);
    assert_eq!(store.revoke_standing_rule("zz").await.unwrap(), None);
    assert_eq!(store.revoke_standing_rule("aaaa_").await.unwrap(), None);
    let revoked = store
        .revoke_standing_rule("aaaa2")
        .await
        .unwrap()
        .expect("revoked by prefix");
    assert_eq!(revoked.id, r2.id);
    let at = revoked.revoked_at.expect("revoked_at");
    assert_eq!(store.revoke_standing_rule(&r2.id).await.unwrap(), None);
    assert_eq!(store.standing_rules(false).await.unwrap(), vec![r1.clone()]);
    let all = store.standing_rules(true).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].revoked_at, Some(trunc_ms(at)));
    // Now "aaaa" names one live rule.
    assert_eq!(
        store
            .revoke_standing_rule("aaaa")
            .await
            .unwrap()
            .map(|r| r.id),
        Some(r1.id.clone())
    );
}

// ----- PostgreSQL only ---------------------------------------------------------------------

/// Several instances starting at once on an empty database: all start, the migrations ran
/// once, and each has its own instance id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_startup_migrates_once() {
    let Some(db) = Db::postgres(10).await else {
        return;
    };
    let Backend::Postgres(pg) = &db.backend else {
        unreachable!()
    };
    let stores = join_all((0..8).map(|_| PostgresStore::connect(&pg.url))).await;
    let stores: Vec<PostgresStore> = stores
        .into_iter()
        .map(|s| s.expect("every instance starts"))
        .collect();
    let ids: HashSet<&str> = stores.iter().map(|s| s.instance_id()).collect();
    assert_eq!(ids.len(), 8);
    for s in &stores {
        assert!(uuid::Uuid::from_str(s.instance_id()).is_ok());
    }
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(stores[0].pool())
            .await
            .unwrap();
    assert_eq!(applied, vec![(1, true), (2, true)]);
    let alive: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances")
        .fetch_one(stores[0].pool())
        .await
        .unwrap();
    assert_eq!(alive, 8, "each instance heartbeats at start");
    for s in stores {
        s.pool().close().await;
    }
}

/// A failed connection says where it tried, never with the URL's password.
#[tokio::test]
async fn postgres_connect_errors_hide_the_password() {
    // Port 1 on localhost: refused at once, no server needed.
    let url = "postgres://approvald:s3cr%2Bt-pw@127.0.0.1:1/approvald";
    let err = match PostgresStore::connect(url).await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e.to_string(),
    };
    eprintln!("connect error as shown: {err}");
    assert!(!err.contains("s3cr"), "{err}");
    assert!(err.contains("127.0.0.1:1"), "says where: {err}");
    let err = match PostgresStore::connect("postgres://u:hunter2@[::1:bad/x").await {
        Ok(_) => panic!("a malformed URL"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn with_database_replaces_only_the_name() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}

// ----- SQLite only ---------------------------------------------------------------------------

/// A database written before migration 0006 (decisions and audit lines keyed by the request's
/// id alone) keeps every decision and audit line across the upgrade, and the database still
/// refuses a second decision by the same person. Audit lines keep their numbers through 0009
/// (which drops AUTOINCREMENT), and the next line is numbered one more than the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrade_to_time_ordered_keys_keeps_decisions_and_audit() {
    // Rows written by today's store, copied into a database that has only migrations 1-5.
    let today = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(today.path()).await.expect("open");
    let (alice, bob) = (person("alice"), person("bob"));
    let (decided, waiting) = (request("up-decided"), request("up-waiting"));
    insert(&store, &decided).await;
    insert(&store, &waiting).await;
    let first = store
        .record_decision(
            &decided.id,
            "person:alice",
            &approval(&alice, Decision::ApproveOnce),
            None,
            &[audit(AuditEvent::Decision, &decided.id, json!({ "n": 1 }))],
        )
        .await
        .expect("decision");
    assert_eq!(first, DecisionWrite::Recorded);
    store
        .audit_append(&AuditEntry::new(AuditEvent::RateLimited, None))
        .await
        .expect("audit");
    let lines_before = audit_of(&store, &decided.id).await;
    assert_eq!(lines_before.len(), 2);
    drop(store);

    let old = tempfile::tempdir().expect("tempdir");
    let scripts = old.path().join("migrations");
    std::fs::create_dir(&scripts).expect("mkdir");
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .expect("migrations")
    {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        if name.as_str() < "0006" {
            std::fs::copy(&path, scripts.join(&name)).expect("copy");
        }
    }
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(old.path().join("approvald.db"))
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        sqlx::migrate::Migrator::new(scripts.as_path())
            .await
            .expect("migrator")
            .run(&mut conn)
            .await
            .expect("migrations 1-5");
        let from = today.path().join("approvald.db");
        sqlx::query("ATTACH DATABASE ?1 AS today")
            .bind(from.to_string_lossy().to_string())
            .execute(&mut conn)
            .await
            .expect("attach");
        for copy in [
            "INSERT INTO approvals SELECT * FROM today.approvals",
            "INSERT INTO decisions (approval_id, approver_key, seq, approval_json)
             SELECT approval_id, approver_key, seq, approval_json FROM today.decisions",
            "INSERT INTO audit (seq, at, approval_id, event, transport, entry_json)
             SELECT seq, at, approval_id, event, transport, entry_json FROM today.audit",
        ] {
            sqlx::query(copy).execute(&mut conn).await.expect(copy);
        }
        conn.close().await.expect("close");
    }

    // Opening it runs 0006.
    let store = SqliteStore::open(old.path()).await.expect("open upgraded");
    let rec = store.get(&decided.id).await.expect("get").expect("kept");
    assert_eq!(rec.approvals.len(), 1);
    assert_eq!(rec.approvals[0].approver.approver_id, "person:alice");
    let lines_after = audit_of(&store, &decided.id).await;
    assert_eq!(
        lines_after.iter().map(|l| l.seq).collect::<Vec<_>>(),
        lines_before.iter().map(|l| l.seq).collect::<Vec<_>>()
    );
    assert_eq!(audit_of(&store, &waiting.id).await.len(), 1);
    let all = store
        .audit_list(&AuditQuery {
            approval_id: None,
            after_seq: 0,
            limit: 100,
        })
        .await
        .expect("all");
    assert_eq!(all.len(), 4, "every line, the one about no request too");
    let last_seq = all.iter().map(|l| l.seq).max().expect("lines");
    // Still one decision per person; a new one goes after the migrated one.
    let again = store
        .record_decision(
            &decided.id,
            "person:alice",
            &approval(&alice, Decision::Deny),
            None,
            &[],
        )
        .await
        .expect("again");
    assert_eq!(again, DecisionWrite::ApproverAlreadyDecided);
    let second = store
        .record_decision(
            &decided.id,
            "person:bob",
            &approval(&bob, Decision::ApproveOnce),
            Some(&resolution(Verdict::Approve, Some(&bob), "two of two")),
            &[audit(AuditEvent::Decision, &decided.id, json!({ "n": 2 }))],
        )
        .await
        .expect("second");
    assert_eq!(second, DecisionWrite::Recorded);
    let rec = store.get(&decided.id).await.expect("get").expect("kept");
    assert_eq!(rec.status, Status::Approved);
    let who: Vec<&str> = rec
        .approvals
        .iter()
        .map(|a| a.approver.approver_id.as_str())
        .collect();
    assert_eq!(who, ["person:alice", "person:bob"]);
    let lines = audit_of(&store, &decided.id).await;
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[2].seq,
        last_seq + 1,
        "numbering goes on after the last line"
    );
}
