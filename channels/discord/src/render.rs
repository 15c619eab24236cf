//! The Discord layout of a prompt: an embed (the shared template's text as description,
//! structured fields, risk or outcome colour, the id in the footer) and one row of buttons.
//! Every message and interaction answer goes out with `allowed_mentions` empty, so nothing a
//! command or a requester name contains can ping @everyone, a role or a user.

use approvald_channel::{Decision, Prompt, PromptAction};
use serenity::all::{
    ButtonStyle, CreateActionRow, CreateAllowedMentions, CreateButton, CreateEmbed,
    CreateEmbedFooter, CreateInteractionResponse, CreateInteractionResponseMessage, CreateMessage,
    EditMessage, Nonce,
};

/// Discord's limits (characters), with room left so the embed total stays under 6000.
const TITLE_MAX: usize = 256;
const DESCRIPTION_MAX: usize = 3000;
const FIELD_MAX: usize = 1000;
const CONTENT_MAX: usize = 2000;
/// Discord refuses longer button ids.
pub const CUSTOM_ID_MAX: usize = 100;

/// Nothing may be pinged: not @everyone, not roles, not users.
pub fn no_mentions() -> CreateAllowedMentions {
    CreateAllowedMentions::new()
        .everyone(false)
        .all_users(false)
        .all_roles(false)
}

/// A new prompt message for the channel (thread, DM channel) `post_to`.
///
/// It carries a nonce that Discord enforces: a send that timed out or lost its answer may have
/// created the message all the same, and the retry then gets that message back instead of
/// posting a second copy (that nobody would ever edit). The nonce is the same for every send
/// of one request's prompt to one channel, so any resend within Discord's window is one
/// message.
pub fn new_message(prompt: &Prompt, post_to: u64) -> CreateMessage {
    CreateMessage::new()
        .embed(embed(prompt))
        .components(buttons(&prompt.actions))
        .allowed_mentions(no_mentions())
        .nonce(prompt_nonce(&prompt.view.approval_id, post_to))
        .enforce_nonce(true)
}

