//! JSON-RPC 2.0: envelope checks, batches, and the method table. Bad input of any shape gets a
//! JSON-RPC error with a stable `error.data.kind` and changes nothing.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{AppContext, authenticate};
use crate::config::TokenScope;
use crate::directory::Caller;
use crate::domain::{ApproverIdentity, Decision, Status, Transport};
use crate::engine::{Actor, DecisionAttempt, NewRequest, SharedRecord};
use crate::error::ApprovalError;
use crate::json::text_or_null;
use crate::store::{AuditQuery, ListQuery};

/// `POST /rpc`.
pub async fn http_rpc(State(ctx): State<AppContext>, request: Request) -> Response {
    // The headers read in place (a `HeaderMap` argument would be a copy of them per call).
    let caller = match authenticate(&ctx, request.headers()) {
        Ok(c) => c,
        Err(e) => return error_response(&e, Value::Null),
    };
    let body: Result<Bytes, BytesRejection> = Bytes::from_request(request, &ctx).await;
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let err = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApprovalError::PayloadTooLarge {
                    limit: ctx.max_body_bytes,
                }
            } else {
                ApprovalError::InvalidRequest(rejection.body_text())
            };
            return error_response(&err, Value::Null);
        }
    };
    // Boxed for the reason given in `ws::serve`.
    match Box::pin(handle_message(&ctx, &caller, &body)).await {
        Some(answer) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            answer,
        )
            .into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// A whole-exchange error (auth, size) as an HTTP response with a JSON-RPC error body.
pub fn error_response(err: &ApprovalError, id: Value) -> Response {
    (err.http_status(), axum::Json(error_object(err, id))).into_response()
}

fn error_object(err: &ApprovalError, id: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": err.code(), "message": err.to_string(), "data": err.data() },
    })
}

/// What a method answers: a JSON value, or a record serialised straight to text as callers
/// are answered about it ([`crate::engine::ResultView`]), written once however many answers
/// share it (a caller waiting on a request and the decider).
enum Answer {
    Value(Value),
    Record(std::sync::Arc<SharedRecord>),
}

impl serde::Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => v.serialize(serializer),
            Self::Record(rec) => rec.serialize(serializer),
        }
    }
}

/// A successful JSON-RPC response.
#[derive(serde::Serialize)]
struct Success<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: &'a Answer,
}

/// Handle one message (a request, a notification or a batch): the answer as JSON text, or
/// `None` when there is nothing to answer.
pub async fn handle_message(ctx: &AppContext, caller: &Caller, body: &[u8]) -> Option<String> {
    // Most messages are one well-formed request: its params are read straight into the
    // method's own type, never built as a JSON value first. Anything else (a batch, a
    // notification, a malformed envelope) goes the long way, which says what is wrong.
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(body)
        && let Some((id, method, params)) = envelope.checked()
    {
        match dispatch(ctx, caller, method, params).await {
            // Its params are not JSON serde_json accepts (a lone surrogate escape, say, which
            // skipping over them does not check): said as for any malformed body, below.
            // Nothing was done: params are read before anything else.
            Err(ApprovalError::Parse(_)) => {}
            result => return respond(method, Some(id), result),
        }
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(text_or_null(&error_object(
                &ApprovalError::Parse(format!("body is not valid JSON: {e}")),
                Value::Null,
            )));
        }
    };
    match value {
        Value::Array(items) if items.is_empty() => Some(text_or_null(&error_object(
            &ApprovalError::InvalidRequest("empty batch".into()),
            Value::Null,
        ))),
        Value::Array(items) => {
            let answers = futures::future::join_all(
                items.into_iter().map(|item| handle_one(ctx, caller, item)),
            )
            .await;
            let answers: Vec<String> = answers.into_iter().flatten().collect();
            (!answers.is_empty()).then(|| format!("[{}]", answers.join(",")))
        }
        other => handle_one(ctx, caller, other).await,
    }
}

