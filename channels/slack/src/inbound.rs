//! What people do in Slack: button presses (block_actions) and slash commands (`/approve`,
//! `/deny`, `/pending`), arriving over HTTP (Events API: `POST {path}/interactions`,
//! `POST {path}/commands`) or over Socket Mode. Both paths end in [`Inbound`].
//!
//! HTTP requests are verified before anything is parsed (401 on any failure, nothing
//! changes), acknowledged at once (Slack allows 3 seconds), and the decision work runs in a
//! spawned task that answers the person with an ephemeral message.

use std::sync::Arc;

use approvald_channel::{
    ActionData, Decision, InboundAction, InboundReply, InboundSink, PlatformUser, PromptView,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use slack_morphism::prelude::*;

use crate::client::SlackApi;
use crate::render::{ACTION_ID_PREFIX, code_span, escape, slack_date};
use crate::signature::Verifier;

/// A slash command, from the HTTP form or from Socket Mode.
#[derive(Debug, Clone, Deserialize)]
pub struct CommandRequest {
    pub team_id: String,
    pub channel_id: String,
    pub user_id: String,
    #[serde(default)]
    pub user_name: Option<String>,
    pub command: String,
    #[serde(default)]
    pub text: String,
    pub response_url: String,
}

impl From<SlackCommandEvent> for CommandRequest {
    fn from(ev: SlackCommandEvent) -> Self {
        Self {
            team_id: ev.team_id.to_string(),
            channel_id: ev.channel_id.to_string(),
            user_id: ev.user_id.to_string(),
            user_name: None,
            command: ev.command.to_string(),
            text: ev.text.unwrap_or_default(),
            response_url: ev.response_url.0.to_string(),
        }
    }
}

/// Turns Slack interactions into engine decisions and answers the person.
pub struct Inbound {
    channel: String,
    sink: Arc<dyn InboundSink>,
    api: Arc<SlackApi>,
}

impl Inbound {
    pub fn new(channel: &str, sink: Arc<dyn InboundSink>, api: Arc<SlackApi>) -> Self {
        Self {
            channel: channel.to_string(),
            sink,
            api,
        }
    }

    /// A press on one of our buttons. Other interaction kinds are not ours and are ignored.
    pub async fn on_interaction(&self, event: SlackInteractionEvent) {
        let SlackInteractionEvent::BlockActions(ev) = event else {
            tracing::debug!("ignoring a Slack interaction that is not block_actions");
            return;
        };
        let Some(user) = ev
            .user
            .as_ref()
            .filter(|u| !u.id.to_string().trim().is_empty())
        else {
            tracing::debug!("ignoring block_actions without a user");
            return;
        };
        let Some(action) = ev
            .actions
            .iter()
            .flatten()
            .find(|a| a.action_id.to_string().starts_with(ACTION_ID_PREFIX))
        else {
            tracing::debug!("ignoring block_actions on buttons that are not approvald's");
            return;
        };
        let channel_id =
            ev.channel
                .as_ref()
                .map(|c| c.id.to_string())
                .or_else(|| match &ev.container {
                    SlackInteractionActionContainer::Message(m) => {
                        m.channel_id.as_ref().map(|c| c.to_string())
                    }
                    _ => None,
                });
        let thread_ts = ev
            .message
            .as_ref()
            .and_then(|m| m.origin.thread_ts.as_ref())
            .map(|t| t.to_string());
        let response_url = ev.response_url.as_ref().map(|u| u.0.to_string());
        let answer = Answer {
            api: &self.api,
            user: user.id.to_string(),
            channel: channel_id.clone(),
            thread_ts,
            response_url,
        };
        let data = match action
            .value
            .as_deref()
            .unwrap_or_default()
            .parse::<ActionData>()
        {
            Ok(d) => d,
            Err(e) => {
                answer.send(&format!("{e}.")).await;
                return;
            }
        };
        let platform_user = PlatformUser {
            id: user.id.to_string(),
            username: user.username.clone().or_else(|| user.name.clone()),
            display_name: user.name.clone(),
            chat_id: channel_id,
            workspace_id: Some(
                user.team_id
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| ev.team.id.to_string()),
            ),
            roles: Vec::new(),
        };
        let reply = self
            .sink
            .decide(InboundAction {
                channel: self.channel.clone(),
                approval: data.approval_id,
                decision: data.decision,
                user: platform_user,
                reason: None,
                abort: data.abort,
            })
            .await;
        match reply {
            // The engine edits every message of the approval; a quorum step is only visible
            // as progress, so tell the person their vote counted.
            InboundReply::Accepted { status, message } if status == "pending" => {
                answer.send(&format!("Recorded: {message}")).await;
            }
            InboundReply::Accepted { .. } => {}
            InboundReply::Refused { message, .. } => answer.send(&message).await,
        }
    }

    /// `/approve <id> [once|always] [reason]`, `/deny <id> [reason]`, `/pending`; also
    /// `/<anything> approve|deny|pending ...` for workspaces where those names are taken.
    pub async fn on_command(&self, cmd: CommandRequest) {
        let text = self.command_answer(&cmd).await;
        if let Err(e) = self.api.respond_ephemeral(&cmd.response_url, &text).await {
            tracing::warn!(error = %e, "could not answer a Slack slash command");
        }
    }

    async fn command_answer(&self, cmd: &CommandRequest) -> String {
        if cmd.user_id.trim().is_empty() {
            return "This command did not say who sent it; nothing was done.".to_string();
        }
        let user = PlatformUser {
            id: cmd.user_id.clone(),
            username: cmd.user_name.clone(),
            display_name: cmd.user_name.clone(),
            chat_id: Some(cmd.channel_id.clone()),
            workspace_id: Some(cmd.team_id.clone()),
            roles: Vec::new(),
        };
        let name = cmd
            .command
            .trim()
            .trim_start_matches('/')
            .to_ascii_lowercase();
        let mut words: Vec<&str> = cmd.text.split_whitespace().collect();
        let verb = match name.as_str() {
            "approve" | "deny" | "pending" => name.clone(),
            _ if !words.is_empty() => words.remove(0).to_ascii_lowercase(),
            _ => String::new(),
        };
        match verb.as_str() {
            "pending" => match self.sink.pending(&self.channel, &user).await {
                Ok(views) => pending_text(&views),
                Err(InboundReply::Refused { message, .. }) => message,
                Err(InboundReply::Accepted { message, .. }) => message,
            },
            "approve" | "deny" => {
                let Some(id) = words.first().map(|s| s.to_string()) else {
                    return usage();
                };
                let rest = &words[1..];
                let (decision, reason_words) = if verb == "deny" {
                    (Decision::Deny, rest)
                } else {
                    match rest.first().map(|w| w.parse::<Decision>()) {
                        Some(Ok(Decision::Deny)) => {
                            return "Use /deny to deny.".to_string();
                        }
                        Some(Ok(d)) => (d, &rest[1..]),
                        // No decision word: approve once; anything else is the reason.
                        _ => (Decision::ApproveOnce, rest),
                    }
                };
                let reason = (!reason_words.is_empty()).then(|| reason_words.join(" "));
                let reply = self
                    .sink
                    .decide(InboundAction {
                        channel: self.channel.clone(),
                        approval: id,
                        decision,
                        user,
                        reason,
                        abort: false,
                    })
                    .await;
                match reply {
                    InboundReply::Accepted { message, .. } => message,
                    InboundReply::Refused { message, .. } => message,
                }
            }
            _ => usage(),
        }
    }
}

