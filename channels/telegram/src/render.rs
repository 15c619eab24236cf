//! Telegram's layout of a prompt: the HTML text cut to Telegram's 4096-character limit without
//! breaking a tag or an entity, and the inline keyboard.
//!
//! The shared templates already fold long commands, but custom templates need not, and a
//! message over the limit is refused outright ("message is too long"): the prompt would be lost.

use approvald_channel::{Decision, PromptAction};
use teloxide_core::types::{InlineKeyboardButton, InlineKeyboardMarkup};

/// Telegram's limit for a message text, counted after entity parsing, in UTF-16 code units.
pub const MAX_TEXT: usize = 4096;

/// Telegram's limit for a button's callback data, in bytes.
pub const MAX_CALLBACK_DATA: usize = 64;

/// Appended (outside every tag) when text was cut.
const CUT_NOTE: &str = "…\n[cut to fit Telegram; the full request is in the control UI]";

/// One piece of Telegram HTML.
#[derive(Debug, PartialEq)]
enum Token<'a> {
    /// `<b>`, `</b>`, `<a href="...">`: takes no room in the visible text.
    Tag(&'a str),
    /// `&amp;`, `&#128512;`: one visible character (two UTF-16 units when astral).
    Entity(&'a str),
    Char(char),
}

fn tokens(html: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        if c == '<'
            && let Some(end) = rest.find('>')
        {
            out.push(Token::Tag(&rest[..=end]));
            rest = &rest[end + 1..];
            continue;
        }
        if c == '&'
            && let Some(end) = rest.bytes().take(12).position(|b| b == b';')
            && end > 1
            && rest[1..end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '#')
        {
            out.push(Token::Entity(&rest[..=end]));
            rest = &rest[end + 1..];
            continue;
        }
        out.push(Token::Char(c));
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn visible_units(t: &Token<'_>) -> usize {
    match t {
        Token::Tag(_) => 0,
        // Numeric entities may name an astral character: count the worst case.
        Token::Entity(e) if e.starts_with("&#") => 2,
        Token::Entity(_) => 1,
        Token::Char(c) => c.len_utf16(),
    }
}

/// The tag name of an opening tag (`<a href=..>` -> `a`), or None for closing tags.
fn opening_name(tag: &str) -> Option<&str> {
    let inner = tag.strip_prefix('<')?.strip_suffix('>')?;
    if inner.starts_with('/') || inner.ends_with('/') {
        return None;
    }
    inner.split_whitespace().next()
}

/// `text` if it fits in `limit` visible UTF-16 units, else a prefix cut between tokens, with
/// every tag still open closed again and a note that it was cut.
pub fn fit(text: &str, limit: usize) -> String {
    let toks = tokens(text);
    let total: usize = toks.iter().map(visible_units).sum();
    if total <= limit {
        return text.to_string();
    }
    let note_units: usize = CUT_NOTE.encode_utf16().count();
    let budget = limit.saturating_sub(note_units);
    let mut out = String::with_capacity(text.len().min(limit * 6));
    let mut open: Vec<&str> = Vec::new();
    let mut used = 0;
    for t in &toks {
        let units = visible_units(t);
        if used + units > budget {
            break;
        }
        used += units;
        match t {
            Token::Tag(tag) => {
                if let Some(name) = opening_name(tag) {
                    open.push(name);
                } else if tag.starts_with("</") {
                    open.pop();
                }
                out.push_str(tag);
            }
            Token::Entity(e) => out.push_str(e),
            Token::Char(c) => out.push(*c),
        }
    }
    for name in open.iter().rev() {
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }
    out.push_str(CUT_NOTE);
    out
}

/// The inline keyboard for a prompt's actions: approvals on the first row, deny on its own
/// below (a thumb aiming at "Approve" should not land on "Deny", nor the other way).
/// No actions gives an empty keyboard, which removes the buttons when editing.
pub fn keyboard(actions: &[PromptAction]) -> InlineKeyboardMarkup {
    let button = |a: &PromptAction| {
        if a.data.len() > MAX_CALLBACK_DATA {
            // ActionData is 41 bytes; a longer payload would be refused with the whole message.
            tracing::error!(
                bytes = a.data.len(),
                "button data over Telegram's 64 bytes; button left out"
            );
            return None;
        }
        Some(InlineKeyboardButton::callback(
            a.label.clone(),
            a.data.clone(),
        ))
    };
    let approve: Vec<_> = actions
        .iter()
        .filter(|a| a.decision != Decision::Deny)
        .filter_map(button)
        .collect();
    let deny: Vec<_> = actions
        .iter()
        .filter(|a| a.decision == Decision::Deny)
        .filter_map(button)
        .collect();
    let rows: Vec<Vec<InlineKeyboardButton>> = [approve, deny]
        .into_iter()
        .filter(|row| !row.is_empty())
        .collect();
    InlineKeyboardMarkup::new(rows)
}

/// Escape untrusted text for Telegram's HTML parse mode.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(html: &str) -> usize {
        tokens(html).iter().map(visible_units).sum()
    }

    #[test]
    fn short_text_is_unchanged() {
        let t = "<b>Approval</b> &amp; <code>x</code>";
        assert_eq!(fit(t, MAX_TEXT), t);
    }

    #[test]
    fn long_text_is_cut_between_tokens_with_tags_closed() {
        let body = "&lt;tag&gt; é 😀 ".repeat(2000);
        let text = format!("<b>Title</b>\n<pre>{body}</pre>\nID: <code>abc</code>");
        let out = fit(&text, MAX_TEXT);
        assert!(visible(&out) <= MAX_TEXT, "{}", visible(&out));
        assert!(out.starts_with("<b>Title</b>\n<pre>"));
        assert!(out.contains("</pre>…\n[cut to fit Telegram"), "{out:.200}");
        // Every entity is whole: each '&' starts a complete entity.
        for (i, _) in out.match_indices('&') {
            let rest = &out[i..];
            assert!(
                rest.starts_with("&lt;") || rest.starts_with("&gt;"),
                "broken entity at {i}: {:?}",
                &rest[..rest.len().min(8)]
            );
        }
        assert_eq!(out.matches("<pre>").count(), out.matches("</pre>").count());
    }

    #[test]
    fn cut_inside_nested_tags_closes_them_in_order() {
        let text = format!("<b><i>{}</i></b>", "x".repeat(5000));
        let out = fit(&text, 100);
        assert!(out.ends_with(&format!("</i></b>{CUT_NOTE}")), "{out}");
        assert!(visible(&out) <= 100);
    }

    #[test]
    fn keyboard_puts_deny_on_its_own_row_and_empty_removes_buttons() {
        let action = |d: Decision| PromptAction {
            decision: d,
            label: d.label().into(),
            data: format!(
                "v1:0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e:{}",
                &d.as_str()[..1]
            ),
        };
        let kb = keyboard(&Decision::ALL.map(action));
        assert_eq!(kb.inline_keyboard.len(), 2);
        assert_eq!(kb.inline_keyboard[0].len(), 2);
        assert_eq!(kb.inline_keyboard[1][0].text, "Deny");
        assert!(keyboard(&[]).inline_keyboard.is_empty());
    }
}