/// `p` and 16 hex digits (Discord takes up to 25 characters) of a stable hash (FNV-1a, the
/// same in every process and release) of the request id and the channel.
pub fn prompt_nonce(approval_id: &str, post_to: u64) -> Nonce {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("approvald-prompt:{approval_id}:{post_to}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Nonce::String(format!("p{hash:016x}"))
}

/// The same prompt as an edit; no actions means the buttons are removed.
pub fn edit_message(prompt: &Prompt) -> EditMessage {
    EditMessage::new()
        .embed(embed(prompt))
        .components(buttons(&prompt.actions))
        .allowed_mentions(no_mentions())
}

/// A button press answered by editing the pressed message (UPDATE_MESSAGE, type 7).
pub fn update_response(prompt: &Prompt) -> CreateInteractionResponse {
    CreateInteractionResponse::UpdateMessage(
        CreateInteractionResponseMessage::new()
            .embed(embed(prompt))
            .components(buttons(&prompt.actions))
            .allowed_mentions(no_mentions()),
    )
}

/// A plain answer only the person who acted sees (flags 64).
pub fn ephemeral(text: &str) -> CreateInteractionResponse {
    CreateInteractionResponse::Message(
        CreateInteractionResponseMessage::new()
            .content(cut(text, CONTENT_MAX))
            .ephemeral(true)
            .allowed_mentions(no_mentions()),
    )
}

/// A plain notice (timeout notices to operators), with a nonce of its own so a resend of this
/// one notice cannot post it twice (see [`new_message`]).
pub fn notice(text: &str) -> CreateMessage {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    CreateMessage::new()
        .content(cut(text, CONTENT_MAX))
        .allowed_mentions(no_mentions())
        .nonce(Nonce::String(format!("n{nanos:x}{:x}", seq & 0xff_ffff)))
        .enforce_nonce(true)
}

/// One action row: Approve once (green), Always approve (blue, only when offered), Deny (red).
pub fn buttons(actions: &[PromptAction]) -> Vec<CreateActionRow> {
    let buttons: Vec<CreateButton> = actions
        .iter()
        .filter(|a| a.data.len() <= CUSTOM_ID_MAX)
        .map(|a| {
            let style = match a.decision {
                Decision::ApproveOnce => ButtonStyle::Success,
                Decision::ApproveAlways => ButtonStyle::Primary,
                Decision::Deny => ButtonStyle::Danger,
            };
            CreateButton::new(a.data.clone())
                .label(cut(&a.label, 80))
                .style(style)
        })
        .collect();
    if buttons.is_empty() {
        Vec::new()
    } else {
        vec![CreateActionRow::Buttons(buttons)]
    }
}

/// The embed for a prompt in any state.
pub fn embed(prompt: &Prompt) -> CreateEmbed {
    let v = &prompt.view;
    let pending = v.status == "pending";
    let heading = match v.status.as_str() {
        "pending" => "Approval required",
        "approved" => "Approved",
        "denied" => "Denied",
        "expired" => "Expired",
        _ => "Approval",
    };
    let mut e = CreateEmbed::new()
        .title(cut(&format!("{heading}: {}", escape(&v.tool)), TITLE_MAX))
        .description(cut(&prompt.text, DESCRIPTION_MAX))
        .colour(colour(&v.status, &v.risk))
        .footer(CreateEmbedFooter::new(format!("ID {}", v.approval_id)));
    // The template usually shows the command already; a customised one may not.
    if let Some(command) = v.command.as_deref().filter(|c| !shows(&prompt.text, c)) {
        e = e.field("Command", code_block(command), false);
    }
    let mut inline = vec![("Risk", v.risk.to_uppercase())];
    if let Some(agent) = &v.agent_id {
        inline.push(("Agent", escape(agent)));
    }
    if let Some(requester) = &v.requester {
        inline.push(("Requester", escape(requester)));
    }
    if pending {
        // Discord renders this as a live "in 4 minutes" in each reader's locale.
        inline.push(("Expires", format!("<t:{}:R>", v.expires_at.timestamp())));
    }
    for (name, value) in inline {
        e = e.field(name, cut(&value, FIELD_MAX), true);
    }
    if let Some(progress) = &v.progress {
        e = e.field("Progress", cut(&escape(progress), FIELD_MAX), false);
    }
    if !pending {
        if let Some(by) = &v.decided_by {
            e = e.field("Decided by", cut(&escape(by), FIELD_MAX), true);
        }
        if let Some(reason) = &v.reason {
            e = e.field("Reason", cut(&escape(reason), FIELD_MAX), false);
        }
    }
    e
}

fn colour(status: &str, risk: &str) -> u32 {
    match (status, risk) {
        ("approved", _) => 0x57F287,
        ("denied", _) => 0xED4245,
        ("expired", _) => 0x95A5A6,
        (_, "low") => 0x57F287,
        (_, "medium") => 0xFEE75C,
        (_, "high") => 0xE67E22,
        (_, "critical") => 0xED4245,
        _ => 0x5865F2,
    }
}

/// Whether the rendered text already shows the command (its first line, as the code block
/// filter writes it).
fn shows(text: &str, command: &str) -> bool {
    let first = command.lines().next().unwrap_or("").trim();
    !first.is_empty() && text.contains(&approvald_channel::text::break_fences(first))
}

/// A fenced block whose content cannot close the fence early.
fn code_block(s: &str) -> String {
    let inner = cut(&approvald_channel::text::break_fences(s), FIELD_MAX - 8);
    format!("```\n{inner}\n```")
}

/// Backslash-escape Discord markdown in untrusted text (the shared rule in channels/core).
pub fn escape(s: &str) -> String {
    approvald_channel::text::escape_discord_markdown(s)
}

/// At most `max` characters, never cutting inside a character, marked with an ellipsis.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use approvald_channel::{ActionData, PromptView};
    use serde_json::{Value, json};

    fn prompt(status: &str, actions: bool) -> Prompt {
        let now = chrono::Utc::now();
        let id = "0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
        Prompt {
            text: "**Approval required**: **shell**\n```\nrm -rf ./build\n```".into(),
            view: PromptView {
                approval_id: id.into(),
                short_id: "0b9c4d2e".into(),
                tool: "shell".into(),
                summary: None,
                command: Some("rm -rf ./build".into()),
                args: None,
                risk: "high".into(),
                requester: Some("@everyone <@123>".into()),
                agent_id: Some("release_bot".into()),
                session_key: None,
                created_at: now,
                expires_at: now + chrono::Duration::minutes(5),
                status: status.into(),
                progress: None,
                decided_by: (status != "pending").then(|| "Alice via discord".into()),
                reason: None,
                execution: None,
            },
            actions: if actions {
                Decision::ALL
                    .iter()
                    .map(|d| PromptAction {
                        decision: *d,
                        label: d.label().into(),
                        data: ActionData::new(id, *d).to_string(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn json_of(v: &impl serde::Serialize) -> Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn a_prompt_carries_an_enforced_nonce_stable_per_request_and_channel() {
        let p = prompt("pending", true);
        let m = json_of(&new_message(&p, 1100));
        assert_eq!(m["enforce_nonce"], true);
        let nonce = m["nonce"].as_str().unwrap().to_string();
        assert!(nonce.len() <= 25, "{nonce}");
        // The same prompt to the same channel: the same nonce (a resend is deduplicated).
        assert_eq!(json_of(&new_message(&p, 1100))["nonce"], nonce.as_str());
        // Another channel, another request: another nonce.
        assert_ne!(json_of(&new_message(&p, 1101))["nonce"], nonce.as_str());
        let mut other = p.clone();
        other.view.approval_id = "1b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e".into();
        assert_ne!(json_of(&new_message(&other, 1100))["nonce"], nonce.as_str());
        // Pinned: a change would let a resend across an upgrade post twice.
        assert_eq!(nonce, "p53a061d993024b00");
        // Notices: one nonce per notice, never shared by two.
        let (a, b) = (json_of(&notice("x")), json_of(&notice("x")));
        assert_eq!(a["enforce_nonce"], true);
        assert!(a["nonce"].as_str().unwrap().len() <= 25, "{a}");
        assert_ne!(a["nonce"], b["nonce"]);
    }

    #[test]
    fn pending_prompt_has_embed_buttons_and_no_mentions() {
        let m = json_of(&new_message(&prompt("pending", true), 1100));
        assert_eq!(m["allowed_mentions"]["parse"], json!([]));
        assert_eq!(m["allowed_mentions"]["users"], json!([]));
        let e = &m["embeds"][0];
        assert_eq!(e["title"], "Approval required: shell");
        assert_eq!(e["color"], 0xE67E22);
        assert_eq!(
            e["footer"]["text"],
            "ID 0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
        );
        let fields: Vec<(&str, &str)> = e["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap(), f["value"].as_str().unwrap()))
            .collect();
        // The command is already in the description; no second copy.
        assert!(!fields.iter().any(|(n, _)| *n == "Command"), "{fields:?}");
        assert!(fields.contains(&("Agent", "release\\_bot")), "{fields:?}");
        assert!(
            fields.contains(&("Requester", "@\u{200B}everyone \\<@\u{200B}123\\>")),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|(n, v)| *n == "Expires" && v.starts_with("<t:") && v.ends_with(":R>"))
        );
        let row = &m["components"][0];
        assert_eq!(row["type"], 1);
        let buttons = row["components"].as_array().unwrap();
        let styles: Vec<_> = buttons
            .iter()
            .map(|b| (b["label"].clone(), b["style"].clone()))
            .collect();
        assert_eq!(
            styles,
            [
                (json!("Approve once"), json!(3)),
                (json!("Always approve"), json!(1)),
                (json!("Deny"), json!(4))
            ]
        );
        for b in buttons {
            let id = b["custom_id"].as_str().unwrap();
            assert!(id.starts_with("v1:") && id.len() <= CUSTOM_ID_MAX, "{id}");
        }
    }

    #[test]
    fn outcome_edit_removes_buttons_and_recolours() {
        let m = json_of(&edit_message(&prompt("approved", false)));
        assert_eq!(m["components"], json!([]));
        assert_eq!(m["embeds"][0]["title"], "Approved: shell");
        assert_eq!(m["embeds"][0]["color"], 0x57F287);
        let r = json_of(&update_response(&prompt("denied", false)));
        assert_eq!(r["type"], 7);
        assert_eq!(r["data"]["components"], json!([]));
        assert_eq!(r["data"]["embeds"][0]["title"], "Denied: shell");
    }

    #[test]
    fn a_template_without_the_command_gets_a_command_field_that_cannot_break_out() {
        let mut p = prompt("pending", true);
        p.text = "Please decide".into();
        p.view.command = Some("echo ```done``` @here".into());
        let e = json_of(&embed(&p));
        let cmd = e["fields"][0]["value"].as_str().unwrap();
        assert_eq!(e["fields"][0]["name"], "Command");
        assert!(cmd.starts_with("```\n") && cmd.ends_with("\n```"));
        assert_eq!(cmd.matches("```").count(), 2, "{cmd}");
    }

    #[test]
    fn ephemeral_answers_have_flag_64_and_long_text_is_cut() {
        let r = json_of(&ephemeral(&"x".repeat(5000)));
        assert_eq!(r["type"], 4);
        assert_eq!(r["data"]["flags"], 64);
        assert_eq!(
            r["data"]["content"].as_str().unwrap().chars().count(),
            CONTENT_MAX
        );
        assert_eq!(cut("héllo", 3), "hé…");
    }
}