fn usage() -> String {
    "Usage: `/approve <id-or-prefix> [once|always]`, `/deny <id-or-prefix> [reason]`, `/pending`"
        .to_string()
}

/// The `/pending` answer, in mrkdwn with untrusted text escaped inside code spans.
fn pending_text(views: &[PromptView]) -> String {
    if views.is_empty() {
        return "Nothing is waiting for a decision.".to_string();
    }
    let mut out = format!("*{} pending request(s)*\n", views.len());
    for v in views {
        let what = v
            .command
            .as_deref()
            .or(v.summary.as_deref())
            .unwrap_or_default();
        let what: String = what.chars().take(80).collect();
        out.push_str(&format!(
            "• {} {} · {} risk · expires {}\n      {}\n",
            code_span(&v.short_id),
            code_span(&v.tool),
            escape(&v.risk),
            slack_date(v.expires_at),
            code_span(&what),
        ));
    }
    out.push_str("Decide with `/approve <id> [once|always]` or `/deny <id> [reason]`.");
    out
}

/// Where to show a person a private answer: `chat.postEphemeral` in the channel they
/// pressed in, else the interaction's `response_url`.
struct Answer<'a> {
    api: &'a SlackApi,
    user: String,
    channel: Option<String>,
    thread_ts: Option<String>,
    response_url: Option<String>,
}