async fn handle_one(ctx: &AppContext, caller: &Caller, item: Value) -> Option<String> {
    let error = |e: &ApprovalError, id: Value| Some(text_or_null(&error_object(e, id)));
    let Value::Object(mut obj) = item else {
        return error(
            &ApprovalError::InvalidRequest("a request must be a JSON object".into()),
            Value::Null,
        );
    };
    let id = obj.remove("id");
    let is_notification = id.is_none();
    let id = id.unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::String(_) | Value::Number(_)) {
        return error(
            &ApprovalError::InvalidRequest("id must be a string, a number or null".into()),
            Value::Null,
        );
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return error(
            &ApprovalError::InvalidRequest("jsonrpc must be \"2.0\"".into()),
            id,
        );
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return error(
            &ApprovalError::InvalidRequest("method must be a string".into()),
            id,
        );
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return error(
                &ApprovalError::InvalidParams("params must be an object".into()),
                id,
            );
        }
    };
    let result = dispatch(ctx, caller, &method, Params::Value(params)).await;
    respond(&method, (!is_notification).then_some(id), result)
}

/// The envelope of a single request with an id, its params left as text (see
/// `handle_message`).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<&'a str>,
    #[serde(borrow)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    method: Option<&'a str>,
    #[serde(borrow)]
    params: Option<&'a serde_json::value::RawValue>,
}

impl<'a> Envelope<'a> {
    /// Id, method and params when this is what `handle_one` would accept as they are: a
    /// string or number id, `"2.0"`, a method name, params an object or absent. Else `None`.
    fn checked(self) -> Option<(Value, &'a str, Params<'a>)> {
        let id = self.id?;
        let first = id.get().as_bytes().first()?;
        if !(*first == b'"' || *first == b'-' || first.is_ascii_digit()) {
            return None;
        }
        if self.jsonrpc? != "2.0" {
            return None;
        }
        let params = match self.params {
            None => Params::Value(Value::Object(Default::default())),
            Some(raw) if raw.get().starts_with('{') => Params::Raw(raw),
            Some(_) => return None,
        };
        let id = serde_json::from_str(id.get()).ok()?;
        Some((id, self.method?, params))
    }
}

/// A request's params: the JSON text as sent, or a value.
enum Params<'a> {
    Raw(&'a serde_json::value::RawValue),
    Value(Value),
}

/// The answer to `method` (nothing for a notification, which has no `id`).
fn respond(
    method: &str,
    id: Option<Value>,
    result: Result<Answer, ApprovalError>,
) -> Option<String> {
    let error = |e: &ApprovalError, id: Value| Some(text_or_null(&error_object(e, id)));
    let id = id?;
    match result {
        Ok(result) => Some(text_or_null(&Success {
            jsonrpc: "2.0",
            id: &id,
            result: &result,
        })),
        Err(e) => {
            if let ApprovalError::Internal(detail) = &e {
                tracing::error!(method, detail, "internal error answering RPC");
            }
            error(&e, id)
        }
    }
}

