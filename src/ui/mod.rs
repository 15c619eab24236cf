//! The control UI at `/ui`: operators sign in with their UI token, see everything pending,
//! decide, and look back at what happened. Server-rendered HTML (minijinja, auto-escaped) with
//! one small script for live updates, countdowns and in-place decisions; every asset is
//! compiled into the binary, so it works offline and needs no build step.
//!
//! A decision made here is a resolution like any other, with the person's identity and the
//! `control_ui` transport.

mod session;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::Utc;
use minijinja::{Environment, context};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use session::{Session, SessionKey};
use views::{AuditView, CardView};

use crate::config::PersonConfig;
use crate::domain::{ApprovalRecord, Decision, Status};
use crate::engine::{Actor, DecisionAttempt, ToolApprovalForwarder, execution_text, plain_refusal};
use crate::error::ApprovalError;
use crate::store::{AuditQuery, ListQuery};
use crate::tasks::TaskStatus;

/// What every UI handler needs.
#[derive(Clone)]
struct UiContext {
    engine: ToolApprovalForwarder,
    key: SessionKey,
    pages: Arc<Environment<'static>>,
    secure_cookies: bool,
}

/// The signed-in person behind a request.
struct Viewer {
    person: PersonConfig,
    csrf: String,
    session: Session,
}

const FLASH_COOKIE: &str = "approvald_flash";
/// Longest reason kept from the form.
const MAX_REASON_CHARS: usize = 500;
/// The most pending requests one page shows (the count says how many there are).
const PENDING_PAGE: u32 = 200;
const HISTORY_PAGE: usize = 50;

fn pages() -> Environment<'static> {
    let mut env = Environment::new();
    // `.html` names turn on HTML auto-escaping for every value.
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("pending.html", include_str!("templates/pending.html")),
        ("card.html", include_str!("templates/card.html")),
        ("status.html", include_str!("templates/status.html")),
        ("history.html", include_str!("templates/history.html")),
        ("request.html", include_str!("templates/request.html")),
        ("error.html", include_str!("templates/error.html")),
    ] {
        if let Err(e) = env.add_template(name, source) {
            // The templates are compiled in; a broken one is a bug caught by the tests.
            tracing::error!(template = name, error = %e, "bad built-in UI template");
        }
    }
    env
}

/// The UI's routes. `key` signs sessions; the same key lets `/events` accept a UI session.
pub fn router(engine: ToolApprovalForwarder, key: SessionKey) -> Router {
    let ctx = UiContext {
        secure_cookies: engine.config().server.secure_cookies,
        engine,
        key,
        pages: Arc::new(pages()),
    };
    Router::new()
        .route("/ui", get(pending_page))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/history", get(history_page))
        .route("/ui/requests/{id}", get(request_page))
        .route("/ui/requests/{id}/decide", post(decide))
        .route("/ui/requests/{id}/abort", post(abort))
        .route("/ui/fragments/card/{id}", get(card_fragment))
        .route("/ui/fragments/pending", get(pending_fragment))
        .route("/ui/fragments/status", get(status_fragment))
        .route("/ui/assets/{name}", get(asset))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ctx)
}

