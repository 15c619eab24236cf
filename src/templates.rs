//! The shared prompt templates, rendered once per platform markup with that platform's escaping.
//!
//! One template set (`templates/*.j2`, compiled into the binary, overridable per file from
//! `templates.dir`) serves every surface. Each markup gets its own minijinja environment whose
//! formatter escapes every interpolated value for that markup, and whose `bold`, `code`,
//! `code_block` filters produce that markup's syntax. `truncate_safe` cuts the raw text before
//! escaping, so an entity or tag is never cut in half.

use std::collections::HashMap;
use std::path::Path;

use approvald_channel::{Markup, PromptView};
use minijinja::value::{Serde, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use serde::Serialize;

/// The templates, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemplateKind {
    Request,
    Resolved,
    Expired,
    TimeoutNotice,
}

impl TemplateKind {
    pub const ALL: [TemplateKind; 4] = [
        TemplateKind::Request,
        TemplateKind::Resolved,
        TemplateKind::Expired,
        TemplateKind::TimeoutNotice,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            TemplateKind::Request => "request.j2",
            TemplateKind::Resolved => "resolved.j2",
            TemplateKind::Expired => "expired.j2",
            TemplateKind::TimeoutNotice => "timeout_notice.j2",
        }
    }

    /// The template that shows how a settled request ended.
    pub fn outcome(status: crate::domain::Status) -> Self {
        if status == crate::domain::Status::Expired {
            TemplateKind::Expired
        } else {
            TemplateKind::Resolved
        }
    }

    fn bundled(self) -> &'static str {
        match self {
            TemplateKind::Request => include_str!("../templates/request.j2"),
            TemplateKind::Resolved => include_str!("../templates/resolved.j2"),
            TemplateKind::Expired => include_str!("../templates/expired.j2"),
            TemplateKind::TimeoutNotice => include_str!("../templates/timeout_notice.j2"),
        }
    }
}

impl std::str::FromStr for TemplateKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TemplateKind::ALL
            .into_iter()
            .find(|k| k.file_name().trim_end_matches(".j2") == s || k.file_name() == s)
            .ok_or_else(|| {
                format!("unknown template {s:?}: use request, resolved, expired or timeout_notice")
            })
    }
}

/// A template that does not compile or render, naming the file and the markup.
#[derive(Debug, thiserror::Error)]
#[error("template {file} ({markup}): {message}")]
pub struct TemplateError {
    pub file: String,
    pub markup: &'static str,
    pub message: String,
}

/// Everything a template can use: the prompt's facts (the same [`PromptView`] platforms get)
/// plus display helpers. Text fields are raw; escaping happens on output.
#[derive(Debug, Clone, Serialize)]
pub struct PromptContext {
    #[serde(flatten)]
    pub view: PromptView,
    pub expires_at_text: String,
    pub expires_in: String,
    pub expires_unix: i64,
    pub decisions: Vec<String>,
    pub outcome_title: Option<String>,
    pub approvers: Vec<String>,
    pub delivered_count: usize,
}

impl PromptContext {
    /// Made-up data for `approvald render` and for checking templates at load.
    pub fn sample() -> Self {
        let now = chrono::Utc::now();
        let expires = now + chrono::Duration::minutes(5);
        Self {
            view: PromptView {
                approval_id: "0b9c4d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e".into(),
                short_id: "0b9c4d2e".into(),
                tool: "shell".into(),
                summary: Some("Clean the build directory <before> release & tag".into()),
                command: Some("rm -rf ./build && echo \"<done>\" > /tmp/log_*".into()),
                args: None,
                risk: "high".into(),
                requester: Some("alice (telegram:5678)".into()),
                agent_id: Some("release-bot".into()),
                session_key: Some("agent:release-bot:main".into()),
                created_at: now,
                expires_at: expires,
                status: "approved".into(),
                progress: Some("1 of 2 approvals: bob".into()),
                decided_by: Some("Bob via telegram".into()),
                reason: Some("looks fine".into()),
                execution: Some("completed in 4.0 s, cost $0.0087".into()),
            },
            expires_at_text: expires.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            expires_in: "in 5m 0s".into(),
            expires_unix: expires.timestamp(),
            decisions: vec![
                "approve-once".into(),
                "approve-always".into(),
                "deny".into(),
            ],
            outcome_title: Some("Approved (once)".into()),
            approvers: vec!["Bob via telegram".into()],
            delivered_count: 2,
        }
    }
}

