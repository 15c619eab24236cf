//! The Block Kit layout of a prompt and of its outcome.
//!
//! Slack's mrkdwn can escape only `& < >`; `*bold*`, `_x_`, `<!here>`-style tokens in
//! untrusted text cannot be neutralised there. So untrusted text (summary, reason, names)
//! goes into `plain_text` objects, and the command into a code block, where only the three
//! entities matter. The `text` fallback (notifications, screen readers, old clients) is the
//! shared template rendered for Slack's markup.

use approvald_channel::{Decision, Prompt, PromptAction, PromptView};
use slack_morphism::prelude::*;

/// Slack's limits (characters): header text, section text, and our share of the fallback.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const CODE_MAX: usize = 2500;
const FALLBACK_MAX: usize = 3000;
const CONTEXT_MAX: usize = 2000;

/// Prefix of every button's `action_id`, so presses on other apps' buttons are ignored.
pub const ACTION_ID_PREFIX: &str = "approvald_";

/// The `action_id` of a decision's button.
pub fn action_id(decision: Decision) -> String {
    format!("{ACTION_ID_PREFIX}{}", decision.as_str().replace('-', "_"))
}

/// The whole message: fallback text plus blocks.
pub fn message(prompt: &Prompt) -> SlackMessageContent {
    SlackMessageContent::new()
        .with_text(fallback_text(&prompt.text))
        .with_blocks(blocks(&prompt.view, &prompt.actions))
}

/// Plain notice (a timeout notice): the template text as mrkdwn.
pub fn notice(text: &str) -> SlackMessageContent {
    SlackMessageContent::new().with_text(fallback_text(text))
}

fn blocks(view: &PromptView, actions: &[PromptAction]) -> Vec<SlackBlock> {
    let pending = view.status == "pending";
    let mut out: Vec<SlackBlock> = Vec::new();
    let title = match view.status.as_str() {
        "pending" => "Approval required",
        "approved" => "Approved",
        "denied" => "Denied",
        "expired" => "Expired",
        _ => "Approval",
    };
    out.push(
        SlackHeaderBlock::new(plain_only(&cut(
            &format!("{title}: {}", view.tool),
            HEADER_MAX,
        )))
        .into(),
    );
    if let Some(summary) = view.summary.as_deref().filter(|s| !s.trim().is_empty()) {
        out.push(
            SlackSectionBlock::new()
                .with_text(plain(&cut(summary, SECTION_MAX)))
                .into(),
        );
    }
    let code = view.command.as_deref().or(view.args.as_deref());
    if let Some(code) = code.filter(|c| !c.is_empty()) {
        out.push(
            SlackSectionBlock::new()
                .with_text(md(&code_block(&cut(code, CODE_MAX))))
                .into(),
        );
    }
    if !pending {
        let outcome = match (view.status.as_str(), &view.decided_by) {
            ("expired", _) => {
                "Nobody decided in time; the agent was told it timed out (not denied).".to_string()
            }
            (_, Some(by)) => match view.reason.as_deref().filter(|r| !r.trim().is_empty()) {
                Some(reason) => format!("{title} by {by}: {reason}"),
                None => format!("{title} by {by}"),
            },
            (_, None) => title.to_string(),
        };
        out.push(
            SlackSectionBlock::new()
                .with_text(plain(&cut(&outcome, SECTION_MAX)))
                .into(),
        );
    }
    if let Some(execution) = &view.execution {
        out.push(
            SlackSectionBlock::new()
                .with_text(plain(&cut(&format!("Task: {execution}"), SECTION_MAX)))
                .into(),
        );
    }
    if let Some(progress) = &view.progress {
        out.push(
            SlackContextBlock::new(vec![SlackContextBlockElement::Plain(
                SlackBlockPlainText::new(cut(progress, CONTEXT_MAX)).with_emoji(false),
            )])
            .into(),
        );
    }

    let mut facts = vec![format!(
        "Requested by {}",
        view.requester.as_deref().unwrap_or("unknown")
    )];
    if let Some(agent) = &view.agent_id {
        facts.push(format!("agent {agent}"));
    }
    facts.push(format!("{} risk", view.risk.to_uppercase()));
    facts.push(format!("ID {}", view.short_id));
    let mut context = vec![SlackContextBlockElement::Plain(
        SlackBlockPlainText::new(cut(&facts.join(" · "), CONTEXT_MAX)).with_emoji(false),
    )];
    if pending {
        context.push(SlackContextBlockElement::MarkDown(
            SlackBlockMarkDownText::new(format!("Expires {}", slack_date(view.expires_at))),
        ));
    }
    out.push(SlackContextBlock::new(context).into());

    if !actions.is_empty() {
        let buttons = actions
            .iter()
            .map(|a| SlackActionBlockElement::Button(button(a)))
            .collect();
        out.push(
            SlackActionsBlock::new(buttons)
                .with_block_id("approvald_actions".into())
                .into(),
        );
    }
    out
}

fn button(action: &PromptAction) -> SlackBlockButtonElement {
    let b = SlackBlockButtonElement::new(plain_only(&cut(&action.label, 75)))
        .with_action_id(action_id(action.decision).into())
        .with_value(action.data.clone());
    match action.decision {
        Decision::ApproveOnce => b.with_style(SlackBlockButtonStyle::Primary),
        Decision::ApproveAlways => b,
        Decision::Deny => b.with_style(SlackBlockButtonStyle::Danger).with_confirm(
            SlackBlockConfirmItem::new(
                plain_only("Deny this request?"),
                SlackBlockText::Plain(SlackBlockPlainText::new(
                    "The agent will be told its tool call was denied.".into(),
                )),
                plain_only("Deny"),
                plain_only("Cancel"),
            )
            .with_style("danger".into()),
        ),
    }
}

