//! Who may decide, in one place: on one request, every surface's wrong person is refused with
//! its own error kind, each refusal is audited, and nothing changes until a real approver
//! decides. Covers a request-scoped token resolving, self-approval across linked identities
//! (CLI token, chat account, control UI), non-approvers in chat and in the UI, an expired UI
//! session and a form without its CSRF token.

mod support;

use approvald::ui::SessionKey;
use approvald_channel::{Decision, InboundReply, RefusalKind, TestChannel, Transport};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::*;

const TARGETS: &str = r#"
[delivery]
mode = "targets"
targets = [{ channel = "chat-a", to = "ops" }]
"#;

fn ui_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sign_in(s: &TestServer, token: &str) -> String {
    let res = ui_client()
        .post(format!("{}/ui/login", s.url))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

async fn csrf(s: &TestServer, cookie: &str) -> String {
    let html = ui_client()
        .get(format!("{}/ui", s.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = html
        .find("name=\"csrf-token\" content=\"")
        .expect("csrf meta")
        + 27;
    html[at..at + html[at..].find('"').unwrap()].to_string()
}

async fn ui_decide(
    s: &TestServer,
    cookie: &str,
    csrf: Option<&str>,
    id: &str,
) -> (StatusCode, Value) {
    let mut form = vec![("decision", "approve")];
    if let Some(c) = csrf {
        form.push(("csrf", c));
    }
    let res = ui_client()
        .post(format!("{}/ui/requests/{id}/decide", s.url))
        .header("cookie", cookie)
        .header("accept", "application/json")
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn refusal(reply: &InboundReply) -> RefusalKind {
    match reply {
        InboundReply::Refused { kind, .. } => *kind,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn every_wrong_person_on_every_surface_is_refused_audited_and_changes_nothing() {
    let chat = TestChannel::new("chat-a", Transport::Discord);
    let s = TestServer::start(TARGETS, as_channels(&[&chat])).await;
    // Alice asks (her requester id links to her person).
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy", "requester": { "id": "alice@example.com" } }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();

    // API and CLI tokens.
    let (kind, _) = s
        .error_kind(
            GATEWAY,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    assert_eq!(
        kind, "not_an_approver",
        "a request-scoped token may not resolve"
    );
    let (kind, _) = s
        .error_kind(
            ALICE,
            "tool.approval.resolve",
            json!({ "id": id, "decision": "approve" }),
        )
        .await;
    assert_eq!(kind, "self_approval", "alice's own CLI token");

    // Chat: alice's linked Discord account, carol (a person, not an approver), a stranger.
    assert_eq!(
        refusal(&chat.press(&id, Decision::ApproveOnce, user("111")).await),
        RefusalKind::SelfApproval
    );
    assert_eq!(
        refusal(&chat.press(&id, Decision::ApproveOnce, user("333")).await),
        RefusalKind::NotAnApprover
    );
    assert_eq!(
        refusal(&chat.press(&id, Decision::Deny, user("4242")).await),
        RefusalKind::NotAnApprover
    );

    // The control UI: alice herself, carol, a session that expired, a form without CSRF.
    let alice = sign_in(&s, "alice-ui-token-1").await;
    let alice_csrf = csrf(&s, &alice).await;
    let (status, body) = ui_decide(&s, &alice, Some(&alice_csrf), &id).await;
    assert_eq!(
        (status, body["kind"].as_str()),
        (StatusCode::CONFLICT, Some("self_approval"))
    );
    let carol = sign_in(&s, "carol-ui-token-1").await;
    let carol_csrf = csrf(&s, &carol).await;
    let (status, body) = ui_decide(&s, &carol, Some(&carol_csrf), &id).await;
    assert_eq!(
        (status, body["kind"].as_str()),
        (StatusCode::CONFLICT, Some("not_an_approver"))
    );

    let key = SessionKey::load_or_create(&s.data_dir).unwrap();
    let (stale, _) = key.issue(
        "bob",
        "bob-ui-token-1",
        chrono::Utc::now() - chrono::Duration::hours(13),
    );
    let stale = format!("approvald_session={stale}");
    let page = ui_client()
        .get(format!("{}/ui", s.url))
        .header("cookie", &stale)
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        StatusCode::SEE_OTHER,
        "an expired session is signed out"
    );
    let (status, _) = ui_decide(&s, &stale, Some("anything"), &id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let bob = sign_in(&s, "bob-ui-token-1").await;
    let (status, _) = ui_decide(&s, &bob, None, &id).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");

    // Nothing changed, and every refusal is in the audit log with its reason.
    assert_eq!(s.get(&id).await["status"], "pending");
    assert!(s.get(&id).await["approvals"].as_array().unwrap().is_empty());
    let audit = s.audit(&id).await;
    let refused: Vec<String> = audit
        .iter()
        .filter(|e| e["event"] == "refused")
        .map(|e| e["detail"]["kind"].as_str().unwrap_or("?").to_string())
        .collect();
    let count = |k: &str| refused.iter().filter(|r| *r == k).count();
    assert_eq!(count("not_an_approver"), 4, "{refused:?}");
    assert_eq!(count("self_approval"), 3, "{refused:?}");
    assert_eq!(count("form_refused"), 2, "{refused:?}");

    // A real approver still decides.
    let (status, body) = ui_decide(&s, &bob, Some(&csrf(&s, &bob).await), &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.get(&id).await["decided_by"]["person"], "bob");
}
