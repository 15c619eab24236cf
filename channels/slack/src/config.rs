//! The `[channels.NAME]` settings of a Slack channel, read from the table approvald's config
//! hands over (`${ENV}` already expanded). Every problem names the key, and unknown keys are
//! refused, so a typo in `signing_secret` stops the service instead of leaving webhooks open.

use std::fmt;
use std::time::Duration;

use url::Url;

/// Slack's Web API, used unless `api_url` says otherwise (tests point it at a fake).
pub const DEFAULT_API_URL: &str = "https://slack.com/api";

/// The seed project's incoming-webhook variable, honoured when `webhook_url` is not set.
pub const WEBHOOK_ENV: &str = "APPROVAL_SLACK_WEBHOOK_URL";

/// The `to` of a target that means "the incoming webhook" (notices only).
pub const WEBHOOK_TARGET: &str = "webhook";

/// Keys this channel reads; anything else in the table is a typo.
const KNOWN_KEYS: &[&str] = &[
    "kind",
    "enabled",
    "bot_token",
    "signing_secret",
    "app_token",
    "api_url",
    "receive",
    "webhook_url",
    "path",
    "per_channel_interval_ms",
    "global_interval_ms",
    "max_retries",
    "backoff_base_ms",
    "backoff_max_ms",
    "max_retry_after_ms",
    "request_timeout_ms",
];

/// How button presses and slash commands reach approvald.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveMode {
    /// Slack POSTs signed requests to `/slack/interactions` and `/slack/commands`.
    EventsApi,
    /// approvald opens a WebSocket to Slack with an app-level token (no public URL needed).
    SocketMode,
}

/// Sending pace: Slack allows about one message a second per conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    pub per_channel: Duration,
    pub global: Duration,
}

/// Bounded retries for 429, 5xx and network errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A 429 asking to wait longer than this is not waited for: the call fails instead.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// Exponential backoff for the given retry (0-based), capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// The parsed settings. Secrets are kept as plain strings here but never printed: `Debug`
/// shows `***`.
#[derive(Clone)]
pub struct SlackSettings {
    pub name: String,
    pub bot_token: Option<String>,
    pub signing_secret: Option<String>,
    pub app_token: Option<String>,
    pub api_url: Url,
    pub receive: ReceiveMode,
    pub webhook_url: Option<Url>,
    /// Where the webhook routes live on approvald's listener (`/slack` by default).
    pub path: String,
    pub pacing: Pacing,
    pub retry: RetryPolicy,
    /// One HTTP call's time limit: Slack (or a proxy) that accepts a request and never
    /// answers must not hold a prompt forever. A call that runs out is retried like a
    /// network error.
    pub request_timeout: Duration,
}

