//! Slash commands: `/approve id:<id-or-prefix> decision:<once|always>`, `/deny id:<..>
//! reason:<..>` and `/pending`, registered at start (per guild when `commands_guild_id` is set,
//! since guild commands appear at once; globally otherwise), with autocomplete of pending ids.

use approvald_channel::{Decision, InboundAction, InboundReply, PromptView};
use serenity::all::{
    CommandOptionType, CreateAutocompleteResponse, CreateCommand, CreateCommandOption,
    CreateInteractionResponse,
};
use serenity::http::{LightMethod, Route};
use serenity::model::id::{ApplicationId, GuildId};

use crate::Shared;
use crate::inbound::Interactions;
use crate::interaction::Interaction;
use crate::render::{self, cut, escape};

/// Discord shows at most 25 autocomplete choices.
const MAX_CHOICES: usize = 25;

/// The command set, in Discord's JSON through serenity's builders.
pub fn definitions() -> Vec<CreateCommand> {
    let id = || {
        CreateCommandOption::new(
            CommandOptionType::String,
            "id",
            "The request id, or its first 8 characters",
        )
        .required(true)
        .set_autocomplete(true)
        .min_length(6)
        .max_length(64)
    };
    vec![
        CreateCommand::new("approve")
            .description("Approve a pending tool call")
            .add_option(id())
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "decision",
                    "Once (default), or always for this agent, tool and command",
                )
                .add_string_choice("once", "once")
                .add_string_choice("always", "always"),
            ),
        CreateCommand::new("deny")
            .description("Deny a pending tool call")
            .add_option(id())
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "reason",
                    "Why (shown to the agent)",
                )
                .max_length(300),
            ),
        CreateCommand::new("pending").description("List the tool calls waiting for a decision"),
    ]
}

/// Overwrite the application's commands with ours (a bulk PUT, so it is idempotent).
pub async fn register(shared: &Shared) -> Result<(), approvald_channel::ChannelError> {
    let app = ApplicationId::new(shared.settings.application_id);
    let commands = definitions();
    match shared.settings.commands_guild_id {
        Some(guild) => {
            let label = format!("PUT /applications/{app}/guilds/{guild}/commands");
            let route = Route::GuildCommands {
                application_id: app,
                guild_id: GuildId::new(guild),
            };
            shared
                .client
                .call::<serde_json::Value>(LightMethod::Put, route, &label, Some(&commands))
                .await?;
        }
        None => {
            let label = format!("PUT /applications/{app}/commands");
            let route = Route::Commands {
                application_id: app,
            };
            shared
                .client
                .call::<serde_json::Value>(LightMethod::Put, route, &label, Some(&commands))
                .await?;
        }
    }
    Ok(())
}

impl Interactions {
    /// `/approve`, `/deny` or `/pending`. Answers are ephemeral: the prompt itself is edited
    /// for everyone to see.
    pub async fn command(&self, i: &Interaction) -> CreateInteractionResponse {
        let Some(user) = i.platform_user() else {
            return render::ephemeral("Discord did not say who sent this command.");
        };
        let name = i
            .data
            .as_ref()
            .and_then(|d| d.name.as_deref())
            .unwrap_or("");
        let (decision, reason) = match name {
            "pending" => {
                return match self.sink.pending(&self.shared.name, &user).await {
                    Ok(views) => render::ephemeral(&pending_list(&views)),
                    Err(reply) => render::ephemeral(reply_text(&reply)),
                };
            }
            "approve" => match i.option("decision").as_deref() {
                None | Some("once") => (Decision::ApproveOnce, None),
                Some("always") => (Decision::ApproveAlways, None),
                Some(other) => {
                    return render::ephemeral(&format!(
                        "Unknown decision {:?}: use once or always.",
                        cut(other, 20)
                    ));
                }
            },
            "deny" => (Decision::Deny, i.option("reason")),
            _ => return render::ephemeral("approvald does not know this command."),
        };
        let Some(id) = i.option("id") else {
            return render::ephemeral(
                "Give the request id: /approve id:<id> (8 characters are enough).",
            );
        };
        let reply = self
            .sink
            .decide(InboundAction {
                channel: self.shared.name.clone(),
                approval: id,
                decision,
                user,
                reason,
                abort: false,
            })
            .await;
        render::ephemeral(reply_text(&reply))
    }

    /// Suggest pending ids while someone types the `id` option. People who may not decide
    /// get no suggestions.
    pub async fn autocomplete(&self, i: &Interaction) -> CreateInteractionResponse {
        let mut response = CreateAutocompleteResponse::new();
        if let (Some(user), Some((option, typed))) = (i.platform_user(), i.focused())
            && option == "id"
            && let Ok(views) = self.sink.pending(&self.shared.name, &user).await
        {
            let typed = typed.to_lowercase();
            for v in views
                .iter()
                .filter(|v| matches(v, &typed))
                .take(MAX_CHOICES)
            {
                response = response.add_string_choice(choice_name(v), v.approval_id.clone());
            }
        }
        CreateInteractionResponse::Autocomplete(response)
    }
}

fn reply_text(reply: &InboundReply) -> &str {
    match reply {
        InboundReply::Accepted { message, .. } | InboundReply::Refused { message, .. } => message,
    }
}

/// A typed prefix of the id, or words from the tool or command.
fn matches(v: &PromptView, typed: &str) -> bool {
    typed.is_empty()
        || v.approval_id.starts_with(typed)
        || v.tool.to_lowercase().contains(typed)
        || v.command
            .as_deref()
            .is_some_and(|c| c.to_lowercase().contains(typed))
}

/// `0b9c4d2e · shell · rm -rf ./build` (plain text: choices do not render markdown).
fn choice_name(v: &PromptView) -> String {
    let what = v.summary.as_deref().or(v.command.as_deref()).unwrap_or("");
    let line = format!("{} · {} · {}", v.short_id, v.tool, what.replace('\n', " "));
    cut(line.trim_end_matches([' ', '·']), 100)
}

/// The `/pending` answer.
fn pending_list(views: &[PromptView]) -> String {
    if views.is_empty() {
        return "Nothing is waiting for a decision.".into();
    }
    let mut out = format!("**{} waiting for a decision**", views.len());
    for v in views {
        let line = format!(
            "\n`{}` {} · {} risk · expires <t:{}:R>",
            v.short_id,
            escape(&v.tool),
            escape(&v.risk),
            v.expires_at.timestamp()
        );
        if out.chars().count() + line.chars().count() > 1900 {
            out.push_str("\n…");
            break;
        }
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_have_autocompleted_ids_and_fixed_decisions() {
        let defs = serde_json::to_value(definitions()).unwrap();
        let names: Vec<_> = defs
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, [json!("approve"), json!("deny"), json!("pending")]);
        let approve = &defs[0]["options"];
        assert_eq!(approve[0]["name"], "id");
        assert_eq!(approve[0]["autocomplete"], true);
        assert_eq!(approve[0]["required"], true);
        assert_eq!(approve[1]["choices"][1]["value"], "always");
        assert_eq!(defs[1]["options"][1]["name"], "reason");
    }
}