/// The compiled template set, one environment per markup.
pub struct Templates {
    envs: HashMap<Markup, Environment<'static>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

impl Templates {
    /// The bundled templates, each replaced by `dir/<name>.j2` when that file exists. Every
    /// template is compiled and rendered with sample data for every markup, so an error is
    /// reported now rather than at the first request.
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut sources = Vec::new();
        for kind in TemplateKind::ALL {
            let custom = dir
                .map(|d| d.join(kind.file_name()))
                .filter(|p| p.is_file());
            let (name, source) = match custom {
                Some(path) => (
                    path.display().to_string(),
                    std::fs::read_to_string(&path).map_err(|e| TemplateError {
                        file: path.display().to_string(),
                        markup: "any",
                        message: e.to_string(),
                    })?,
                ),
                None => (
                    format!("bundled {}", kind.file_name()),
                    kind.bundled().to_string(),
                ),
            };
            sources.push((kind, name, source));
        }
        let mut envs = HashMap::new();
        for markup in Markup::ALL {
            let mut env = environment(markup);
            for (kind, name, source) in &sources {
                env.add_template_owned(kind.file_name(), source.clone())
                    .map_err(|e| TemplateError {
                        file: name.clone(),
                        markup: markup.as_str(),
                        message: describe(&e),
                    })?;
            }
            envs.insert(markup, env);
        }
        let templates = Self { envs };
        let sample = PromptContext::sample();
        for markup in Markup::ALL {
            for (kind, name, _) in &sources {
                templates.render(markup, *kind, &sample).map_err(|mut e| {
                    e.file = name.clone();
                    e
                })?;
            }
        }
        Ok(templates)
    }

    pub fn render(
        &self,
        markup: Markup,
        kind: TemplateKind,
        ctx: &PromptContext,
    ) -> Result<String, TemplateError> {
        let err = |e: Error| TemplateError {
            file: kind.file_name().to_string(),
            markup: markup.as_str(),
            message: describe(&e),
        };
        let env = self.envs.get(&markup).ok_or_else(|| TemplateError {
            file: kind.file_name().into(),
            markup: markup.as_str(),
            message: "no environment for this markup".into(),
        })?;
        let text = env
            .get_template(kind.file_name())
            .map_err(err)?
            .render(Value::from(Serde(ctx)))
            .map_err(err)?;
        Ok(text.trim_end().to_string())
    }
}

fn describe(e: &Error) -> String {
    match e.line() {
        Some(line) => format!("{} (line {line})", e),
        None => e.to_string(),
    }
}

fn environment(markup: Markup) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(move |out, _state, value| {
        let text = if value.is_none() || value.is_undefined() {
            String::new()
        } else {
            value.to_string()
        };
        if value.is_safe() {
            out.write_str(&text).map_err(Error::from)
        } else {
            out.write_str(&escape(markup, &text)).map_err(Error::from)
        }
    });
    env.add_filter("truncate_safe", truncate_safe);
    env.add_filter("bold", move |v: Value| -> Value {
        Value::from_safe_string(bold(markup, &plain(&v)))
    });
    env.add_filter("code", move |v: Value| -> Value {
        Value::from_safe_string(code(markup, &plain(&v)))
    });
    env.add_filter("code_block", move |v: Value| -> Value {
        Value::from_safe_string(code_block(markup, &plain(&v)))
    });
    env
}

fn plain(v: &Value) -> String {
    if v.is_none() || v.is_undefined() {
        String::new()
    } else {
        v.to_string()
    }
}

/// Cut raw text to at most `max` characters on a character boundary, marking the cut.
fn truncate_safe(v: Value, max: Option<usize>) -> Result<Value, Error> {
    if v.is_safe() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "truncate_safe must come before bold/code/code_block (it cuts raw text)",
        ));
    }
    let s = plain(&v);
    Ok(Value::from(truncate_chars(&s, max.unwrap_or(1000))))
}

/// Cut `s` to at most `max` characters (never inside a character), with a note of what was cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s.to_string();
    }
    let keep: String = s.chars().take(max).collect();
    format!("{keep}… [{} more characters]", count - max)
}

/// Escape untrusted text for a markup.
pub fn escape(markup: Markup, s: &str) -> String {
    match markup {
        Markup::Plain => s.to_string(),
        Markup::TelegramHtml => s
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;"),
        // Slack mrkdwn can only escape these three, as entities.
        Markup::SlackMrkdwn => s
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
        Markup::DiscordMarkdown => approvald_channel::text::escape_discord_markdown(s),
    }
}

fn bold(markup: Markup, s: &str) -> String {
    let inner = escape(markup, s);
    match markup {
        Markup::Plain => s.to_string(),
        Markup::TelegramHtml => format!("<b>{inner}</b>"),
        Markup::DiscordMarkdown => format!("**{inner}**"),
        Markup::SlackMrkdwn => format!("*{inner}*"),
    }
}