/// Who is signed in, from the session cookie. Used by `/events` as well.
pub fn signed_in(
    engine: &ToolApprovalForwarder,
    key: &SessionKey,
    headers: &HeaderMap,
) -> Option<Session> {
    let value = session::cookie_value(headers)?;
    key.verify(&value, engine.directory(), Utc::now())
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

// ----- errors ------------------------------------------------------------------------------

/// Everything a UI handler can answer besides its page. Internals stay in the log.
enum UiError {
    /// No valid session: pages go to sign-in, fragments and forms get 401.
    NotSignedIn {
        page: bool,
    },
    /// A state-changing form without a valid CSRF token or from another site.
    Forbidden(&'static str),
    BadRequest(String),
    NotFound(String),
    Internal(String),
}

impl UiError {
    fn status(&self) -> StatusCode {
        match self {
            UiError::NotSignedIn { .. } => StatusCode::UNAUTHORIZED,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            UiError::NotSignedIn { .. } => "Sign in first.".into(),
            UiError::Forbidden(m) => (*m).into(),
            UiError::BadRequest(m) | UiError::NotFound(m) => m.clone(),
            UiError::Internal(_) => "Something went wrong; the log has the details.".into(),
        }
    }
}

impl From<ApprovalError> for UiError {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::UnknownId(_) | ApprovalError::AmbiguousId { .. } => {
                UiError::NotFound(e.to_string())
            }
            ApprovalError::InvalidParams(m) => UiError::BadRequest(m),
            other => UiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for UiError {
    fn from(e: crate::store::StoreError) -> Self {
        UiError::Internal(e.to_string())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        if let UiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "control UI request failed");
        }
        if let UiError::NotSignedIn { page: true } = self {
            return Redirect::to("/ui/login").into_response();
        }
        let status = self.status();
        let page = pages()
            .get_template("error.html")
            .and_then(|t| {
                t.render(context! { status => status.as_u16(), message => self.message() })
            })
            .unwrap_or_else(|_| self.message());
        (status, html_type(), page).into_response()
    }
}

fn html_type() -> [(header::HeaderName, &'static str); 1] {
    [(header::CONTENT_TYPE, "text/html; charset=utf-8")]
}

// ----- sign-in -----------------------------------------------------------------------------

impl UiContext {
    fn viewer(&self, headers: &HeaderMap, page: bool) -> Result<Viewer, UiError> {
        let session =
            signed_in(&self.engine, &self.key, headers).ok_or(UiError::NotSignedIn { page })?;
        let person = self
            .engine
            .directory()
            .person(&session.person)
            .cloned()
            .ok_or(UiError::NotSignedIn { page })?;
        Ok(Viewer {
            csrf: self.key.csrf_token(&session),
            person,
            session,
        })
    }

    /// A state-changing form: signed in, from this site, with this session's CSRF token.
    fn form_viewer(&self, headers: &HeaderMap, csrf: &str) -> Result<Viewer, UiError> {
        same_site(headers)?;
        let viewer = self.viewer(headers, false)?;
        if !self.key.csrf_ok(&viewer.session, csrf) {
            return Err(UiError::Forbidden(
                "This form is out of date (missing or wrong CSRF token); reload the page and try again.",
            ));
        }
        Ok(viewer)
    }

    /// [`Self::form_viewer`] for a form about one request: a refusal is audited on it.
    async fn form_viewer_for(
        &self,
        headers: &HeaderMap,
        csrf: &str,
        id: &str,
    ) -> Result<Viewer, UiError> {
        match self.form_viewer(headers, csrf) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.engine.audit_refused_form(id, &e.message()).await;
                Err(e)
            }
        }
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<Response, UiError> {
        let html = self
            .pages
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| UiError::Internal(format!("template {name}: {e:#}")))?;
        Ok((html_type(), html).into_response())
    }
}

/// Browsers say where a form came from; refuse anything another site sent. (SameSite=Strict
/// already keeps the cookie off such requests; this also covers the sign-in form.)
fn same_site(headers: &HeaderMap) -> Result<(), UiError> {
    let forbidden = Err(UiError::Forbidden(
        "Cross-site form submissions are refused.",
    ));
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return forbidden;
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if origin_host.is_empty() || origin_host != host {
            return forbidden;
        }
    }
    Ok(())
}

