//! The `[channels.NAME]` settings of a Telegram channel, checked at load.
//!
//! approvald stops at start on a bad config rather than failing at the first prompt, so every
//! problem names the key (`channels.telegram.bot_token`). The token itself is never echoed.

use std::fmt;
use std::time::Duration;

use reqwest::Url;

/// The public Bot API; tests and local Bot API servers point `api_url` elsewhere.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";

/// Every key this channel reads. Anything else in the table is a typo and refused.
const KNOWN_KEYS: &[&str] = &[
    "enabled",
    "kind",
    "bot_token",
    "api_url",
    "receive",
    "webhook_secret",
    "webhook_url",
    "poll_timeout_secs",
    "chat_interval_ms",
    "global_per_second",
    "retry_base_ms",
    "max_retries",
    "max_retry_after_secs",
    "request_timeout_secs",
];

/// A config problem, worded like the rest of approvald's (`config error at KEY: problem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error at {}: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// How updates (presses, commands) reach approvald.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveMode {
    /// `getUpdates` long polling: works behind NAT, no public URL. One poller per bot token.
    Polling,
    /// Telegram POSTs to `/telegram/<name>/webhook` on approvald's own listener.
    Webhook,
}

/// The bot token. Kept out of `Debug` so it cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct BotToken(String);

