//! The shared templates (`templates/*.j2`), every kind for every markup, with a
//! `PromptContext` whose text fields come from the fuzzer; then Telegram's `render::fit`.
//!
//! Input: text fields separated by NUL bytes, in the order of [`FIELDS`]; list fields
//! (approvers, decisions) are split again at 0x01. A missing field keeps the sample value; an
//! empty optional field is `None`. An input without any NUL puts the same text in every field.
//!
//! What must hold, for each markup, compared with a reference rendering of the same context
//! in which every markup-special character of the input is replaced by `x` (same lengths, so
//! the same truncation and the same `if`s):
//! - rendering never fails;
//! - Telegram HTML: only approvald's own tags (`b`, `code`, `pre`), exactly the reference's,
//!   balanced; every `&` starts an entity; so no `<script` from the input survives; and
//!   `approvald_telegram::render::fit` keeps all that while cutting to its limit;
//! - Slack mrkdwn: no raw `<` or `>` (no `<!channel>`, no links), every `&` an entity, and no
//!   code block closed early by the input;
//! - Discord markdown: outside code, every markdown character from the input is escaped and
//!   every `@` broken, and the code blocks and spans are exactly the reference's (the input
//!   cannot close or open one).

use std::sync::OnceLock;

use approvald::templates::{PromptContext, TemplateKind, Templates};
use approvald_channel::Markup;

use super::common::{fields, telegram_html, telegram_visible_units};

pub const FIELDS: &[&str] = &[
    "tool",
    "summary",
    "command",
    "args",
    "risk",
    "requester",
    "agent_id",
    "session_key",
    "status",
    "progress",
    "decided_by",
    "reason",
    "execution",
    "approval_id",
    "short_id",
    "expires_at_text",
    "expires_in",
    "outcome_title",
    "approvers",
    "decisions",
];

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| Templates::load(None).expect("bundled templates load"))
}

/// Characters that mean something in one of the markups.
fn special(c: char) -> bool {
    matches!(
        c,
        '<' | '>'
            | '&'
            | '"'
            | '`'
            | '\\'
            | '*'
            | '_'
            | '~'
            | '|'
            | '#'
            | '['
            | ']'
            | '('
            | ')'
            | '-'
            | ':'
            | '@'
    )
}

fn neutral(s: &str) -> String {
    s.chars()
        .map(|c| if special(c) { 'x' } else { c })
        .collect()
}

/// The context from the input, with `map` applied to every text.
pub fn context(data: &[u8], map: &dyn Fn(&str) -> String) -> PromptContext {
    let parts = fields(data, 0);
    let mut ctx = PromptContext::sample();
    let get = |i: usize| -> Option<&String> {
        if parts.len() == 1 {
            parts.first()
        } else {
            parts.get(i)
        }
    };
    let text = |i: usize, keep: &mut String| {
        if let Some(v) = get(i) {
            *keep = map(v);
        }
    };
    let opt = |i: usize, keep: &mut Option<String>| {
        if let Some(v) = get(i) {
            *keep = (!v.is_empty()).then(|| map(v));
        }
    };
    let list = |i: usize, keep: &mut Vec<String>| {
        if let Some(v) = get(i) {
            *keep = v
                .split('\u{1}')
                .filter(|s| !s.is_empty())
                .map(map)
                .collect();
        }
    };
    let v = &mut ctx.view;
    text(0, &mut v.tool);
    opt(1, &mut v.summary);
    opt(2, &mut v.command);
    opt(3, &mut v.args);
    text(4, &mut v.risk);
    opt(5, &mut v.requester);
    opt(6, &mut v.agent_id);
    opt(7, &mut v.session_key);
    text(8, &mut v.status);
    opt(9, &mut v.progress);
    opt(10, &mut v.decided_by);
    opt(11, &mut v.reason);
    opt(12, &mut v.execution);
    text(13, &mut v.approval_id);
    text(14, &mut v.short_id);
    text(15, &mut ctx.expires_at_text);
    text(16, &mut ctx.expires_in);
    opt(17, &mut ctx.outcome_title);
    list(18, &mut ctx.approvers);
    list(19, &mut ctx.decisions);
    ctx
}

/// Whether any text that is not shown in a code block (command, args) has a backtick.
fn backtick_outside_code(ctx: &PromptContext) -> bool {
    let v = &ctx.view;
    let mut texts: Vec<&str> = vec![
        &v.tool,
        &v.risk,
        &v.status,
        &v.approval_id,
        &v.short_id,
        &ctx.expires_at_text,
        &ctx.expires_in,
    ];
    for o in [
        &v.summary,
        &v.requester,
        &v.agent_id,
        &v.session_key,
        &v.progress,
        &v.decided_by,
        &v.reason,
        &v.execution,
        &ctx.outcome_title,
    ] {
        texts.extend(o.as_deref());
    }
    texts.extend(ctx.approvers.iter().map(String::as_str));
    texts.extend(ctx.decisions.iter().map(String::as_str));
    texts.iter().any(|t| t.contains('`'))
}

