//! The control UI in a real headless Chromium, driven over WebDriver (chromedriver).
//!
//! Needs Debian's `chromium` and `chromium-driver`. `.ci/run` installs them and sets
//! `APPROVALD_REQUIRE_BROWSER=1`, under which a missing browser fails these tests; without it,
//! on a machine with no Chromium, they print loudly that they were skipped and pass.
//! Screenshots land in `target/tmp/ui-artifacts/` (or `$APPROVALD_ARTIFACTS`).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::*;

const ALICE_UI: &str = "alice-ui-token-1";
const CAROL_UI: &str = "carol-ui-token-1";

/// chromedriver plus one browser session; both end when this is dropped.
struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Start chromedriver and a headless Chromium, or explain why not.
async fn browser() -> Option<Browser> {
    // Two rustls crypto providers are compiled in (via fantoccini); pick one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let required = std::env::var("APPROVALD_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromium = find_program("APPROVALD_CHROMIUM", &["chromium", "chromium-browser"]);
    let driver = find_program("APPROVALD_CHROMEDRIVER", &["chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        let why = "no chromium and/or chromedriver found (Debian packages chromium and chromium-driver; .ci/run installs them)";
        if required {
            panic!("APPROVALD_REQUIRE_BROWSER=1 but {why}");
        }
        eprintln!(
            "\n**************** SKIPPED: control UI browser test ****************\n\
             {why}.\n\
             Set APPROVALD_REQUIRE_BROWSER=1 to make this a failure.\n\
             ******************************************************************\n"
        );
        return None;
    };
    let port = free_port();
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut last = String::new();
    for _ in 0..100 {
        let mut builder = ClientBuilder::rustls().expect("rustls client");
        builder.capabilities(caps.clone());
        match builder.connect(&url).await {
            Ok(client) => {
                return Some(Browser {
                    client,
                    driver: child,
                });
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver at {url} never accepted a session: {last}");
}

fn artifacts() -> PathBuf {
    let dir = std::env::var("APPROVALD_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-artifacts"));
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

/// Evaluate `script` (which returns a value) until `ok` accepts it, or fail with the last value.
async fn until(c: &Client, what: &str, script: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        last = c.execute(script, vec![]).await.unwrap_or(Value::Null);
        if ok(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}; last value: {last}");
}

async fn sign_in(c: &Client, url: &str, token: &str) {
    c.goto(&format!("{url}/ui")).await.unwrap();
    // Not signed in: the UI sends us to the sign-in form.
    until(c, "the sign-in form", "return location.pathname", |v| {
        v == "/ui/login"
    })
    .await;
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(c, "the pending view", "return location.pathname", |v| {
        v == "/ui"
    })
    .await;
    // The live stream is connected before anything is created.
    until(
        c,
        "live updates",
        "return document.getElementById('live').textContent",
        |v| v.as_str().is_some_and(|t| t.contains("Live updates on")),
    )
    .await;
}

const CARD_WITH: &str = "return (function (text) { \
    const card = [...document.querySelectorAll('#pending-list article.card')] \
      .find(c => c.textContent.includes(text)); \
    return card ? card.dataset.id : null; })";

#[tokio::test]
async fn an_approver_sees_a_new_request_live_and_approves_it_in_the_browser() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let s = TestServer::start("", Vec::new()).await;
    sign_in(c, &s.url, ALICE_UI).await;
    // Marks this page load: if the page reloads, the mark is gone.
    c.execute("window.__sameLoad = 'yes'; return true", vec![])
        .await
        .unwrap();

    // The gateway asks, and waits for the answer.
    let url = s.url.clone();
    let caller = tokio::spawn(async move {
        rpc_at(
            &url,
            GATEWAY,
            "tool.approval.request",
            json!({
                "tool": "shell",
                "command": "kubectl rollout restart deploy/web",
                "summary": "Restart the web deployment",
                "risk_class": "high",
                "agent_id": "ops-agent",
                "requester": { "id": "bob-the-requester", "display_name": "Bob's agent" },
                "timeout_ms": 120_000
            }),
        )
        .await
    });

    let script = format!("{CARD_WITH}('kubectl rollout restart deploy/web')");
    let id = until(c, "the new request's card", &script, |v| v.is_string()).await;
    let id = id.as_str().unwrap().to_string();
    // The countdown runs.
    until(
        c,
        "a live countdown",
        &format!("return document.querySelector('#card-{id} time.countdown').textContent"),
        |v| v.as_str().is_some_and(|t| t.starts_with("in ")),
    )
    .await;
    let shot = c.screenshot().await.expect("screenshot");
    let path = artifacts().join("pending-view.png");
    std::fs::write(&path, &shot).expect("write screenshot");
    eprintln!("screenshot of the pending view: {}", path.display());

    // The same view on a phone-sized screen.
    c.set_window_size(412, 915).await.unwrap();
    let overflow = c
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth + 1",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow, json!(false), "no sideways scrolling on a phone");
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join("pending-view-phone.png"), &shot).expect("write screenshot");
    c.set_window_size(1280, 1000).await.unwrap();

    let card = c.find(Locator::Id(&format!("card-{id}"))).await.unwrap();
    card.find(Locator::Css("input[name=reason]"))
        .await
        .unwrap()
        .send_keys("rollout is expected")
        .await
        .unwrap();
    card.find(Locator::Css("button[value='approve-once']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    let answer = tokio::time::timeout(Duration::from_secs(10), caller)
        .await
        .expect("the caller got an answer")
        .unwrap();
    let result = &answer["result"];
    assert_eq!(result["id"], id.as_str());
    assert_eq!(result["decision"], "approve");
    assert_eq!(result["decided_by"]["transport"], "control_ui");
    assert_eq!(result["decided_by"]["display_name"], "Alice");
    assert_eq!(result["decided_by"]["person"], "alice");
    assert_eq!(result["reason"], "rollout is expected");

    // The card moved out of pending, shows who decided and where, without a reload.
    let outcome = until(
        c,
        "the resolved card",
        &format!(
            "const c = document.querySelector('#resolved-list #card-{id}'); \
             return c ? c.querySelector('.outcome').textContent : null"
        ),
        |v| v.is_string(),
    )
    .await;
    assert!(
        outcome
            .as_str()
            .unwrap()
            .contains("Approved by Alice via control_ui"),
        "{outcome}"
    );
    let pending = c
        .execute(
            "return document.querySelectorAll('#pending-list article.card').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(pending, json!(0));
    let same = c
        .execute("return window.__sameLoad || null", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!("yes"), "the page was not reloaded");

    // A decision made elsewhere (the API) also moves a card out, live.
    let r = s
        .request(json!({ "tool": "shell", "command": "decided-elsewhere", "wait": false }))
        .await;
    let other = r["id"].as_str().unwrap().to_string();
    until(
        c,
        "the second card",
        &format!("{CARD_WITH}('decided-elsewhere')"),
        |v| v == &json!(other),
    )
    .await;
    s.call(
        BOB,
        "tool.approval.resolve",
        json!({ "id": other, "decision": "deny", "reason": "not today" }),
    )
    .await;
    let outcome = until(
        c,
        "the card resolved elsewhere",
        &format!(
            "const c = document.querySelector('#resolved-list #card-{other}'); \
             return c ? c.querySelector('.outcome').textContent : null"
        ),
        |v| v.is_string(),
    )
    .await;
    assert!(
        outcome.as_str().unwrap().contains("Denied by Bob via api"),
        "{outcome}"
    );
    b.client.clone().close().await.ok();
}

#[tokio::test]
async fn a_non_approvers_click_is_refused_in_plain_words_and_changes_nothing() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let s = TestServer::start("", Vec::new()).await;
    sign_in(c, &s.url, CAROL_UI).await;
    let r = s
        .request(json!({ "tool": "shell", "command": "drop table users", "wait": false }))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    until(
        c,
        "the request's card",
        &format!("{CARD_WITH}('drop table users')"),
        |v| v == &json!(id),
    )
    .await;
    let card = c.find(Locator::Id(&format!("card-{id}"))).await.unwrap();
    card.find(Locator::Css("button[value='approve-once']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let message = until(
        c,
        "the refusal",
        &format!(
            "const m = document.querySelector('#card-{id} .card-msg'); \
             return m && !m.hidden ? m.textContent : null"
        ),
        |v| v.is_string(),
    )
    .await;
    assert_eq!(
        message,
        json!("You are not authorised to decide on this request.")
    );
    // Nothing changed: still pending, no approvals, the card still offers its buttons.
    let now = s.get(&id).await;
    assert_eq!(now["status"], "pending");
    assert_eq!(now["approvals"], json!([]));
    let still = c
        .execute(
            &format!(
                "return !!document.querySelector('#pending-list #card-{id} button[value=deny]')"
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(still, json!(true));
    let refused = s
        .audit(&id)
        .await
        .into_iter()
        .filter(|e| e["event"] == "refused")
        .count();
    assert_eq!(refused, 1);
    b.client.clone().close().await.ok();
}