impl BotToken {
    /// The value, for the request URL and for redaction. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The parsed settings, with production defaults for pacing and retries.
#[derive(Debug, Clone)]
pub struct TelegramSettings {
    pub bot_token: BotToken,
    /// Base URL of the Bot API, without a trailing slash.
    pub api_url: Url,
    pub receive: ReceiveMode,
    /// Compared with `X-Telegram-Bot-Api-Secret-Token` on every webhook call.
    pub webhook_secret: Option<String>,
    /// The public URL registered with `setWebhook` at start (webhook mode).
    pub webhook_url: Option<Url>,
    /// Long-poll timeout passed to `getUpdates`.
    pub poll_timeout: Duration,
    /// Minimum gap between two messages (sends and edits) to one chat. Telegram: about 1/s.
    pub chat_interval: Duration,
    /// Minimum gap between any two messages of this bot. Telegram: about 30/s.
    pub global_interval: Duration,
    /// First backoff step for 5xx and network errors; doubles per attempt.
    pub retry_base: Duration,
    /// Retries after the first attempt for 5xx / network errors (and for 429s).
    pub max_retries: u32,
    /// A 429 asking to wait longer than this fails the call (as retryable) instead of waiting.
    pub max_retry_after: Duration,
    /// Timeout of one API call (getUpdates adds its long-poll timeout to it).
    pub request_timeout: Duration,
}

impl TelegramSettings {
    /// Read `[channels.<name>]` (everything but `approvers` / `approver_roles` / `targets`,
    /// which approvald keeps for itself).
    pub fn from_table(name: &str, table: &toml::Table) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("channels.{name}.{k}");
        let err = |k: &str, problem: String| ConfigError {
            key: key(k),
            problem,
        };
        for k in table.keys() {
            if !KNOWN_KEYS.contains(&k.as_str()) {
                return Err(err(
                    k,
                    format!(
                        "unknown key for a telegram channel (known: approvers, targets, {})",
                        KNOWN_KEYS.join(", ")
                    ),
                ));
            }
        }
        let string = |k: &str| -> Result<Option<String>, ConfigError> {
            match table.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.trim().to_string())),
                Some(other) => Err(err(
                    k,
                    format!("expected a string, found {}", other.type_str()),
                )),
            }
        };
        let number = |k: &str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
            match table.get(k) {
                None => Ok(default),
                Some(toml::Value::Integer(n)) if *n >= min as i64 && *n <= max as i64 => {
                    Ok(*n as u64)
                }
                Some(toml::Value::Integer(n)) => {
                    Err(err(k, format!("{n} is out of range ({min}..={max})")))
                }
                Some(other) => Err(err(
                    k,
                    format!("expected a whole number, found {}", other.type_str()),
                )),
            }
        };

        let bot_token = match string("bot_token")? {
            Some(t) if !t.is_empty() => t,
            _ => {
                return Err(err(
                    "bot_token",
                    "missing: set the token @BotFather gave your bot, e.g. bot_token = \"${TELEGRAM_BOT_TOKEN}\"".into(),
                ));
            }
        };
        // The token goes into the URL path: anything beyond Telegram's alphabet is a paste error.
        if !bot_token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
        {
            return Err(err(
                "bot_token",
                "does not look like a Telegram bot token (expected digits, ':' and letters; value not shown)".into(),
            ));
        }

        let api_url_text = string("api_url")?.unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let api_url = Url::parse(api_url_text.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                err(
                    "api_url",
                    format!("{api_url_text:?} is not an http(s) URL (default {DEFAULT_API_URL})"),
                )
            })?;

        let receive = match string("receive")?.as_deref() {
            None | Some("polling") => ReceiveMode::Polling,
            Some("webhook") => ReceiveMode::Webhook,
            Some(other) => {
                return Err(err(
                    "receive",
                    format!("{other:?}: use \"polling\" or \"webhook\""),
                ));
            }
        };

        let webhook_secret = string("webhook_secret")?.filter(|s| !s.is_empty());
        if let Some(secret) = &webhook_secret
            && (secret.len() > 256
                || !secret
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
        {
            return Err(err(
                "webhook_secret",
                "Telegram accepts 1-256 characters of A-Z, a-z, 0-9, _ and - (value not shown)"
                    .into(),
            ));
        }
        let webhook_url = match string("webhook_url")?.filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => Some(
                Url::parse(&text)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| err("webhook_url", format!("{text:?} is not an http(s) URL")))?,
            ),
        };
        if receive == ReceiveMode::Webhook {
            if webhook_secret.is_none() {
                return Err(err(
                    "webhook_secret",
                    "required with receive = \"webhook\": Telegram sends it in X-Telegram-Bot-Api-Secret-Token and approvald refuses calls without it".into(),
                ));
            }
            // The name is part of the route `/telegram/<name>/webhook`.
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            {
                return Err(ConfigError {
                    key: format!("channels.{name}"),
                    problem: "a webhook channel's name may use only A-Z, a-z, 0-9, _ and - (it is part of the webhook path)".into(),
                });
            }
        }

        let global_per_second = number("global_per_second", 30, 1, 1000)?;
        Ok(Self {
            bot_token: BotToken(bot_token),
            api_url,
            receive,
            webhook_secret,
            webhook_url,
            poll_timeout: Duration::from_secs(number("poll_timeout_secs", 30, 0, 300)?),
            chat_interval: Duration::from_millis(number("chat_interval_ms", 1000, 0, 60_000)?),
            // 3 % slower than the limit: sends spaced exactly at it put one too many in some
            // one-second window once the network jitters, and earn a 429.
            global_interval: Duration::from_micros(1_030_000 / global_per_second),
            retry_base: Duration::from_millis(number("retry_base_ms", 500, 1, 60_000)?),
            max_retries: number("max_retries", 4, 0, 20)? as u32,
            max_retry_after: Duration::from_secs(number("max_retry_after_secs", 30, 0, 3600)?),
            request_timeout: Duration::from_secs(number("request_timeout_secs", 20, 1, 600)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_are_the_production_ones() {
        let s = TelegramSettings::from_table("telegram", &table("bot_token = '123:abc'")).unwrap();
        assert_eq!(s.api_url.as_str(), "https://api.telegram.org/");
        assert_eq!(s.receive, ReceiveMode::Polling);
        assert_eq!(s.chat_interval, Duration::from_secs(1));
        assert_eq!(s.global_interval, Duration::from_micros(34_333));
        assert_eq!(s.poll_timeout, Duration::from_secs(30));
        assert_eq!(format!("{:?}", s.bot_token), "***");
    }

    #[test]
    fn errors_name_the_key_and_never_show_the_token() {
        let e = TelegramSettings::from_table("ops-bot", &table("kind = 'telegram'")).unwrap_err();
        assert_eq!(e.key, "channels.ops-bot.bot_token");

        let e = TelegramSettings::from_table("t", &table("bot_token = '12 3/secretvalue'"))
            .unwrap_err();
        assert_eq!(e.key, "channels.t.bot_token");
        assert!(!e.to_string().contains("secretvalue"), "{e}");

        let e = TelegramSettings::from_table("t", &table("bot_token = '1:a'\nreceive = 'webhook'"))
            .unwrap_err();
        assert_eq!(e.key, "channels.t.webhook_secret");

        let e = TelegramSettings::from_table("t", &table("bot_token = '1:a'\nrecieve = 'x'"))
            .unwrap_err();
        assert_eq!(e.key, "channels.t.recieve");

        let e = TelegramSettings::from_table("t", &table("bot_token = '1:a'\nreceive = 'push'"))
            .unwrap_err();
        assert_eq!(e.key, "channels.t.receive");

        let e = TelegramSettings::from_table("t", &table("bot_token = '1:a'\napi_url = 'ftp://x'"))
            .unwrap_err();
        assert_eq!(e.key, "channels.t.api_url");

        let e = TelegramSettings::from_table("t", &table("bot_token = '1:a'\nmax_retries = 'x'"))
            .unwrap_err();
        assert_eq!(e.key, "channels.t.max_retries");
    }
}