pub fn check(data: &[u8]) {
    let t = templates();
    let ctx = context(data, &|s| s.to_string());
    let reference = context(data, &neutral);
    let loose_backticks = backtick_outside_code(&ctx);
    for markup in Markup::ALL {
        for kind in TemplateKind::ALL {
            let out = t
                .render(markup, kind, &ctx)
                .unwrap_or_else(|e| panic!("{markup:?} {kind:?} failed to render: {e}"));
            let refr = t
                .render(markup, kind, &reference)
                .unwrap_or_else(|e| panic!("{markup:?} {kind:?} reference failed: {e}"));
            let what = format!("{markup:?} {kind:?}");
            match markup {
                Markup::Plain => {}
                Markup::TelegramHtml => check_telegram(&what, &out, &refr),
                Markup::SlackMrkdwn => check_slack(&what, &out, &refr, loose_backticks),
                Markup::DiscordMarkdown => check_discord(&what, &out, &refr),
            }
        }
    }
}

const TELEGRAM_TAGS: &[&str] = &["b", "code", "pre"];

fn check_telegram(what: &str, out: &str, refr: &str) {
    assert!(
        !out.to_ascii_lowercase().contains("<script"),
        "{what}: raw <script survived: {out}"
    );
    let tags = telegram_html(out, TELEGRAM_TAGS)
        .unwrap_or_else(|e| panic!("{what}: not safe Telegram HTML: {e}\n{out}"));
    let want = telegram_html(refr, TELEGRAM_TAGS).expect("reference is valid");
    assert_eq!(tags, want, "{what}: the input changed the tags\n{out}");
    // Cutting to Telegram's limit (and to smaller ones, to cut often) keeps it valid.
    let units = telegram_visible_units(out);
    for limit in [approvald_telegram::render::MAX_TEXT, 100 + units / 2, 100] {
        let fitted = approvald_telegram::render::fit(out, limit);
        telegram_html(&fitted, TELEGRAM_TAGS)
            .unwrap_or_else(|e| panic!("{what}: fit({limit}) broke the HTML: {e}\n{fitted}"));
        let visible = telegram_visible_units(&fitted);
        assert!(
            visible <= limit,
            "{what}: fit({limit}) left {visible} visible units"
        );
        if units <= limit {
            assert_eq!(fitted, out, "{what}: fit({limit}) changed a text that fits");
        }
    }
}

fn check_slack(what: &str, out: &str, refr: &str, loose_backticks: bool) {
    assert!(
        !out.contains('<') && !out.contains('>'),
        "{what}: raw '<' or '>' in mrkdwn (a link, a mention, <!channel>): {out}"
    );
    let mut rest = out;
    while let Some(i) = rest.find('&') {
        rest = &rest[i..];
        assert!(
            ["&amp;", "&lt;", "&gt;"]
                .iter()
                .any(|e| rest.starts_with(e)),
            "{what}: '&' that is not an entity: {}",
            super::common::head(rest)
        );
        rest = &rest[1..];
    }
    if !loose_backticks {
        assert_eq!(
            out.matches("```").count(),
            refr.matches("```").count(),
            "{what}: the command opened or closed a code block\n{out}"
        );
    }
}

/// What Discord would treat as markup in `s`: code blocks and spans, and every unescaped
/// markdown character and unbroken `@` outside them.
pub fn discord_markup(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let starts = |i: usize, pat: &str| {
        let p: Vec<char> = pat.chars().collect();
        chars.len() >= i + p.len() && chars[i..i + p.len()] == p[..]
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            i += 2;
        } else if starts(i, "```") {
            match (i + 3..chars.len()).find(|&j| starts(j, "```")) {
                Some(j) => {
                    out.push("code block".to_string());
                    i = j + 3;
                }
                None => {
                    out.push("unclosed ```".to_string());
                    i += 3;
                }
            }
        } else if c == '`' {
            match (i + 1..chars.len()).find(|&j| chars[j] == '`') {
                Some(j) => {
                    out.push("code span".to_string());
                    i = j + 1;
                }
                None => {
                    out.push("lone `".to_string());
                    i += 1;
                }
            }
        } else if c == '@' {
            if chars.get(i + 1) != Some(&'\u{200B}') {
                out.push("@".to_string());
            }
            i += 1;
        } else {
            if matches!(
                c,
                '*' | '_' | '~' | '|' | '>' | '#' | '[' | ']' | '(' | ')' | '-' | ':' | '<'
            ) {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

fn check_discord(what: &str, out: &str, refr: &str) {
    let got = discord_markup(out);
    let want = discord_markup(refr);
    assert_eq!(
        got, want,
        "{what}: the input changed the markdown structure (code blocks, escapes, pings)\n{out}"
    );
}
