//! The one channel trait every approvald chat platform implements, and the types that cross it.
//!
//! A platform crate (discord, slack, telegram) knows how to put a [`Prompt`] in front of people
//! and how to edit it later; it knows nothing about quorum, expiry or storage. When someone
//! presses a button it hands an [`InboundAction`] to the [`InboundSink`] the engine gave it at
//! start, and shows the person the [`InboundReply`] in that platform's own way.
//!
//! Platform quirks stay inside the platform crate: this crate is the contract.

mod action_data;
mod testing;
pub mod text;

pub use action_data::{ACTION_DATA_VERSION, ActionData, ActionDataError};
pub use testing::{RecordedCall, TestChannel};

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a person can answer to a prompt.
///
/// Callers and chat users type many spellings; the aliases (`approve`, `allow-once`,
/// `allow-always`, `reject`) are accepted everywhere a decision is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    #[serde(alias = "approve", alias = "allow-once", alias = "approve_once")]
    ApproveOnce,
    #[serde(alias = "allow-always", alias = "approve_always", alias = "always")]
    ApproveAlways,
    #[serde(alias = "reject")]
    Deny,
}

impl Decision {
    /// Every decision, in the order buttons are shown.
    pub const ALL: [Decision; 3] = [
        Decision::ApproveOnce,
        Decision::ApproveAlways,
        Decision::Deny,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::ApproveOnce => "approve-once",
            Decision::ApproveAlways => "approve-always",
            Decision::Deny => "deny",
        }
    }

    /// The human label used on buttons.
    pub fn label(self) -> &'static str {
        match self {
            Decision::ApproveOnce => "Approve once",
            Decision::ApproveAlways => "Always approve",
            Decision::Deny => "Deny",
        }
    }

    pub fn is_approval(self) -> bool {
        !matches!(self, Decision::Deny)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a decision word nobody understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown decision {0:?}: use approve-once, approve-always or deny (aliases: approve, allow-once, allow-always, reject)"
)]
pub struct UnknownDecision(pub String);

impl FromStr for Decision {
    type Err = UnknownDecision;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "approve-once" | "approve" | "allow-once" | "allow" | "once" => {
                Ok(Decision::ApproveOnce)
            }
            "approve-always" | "allow-always" | "always" => Ok(Decision::ApproveAlways),
            "deny" | "reject" => Ok(Decision::Deny),
            _ => Err(UnknownDecision(s.to_string())),
        }
    }
}

/// The surface a decision came through. Recorded with every resolution and audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    ControlUi,
    Cli,
    Discord,
    Slack,
    Telegram,
    Rules,
    Assistant,
    Api,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::ControlUi => "control_ui",
            Transport::Cli => "cli",
            Transport::Discord => "discord",
            Transport::Slack => "slack",
            Transport::Telegram => "telegram",
            Transport::Rules => "rules",
            Transport::Assistant => "assistant",
            Transport::Api => "api",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("unknown transport {s:?}"))
    }
}

/// Which markup a platform renders, and so which escaping the shared templates use for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Markup {
    /// No markup at all: the CLI, logs, the in-process test channel.
    Plain,
    /// Telegram's HTML parse mode.
    TelegramHtml,
    /// Discord's markdown.
    DiscordMarkdown,
    /// Slack's mrkdwn.
    SlackMrkdwn,
}

impl Markup {
    pub const ALL: [Markup; 4] = [
        Markup::Plain,
        Markup::TelegramHtml,
        Markup::DiscordMarkdown,
        Markup::SlackMrkdwn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Markup::Plain => "plain",
            Markup::TelegramHtml => "telegram_html",
            Markup::DiscordMarkdown => "discord_markdown",
            Markup::SlackMrkdwn => "slack_mrkdwn",
        }
    }
}

impl FromStr for Markup {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" | "cli" | "text" => Ok(Markup::Plain),
            "telegram" | "telegram_html" => Ok(Markup::TelegramHtml),
            "discord" | "discord_markdown" => Ok(Markup::DiscordMarkdown),
            "slack" | "slack_mrkdwn" => Ok(Markup::SlackMrkdwn),
            _ => Err(format!(
                "unknown platform {s:?}: use plain, telegram, discord or slack"
            )),
        }
    }
}

/// Where a prompt goes: a channel (by its configured name) and an address inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    pub channel: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

/// The platform's reference to a message that was sent, kept so it can be edited later.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageRef {
    pub channel: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    pub message_id: String,
}

/// Structured facts about an approval, for platforms that build rich layouts (embeds, blocks)
/// beside the rendered text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptView {
    pub approval_id: String,
    pub short_id: String,
    pub tool: String,
    pub summary: Option<String>,
    pub command: Option<String>,
    pub args: Option<String>,
    pub risk: String,
    pub requester: Option<String>,
    pub agent_id: Option<String>,
    pub session_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `pending`, `approved`, `denied` or `expired`.
    pub status: String,
    /// Quorum progress while pending, e.g. "1 of 2 approvals: alice".
    pub progress: Option<String>,
    /// Who decided, once resolved.
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    /// Where the approved task's execution stands ("running", "completed in 4.0 s, cost
    /// $0.0087", "aborted by alice"), once an executor or operator has moved it.
    #[serde(default)]
    pub execution: Option<String>,
}

/// One button on a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptAction {
    pub decision: Decision,
    pub label: String,
    /// Versioned, secret-free data the platform echoes back on a press (see [`ActionData`]).
    pub data: String,
}

/// A prompt (or its edited form): text rendered for this channel's markup, the facts behind it,
/// and the buttons. An edit with no actions removes the buttons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub text: String,
    pub view: PromptView,
    pub actions: Vec<PromptAction>,
}

