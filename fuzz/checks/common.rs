//! Helpers the checks share: input splitting, a per-target Tokio runtime, a fake HTTP API
//! on loopback that records what the channels send, a fake engine (`InboundSink`) that answers
//! with hostile text, and validators for the markups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use approvald_channel::{
    InboundAction, InboundReply, InboundSink, MessageRef, PlatformUser, PromptView, RefusalKind,
};

/// Text with markup and pings in it, for what the fake engine answers.
pub const HOSTILE: &str = "<script>alert(1)</script> <b>bold</b> &amp; & @everyone @here <!channel> <@123> *x* _y_ `z` ```w``` [l](http://e.x)";

pub fn lossy(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The first byte as a mode selector, and the rest.
pub fn mode(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((m, rest)) => (*m, rest),
        None => (0, data),
    }
}

/// `data` cut at every `sep`, each part read as (lossy) UTF-8.
pub fn fields(data: &[u8], sep: u8) -> Vec<String> {
    data.split(|b| *b == sep).map(lossy).collect()
}

/// A small multi-threaded runtime whose worker threads carry `name`, so that a panic in a
/// spawned task can be told apart (see [`panics_on`]).
pub fn runtime(name: &'static str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ----- panics in spawned tasks --------------------------------------------------------------

static PANICS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
static HOOK: OnceLock<()> = OnceLock::new();
static ANY_PANIC: AtomicUsize = AtomicUsize::new(0);

/// Count panics per thread name (Tokio catches a panic in a spawned task, so a test would not
/// see it otherwise). Under libFuzzer its own hook, chained here, aborts on any panic.
pub fn install_panic_counter() {
    HOOK.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            ANY_PANIC.fetch_add(1, Ordering::SeqCst);
            let name = std::thread::current().name().unwrap_or("").to_string();
            if let Ok(mut m) = PANICS.get_or_init(Default::default).lock() {
                *m.entry(name).or_default() += 1;
            }
            previous(info);
        }));
    });
}

/// Panics seen so far on threads named `name`.
pub fn panics_on(name: &str) -> usize {
    PANICS
        .get_or_init(Default::default)
        .lock()
        .map(|m| m.get(name).copied().unwrap_or(0))
        .unwrap_or(0)
}