impl fmt::Debug for SlackSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("SlackSettings")
            .field("name", &self.name)
            .field("bot_token", &hidden(&self.bot_token))
            .field("signing_secret", &hidden(&self.signing_secret))
            .field("app_token", &hidden(&self.app_token))
            .field("api_url", &self.api_url.as_str())
            .field("receive", &self.receive)
            .field("webhook_url", &self.webhook_url.as_ref().map(|_| "***"))
            .field("path", &self.path)
            .field("pacing", &self.pacing)
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A bad or missing setting, naming the key (`config error at channels.slack.bot_token: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error at channels.{channel}.{key}: {problem}")]
pub struct SettingsError {
    pub channel: String,
    pub key: String,
    pub problem: String,
}

impl SlackSettings {
    /// Read the settings of channel `name`; `env` looks up [`WEBHOOK_ENV`] (injected so tests
    /// need not touch the process environment).
    pub fn from_table(
        name: &str,
        table: &toml::Table,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let err = |key: &str, problem: String| SettingsError {
            channel: name.to_string(),
            key: key.to_string(),
            problem,
        };
        for key in table.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                return Err(err(
                    key,
                    format!(
                        "unknown key for a Slack channel (known: {})",
                        KNOWN_KEYS.join(", ")
                    ),
                ));
            }
        }
        let string = |key: &str| -> Result<Option<String>, SettingsError> {
            match table.get(key) {
                None => Ok(None),
                // `${VAR:-}` expands to "": treat as not set.
                Some(toml::Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.trim().to_string())),
                Some(_) => Err(err(key, "expected a string".into())),
            }
        };
        let millis = |key: &str, default: u64| -> Result<Duration, SettingsError> {
            match table.get(key) {
                None => Ok(Duration::from_millis(default)),
                Some(toml::Value::Integer(n)) if *n >= 0 => Ok(Duration::from_millis(*n as u64)),
                Some(_) => Err(err(
                    key,
                    "expected a whole number of milliseconds (0 or more)".into(),
                )),
            }
        };
        let url = |key: &str, value: &str| -> Result<Url, SettingsError> {
            let parsed = Url::parse(value).map_err(|e| err(key, format!("not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(err(key, "must be an http:// or https:// URL".into()));
            }
            Ok(parsed)
        };

        let receive = match string("receive")?.as_deref() {
            None | Some("events_api") => ReceiveMode::EventsApi,
            Some("socket_mode") => ReceiveMode::SocketMode,
            Some(other) => {
                return Err(err(
                    "receive",
                    format!("unknown mode {other:?}: use \"events_api\" or \"socket_mode\""),
                ));
            }
        };
        let bot_token = string("bot_token")?;
        let signing_secret = string("signing_secret")?;
        let app_token = string("app_token")?;
        // The webhook URL is a secret too (its path is the credential): never shown.
        let webhook_url = match string("webhook_url")?
            .or_else(|| env(WEBHOOK_ENV).filter(|v| !v.trim().is_empty()))
        {
            Some(u) => Some(url("webhook_url", u.trim()).map_err(|mut e| {
                e.problem = "not a valid http(s) URL (value hidden: it is a secret)".into();
                e
            })?),
            None => None,
        };

        match (&bot_token, &webhook_url) {
            (None, None) => {
                return Err(err(
                    "bot_token",
                    format!(
                        "is required: the bot user OAuth token (xoxb-...) from your Slack app; or set only webhook_url / {WEBHOOK_ENV} for a notification-only channel"
                    ),
                ));
            }
            (Some(t), _) if !t.starts_with("xox") => {
                return Err(err(
                    "bot_token",
                    "does not look like a Slack token (expected xoxb-...; value hidden)".into(),
                ));
            }
            _ => {}
        }
        if bot_token.is_some() {
            match receive {
                ReceiveMode::EventsApi if signing_secret.is_none() => {
                    return Err(err(
                        "signing_secret",
                        "is required with receive = \"events_api\": the signing secret from your Slack app's Basic Information page (it proves requests come from Slack)".into(),
                    ));
                }
                ReceiveMode::SocketMode => match &app_token {
                    None => {
                        return Err(err(
                            "app_token",
                            "is required with receive = \"socket_mode\": an app-level token (xapp-...) with the connections:write scope".into(),
                        ));
                    }
                    Some(t) if !t.starts_with("xapp-") => {
                        return Err(err(
                            "app_token",
                            "must be an app-level token (xapp-...; value hidden)".into(),
                        ));
                    }
                    Some(_) => {}
                },
                _ => {}
            }
        }

        let api_url = url(
            "api_url",
            string("api_url")?
                .as_deref()
                .unwrap_or(DEFAULT_API_URL)
                .trim_end_matches('/'),
        )?;
        let path = match string("path")? {
            Some(p) if p.starts_with('/') && p.len() > 1 => p.trim_end_matches('/').to_string(),
            Some(_) => return Err(err("path", "must start with / (e.g. \"/slack\")".into())),
            // Two Slack workspaces on one approvald must not share a route.
            None if name == "slack" => "/slack".to_string(),
            None => format!("/slack/{name}"),
        };
        let max_retries = match table.get("max_retries") {
            None => 4,
            Some(toml::Value::Integer(n)) if (0..=20).contains(n) => *n as u32,
            Some(_) => return Err(err("max_retries", "expected a number from 0 to 20".into())),
        };
        let request_timeout = millis("request_timeout_ms", 10_000)?;
        if request_timeout.is_zero() {
            return Err(err(
                "request_timeout_ms",
                "must be at least 1 millisecond".into(),
            ));
        }
        Ok(Self {
            name: name.to_string(),
            bot_token,
            signing_secret,
            app_token,
            api_url,
            receive,
            webhook_url,
            path,
            pacing: Pacing {
                per_channel: millis("per_channel_interval_ms", 1000)?,
                global: millis("global_interval_ms", 20)?,
            },
            retry: RetryPolicy {
                max_retries,
                backoff_base: millis("backoff_base_ms", 500)?,
                backoff_max: millis("backoff_max_ms", 8000)?,
                max_retry_after: millis("max_retry_after_ms", 30_000)?,
            },
            request_timeout,
        })
    }

    /// Secret strings that must never appear in an error, log line or health output.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = [&self.bot_token, &self.signing_secret, &self.app_token]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if let Some(u) = &self.webhook_url {
            out.push(u.as_str().to_string());
            // Slack's webhook path (/services/T../B../secret) is the credential itself.
            if u.path().len() > 1 {
                out.push(u.path().to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_and_required_secrets_name_the_key() {
        let s = SlackSettings::from_table(
            "slack",
            &table("bot_token = 'xoxb-1'\nsigning_secret = 'sec'\n"),
            &no_env,
        )
        .unwrap();
        assert_eq!(s.api_url.as_str(), "https://slack.com/api");
        assert_eq!(s.receive, ReceiveMode::EventsApi);
        assert_eq!(s.path, "/slack");
        assert_eq!(s.pacing.per_channel, Duration::from_secs(1));
        assert_eq!(s.request_timeout, Duration::from_secs(10));
        assert!(!format!("{s:?}").contains("xoxb-1"));

        let e = SlackSettings::from_table("slack", &table(""), &no_env).unwrap_err();
        assert_eq!(e.key, "bot_token");
        let e = SlackSettings::from_table("slack", &table("bot_token = 'xoxb-1'"), &no_env)
            .unwrap_err();
        assert_eq!(e.key, "signing_secret");
        assert!(
            e.to_string()
                .starts_with("config error at channels.slack.signing_secret")
        );
        let e = SlackSettings::from_table(
            "slack",
            &table("bot_token = 'xoxb-1'\nreceive = 'socket_mode'"),
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.key, "app_token");
        let e = SlackSettings::from_table(
            "slack",
            &table("bot_token = 'xoxb-1'\nsigning_secret = 's'\nsigining_secret = 'x'"),
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.key, "sigining_secret");
        let e = SlackSettings::from_table(
            "slack",
            &table("bot_token = 'xoxb-1'\nsigning_secret = 's'\nreceive = 'rtm'"),
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.key, "receive");
        let e = SlackSettings::from_table(
            "slack",
            &table("bot_token = 'xoxb-1'\nsigning_secret = 's'\nrequest_timeout_ms = 0"),
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.key, "request_timeout_ms");
    }

    #[test]
    fn webhook_url_from_the_seed_variable_makes_a_notification_only_channel() {
        let env = |k: &str| {
            (k == WEBHOOK_ENV).then(|| "https://hooks.slack.com/services/T1/B1/sekrit".to_string())
        };
        let s = SlackSettings::from_table("ops-slack", &table(""), &env).unwrap();
        assert!(s.bot_token.is_none());
        assert_eq!(s.path, "/slack/ops-slack");
        assert!(s.secrets().iter().any(|x| x.contains("sekrit")));
        let e = SlackSettings::from_table("slack", &table("webhook_url = 'nope'"), &no_env)
            .unwrap_err();
        assert_eq!(e.key, "webhook_url");
        assert!(!e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = RetryPolicy {
            max_retries: 4,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(1),
        };
        assert_eq!(r.backoff(0), Duration::from_millis(100));
        assert_eq!(r.backoff(2), Duration::from_millis(400));
        assert_eq!(r.backoff(3), Duration::from_millis(500));
        assert_eq!(r.backoff(40), Duration::from_millis(500));
    }
}
