//! The text commands people type in chat: `/approve`, `/deny`, `/pending`, `/help`.
//!
//! People type them in whatever order comes to mind (`/approve once 0b9c4d2e` as well as
//! `/approve 0b9c4d2e once`), and in groups address them to one bot (`/approve@OpsBot`).
//! Parsing is pure so it can be tested on its own; the receiver decides what the id is
//! when the command replies to a prompt.

use approvald_channel::Decision;

/// A command addressed to this bot, with its arguments read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Approve {
        id: Option<String>,
        decision: Decision,
    },
    Deny {
        id: Option<String>,
        reason: Option<String>,
        /// The words of the reason in order, for when the "id" turns out to be a word.
        words: Vec<String>,
    },
    Pending,
    Help,
}

/// What `/help` and a misunderstood command answer.
pub const USAGE: &str = "Commands:\n\
/approve <id> [once|always] — approve a request (an 8-character id prefix is enough)\n\
/deny <id> [reason] — deny it\n\
/pending — requests waiting for a decision\n\
Reply to a prompt with /approve or /deny and no id is needed.";

/// Whether a word is an approval id or a prefix of one (6+ hex characters and dashes).
pub fn looks_like_id(word: &str) -> bool {
    word.len() >= 6
        && word.len() <= 36
        && word.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        && word.chars().any(|c| c.is_ascii_hexdigit())
}

/// Read a message text. `None`: not a command for this bot (plain text, another bot's
/// command, a command we do not have). `Some(Err(text))`: ours, but not understood.
pub fn parse(text: &str, bot_username: Option<&str>) -> Option<Result<Command, String>> {
    let text = text.trim();
    let first = text.split_whitespace().next()?;
    let word = first.strip_prefix('/')?;
    let (name, addressed) = match word.split_once('@') {
        Some((name, bot)) => (name, Some(bot)),
        None => (word, None),
    };
    if let (Some(to), Some(me)) = (addressed, bot_username)
        && !to.eq_ignore_ascii_case(me)
    {
        return None;
    }
    let args: Vec<&str> = text[first.len()..].split_whitespace().collect();
    match name.to_ascii_lowercase().as_str() {
        "approve" => Some(parse_approve(&args)),
        "deny" | "reject" => Some(Ok(parse_deny(&args))),
        "pending" => Some(Ok(Command::Pending)),
        "help" | "start" => Some(Ok(Command::Help)),
        _ => None,
    }
}

fn parse_approve(args: &[&str]) -> Result<Command, String> {
    let mut id = None;
    let mut decision = None;
    for arg in args {
        if let Ok(d) = arg.parse::<Decision>() {
            if decision.replace(d).is_some() {
                return Err("Give one decision: /approve <id> [once|always]".into());
            }
        } else if looks_like_id(arg) {
            if id.replace(arg.to_ascii_lowercase()).is_some() {
                return Err("Give one id: /approve <id> [once|always]".into());
            }
        } else {
            return Err(format!(
                "I did not understand {arg:?}: use /approve <id> [once|always]"
            ));
        }
    }
    Ok(Command::Approve {
        id,
        decision: decision.unwrap_or(Decision::ApproveOnce),
    })
}

fn parse_deny(args: &[&str]) -> Command {
    let words: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (id, rest): (Option<&str>, &[&str]) = match args {
        [first, rest @ ..] if looks_like_id(first) => (Some(first), rest),
        [rest @ .., last] if looks_like_id(last) => (Some(last), rest),
        all => (None, all),
    };
    let reason = rest.join(" ");
    Command::Deny {
        id: id.map(|s| s.to_ascii_lowercase()),
        reason: (!reason.is_empty()).then_some(reason),
        words,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Command {
        parse(text, Some("ApprovalBot")).unwrap().unwrap()
    }

    #[test]
    fn approve_takes_both_orders_and_the_addressed_form() {
        let want = Command::Approve {
            id: Some("0b9c4d2e".into()),
            decision: Decision::ApproveAlways,
        };
        assert_eq!(ok("/approve 0b9c4d2e always"), want);
        assert_eq!(ok("/approve always 0B9C4D2E"), want);
        assert_eq!(ok("/approve@approvalbot always 0b9c4d2e"), want);
        assert_eq!(
            ok("/approve 0b9c4d2e"),
            Command::Approve {
                id: Some("0b9c4d2e".into()),
                decision: Decision::ApproveOnce
            }
        );
        // A reply to a prompt needs no id.
        assert_eq!(
            ok("/approve"),
            Command::Approve {
                id: None,
                decision: Decision::ApproveOnce
            }
        );
        assert!(parse("/approve soon", None).unwrap().is_err());
    }

    #[test]
    fn deny_takes_the_id_first_or_last_and_the_rest_as_reason() {
        let want = |reason: &str| Command::Deny {
            id: Some("0b9c4d2e".into()),
            reason: Some(reason.into()),
            words: Vec::new(),
        };
        let strip = |c: Command| match c {
            Command::Deny { id, reason, .. } => Command::Deny {
                id,
                reason,
                words: Vec::new(),
            },
            other => other,
        };
        assert_eq!(strip(ok("/deny 0b9c4d2e too risky")), want("too risky"));
        assert_eq!(strip(ok("/deny too risky 0b9c4d2e")), want("too risky"));
        assert_eq!(
            strip(ok("/deny not now")),
            Command::Deny {
                id: None,
                reason: Some("not now".into()),
                words: Vec::new()
            }
        );
    }

    #[test]
    fn other_bots_commands_and_plain_text_are_not_ours() {
        assert_eq!(
            parse("/approve@OtherBot 0b9c4d2e", Some("ApprovalBot")),
            None
        );
        assert_eq!(parse("approve 0b9c4d2e", Some("ApprovalBot")), None);
        assert_eq!(parse("/weather", Some("ApprovalBot")), None);
        assert_eq!(parse("", None), None);
        assert_eq!(ok("/pending@ApprovalBot"), Command::Pending);
    }
}