fn parse<T: DeserializeOwned>(params: Params<'_>) -> Result<T, ApprovalError> {
    match params {
        Params::Raw(text) => serde_json::from_str(text.get()).map_err(|e| match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApprovalError::Parse(format!("body is not valid JSON: {e}"))
            }
            _ => ApprovalError::InvalidParams(e.to_string()),
        }),
        Params::Value(value) => {
            serde_json::from_value(value).map_err(|e| ApprovalError::InvalidParams(e.to_string()))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdParams {
    id: String,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    agent_id: Option<String>,
    tool: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveParams {
    id: String,
    decision: String,
    reason: Option<String>,
    /// Admin only: the identity of the person who decided elsewhere.
    approver: Option<ApproverIdentity>,
    /// `cli` or `api` (default): the surface recorded with the decision.
    transport: Option<Transport>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    id: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskIdParams {
    task_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskListParams {
    status: Option<String>,
    page: Option<u32>,
    per_page: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortParams {
    task_id: String,
    reason: Option<String>,
    /// `cli` or `api` (default): the surface recorded with the abort.
    transport: Option<Transport>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeParams {
    id: String,
}

/// The method table. Asking, waiting and deciding (every cycle) answer with the record
/// serialised straight to text; the rest go through a JSON value.
async fn dispatch(
    ctx: &AppContext,
    caller: &Caller,
    method: &str,
    params: Params<'_>,
) -> Result<Answer, ApprovalError> {
    let engine = &ctx.engine;
    match method {
        "tool.approval.request" => {
            caller.require(TokenScope::Request)?;
            let new: NewRequest = parse(params)?;
            match new.wait.unwrap_or(true) {
                true => Ok(Answer::Record(
                    engine.request_and_wait_shared(new, caller).await?,
                )),
                false => Ok(Answer::Record(SharedRecord::new(
                    engine.request(new, caller).await?,
                ))),
            }
        }
        "tool.approval.wait" => {
            let p: IdParams = parse(params)?;
            let rec = engine
                .wait_shared(&p.id, p.timeout_ms.map(Duration::from_millis))
                .await?;
            Ok(Answer::Record(rec))
        }
        "tool.approval.resolve" => {
            let p: ResolveParams = parse(params)?;
            let decision: Decision =
                p.decision
                    .parse()
                    .map_err(|e: approvald_channel::UnknownDecision| {
                        ApprovalError::InvalidParams(e.to_string())
                    })?;
            let actor = match p.approver {
                Some(identity) => {
                    if !caller.scopes.contains(&TokenScope::Admin) {
                        return Err(ApprovalError::Unauthorized(
                            "only an admin token may relay an approver identity".into(),
                        ));
                    }
                    Actor::Relay {
                        admin: caller.clone(),
                        identity,
                    }
                }
                None => {
                    let transport = p.transport.unwrap_or(Transport::Api);
                    if !matches!(transport, Transport::Api | Transport::Cli) {
                        return Err(ApprovalError::InvalidParams(
                            "transport must be api or cli (other surfaces decide through their own channel)".into(),
                        ));
                    }
                    Actor::Caller {
                        caller: caller.clone(),
                        transport,
                    }
                }
            };
            let rec = engine
                .resolve_shared(DecisionAttempt {
                    id: p.id,
                    decision,
                    reason: p.reason,
                    actor,
                })
                .await?;
            Ok(Answer::Record(rec))
        }
        _ => Box::pin(dispatch_value(ctx, caller, method, params))
            .await
            .map(Answer::Value),
    }
}

/// Every other method: answered with a JSON value.
async fn dispatch_value(
    ctx: &AppContext,
    caller: &Caller,
    method: &str,
    params: Params<'_>,
) -> Result<Value, ApprovalError> {
    let engine = &ctx.engine;
    match method {
        "tool.approval.get" => {
            let p: IdParams = parse(params)?;
            let rec = engine.get(&p.id).await?;
            let mut v = engine.view_json(&rec);
            v["deliveries"] = json!(rec.deliveries);
            Ok(v)
        }
        "tool.approval.list" => {
            let p: ListParams = parse(params)?;
            let status = p
                .status
                .as_deref()
                .map(str::parse::<Status>)
                .transpose()
                .map_err(ApprovalError::InvalidParams)?;
            let before = p.cursor.as_deref().map(parse_cursor).transpose()?;
            let limit = p.limit.unwrap_or(50).clamp(1, 500);
            let items = engine
                .list(&ListQuery {
                    status,
                    agent_id: p.agent_id,
                    tool: p.tool,
                    limit,
                    before,
                })
                .await?;
            let next_cursor = (items.len() == limit as usize)
                .then(|| items.last())
                .flatten()
                .map(|r| {
                    format!(
                        "{}:{}",
                        r.request.created_at.timestamp_millis(),
                        r.request.id
                    )
                });
            let items: Vec<Value> = items.iter().map(|r| engine.view_json(r)).collect();
            Ok(json!({ "items": items, "next_cursor": next_cursor }))
        }
        "audit.list" => {
            caller.require(TokenScope::Admin)?;
            let p: AuditParams = parse(params)?;
            let approval_id = match p.id {
                Some(id) => Some(engine.resolve_id(&id).await?),
                None => None,
            };
            let entries = engine
                .store()
                .audit_list(&AuditQuery {
                    approval_id,
                    after_seq: p.after.unwrap_or(0),
                    limit: p.limit.unwrap_or(1000).clamp(1, 10_000),
                })
                .await?;
            let next = entries.last().map(|e| e.seq);
            Ok(json!({ "entries": entries, "next_after": next }))
        }
        "rules.list" => {
            if !caller.has(TokenScope::Resolve) {
                caller.require(TokenScope::Admin)?;
            }
            let standing = engine.store().standing_rules(true).await?;
            let configured: Vec<Value> = engine
                .config()
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    json!({
                        "name": r.name.clone().unwrap_or_else(|| format!("rules[{i}]")),
                        "tool": r.tool.as_ref().map(filter_text),
                        "command": r.command.as_ref().map(|c| c.0.as_str().to_string()),
                        "risk": r.risk,
                        "agent": r.agent.as_ref().map(filter_text),
                        "action": r.action,
                    })
                })
                .collect();
            Ok(json!({ "configured": configured, "standing": standing }))
        }
        "rules.revoke" => {
            caller.require(TokenScope::Admin)?;
            let p: RevokeParams = parse(params)?;
            let by = engine
                .directory()
                .actor_for_caller(caller, Transport::Api)
                .identity;
            let rule = engine.revoke_rule(&p.id, &by).await?;
            Ok(json!({ "revoked": rule }))
        }
        "tool.task.enqueue" => {
            let task: crate::engine::EnqueueTask = parse(params)?;
            Ok(json!(engine.enqueue_task(task, caller).await?))
        }
        "tool.task.get" => {
            let p: TaskIdParams = parse(params)?;
            Ok(engine.task_json(&engine.task(&p.task_id).await?))
        }
        "tool.task.list" => {
            let p: TaskListParams = parse(params)?;
            let status = p
                .status
                .as_deref()
                .map(str::parse::<crate::tasks::TaskStatus>)
                .transpose()
                .map_err(ApprovalError::InvalidParams)?;
            engine
                .task_page(status, p.page.unwrap_or(1), p.per_page.unwrap_or(50))
                .await
        }
        "tool.task.abort" => {
            let p: AbortParams = parse(params)?;
            let actor = Actor::Caller {
                caller: caller.clone(),
                transport: p.transport.unwrap_or(Transport::Api),
            };
            if !matches!(p.transport, None | Some(Transport::Api | Transport::Cli)) {
                return Err(ApprovalError::InvalidParams(
                    "transport must be api or cli".into(),
                ));
            }
            let snap = engine.abort_task(&p.task_id, p.reason, &actor).await?;
            Ok(engine.task_json(&snap))
        }
        "tool.execution.start" => {
            let p: TaskIdParams = parse(params)?;
            let snap = engine.start_execution(&p.task_id, caller).await?;
            Ok(json!({
                "task": engine.task_json(&snap),
                "constraints": snap.task.constraints,
                "should_abort": snap.task.abort.is_some(),
            }))
        }
        "tool.execution.report" => {
            let report: crate::engine::ExecutionReport = parse(params)?;
            let (snap, message) = engine.report_execution(report, caller).await?;
            Ok(json!({
                "success": true,
                "message": message,
                "should_abort": snap.task.abort.is_some(),
                "task": engine.task_json(&snap),
            }))
        }
        "tool.queue.status" => engine.queue_status().await,
        "approvald.status" => {
            let counts = engine.store().count_by_status().await?;
            let mut by_status = serde_json::Map::new();
            for (s, n) in counts {
                by_status.insert(s.as_str().to_string(), json!(n));
            }
            Ok(json!({ "counts": by_status, "channels": engine.channel_health() }))
        }
        other => Err(ApprovalError::MethodNotFound(other.to_string())),
    }
}

fn filter_text(f: &crate::config::Filter) -> String {
    match f {
        crate::config::Filter::Substring(s) => s.clone(),
        crate::config::Filter::Regex(r) => format!("/{}/", r.as_str()),
    }
}

fn parse_cursor(c: &str) -> Result<(i64, String), ApprovalError> {
    let bad = || ApprovalError::InvalidParams(format!("cursor {c:?} is not one this server gave"));
    let (ms, id) = c.split_once(':').ok_or_else(bad)?;
    Ok((ms.parse().map_err(|_| bad())?, id.to_string()))
}