/// Any serialisable value for a template context.
fn v<T: Serialize>(value: &T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

fn person_ctx(p: &PersonConfig) -> minijinja::Value {
    context! { name => p.name.clone(), label => p.label(), approver => p.approver }
}

async fn login_page(State(ctx): State<UiContext>, headers: HeaderMap) -> Result<Response, UiError> {
    if ctx.viewer(&headers, true).is_ok() {
        return Ok(Redirect::to("/ui").into_response());
    }
    ctx.render("login.html", context! { page => "login" })
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, UiError> {
    same_site(&headers)?;
    let token = form.token.trim();
    let Some(person) = ctx.engine.directory().person_by_ui_token(token) else {
        tracing::warn!("control UI sign-in with an unknown token");
        // Slow down guessing a little; tokens are long enough that this is a courtesy.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let mut res = ctx.render(
            "login.html",
            context! { page => "login", error => "That sign-in token is not valid." },
        )?;
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(res);
    };
    let Some(ui_token) = person.ui_token.as_ref() else {
        return Err(UiError::Internal("person without ui_token matched".into()));
    };
    let (cookie, _) = ctx.key.issue(&person.name, ui_token.expose(), Utc::now());
    tracing::info!(person = %person.name, "signed in to the control UI");
    Ok((
        [(
            header::SET_COOKIE,
            session::set_cookie(Some(&cookie), ctx.secure_cookies),
        )],
        Redirect::to("/ui"),
    )
        .into_response())
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    let viewer = ctx.form_viewer(&headers, &form.csrf)?;
    ctx.key.sign_out(&viewer.session, Utc::now());
    tracing::info!(person = %viewer.person.name, "signed out of the control UI");
    Ok((
        [(
            header::SET_COOKIE,
            session::set_cookie(None, ctx.secure_cookies),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response())
}

// ----- pending and status -------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Flash {
    /// `ok` or `refused`.
    kind: String,
    text: String,
}

fn read_flash(headers: &HeaderMap) -> Option<Flash> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == FLASH_COOKIE)?
        .1;
    serde_json::from_slice(&B64.decode(value).ok()?).ok()
}

fn flash_cookie(flash: Option<&Flash>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match flash {
        Some(f) => format!(
            "{FLASH_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=60{secure}",
            B64.encode(serde_json::to_vec(f).unwrap_or_default())
        ),
        None => format!("{FLASH_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

async fn pending_cards(ctx: &UiContext) -> Result<Vec<CardView>, UiError> {
    let recs = ctx
        .engine
        .list(&ListQuery {
            status: Some(Status::Pending),
            limit: PENDING_PAGE,
            ..ListQuery::default()
        })
        .await?;
    let now = Utc::now();
    // Soonest deadline first: that is the one to look at.
    let mut cards: Vec<_> = recs.iter().map(|r| card(ctx, r, now)).collect();
    cards.sort_by(|a, b| a.expires_at.cmp(&b.expires_at));
    Ok(cards)
}

fn card(ctx: &UiContext, rec: &ApprovalRecord, now: chrono::DateTime<Utc>) -> CardView {
    CardView::new(rec, ctx.engine.progress(rec), now)
}

#[derive(Serialize)]
struct StatusView {
    counts: BTreeMap<&'static str, u64>,
    total: u64,
    channels: Vec<serde_json::Value>,
    failing: usize,
    /// Task queue figures: execution counts, cost and time totals, budget, fallback mode.
    tasks: serde_json::Value,
}

async fn status_view(ctx: &UiContext) -> Result<StatusView, UiError> {
    let mut counts: BTreeMap<&'static str, u64> = [
        Status::Pending,
        Status::Approved,
        Status::Denied,
        Status::Expired,
    ]
    .into_iter()
    .map(|s| (s.as_str(), 0))
    .collect();
    for (status, n) in ctx.engine.store().count_by_status().await? {
        counts.insert(status.as_str(), n);
    }
    let channels = ctx.engine.channel_health();
    let failing = channels
        .iter()
        .filter(|c| c["connected"] != json!(true) || !c["last_error"].is_null())
        .count();
    Ok(StatusView {
        total: counts.values().sum(),
        counts,
        channels,
        failing,
        tasks: ctx.engine.queue_status().await?,
    })
}

async fn pending_page(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let viewer = ctx.viewer(&headers, true)?;
    let cards = pending_cards(&ctx).await?;
    let status = status_view(&ctx).await?;
    let flash = read_flash(&headers);
    let mut res = ctx.render(
        "pending.html",
        context! {
            page => "pending",
            person => person_ctx(&viewer.person),
            csrf => viewer.csrf,
            cards => v(&cards),
            status => v(&status),
            flash => v(&flash),
        },
    )?;
    if flash.is_some()
        && let Ok(v) = HeaderValue::from_str(&flash_cookie(None, ctx.secure_cookies))
    {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(res)
}

async fn pending_fragment(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let viewer = ctx.viewer(&headers, false)?;
    let cards = pending_cards(&ctx).await?;
    let mut html = String::new();
    for card in &cards {
        html.push_str(&render_card(&ctx, &viewer, card)?);
    }
    Ok((html_type(), html).into_response())
}

fn render_card(ctx: &UiContext, viewer: &Viewer, card: &CardView) -> Result<String, UiError> {
    ctx.pages
        .get_template("card.html")
        .and_then(|t| {
            t.render(context! {
                card => v(&card),
                csrf => viewer.csrf.clone(),
                person => person_ctx(&viewer.person),
            })
        })
        .map_err(|e| UiError::Internal(format!("template card.html: {e:#}")))
}

async fn card_fragment(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let viewer = ctx.viewer(&headers, false)?;
    let rec = ctx.engine.get(&id).await?;
    let html = render_card(&ctx, &viewer, &card(&ctx, &rec, Utc::now()))?;
    Ok((html_type(), html).into_response())
}

async fn status_fragment(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ctx.viewer(&headers, false)?;
    let status = status_view(&ctx).await?;
    ctx.render("status.html", context! { status => v(&status) })
}

// ----- deciding ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct DecideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
}

async fn decide(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DecideForm>,
) -> Result<Response, UiError> {
    let viewer = ctx.form_viewer_for(&headers, &form.csrf, &id).await?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let decision: Decision = form
        .decision
        .parse()
        .map_err(|e: approvald_channel::UnknownDecision| UiError::BadRequest(e.to_string()))?;
    let reason: String = form.reason.trim().chars().take(MAX_REASON_CHARS).collect();
    let attempt = DecisionAttempt {
        id: id.clone(),
        decision,
        reason: (!reason.is_empty()).then_some(reason),
        actor: Actor::ControlUi {
            person: viewer.person.name.clone(),
        },
    };
    let (ok, kind, message) = match ctx.engine.resolve(attempt).await {
        Ok(rec) => (true, None, ctx.engine.accepted_text(&rec)),
        Err(e) => {
            let (kind, message) = plain_refusal(&e);
            if kind == approvald_channel::RefusalKind::Internal {
                tracing::error!(id = %id, error = %e, "control UI decision failed");
            }
            (false, Some(kind), message)
        }
    };
    // The true state now, whoever won.
    let status = ctx
        .engine
        .get(&id)
        .await
        .map(|r| r.status.as_str())
        .unwrap_or("unknown");
    if wants_json {
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        };
        return Ok((
            code,
            axum::Json(json!({ "ok": ok, "kind": kind, "message": message, "status": status })),
        )
            .into_response());
    }
    Ok(flash_redirect(&ctx, ok, message, "/ui"))
}

#[derive(Deserialize)]
struct AbortForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// Abort an approved or running task from its request page.
async fn abort(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<AbortForm>,
) -> Result<Response, UiError> {
    let viewer = ctx.form_viewer_for(&headers, &form.csrf, &id).await?;
    let reason: String = form.reason.trim().chars().take(MAX_REASON_CHARS).collect();
    let actor = Actor::ControlUi {
        person: viewer.person.name.clone(),
    };
    let id = ctx.engine.resolve_id(&id).await?;
    let result = ctx
        .engine
        .abort_task(&id, (!reason.is_empty()).then_some(reason), &actor)
        .await;
    let (ok, message) = match result {
        Ok(snap) => (
            true,
            format!(
                "Task {}",
                execution_text(&snap).unwrap_or_else(|| "aborted".into())
            ),
        ),
        Err(e @ (ApprovalError::InvalidTransition(_) | ApprovalError::NotAnApprover(_))) => {
            (false, e.to_string())
        }
        Err(e) => return Err(e.into()),
    };
    Ok(flash_redirect(
        &ctx,
        ok,
        message,
        &format!("/ui/requests/{id}"),
    ))
}

/// After a plain form post: say how it went on the next page.
fn flash_redirect(ctx: &UiContext, ok: bool, text: String, to: &str) -> Response {
    let flash = Flash {
        kind: if ok { "ok" } else { "refused" }.into(),
        text,
    };
    (
        [(
            header::SET_COOKIE,
            flash_cookie(Some(&flash), ctx.secure_cookies),
        )],
        Redirect::to(to),
    )
        .into_response()
}

// ----- history and one request -------------------------------------------------------------

#[derive(Deserialize, Default)]
struct HistoryQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    tool: String,
    #[serde(default)]
    approver: String,
    /// Older than this position: `<created_at ms>_<id>`.
    #[serde(default)]
    before: String,
}

fn decided_by_matches(rec: &ApprovalRecord, needle: &str) -> bool {
    let needle = needle.to_lowercase();
    let hit = |i: &crate::domain::ApproverIdentity| {
        i.display_name.to_lowercase().contains(&needle)
            || i.approver_id.to_lowercase().contains(&needle)
            || i.person
                .as_deref()
                .is_some_and(|p| p.to_lowercase().contains(&needle))
    };
    rec.resolution
        .as_ref()
        .and_then(|r| r.decided_by.as_ref())
        .is_some_and(hit)
        || rec.approvals.iter().any(|a| hit(&a.approver))
}

async fn history_page(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, UiError> {
    let viewer = ctx.viewer(&headers, true)?;
    let status = match q.status.as_str() {
        "" | "all" => None,
        s => Some(s.parse::<Status>().map_err(UiError::BadRequest)?),
    };
    let mut before = match q.before.split_once('_') {
        Some((ms, id)) => Some((
            ms.parse::<i64>()
                .map_err(|_| UiError::BadRequest("bad page position".into()))?,
            id.to_string(),
        )),
        None => None,
    };
    let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut more = false;
    // History is what has ended: pending requests live on the pending page. Scan pages until
    // one screenful matches, so the approver filter (not indexed) still fills the page.
    'scan: for _ in 0..20 {
        let page = ctx
            .engine
            .list(&ListQuery {
                status,
                agent_id: non_empty(&q.agent),
                tool: non_empty(&q.tool),
                limit: 200,
                before: before.clone(),
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some((
            last.request.created_at.timestamp_millis(),
            last.request.id.clone(),
        ));
        let full_page = page.len() == 200;
        for rec in &page {
            if rec.status == Status::Pending {
                continue;
            }
            if !q.approver.trim().is_empty() && !decided_by_matches(rec, q.approver.trim()) {
                continue;
            }
            if rows.len() == HISTORY_PAGE {
                more = true;
                break 'scan;
            }
            rows.push(card(&ctx, rec, now));
        }
        if !full_page {
            break;
        }
    }
    let next = if more {
        rows.last().and_then(|c| {
            chrono::DateTime::parse_from_rfc3339(&c.created_at)
                .ok()
                .map(|t| format!("{}_{}", t.timestamp_millis(), c.id))
        })
    } else {
        None
    };
    ctx.render(
        "history.html",
        context! {
            page => "history",
            person => person_ctx(&viewer.person),
            csrf => viewer.csrf,
            rows => v(&rows),
            filter => context! {
                status => q.status, agent => q.agent, tool => q.tool, approver => q.approver,
            },
            next => v(&next),
        },
    )
}

async fn request_page(
    State(ctx): State<UiContext>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let viewer = ctx.viewer(&headers, true)?;
    let rec = ctx.engine.get(&id).await?;
    let audit = ctx
        .engine
        .store()
        .audit_list(&AuditQuery {
            approval_id: Some(rec.request.id.clone()),
            after_seq: 0,
            limit: 1000,
        })
        .await?;
    let audit: Vec<_> = audit.iter().map(AuditView::new).collect();
    let task = ctx.engine.task(&rec.request.id).await?;
    let abortable = matches!(task.status(), TaskStatus::Approved | TaskStatus::Running)
        && viewer.person.approver;
    let task_view = ctx.engine.task_json(&task);
    let flash = read_flash(&headers);
    let mut res = ctx.render(
        "request.html",
        context! {
            page => "request",
            person => person_ctx(&viewer.person),
            csrf => viewer.csrf,
            card => v(&card(&ctx, &rec, Utc::now())),
            audit => v(&audit),
            task => v(&task_view),
            abortable => abortable,
            flash => v(&flash),
        },
    )?;
    if flash.is_some()
        && let Ok(v) = HeaderValue::from_str(&flash_cookie(None, ctx.secure_cookies))
    {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(res)
}

// ----- assets ------------------------------------------------------------------------------

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.css" => (include_str!("assets/app.css"), "text/css; charset=utf-8"),
        "app.js" => (
            include_str!("assets/app.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