/// Why a delivery or an edit failed. `retryable` tells the engine whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ChannelError {
    pub message: String,
    pub retryable: bool,
}

impl ChannelError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

/// Whether a channel currently works, for the status panel and `/healthz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHealth {
    pub connected: bool,
    pub last_error: Option<String>,
}

/// The person behind a button press, as the platform describes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformUser {
    pub id: String,
    pub username: Option<String>,
    pub display_name: Option<String>,
    /// The chat, channel or DM the press came from.
    pub chat_id: Option<String>,
    /// Slack team or Discord guild.
    pub workspace_id: Option<String>,
    /// Discord role ids, for role-based approvers.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A decision someone made on a platform: a press, a slash command, a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundAction {
    /// The configured channel name it came through.
    pub channel: String,
    /// Full approval id or a unique prefix of at least 6 characters.
    pub approval: String,
    pub decision: Decision,
    pub user: PlatformUser,
    pub reason: Option<String>,
    /// A press on a running task's Abort button ([`ActionData::abort`]): stop the task.
    pub abort: bool,
}

/// Why the engine refused an inbound decision, so the platform can answer in plain words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    NotAnApprover,
    SelfApproval,
    AlreadyResolved,
    Expired,
    UnknownId,
    AmbiguousId,
    InvalidDecision,
    Internal,
}

/// What the engine answers an inbound decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum InboundReply {
    /// Recorded. `message` is a short confirmation ("Approved by alice", "1 of 2 approvals").
    Accepted { status: String, message: String },
    /// Nothing changed; `message` says why in plain words.
    Refused { kind: RefusalKind, message: String },
}

/// Where platform receivers hand decisions; the engine implements it.
#[async_trait]
pub trait InboundSink: Send + Sync {
    async fn decide(&self, action: InboundAction) -> InboundReply;

    /// The pending requests a platform user may decide on (a `/pending` command). A user who
    /// may not approve through `channel` gets `Err` with the refusal to show them.
    async fn pending(
        &self,
        channel: &str,
        user: &PlatformUser,
    ) -> Result<Vec<PromptView>, InboundReply>;

    /// The approval a message this service sent belongs to, so a reply to a prompt (or a press
    /// on it) needs no id. `None` when the message is not a prompt.
    async fn approval_for_message(&self, message: &MessageRef) -> Option<String>;
}

/// A chat platform approvald can deliver prompts to and receive decisions from.
///
/// Implementations do their own pacing and retries (429, 5xx); an `Err` from `deliver` means the
/// prompt could not be delivered in the end and will be reported to operators.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// The configured name targets use (`delivery.targets[].channel`).
    fn name(&self) -> &str;
    /// The transport recorded on identities of people deciding through this channel.
    fn transport(&self) -> Transport;
    /// The markup its prompt text is rendered in.
    fn markup(&self) -> Markup;
    /// Start receiving (polling, gateway, ...). Webhook receivers may do nothing here.
    async fn start(&self, _sink: Arc<dyn InboundSink>) -> Result<(), ChannelError> {
        Ok(())
    }
    /// True when what `start` runs may run in one process only (Telegram long polling, the
    /// Discord gateway, Slack Socket Mode): several approvald instances on one database start
    /// it only on their leader.
    fn exclusive_receiver(&self) -> bool {
        false
    }
    /// Stop what `start` started (this instance stopped being the leader); `start` may be
    /// called again later.
    async fn stop(&self) {}
    /// Send a prompt with buttons; answer the reference needed to edit it later.
    async fn deliver(&self, target: &Target, prompt: &Prompt) -> Result<MessageRef, ChannelError>;
    /// Replace a sent prompt (outcome, progress); no actions means remove the buttons.
    async fn update(&self, message: &MessageRef, prompt: &Prompt) -> Result<(), ChannelError>;
    /// Send a plain notice (a timeout notice to operators).
    async fn notify(&self, target: &Target, text: &str) -> Result<MessageRef, ChannelError>;
    /// HTTP routes this channel receives on (webhooks), mounted on approvald's own server.
    /// Called once at start with the sink decisions go to.
    fn routes(&self, _sink: Arc<dyn InboundSink>) -> Option<axum::Router> {
        None
    }
    /// Recipients this channel adds to every forwarded prompt, whatever the delivery mode
    /// (Discord's `dm_approvers`: a DM to each approver). They are delivered, recorded and
    /// edited like any other target.
    fn standing_targets(&self) -> Vec<Target> {
        Vec::new()
    }
    /// Current health, for operators.
    fn health(&self) -> ChannelHealth {
        ChannelHealth {
            connected: true,
            last_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_aliases_parse_and_serialise_canonically() {
        for (word, want) in [
            ("approve", Decision::ApproveOnce),
            ("allow-once", Decision::ApproveOnce),
            ("approve-once", Decision::ApproveOnce),
            ("allow-always", Decision::ApproveAlways),
            ("approve-always", Decision::ApproveAlways),
            ("reject", Decision::Deny),
            ("DENY", Decision::Deny),
        ] {
            assert_eq!(word.parse::<Decision>().unwrap(), want, "{word}");
        }
        assert!("maybe".parse::<Decision>().is_err());
        let parsed: Decision = serde_json::from_str("\"allow-always\"").unwrap();
        assert_eq!(parsed, Decision::ApproveAlways);
        assert_eq!(
            serde_json::to_string(&Decision::ApproveAlways).unwrap(),
            "\"approve-always\""
        );
    }

    #[test]
    fn transport_round_trips() {
        assert_eq!("control_ui".parse::<Transport>(), Ok(Transport::ControlUi));
        assert!("fax".parse::<Transport>().is_err());
    }
}
