//! `[channels.NAME]` settings for a Discord channel, read and checked once at start.
//!
//! Every mistake is reported with the full key (`channels.discord.public_key`), so a typo or a
//! missing secret stops the service at load instead of failing at the first button press.

use std::fmt;
use std::time::Duration;

use serenity::interactions_endpoint::Verifier;

/// The public Discord API; tests point `api_url` at a fake instead.
pub const DEFAULT_API_URL: &str = "https://discord.com";
/// Where Discord posts interactions when `receive = "interactions_endpoint"`, for the channel
/// named `discord`; others get `/discord/<name>/interactions` so two bots never collide.
pub const DEFAULT_INTERACTIONS_PATH: &str = "/discord/interactions";

/// A setting that is missing, malformed or unknown, naming the full key.
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

/// How interactions (button presses, slash commands) reach approvald.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveMode {
    /// Discord POSTs signed interactions to approvald's own HTTP server.
    InteractionsEndpoint,
    /// approvald keeps a gateway websocket open (serenity's client), for installs without a
    /// public URL.
    Gateway,
}

/// Request pacing and retry knobs. Production defaults follow Discord's documented limits;
/// tests make them small so a retry takes milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct PacingSettings {
    /// Requests per second across the whole bot (Discord's global limit is 50).
    pub global_per_second: u32,
    /// First backoff after a 5xx or network error; doubled per attempt.
    pub retry_base: Duration,
    /// Longest single backoff.
    pub retry_max: Duration,
    /// Retries after the first attempt (429s, 5xx and network errors all count).
    pub max_retries: u32,
    /// A 429 asking to wait longer than this fails the call instead of blocking it.
    pub max_retry_after: Duration,
    /// One HTTP request's time limit.
    pub request_timeout: Duration,
}