fn code(markup: Markup, s: &str) -> String {
    match markup {
        Markup::Plain => s.to_string(),
        Markup::TelegramHtml => format!("<code>{}</code>", escape(markup, s)),
        Markup::DiscordMarkdown | Markup::SlackMrkdwn => {
            // Inside backticks nothing is interpreted except the backtick itself.
            let inner = s.replace('`', "'");
            let inner = if markup == Markup::SlackMrkdwn {
                escape(markup, &inner)
            } else {
                inner
            };
            format!("`{inner}`")
        }
    }
}

fn code_block(markup: Markup, s: &str) -> String {
    match markup {
        Markup::Plain => s
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        Markup::TelegramHtml => format!("<pre>{}</pre>", escape(markup, s)),
        Markup::DiscordMarkdown => {
            // A fence inside the text would end the block early: break it with a zero-width space.
            format!("```\n{}\n```", approvald_channel::text::break_fences(s))
        }
        Markup::SlackMrkdwn => {
            format!(
                "```{}```",
                escape(markup, &approvald_channel::text::break_fences(s))
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile() -> PromptContext {
        let mut ctx = PromptContext::sample();
        ctx.view.command = Some("echo '<b>x</b>' && @everyone ```break``` *bold* & done".into());
        ctx.view.summary = Some("<script>alert(1)</script> & _under_".into());
        ctx
    }

    #[test]
    fn bundled_templates_render_for_every_markup() {
        let t = Templates::load(None).unwrap();
        for m in Markup::ALL {
            for k in TemplateKind::ALL {
                let text = t.render(m, k, &PromptContext::sample()).unwrap();
                assert!(text.contains("shell"), "{m:?} {k:?}: {text}");
            }
        }
    }

    #[test]
    fn telegram_html_escapes_untrusted_text_and_keeps_its_own_tags() {
        let t = Templates::load(None).unwrap();
        let text = t
            .render(Markup::TelegramHtml, TemplateKind::Request, &hostile())
            .unwrap();
        assert!(text.contains("<b>Approval required</b>"), "{text}");
        assert!(
            text.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; _under_"),
            "{text}"
        );
        assert!(
            text.contains("<pre>echo '&lt;b&gt;x&lt;/b&gt;' &amp;&amp;"),
            "{text}"
        );
        assert!(!text.contains("<script>"), "{text}");
    }

    #[test]
    fn discord_escapes_markdown_and_breaks_pings_and_fences() {
        let t = Templates::load(None).unwrap();
        let text = t
            .render(Markup::DiscordMarkdown, TemplateKind::Request, &hostile())
            .unwrap();
        assert!(text.contains("\\_under\\_"), "{text}");
        // The command sits in a code block whose inner fence is broken.
        let z = "`\u{200B}";
        assert!(text.contains(&format!("{z}{z}{z}break{z}{z}{z}")), "{text}");
        assert!(!text.contains("@everyone ```"), "{text}");
    }

    #[test]
    fn slack_escapes_only_entities() {
        let t = Templates::load(None).unwrap();
        let text = t
            .render(Markup::SlackMrkdwn, TemplateKind::Request, &hostile())
            .unwrap();
        assert!(
            text.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; _under_"),
            "{text}"
        );
        assert!(text.contains("*Approval required*"), "{text}");
    }

    #[test]
    fn truncation_never_cuts_an_entity() {
        let t = Templates::load(None).unwrap();
        let mut ctx = PromptContext::sample();
        ctx.view.command = Some("&".repeat(5000));
        let text = t
            .render(Markup::TelegramHtml, TemplateKind::Request, &ctx)
            .unwrap();
        assert!(text.contains("[3500 more characters]"), "{text}");
        let inside = text
            .split("<pre>")
            .nth(1)
            .unwrap()
            .split("</pre>")
            .next()
            .unwrap();
        let stripped = inside.split('…').next().unwrap();
        assert_eq!(stripped, "&amp;".repeat(1500));
    }

    #[test]
    fn custom_template_dir_overrides_and_errors_are_reported_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("request.j2"),
            "Please decide on {{ tool | bold }}",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let text = t
            .render(
                Markup::TelegramHtml,
                TemplateKind::Request,
                &PromptContext::sample(),
            )
            .unwrap();
        assert_eq!(text, "Please decide on <b>shell</b>");

        std::fs::write(dir.path().join("expired.j2"), "{% if %}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert!(err.file.ends_with("expired.j2"), "{err}");

        std::fs::write(dir.path().join("expired.j2"), "{{ no_such_field }}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
    }
}
