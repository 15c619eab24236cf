//! Receiving: the signed interactions endpoint (`POST /discord/interactions`) and the one
//! handler both receive modes share, which turns a press, a slash command or an autocomplete
//! request into an `InboundAction` for the engine and Discord's answer for the person.

use std::sync::Arc;

use approvald_channel::{ActionData, InboundAction, InboundReply, InboundSink, MessageRef};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serenity::all::CreateInteractionResponse;

use crate::Shared;
use crate::interaction::{APPLICATION_COMMAND, AUTOCOMPLETE, Interaction, MESSAGE_COMPONENT, PING};
use crate::render;

/// Answers interactions for one Discord channel.
#[derive(Clone)]
pub struct Interactions {
    pub shared: Arc<Shared>,
    pub sink: Arc<dyn InboundSink>,
}

/// The endpoint Discord posts to, mounted on approvald's own server.
pub fn router(interactions: Interactions) -> Router {
    let path = interactions.shared.settings.interactions_path.clone();
    Router::new()
        .route(&path, post(endpoint))
        .with_state(interactions)
}

async fn endpoint(State(this): State<Interactions>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(check) = &this.shared.signatures else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let now = chrono::Utc::now().timestamp();
    if let Err(why) = check.check(&headers, &body, now) {
        tracing::info!(channel = %this.shared.name, reason = ?why, "refused an interaction request");
        return (StatusCode::UNAUTHORIZED, "invalid request signature").into_response();
    }
    let interaction: Interaction = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(channel = %this.shared.name, error = %e, "signed interaction that cannot be read");
            return (StatusCode::BAD_REQUEST, "malformed interaction").into_response();
        }
    };
    if interaction.kind == PING {
        // Exactly Discord's documented PONG (serenity's adds `"data": null`).
        return axum::Json(serde_json::json!({ "type": 1 })).into_response();
    }
    axum::Json(this.handle(&interaction).await).into_response()
}

impl Interactions {
    /// Discord's answer to one interaction.
    pub async fn handle(&self, i: &Interaction) -> CreateInteractionResponse {
        match i.kind {
            PING => CreateInteractionResponse::Pong,
            MESSAGE_COMPONENT => self.press(i).await,
            APPLICATION_COMMAND => self.command(i).await,
            AUTOCOMPLETE => self.autocomplete(i).await,
            _ => render::ephemeral("approvald does not handle this kind of interaction."),
        }
    }

    /// A button press. On success the pressed message is edited in the answer itself
    /// (UPDATE_MESSAGE) with the layout the engine renders for it, so it changes once;
    /// refusals get a plain ephemeral answer and change nothing.
    async fn press(&self, i: &Interaction) -> CreateInteractionResponse {
        let Some(user) = i.platform_user() else {
            return render::ephemeral("Discord did not say who pressed this button.");
        };
        let custom_id = i
            .data
            .as_ref()
            .and_then(|d| d.custom_id.as_deref())
            .unwrap_or("");
        let data: ActionData = match custom_id.parse() {
            Ok(d) => d,
            Err(e) => return render::ephemeral(&sentence(&e.to_string())),
        };
        let pressed = pressed_message(i, &self.shared.name);
        // Registered before deciding: the engine edits every prompt as part of the decision.
        let mut waiter = pressed
            .as_ref()
            .map(|m| self.shared.edits.wait_for(&m.message_id));
        let reply = self
            .sink
            .decide(InboundAction {
                channel: self.shared.name.clone(),
                approval: data.approval_id,
                decision: data.decision,
                user,
                reason: None,
                abort: data.abort,
            })
            .await;
        let mut edited = None;
        if let (Some((ticket, rx)), Some(m)) = (waiter.as_mut(), pressed.as_ref()) {
            if matches!(reply, InboundReply::Accepted { .. })
                && let Ok(Ok(p)) =
                    tokio::time::timeout(self.shared.settings.interaction_wait, &mut *rx).await
            {
                edited = Some(p);
            }
            self.shared.edits.stop_waiting(&m.message_id, *ticket);
            if edited.is_none() {
                edited = rx.try_recv().ok();
            }
        }
        match (reply, edited) {
            (InboundReply::Accepted { .. }, Some(prompt)) => render::update_response(&prompt),
            // Accepted without an edit: nothing about the request changed (a repeat press).
            (InboundReply::Accepted { message, .. }, None) => render::ephemeral(&message),
            (InboundReply::Refused { message, .. }, edited) => {
                // Another surface settled it just now: that edit is still owed.
                if let (Some(prompt), Some(m)) = (edited, pressed) {
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = shared.edit(&m, &prompt).await {
                            tracing::warn!(error = %e, "prompt edit failed");
                        }
                    });
                }
                render::ephemeral(&message)
            }
        }
    }
}

/// The message a button was pressed on, as this channel's `MessageRef`s name it.
fn pressed_message(i: &Interaction, channel: &str) -> Option<MessageRef> {
    let m = i.message.as_ref()?;
    Some(MessageRef {
        channel: channel.to_string(),
        to: m.channel_id.clone().or_else(|| i.channel())?,
        thread_id: None,
        message_id: m.id.clone(),
    })
}

/// Capitalised, with a full stop.
fn sentence(s: &str) -> String {
    let mut c = s.chars();
    let mut out = match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect::<String>(),
        None => return String::new(),
    };
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}