impl Default for PacingSettings {
    fn default() -> Self {
        Self {
            global_per_second: 50,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(8),
            max_retries: 5,
            max_retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct BotToken(String);

impl BotToken {
    /// The raw value, for the Authorization header and for redaction. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Everything a Discord channel needs, validated.
#[derive(Clone)]
pub struct DiscordSettings {
    pub bot_token: BotToken,
    pub application_id: u64,
    /// Checks interaction signatures; required for the interactions endpoint.
    pub verifier: Option<Verifier>,
    pub api_url: String,
    pub receive: ReceiveMode,
    pub interactions_path: String,
    /// Also DM every user id in the channel's `approvers`.
    pub dm_approvers: bool,
    /// The channel's `approvers` (user ids), for `dm_approvers`.
    pub approvers: Vec<String>,
    /// Register slash commands in this guild (instant) instead of globally.
    pub commands_guild_id: Option<u64>,
    pub register_commands: bool,
    /// How long a button answer waits for the engine's edit of the pressed message, so the
    /// press answers with the final layout in one edit instead of two.
    pub interaction_wait: Duration,
    /// How far a signed timestamp may be from now.
    pub signature_max_age: Duration,
    pub pacing: PacingSettings,
}

impl fmt::Debug for DiscordSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscordSettings")
            .field("bot_token", &self.bot_token)
            .field("application_id", &self.application_id)
            .field("api_url", &self.api_url)
            .field("receive", &self.receive)
            .field("dm_approvers", &self.dm_approvers)
            .field("commands_guild_id", &self.commands_guild_id)
            .field("pacing", &self.pacing)
            .finish_non_exhaustive()
    }
}

/// Keys a `[channels.NAME]` table of kind discord may hold besides the shared ones
/// (`approvers`, `approver_roles`, `targets`), which approvald reads itself.
const KNOWN_KEYS: &[&str] = &[
    "enabled",
    "kind",
    "bot_token",
    "application_id",
    "public_key",
    "api_url",
    "receive",
    "interactions_path",
    "dm_approvers",
    "commands_guild_id",
    "register_commands",
    "interaction_wait_ms",
    "signature_max_age_s",
    "global_per_second",
    "retry_base_ms",
    "retry_max_ms",
    "max_retries",
    "max_retry_after_ms",
    "request_timeout_ms",
];

impl DiscordSettings {
    /// Read `[channels.<name>]`: `settings` are its platform keys, `approvers` its user ids.
    pub fn from_table(
        name: &str,
        settings: &toml::Table,
        approvers: &[String],
    ) -> Result<Self, ConfigError> {
        let r = Reader { name, settings };
        for key in settings.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                return Err(r.err(
                    key,
                    format!("unknown key (known: {})", KNOWN_KEYS.join(", ")),
                ));
            }
        }
        let bot_token = r.required_str("bot_token")?;
        let application_id = r.required_snowflake("application_id")?;
        let receive = match r.optional_str("receive")?.as_deref() {
            None | Some("interactions_endpoint") => ReceiveMode::InteractionsEndpoint,
            Some("gateway") => ReceiveMode::Gateway,
            Some(other) => {
                return Err(r.err(
                    "receive",
                    format!("{other:?} is not a receive mode: use \"interactions_endpoint\" or \"gateway\""),
                ));
            }
        };
        let verifier = match r.optional_str("public_key")? {
            Some(hex) => Some(parse_public_key(&hex).map_err(|p| r.err("public_key", p))?),
            None if receive == ReceiveMode::InteractionsEndpoint => {
                return Err(r.err(
                    "public_key",
                    "is required with receive = \"interactions_endpoint\" (the application's public key from the Discord developer portal, 64 hex characters)",
                ));
            }
            None => None,
        };
        let api_url = r
            .optional_str("api_url")?
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(r.err(
                "api_url",
                "must start with https:// (or http:// for a local fake)",
            ));
        }
        let interactions_path = r.optional_str("interactions_path")?.unwrap_or_else(|| {
            if name == "discord" {
                DEFAULT_INTERACTIONS_PATH.to_string()
            } else {
                format!("/discord/{name}/interactions")
            }
        });
        if !interactions_path.starts_with('/') || interactions_path.contains(['{', '}', '*']) {
            return Err(r.err("interactions_path", "must be a plain path starting with /"));
        }
        let dm_approvers = r.optional_bool("dm_approvers")?.unwrap_or(false);
        if dm_approvers {
            for (i, id) in approvers.iter().enumerate() {
                if parse_snowflake(id).is_none() {
                    return Err(r.err(
                        &format!("approvers[{i}]"),
                        format!("{id:?} is not a Discord user id (dm_approvers needs numeric ids)"),
                    ));
                }
            }
        }
        let defaults = PacingSettings::default();
        let pacing = PacingSettings {
            global_per_second: r
                .optional_u64("global_per_second")?
                .map(|n| n.clamp(1, 1000) as u32)
                .unwrap_or(defaults.global_per_second),
            retry_base: r
                .optional_ms("retry_base_ms")?
                .unwrap_or(defaults.retry_base),
            retry_max: r.optional_ms("retry_max_ms")?.unwrap_or(defaults.retry_max),
            max_retries: r
                .optional_u64("max_retries")?
                .map(|n| n.min(20) as u32)
                .unwrap_or(defaults.max_retries),
            max_retry_after: r
                .optional_ms("max_retry_after_ms")?
                .unwrap_or(defaults.max_retry_after),
            request_timeout: r
                .optional_ms("request_timeout_ms")?
                .filter(|d| !d.is_zero())
                .unwrap_or(defaults.request_timeout),
        };
        Ok(Self {
            bot_token: BotToken(bot_token),
            application_id,
            verifier,
            api_url: api_url.trim_end_matches('/').to_string(),
            receive,
            interactions_path,
            dm_approvers,
            approvers: approvers.to_vec(),
            commands_guild_id: r.optional_snowflake("commands_guild_id")?,
            register_commands: r.optional_bool("register_commands")?.unwrap_or(true),
            interaction_wait: r
                .optional_ms("interaction_wait_ms")?
                .unwrap_or(Duration::from_millis(1500))
                .min(Duration::from_millis(2500)),
            signature_max_age: r
                .optional_u64("signature_max_age_s")?
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(300)),
            pacing,
        })
    }
}

/// A Discord id: a non-zero unsigned integer, written as a string or a number.
pub fn parse_snowflake(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n != 0)
}

fn parse_public_key(hex: &str) -> Result<Verifier, String> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be 64 hex characters (the application's public key)".into());
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "must be 64 hex characters".to_string())?;
    }
    Verifier::try_new(bytes).map_err(|e| e.to_string())
}

/// Typed access to one channel's table, with errors that name the key.
struct Reader<'a> {
    name: &'a str,
    settings: &'a toml::Table,
}