/// Wait (at most `max`) until the runtime has no more live tasks than `baseline`: the work a
/// request spawned (Slack answers in the background) has finished. Returns the new baseline.
pub fn settle(rt: &tokio::runtime::Runtime, baseline: usize, max: Duration) -> usize {
    let deadline = Instant::now() + max;
    loop {
        let alive = rt.metrics().num_alive_tasks();
        if alive <= baseline {
            return alive;
        }
        if Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

// ----- a fake platform API on loopback --------------------------------------------------------

/// One request the code under test sent to the fake API.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub body: Vec<u8>,
}

/// An HTTP server on 127.0.0.1 that answers every request with `answer(path)` and records it.
/// Answers carry `Connection: close`, so no client connection task outlives its call.
pub struct FakeApi {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeApi {
    pub fn start(rt: &tokio::runtime::Runtime, answer: fn(&str) -> String) -> FakeApi {
        use axum::body::Bytes;
        use axum::http::{Uri, header};
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let log = calls.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
            let log = log.clone();
            async move {
                let path = uri.path().to_string();
                let text = answer(&path);
                if let Ok(mut l) = log.lock() {
                    l.push(Call {
                        path,
                        body: body.to_vec(),
                    });
                }
                (
                    [
                        (header::CONNECTION, "close"),
                        (header::CONTENT_TYPE, "application/json"),
                    ],
                    text,
                )
            }
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
        FakeApi {
            url: format!("http://{addr}"),
            calls,
        }
    }

    /// The calls recorded since the last `take`.
    pub fn take(&self) -> Vec<Call> {
        self.calls
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

// ----- a fake engine --------------------------------------------------------------------------

/// Stands in for the engine: answers every decision in one of its ways (chosen from the
/// approval id, so the fuzzer reaches each), echoing the id and reason the way the engine's
/// refusals do, and lists pending requests whose text is hostile.
pub struct FakeSink {
    pub decisions: Mutex<Vec<InboundAction>>,
    /// Extra text in every answer and pending view (the fuzzer's own, when it has some).
    pub extra: Mutex<String>,
}

impl FakeSink {
    pub fn new() -> Arc<FakeSink> {
        Arc::new(FakeSink {
            decisions: Mutex::new(Vec::new()),
            extra: Mutex::new(String::new()),
        })
    }

    pub fn set_extra(&self, s: &str) {
        if let Ok(mut e) = self.extra.lock() {
            *e = s.chars().take(300).collect();
        }
    }

    fn extra(&self) -> String {
        self.extra.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn take(&self) -> Vec<InboundAction> {
        self.decisions
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Hostile pending requests (three, so lists and their limits are exercised).
    pub fn views(&self) -> Vec<PromptView> {
        let extra = self.extra();
        let now = chrono::Utc::now();
        (0..3)
            .map(|i| PromptView {
                approval_id: format!("0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5{i}"),
                short_id: "0b9c4d2e".into(),
                tool: format!("{HOSTILE} {extra}"),
                summary: (i != 1).then(|| format!("{extra} {HOSTILE}\nsecond line")),
                command: Some(format!("rm -rf / {HOSTILE} {extra} ````` ")),
                args: None,
                risk: format!("high {extra}"),
                requester: Some(format!("@everyone {extra}")),
                agent_id: Some(extra.clone()),
                session_key: None,
                created_at: now,
                expires_at: now + chrono::Duration::minutes(5),
                status: "pending".into(),
                progress: None,
                decided_by: None,
                reason: None,
                execution: None,
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl InboundSink for FakeSink {
    async fn decide(&self, action: InboundAction) -> InboundReply {
        let pick = action
            .approval
            .bytes()
            .fold(action.decision as usize, |a, b| a.wrapping_add(b as usize))
            % 5;
        let echo = format!(
            "{:?} {} {}",
            action.approval,
            action.reason.as_deref().unwrap_or(""),
            self.extra()
        );
        if let Ok(mut d) = self.decisions.lock() {
            d.push(action);
        }
        match pick {
            0 => InboundReply::Accepted {
                status: "approved".into(),
                message: format!("Approved by {HOSTILE} {echo}"),
            },
            1 => InboundReply::Accepted {
                status: "pending".into(),
                message: format!("1 of 2 approvals: {HOSTILE} {echo}"),
            },
            2 => InboundReply::Refused {
                kind: RefusalKind::UnknownId,
                message: format!("no request matches {echo}"),
            },
            3 => InboundReply::Refused {
                kind: RefusalKind::AlreadyResolved,
                message: format!("already approved by {HOSTILE} {echo}"),
            },
            _ => InboundReply::Refused {
                kind: RefusalKind::NotAnApprover,
                message: format!("{HOSTILE} is not an approver {echo}"),
            },
        }
    }

    async fn pending(
        &self,
        _channel: &str,
        user: &PlatformUser,
    ) -> Result<Vec<PromptView>, InboundReply> {
        if user.id.ends_with('7') {
            return Err(InboundReply::Refused {
                kind: RefusalKind::NotAnApprover,
                message: format!("{HOSTILE} you may not see these {}", self.extra()),
            });
        }
        Ok(self.views())
    }

    async fn approval_for_message(&self, message: &MessageRef) -> Option<String> {
        // A reply to "a prompt": every other message id is one.
        message
            .message_id
            .ends_with(['0', '2', '4', '6', '8'])
            .then(|| "0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e".to_string())
    }
}

// ----- markup validators --------------------------------------------------------------------------

/// Check `html` is Telegram HTML that approvald may send: only the tags in `allowed`,
/// balanced and properly nested, every `&` starting a whole entity, no raw `<` or `>` in text.
/// Returns the sequence of tags, for comparing with a reference rendering.
pub fn telegram_html(html: &str, allowed: &[&str]) -> Result<Vec<String>, String> {
    let mut tags = Vec::new();
    let mut open: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        match c {
            '<' => {
                let end = rest
                    .find('>')
                    .ok_or_else(|| format!("raw '<' at {:?}", head(rest)))?;
                let tag = &rest[..=end];
                if tag[1..].contains('<') {
                    return Err(format!("raw '<' at {:?}", head(rest)));
                }
                let inner = &tag[1..tag.len() - 1];
                let (closing, name) = match inner.strip_prefix('/') {
                    Some(n) => (true, n),
                    None => (false, inner),
                };
                let name = name.split_whitespace().next().unwrap_or("");
                if !allowed.contains(&name) || (closing && inner.len() != name.len() + 1) {
                    return Err(format!("tag {tag:?} is not one approvald writes"));
                }
                if closing {
                    match open.pop() {
                        Some(o) if o == name => {}
                        other => {
                            return Err(format!("{tag:?} closes {other:?}"));
                        }
                    }
                } else {
                    open.push(name.to_string());
                }
                tags.push(tag.to_string());
                rest = &rest[end + 1..];
            }
            '>' => return Err(format!("raw '>' at {:?}", head(rest))),
            '&' => {
                let ok = ["&amp;", "&lt;", "&gt;", "&quot;"]
                    .iter()
                    .find(|e| rest.starts_with(**e));
                match ok {
                    Some(e) => rest = &rest[e.len()..],
                    None => return Err(format!("'&' is not an entity at {:?}", head(rest))),
                }
            }
            _ => rest = &rest[c.len_utf8()..],
        }
    }
    if !open.is_empty() {
        return Err(format!("tags left open: {open:?}"));
    }
    Ok(tags)
}

/// Visible length of Telegram HTML in UTF-16 code units (entities count as one character).
pub fn telegram_visible_units(html: &str) -> usize {
    let mut units = 0;
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        if c == '<'
            && let Some(end) = rest.find('>')
        {
            rest = &rest[end + 1..];
            continue;
        }
        if c == '&'
            && let Some(end) = rest.find(';')
            && end < 10
        {
            units += 1;
            rest = &rest[end + 1..];
            continue;
        }
        units += c.len_utf16();
        rest = &rest[c.len_utf8()..];
    }
    units
}

pub fn head(s: &str) -> String {
    s.chars().take(40).collect()
}

// ----- calling a router in-process ---------------------------------------------------------------

/// One request through `router`, as approvald's server would pass it; the status and body.
pub async fn call(
    router: axum::Router,
    req: axum::http::Request<axum::body::Body>,
) -> (axum::http::StatusCode, Vec<u8>) {
    use hyper::service::Service;
    let service = hyper_util::service::TowerToHyperService::new(router);
    let resp = match service.call(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    (status, body)
}

/// A POST with these headers and body.
pub fn post(
    path: &str,
    headers: &[(&str, &[u8])],
    body: Vec<u8>,
) -> Option<axum::http::Request<axum::body::Body>> {
    let mut b = axum::http::Request::builder().method("POST").uri(path);
    for (k, v) in headers {
        // Header values the HTTP layer itself would refuse never reach the handler.
        let v = axum::http::HeaderValue::from_bytes(v).ok()?;
        b = b.header(*k, v);
    }
    b.body(axum::body::Body::from(body)).ok()
}
