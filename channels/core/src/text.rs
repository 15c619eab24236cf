//! Escaping of untrusted text shared by the prompt templates (root crate) and the platform
//! crates that render outside them, so a fix to one applies to every surface.

/// Backslash-escape Discord markdown in untrusted text, and break `@` so nothing reads as a
/// mention even where `allowed_mentions` does not apply.
pub fn escape_discord_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '*'
                | '_'
                | '~'
                | '`'
                | '|'
                | '>'
                | '#'
                | '['
                | ']'
                | '('
                | ')'
                | '-'
                | ':'
                | '<'
        ) {
            out.push('\\');
        }
        out.push(c);
        if c == '@' {
            out.push('\u{200B}');
        }
    }
    out
}

/// Text that can sit inside a code block without closing it: a zero-width space after every
/// backtick, so no run of them (three, or four and more) forms a fence.
pub fn break_fences(s: &str) -> String {
    s.replace('`', "`\u{200B}")
}
