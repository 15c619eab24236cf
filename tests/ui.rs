//! The control UI over plain HTTP: sign-in and sessions, CSRF, escaping, decisions with
//! identity and plain-words refusals, history filters and the audit trail, the status panel.
//! (The real-browser test is in `ui_browser.rs`.)

mod support;

use approvald_channel::{Decision, TestChannel, Transport};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use support::*;

const ALICE_UI: &str = "alice-ui-token-1";
const BOB_UI: &str = "bob-ui-token-1";
const CAROL_UI: &str = "carol-ui-token-1";

/// A browser-like client: no automatic redirects, one session cookie, the page's CSRF token.
struct UiClient {
    http: reqwest::Client,
    url: String,
    cookie: Option<String>,
}

impl UiClient {
    fn new(url: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            url: url.to_string(),
            cookie: None,
        }
    }

    async fn sign_in(url: &str, token: &str) -> Self {
        let mut c = Self::new(url);
        let res = c.post_form("/ui/login", &[("token", token)]).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let set = res.headers()[SET_COOKIE].to_str().unwrap().to_string();
        assert!(set.contains("HttpOnly"), "{set}");
        assert!(set.contains("SameSite=Strict"), "{set}");
        c.cookie = Some(set.split(';').next().unwrap().to_string());
        c
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        req.send().await.unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let res = self.get(path).await;
        assert_eq!(res.status(), StatusCode::OK, "GET {path}");
        res.text().await.unwrap()
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.url)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        req.send().await.unwrap()
    }

    async fn csrf(&self) -> String {
        let html = self.page("/ui").await;
        let at = html
            .find("name=\"csrf-token\" content=\"")
            .expect("csrf meta")
            + 27;
        html[at..at + html[at..].find('"').unwrap()].to_string()
    }

    /// Decide through the UI's in-place (JSON) path, as the page's script does.
    async fn decide_json(&self, id: &str, decision: &str, reason: &str) -> (StatusCode, Value) {
        let csrf = self.csrf().await;
        let res = self
            .http
            .post(format!("{}/ui/requests/{id}/decide", self.url))
            .header(COOKIE, self.cookie.as_deref().unwrap_or(""))
            .header("accept", "application/json")
            .form(&[
                ("csrf", csrf.as_str()),
                ("decision", decision),
                ("reason", reason),
            ])
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap())
    }
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_page_and_endpoint_needs_a_session_and_sign_out_ends_it() {
    let s = TestServer::start("", Vec::new()).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "secret-ish command", "wait": false }))
        .await;
    let id = r["id"].as_str().unwrap();
    let anon = UiClient::new(&s.url);

    for path in ["/ui", "/ui/history", &format!("/ui/requests/{id}")] {
        let res = anon.get(path).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(location(&res), "/ui/login", "{path}");
    }
    for path in [
        format!("/ui/fragments/card/{id}"),
        "/ui/fragments/pending".to_string(),
        "/ui/fragments/status".to_string(),
        "/events".to_string(),
    ] {
        let res = anon.get(&path).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(!res.text().await.unwrap().contains("secret-ish"), "{path}");
    }
    let res = anon
        .post_form(
            &format!("/ui/requests/{id}/decide"),
            &[("csrf", "x"), ("decision", "approve")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // A forged cookie is no session either.
    let mut forged = UiClient::new(&s.url);
    forged.cookie = Some("approvald_session=eyJwIjoiYWxpY2UifQ.AAAA".into());
    assert_eq!(forged.get("/ui").await.status(), StatusCode::SEE_OTHER);

    // A wrong token: 401, no cookie.
    let res = anon
        .post_form("/ui/login", &[("token", "not-a-token")])
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get(SET_COOKIE).is_none());
    assert!(res.text().await.unwrap().contains("not valid"));
    // A login page is public and carries no data.
    let login = anon.page("/ui/login").await;
    assert!(!login.contains("secret-ish"));

    // Signed in: the page shows the request, and the live stream opens with the cookie.
    let alice = UiClient::sign_in(&s.url, ALICE_UI).await;
    let html = alice.page("/ui").await;
    assert!(html.contains("secret-ish command"));
    assert!(html.contains("Alice"));
    let events = alice.get("/events").await;
    assert_eq!(events.status(), StatusCode::OK);
    drop(events);

    // Sign out needs the CSRF token, clears the cookie and kills the session server side.
    let res = alice.post_form("/ui/logout", &[("csrf", "wrong")]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(alice.get("/ui").await.status(), StatusCode::OK);
    let csrf = alice.csrf().await;
    let res = alice.post_form("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(
        res.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    // A copy of the old cookie no longer works.
    assert_eq!(alice.get("/ui").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        alice.get("/ui/fragments/pending").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn decisions_need_the_csrf_token_and_a_same_site_form_and_then_resolve_with_identity() {
    let s = TestServer::start("", Vec::new()).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "deploy", "wait": false }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let waiter = s.spawn_wait(&id);
    let alice = UiClient::sign_in(&s.url, ALICE_UI).await;
    let path = format!("/ui/requests/{id}/decide");

    let res = alice.post_form(&path, &[("decision", "approve")]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "missing CSRF token");
    let res = alice
        .post_form(&path, &[("csrf", "bm90IGl0"), ("decision", "approve")])
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "wrong CSRF token");
    // Bob's token in Alice's session is still wrong.
    let bob = UiClient::sign_in(&s.url, BOB_UI).await;
    let bobs = bob.csrf().await;
    let res = alice
        .post_form(&path, &[("csrf", bobs.as_str()), ("decision", "approve")])
        .await;
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "another session's token"
    );
    // The right token, but sent from another site.
    let csrf = alice.csrf().await;
    let res = alice
        .http
        .post(format!("{}{path}", s.url))
        .header(COOKIE, alice.cookie.as_deref().unwrap())
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str()), ("decision", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "cross-site");
    assert_eq!(s.get(&id).await["status"], "pending");
    assert!(!waiter.is_finished());

    // The plain form post (no script): approved, with Alice's identity via control_ui.
    let res = alice
        .post_form(
            &path,
            &[
                ("csrf", csrf.as_str()),
                ("decision", "approve-once"),
                ("reason", "looks fine"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/ui");
    let flash = res.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let answer = waiter.await.unwrap();
    let result = &answer["result"];
    assert_eq!(result["decision"], "approve");
    assert_eq!(result["decided_by"]["transport"], "control_ui");
    assert_eq!(result["decided_by"]["display_name"], "Alice");
    assert_eq!(result["decided_by"]["person"], "alice");
    assert_eq!(result["reason"], "looks fine");

    // The outcome is shown once on the next page view.
    let res = alice
        .http
        .get(format!("{}/ui", s.url))
        .header(
            COOKIE,
            format!(
                "{}; {}",
                alice.cookie.as_deref().unwrap(),
                flash.split(';').next().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    let html = res.text().await.unwrap();
    assert!(html.contains("Approved by Alice"), "{html}");
}

#[tokio::test]
async fn untrusted_text_renders_as_text_on_every_view() {
    let s = TestServer::start("", Vec::new()).await;
    let evil = "<script>alert('x')</script><img src=x onerror=alert(1)>";
    let r = s
        .request(json!({
            "tool": "<b>shell</b>",
            "command": format!("echo {evil}"),
            "summary": evil,
            "agent_id": "<i>agent</i>",
            "args": { "html": evil },
            "requester": { "id": "mallory", "display_name": evil },
            "wait": false
        }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let alice = UiClient::sign_in(&s.url, ALICE_UI).await;
    let bob = UiClient::sign_in(&s.url, BOB_UI).await;
    let check = |path: String, html: String| {
        assert!(!html.contains("<script>alert"), "{path}: {html}");
        assert!(!html.contains("<img src=x"), "{path}");
        assert!(!html.contains("<b>shell</b>"), "{path}");
        assert!(html.contains("&lt;script&gt;"), "{path}: {html}");
        assert!(html.contains("&lt;b&gt;shell"), "{path}");
    };
    check("/ui".into(), alice.page("/ui").await);
    bob.decide_json(&id, "deny", evil).await;
    for path in [
        format!("/ui/fragments/card/{id}"),
        format!("/ui/requests/{id}"),
        "/ui/history".to_string(),
    ] {
        let html = alice.page(&path).await;
        check(path, html);
    }
    // And the page forbids inline script outright.
    let res = alice.get("/ui").await;
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
}

#[tokio::test]
async fn refused_decisions_are_explained_in_plain_words_and_change_nothing() {
    let s = TestServer::start("", Vec::new()).await;
    // Alice asked for this one herself.
    let r = s
        .request(json!({
            "tool": "shell", "command": "rm -rf build", "wait": false,
            "requester": { "id": "alice@example.com" }
        }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let alice = UiClient::sign_in(&s.url, ALICE_UI).await;
    let carol = UiClient::sign_in(&s.url, CAROL_UI).await;
    let bob = UiClient::sign_in(&s.url, BOB_UI).await;

    // Carol may watch but not decide; the page says so.
    assert!(carol.page("/ui").await.contains("not an approver"));
    let (code, body) = carol.decide_json(&id, "approve", "").await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(body["ok"], false);
    assert_eq!(body["kind"], "not_an_approver");
    assert_eq!(
        body["message"],
        "You are not authorised to decide on this request."
    );
    assert_eq!(body["status"], "pending");

    let (_, body) = alice.decide_json(&id, "approve", "").await;
    assert_eq!(body["kind"], "self_approval");
    assert!(
        body["message"].as_str().unwrap().contains("someone else"),
        "{body}"
    );
    assert_eq!(s.get(&id).await["status"], "pending");
    assert_eq!(s.get(&id).await["approvals"], json!([]));

    // Bob approves; a late click gets the true state, with who won.
    let (code, body) = bob.decide_json(&id, "approve-once", "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Approved by Bob");
    let (_, body) = bob.decide_json(&id, "deny", "").await;
    assert_eq!(body["kind"], "already_resolved");
    assert!(body["message"].as_str().unwrap().contains("Bob"), "{body}");
    assert_eq!(body["status"], "approved");
    let card = alice.page(&format!("/ui/fragments/card/{id}")).await;
    assert!(card.contains("Approved by Bob via control_ui"), "{card}");
    assert!(!card.contains("<form"), "no buttons on a resolved request");

    // An expired request says so.
    let r = s
        .request(json!({ "tool": "shell", "command": "late", "timeout_ms": 50, "wait": false }))
        .await;
    let late = r["id"].as_str().unwrap().to_string();
    eventually("expiry", || async {
        s.get(&late).await["status"] == "expired"
    })
    .await;
    let (_, body) = bob.decide_json(&late, "approve", "").await;
    assert!(
        body["kind"] == "expired" || body["kind"] == "already_resolved",
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    // Unknown ids and nonsense decisions are clear errors.
    let (code, _) = bob.decide_json("no-such-id-at-all", "approve", "").await;
    assert_eq!(code, StatusCode::CONFLICT);
    let csrf = bob.csrf().await;
    let res = bob
        .post_form(
            &format!("/ui/requests/{late}/decide"),
            &[("csrf", csrf.as_str()), ("decision", "maybe")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("unknown decision"));
}

#[tokio::test]
async fn pending_view_shows_delivery_quorum_risk_and_only_the_allowed_buttons() {
    let a = TestChannel::new("chat-a", Transport::Discord);
    let s = TestServer::start(
        "[approvals]\nmin_approvals = 2\n[delivery]\nmode = \"targets\"\ntargets = [{ channel = \"chat-a\", to = \"ops-room\" }]\n",
        as_channels(&[&a]),
    )
    .await;
    let r = s
        .request(json!({
            "tool": "shell", "command": format!("psql -c '{}'", "x".repeat(600)),
            "risk_class": "critical", "agent_id": "ops-agent",
            "allowed_decisions": ["approve-once", "deny"], "wait": false
        }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    a.wait_until(std::time::Duration::from_secs(5), "prompt", |calls| {
        !calls.is_empty()
    })
    .await;
    let alice = UiClient::sign_in(&s.url, ALICE_UI).await;
    let bob = UiClient::sign_in(&s.url, BOB_UI).await;
    let (_, body) = alice.decide_json(&id, "approve", "").await;
    assert_eq!(body["message"], "1 of 2 approvals: Alice");

    let card = bob.page(&format!("/ui/fragments/card/{id}")).await;
    assert!(card.contains("risk-critical"));
    assert!(card.contains("critical risk"));
    assert!(card.contains("ops-agent"));
    assert!(card.contains("chat-a: ops-room"), "{card}");
    assert!(card.contains("1 of 2 approvals: Alice"));
    assert!(card.contains("Show all (6"), "long command folded: {card}");
    assert!(card.contains("data-expires="));
    assert!(card.contains("value=\"approve-once\""));
    assert!(card.contains("value=\"deny\""));
    assert!(!card.contains("approve-always"), "always not allowed here");

    // The status panel: counts and the channel's health.
    let status = bob.page("/ui/fragments/status").await;
    assert!(status.contains("id=\"count-pending\">1<"), "{status}");
    assert!(status.contains("chat-a"));
    assert!(status.contains("connected"));
    a.press(&id, Decision::Deny, user("999")).await;
    let status = bob.page("/ui/fragments/status").await;
    assert!(status.contains("id=\"count-denied\">1<"), "{status}");
}

#[tokio::test]
async fn history_filters_by_status_agent_tool_and_approver_and_shows_the_audit_trail() {
    let s = TestServer::start("", Vec::new()).await;
    let mk = |tool: &str, agent: &str, timeout: u64| {
        json!({ "tool": tool, "command": format!("{tool} job within {timeout} ms"), "agent_id": agent,
                "timeout_ms": timeout, "wait": false })
    };
    let deploy = s.request(mk("deploy", "ci-agent", 60_000)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shell = s.request(mk("shell", "chat-agent", 60_000)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let expired = s.request(mk("shell", "ci-agent", 50)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let waiting = s.request(mk("shell", "ci-agent", 60_000)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let alice = UiClient::sign_in(&s.url, ALICE_UI).await;
    let bob = UiClient::sign_in(&s.url, BOB_UI).await;
    let carol = UiClient::sign_in(&s.url, CAROL_UI).await;
    carol.decide_json(&deploy, "approve", "").await; // refused: audited
    alice.decide_json(&deploy, "approve", "ship it").await;
    bob.decide_json(&shell, "deny", "too broad").await;
    eventually("expiry", || async {
        s.get(&expired).await["status"] == "expired"
    })
    .await;

    let rows = |html: &str| {
        [&deploy, &shell, &expired, &waiting]
            .iter()
            .filter(|id| html.contains(&format!("/ui/requests/{id}")))
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
    };
    let all = alice.page("/ui/history").await;
    assert_eq!(rows(&all).len(), 3, "pending ones are not history");
    assert!(!rows(&all).contains(&waiting));
    assert_eq!(
        rows(&alice.page("/ui/history?status=expired").await),
        [expired.as_str()]
    );
    assert_eq!(
        rows(&alice.page("/ui/history?status=denied").await),
        [shell.as_str()]
    );
    let ci = rows(&alice.page("/ui/history?agent=ci-agent").await);
    assert_eq!(ci.len(), 2);
    assert!(ci.contains(&deploy) && ci.contains(&expired));
    assert_eq!(
        rows(&alice.page("/ui/history?tool=deploy").await),
        [deploy.as_str()]
    );
    assert_eq!(
        rows(&alice.page("/ui/history?approver=bob").await),
        [shell.as_str()]
    );
    assert_eq!(
        rows(
            &alice
                .page("/ui/history?approver=Alice&status=approved")
                .await
        ),
        [deploy.as_str()]
    );
    let res = alice.get("/ui/history?status=bogus").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // One request's full trail: requested, the refused attempt and why, the decision, the end.
    let detail = alice.page(&format!("/ui/requests/{deploy}")).await;
    for needle in [
        "requested",
        "refused",
        "not_an_approver",
        "Carol",
        "decision",
        "resolved",
        "ship it",
        "Approved by Alice via control_ui",
    ] {
        assert!(detail.contains(needle), "{needle} missing: {detail}");
    }
    let detail = alice.page(&format!("/ui/requests/{expired}")).await;
    assert!(detail.contains("expired"));
    assert!(detail.contains("nobody decided in time"));
    assert_eq!(
        alice
            .get("/ui/requests/00000000-0000-0000-0000-000000000000")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn assets_are_served_from_the_binary() {
    let s = TestServer::start("", Vec::new()).await;
    let anon = UiClient::new(&s.url);
    let js = anon.get("/ui/assets/app.js").await;
    assert_eq!(js.status(), StatusCode::OK);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert!(js.text().await.unwrap().contains("EventSource"));
    let css = anon.get("/ui/assets/app.css").await;
    assert!(css.text().await.unwrap().contains("@media"));
    assert_eq!(
        anon.get("/ui/assets/../Cargo.toml").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn operators_see_task_figures_and_abort_a_running_task_from_its_page() {
    let s = TestServer::start("", Vec::new()).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "reindex <all>", "wait": false }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    s.call(
        ALICE,
        "tool.approval.resolve",
        json!({ "id": id, "decision": "approve-once" }),
    )
    .await;
    s.call(GATEWAY, "tool.execution.start", json!({ "task_id": id }))
        .await;
    s.call(
        GATEWAY,
        "tool.execution.report",
        json!({ "task_id": id, "status": "running", "actual_cost": 0.25, "logs": ["<b>not bold</b>"] }),
    )
    .await;

    // Carol may look but is not an approver: no abort button, and a forged post is refused.
    let carol = UiClient::sign_in(&s.url, CAROL_UI).await;
    let page = carol.page(&format!("/ui/requests/{id}")).await;
    assert!(page.contains("id=\"task-status\""), "{page}");
    assert!(!page.contains("id=\"abort-task\""));
    let csrf = carol.csrf().await;
    let res = carol
        .post_form(
            &format!("/ui/requests/{id}/abort"),
            &[("csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let after = carol.page(&format!("/ui/requests/{id}")).await;
    assert!(after.contains("not an approver"), "{after}");
    let t = s
        .call(ADMIN, "tool.task.get", json!({ "task_id": id }))
        .await;
    assert_eq!(t["status"], "running");

    let alice = UiClient::sign_in(&s.url, ALICE_UI).await;
    let page = alice.page(&format!("/ui/requests/{id}")).await;
    assert!(page.contains("running"), "{page}");
    assert!(page.contains("&lt;b&gt;not bold"), "logs are text");
    assert!(!page.contains("<b>not bold"), "logs are text");
    assert!(page.contains("id=\"abort-task\""));
    let status = alice.page("/ui").await;
    assert!(status.contains("id=\"count-running\">1<"), "{status}");
    assert!(status.contains("$0.25"), "total cost shown");

    // Without the CSRF token nothing happens; with it the task is aborted as Alice.
    let res = alice
        .post_form(&format!("/ui/requests/{id}/abort"), &[("reason", "x")])
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let csrf = alice.csrf().await;
    let res = alice
        .post_form(
            &format!("/ui/requests/{id}/abort"),
            &[("csrf", csrf.as_str()), ("reason", "wrong index")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let page = alice.page(&location(&res)).await;
    assert!(page.contains("aborted by Alice: wrong index"), "{page}");
    assert!(!page.contains("id=\"abort-task\""), "nothing left to abort");
    let t = s
        .call(ADMIN, "tool.task.get", json!({ "task_id": id }))
        .await;
    assert_eq!(t["status"], "aborted");
    assert_eq!(t["abort"]["by"]["transport"], "control_ui");
    let signal: Value = s
        .http()
        .get(format!("{}/api/abort-signal/{id}", s.url))
        .bearer_auth(GATEWAY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(signal["should_abort"], true);
}