impl Reader<'_> {
    fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            key: format!("channels.{}.{key}", self.name),
            problem: problem.into(),
        }
    }

    fn optional_str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.settings.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) if s.trim().is_empty() => Err(self.err(key, "is empty")),
            Some(toml::Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(self.err(key, "expected a string")),
        }
    }

    fn required_str(&self, key: &str) -> Result<String, ConfigError> {
        self.optional_str(key)?
            .ok_or_else(|| self.err(key, "is required"))
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.settings.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(self.err(key, "expected true or false")),
        }
    }

    fn optional_u64(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.settings.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) if *n >= 0 => Ok(Some(*n as u64)),
            Some(_) => Err(self.err(key, "expected a non-negative integer")),
        }
    }

    fn optional_ms(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        Ok(self.optional_u64(key)?.map(Duration::from_millis))
    }

    fn optional_snowflake(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        let text = match self.settings.get(key) {
            None => return Ok(None),
            Some(toml::Value::String(s)) => s.clone(),
            Some(toml::Value::Integer(n)) => n.to_string(),
            Some(_) => return Err(self.err(key, "expected a Discord id (a string of digits)")),
        };
        parse_snowflake(&text)
            .map(Some)
            .ok_or_else(|| self.err(key, format!("{text:?} is not a Discord id")))
    }

    fn required_snowflake(&self, key: &str) -> Result<u64, ConfigError> {
        self.optional_snowflake(key)?
            .ok_or_else(|| self.err(key, "is required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn minimal_interactions_endpoint_config_gets_production_defaults() {
        let s = DiscordSettings::from_table(
            "discord",
            &table(&format!(
                "bot_token = 'tok'\napplication_id = '123'\npublic_key = '{KEY}'\n"
            )),
            &[],
        )
        .unwrap();
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.receive, ReceiveMode::InteractionsEndpoint);
        assert_eq!(s.interactions_path, "/discord/interactions");
        assert_eq!(s.pacing, PacingSettings::default());
        assert!(s.verifier.is_some());
        assert!(!format!("{s:?}").contains("tok'"), "{s:?}");
        assert!(format!("{s:?}").contains("***"));
    }

    #[test]
    fn missing_and_malformed_keys_name_the_key() {
        let cases = [
            (
                "application_id = '1'\npublic_key = 'x'",
                "channels.d.bot_token",
                "required",
            ),
            (
                "bot_token = 't'\npublic_key = 'x'",
                "channels.d.application_id",
                "required",
            ),
            (
                "bot_token = 't'\napplication_id = '1'",
                "channels.d.public_key",
                "required",
            ),
            (
                "bot_token = 't'\napplication_id = '1'\npublic_key = 'abc'",
                "channels.d.public_key",
                "64 hex",
            ),
            (
                "bot_token = 't'\napplication_id = 'abc'\nreceive = 'gateway'",
                "channels.d.application_id",
                "not a Discord id",
            ),
            (
                "bot_token = 't'\napplication_id = '1'\nreceive = 'poll'",
                "channels.d.receive",
                "not a receive mode",
            ),
            (
                "bot_token = 't'\napplication_id = '1'\nreceive = 'gateway'\nbot_tokn = 'x'",
                "channels.d.bot_tokn",
                "unknown key",
            ),
            (
                "bot_token = 't'\napplication_id = '1'\nreceive = 'gateway'\napi_url = 'discord.com'",
                "channels.d.api_url",
                "https://",
            ),
        ];
        for (text, key, problem) in cases {
            let err = DiscordSettings::from_table("d", &table(text), &[]).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
            assert!(err.problem.contains(problem), "{text}: {err}");
        }
        // Gateway mode needs no public key; a channel not named discord gets its own path.
        let s = DiscordSettings::from_table(
            "d",
            &table("bot_token = 't'\napplication_id = 1\nreceive = 'gateway'"),
            &[],
        )
        .unwrap();
        assert_eq!(s.interactions_path, "/discord/d/interactions");
    }

    #[test]
    fn dm_approvers_needs_numeric_user_ids() {
        let text =
            "bot_token = 't'\napplication_id = '1'\nreceive = 'gateway'\ndm_approvers = true";
        let err = DiscordSettings::from_table("d", &table(text), &["alice".into()]).unwrap_err();
        assert_eq!(err.key, "channels.d.approvers[0]");
        let ok = DiscordSettings::from_table("d", &table(text), &["42".into()]).unwrap();
        assert!(ok.dm_approvers);
    }
}