impl Answer<'_> {
    async fn send(&self, text: &str) {
        if let Some(channel) = &self.channel {
            match self
                .api
                .post_ephemeral(channel, &self.user, self.thread_ts.as_deref(), text)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::info!(error = %e, "chat.postEphemeral failed; answering through response_url")
                }
            }
        }
        if let Some(url) = &self.response_url
            && let Err(e) = self.api.respond_ephemeral(url, text).await
        {
            tracing::warn!(error = %e, "could not answer a Slack button press");
        }
    }
}

// ----- HTTP (Events API) --------------------------------------------------------------------

#[derive(Clone)]
struct HttpState {
    inbound: Arc<Inbound>,
    verifier: Arc<Verifier>,
}

/// The webhook routes, mounted on approvald's own listener.
pub fn router(inbound: Arc<Inbound>, verifier: Arc<Verifier>, path: &str) -> Router {
    Router::new()
        .route(&format!("{path}/interactions"), post(interactions))
        .route(&format!("{path}/commands"), post(commands))
        .with_state(HttpState { inbound, verifier })
}

fn refuse(why: impl std::fmt::Display) -> Response {
    tracing::warn!(reason = %why, "refused a Slack request");
    (
        StatusCode::UNAUTHORIZED,
        "invalid or missing Slack signature\n",
    )
        .into_response()
}

fn bad_request(why: &str) -> Response {
    tracing::warn!(reason = why, "malformed Slack request");
    (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
}

async fn interactions(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = s
        .verifier
        .verify(&headers, &body, chrono::Utc::now().timestamp())
    {
        return refuse(e);
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return bad_request("body is not a form");
    };
    let Some((_, payload)) = form.iter().find(|(k, _)| k == "payload") else {
        return bad_request("form has no payload field");
    };
    let event = match serde_json::from_str::<SlackInteractionEvent>(payload) {
        Ok(ev) => ev,
        Err(e) => {
            // Kinds we do not model (new Slack features) are acknowledged and ignored.
            let known = serde_json::from_str::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string));
            if known.as_deref() == Some("block_actions") || known.is_none() {
                tracing::warn!(error = %e, "unreadable Slack interaction payload");
                return bad_request("payload is not a Slack interaction");
            }
            return StatusCode::OK.into_response();
        }
    };
    let inbound = s.inbound.clone();
    tokio::spawn(async move { inbound.on_interaction(event).await });
    StatusCode::OK.into_response()
}

async fn commands(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = s
        .verifier
        .verify(&headers, &body, chrono::Utc::now().timestamp())
    {
        return refuse(e);
    }
    let cmd = match serde_urlencoded::from_bytes::<CommandRequest>(&body) {
        Ok(c) => c,
        Err(_) => return bad_request("not a Slack slash command"),
    };
    let inbound = s.inbound.clone();
    tokio::spawn(async move { inbound.on_command(cmd).await });
    // An empty 200 acknowledges; the answer follows through response_url.
    StatusCode::OK.into_response()
}