fn plain_only(text: &str) -> SlackBlockPlainTextOnly {
    SlackBlockPlainText::new(text.to_string())
        .with_emoji(false)
        .into()
}

fn plain(text: &str) -> SlackBlockText {
    SlackBlockText::Plain(SlackBlockPlainText::new(text.to_string()).with_emoji(false))
}

fn md(text: &str) -> SlackBlockText {
    // verbatim: Slack must not turn channel names or URLs in the command into links.
    SlackBlockText::MarkDown(SlackBlockMarkDownText::new(text.to_string()).with_verbatim(true))
}

/// Escape untrusted text for mrkdwn: Slack can escape only these three.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A code block whose content cannot end it early.
pub fn code_block(s: &str) -> String {
    format!(
        "```{}```",
        escape(&approvald_channel::text::break_fences(s))
    )
}

/// An inline code span (backticks inside would end it).
pub fn code_span(s: &str) -> String {
    format!("`{}`", escape(&s.replace('`', "'")))
}

/// Slack date formatting: each reader sees their own local time; the fallback is UTC.
pub fn slack_date(at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} at {{time}}|{}>",
        at.timestamp(),
        at.format("%Y-%m-%d %H:%M UTC")
    )
}

/// Cut raw text to `max` characters on a character boundary, saying how much was cut.
pub fn cut(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s.to_string();
    }
    let note = format!("… [{} more characters]", count - max);
    let keep = max.saturating_sub(note.chars().count());
    let kept: String = s.chars().take(keep).collect();
    format!("{kept}{note}")
}

/// The rendered (already escaped) template text, cut to fit without splitting an entity.
fn fallback_text(text: &str) -> String {
    if text.chars().count() <= FALLBACK_MAX {
        return text.to_string();
    }
    let mut kept: String = text.chars().take(FALLBACK_MAX - 1).collect();
    // Never leave half an entity (`&am`) at the cut.
    if let Some(amp) = kept.rfind('&')
        && !kept[amp..].contains(';')
    {
        kept.truncate(amp);
    }
    kept.push('…');
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use approvald_channel::ActionData;
    use chrono::Utc;

    fn view(status: &str) -> PromptView {
        PromptView {
            approval_id: "0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e".into(),
            short_id: "0b9c4d2e".into(),
            tool: "shell".into(),
            summary: Some("*bold* <!here> & _x_".into()),
            command: Some("echo ```x``` <@U1> & done".into()),
            args: None,
            risk: "high".into(),
            requester: Some("mallory <!channel>".into()),
            agent_id: Some("bot".into()),
            session_key: None,
            created_at: Utc::now(),
            expires_at: Utc::now(),
            status: status.into(),
            progress: None,
            decided_by: Some("Alice via slack".into()),
            reason: Some("ok".into()),
            execution: None,
        }
    }

    fn actions() -> Vec<PromptAction> {
        Decision::ALL
            .into_iter()
            .map(|d| PromptAction {
                decision: d,
                label: d.label().into(),
                data: ActionData::new("0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e", d).to_string(),
            })
            .collect()
    }

    #[test]
    fn untrusted_text_is_plain_or_escaped_code_and_buttons_carry_action_data() {
        let prompt = Prompt {
            text: "*Approval required*: *shell*".into(),
            view: view("pending"),
            actions: actions(),
        };
        let json = serde_json::to_value(message(&prompt)).unwrap();
        let blocks = json["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[1]["text"]["type"], "plain_text");
        assert_eq!(blocks[1]["text"]["text"], "*bold* <!here> & _x_");
        assert_eq!(
            blocks[2]["text"]["text"],
            "```echo `\u{200B}`\u{200B}`\u{200B}x`\u{200B}`\u{200B}`\u{200B} &lt;@U1&gt; &amp; done```"
        );
        let context = serde_json::to_string(&blocks[3]).unwrap();
        assert!(context.contains("<!date^"), "{context}");
        let buttons = blocks[4]["elements"].as_array().unwrap();
        assert_eq!(buttons.len(), 3);
        assert_eq!(buttons[0]["style"], "primary");
        assert_eq!(buttons[0]["action_id"], "approvald_approve_once");
        assert_eq!(buttons[2]["style"], "danger");
        assert!(buttons[2]["confirm"].is_object());
        for b in buttons {
            let value = b["value"].as_str().unwrap();
            assert!(value.len() <= 2000);
            value.parse::<ActionData>().unwrap();
        }
        assert_eq!(json["text"], "*Approval required*: *shell*");
    }

    #[test]
    fn outcome_has_no_buttons_and_says_who() {
        let prompt = Prompt {
            text: "x".into(),
            view: view("approved"),
            actions: vec![],
        };
        let json = serde_json::to_string(&message(&prompt)).unwrap();
        assert!(!json.contains("\"actions\""), "{json}");
        assert!(json.contains("Approved by Alice via slack: ok"), "{json}");
    }

    #[test]
    fn cutting_keeps_limits_and_entities_whole() {
        let long = "é".repeat(5000);
        assert_eq!(cut(&long, 100).chars().count(), 100);
        let text = format!("{}&amp;tail", "a".repeat(FALLBACK_MAX - 4));
        let f = fallback_text(&text);
        assert!(!f.contains("&am"), "{f}");
        assert!(f.chars().count() <= FALLBACK_MAX);
    }
}
