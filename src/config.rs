//! The configuration file: what it may say, its defaults, `${ENV}` expansion and validation.
//!
//! Everything is checked at load, so a typo, a bad regex or a missing secret stops the service
//! with a message that names the key, instead of a silent fallback at the first request.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::{Deserialize, Deserializer};

use crate::domain::{Decision, RiskClass, Target, Transport};

/// The configuration approvald runs with when no file is given and none is in the working
/// directory. It is the repository's `config.toml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config.toml");

/// A problem with the configuration, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config error at {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A secret from the config (token, signing secret). Never printed: `Debug` shows `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value, for comparing or sending to the platform. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A filter entry: `/regex/` is a regular expression, anything else a substring.
#[derive(Clone, Debug)]
pub enum Filter {
    Substring(String),
    Regex(Regex),
}

impl Filter {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Filter::Substring(s) => value.contains(s.as_str()),
            Filter::Regex(r) => r.is_match(value),
        }
    }

    /// Exact comparison for plain entries (tool names), regex for `/.../` entries.
    pub fn matches_exact(&self, value: &str) -> bool {
        match self {
            Filter::Substring(s) => value == s,
            Filter::Regex(r) => r.is_match(value),
        }
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
            let pattern = &s[1..s.len() - 1];
            Regex::new(pattern)
                .map(Filter::Regex)
                .map_err(|e| serde::de::Error::custom(format!("bad regex {pattern:?}: {e}")))
        } else {
            Ok(Filter::Substring(s))
        }
    }
}

/// A regular expression from the config (always a regex, no slashes needed).
#[derive(Clone, Debug)]
pub struct ConfigRegex(pub Regex);

impl<'de> Deserialize<'de> for ConfigRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s)
            .map(ConfigRegex)
            .map_err(|e| serde::de::Error::custom(format!("bad regex {s:?}: {e}")))
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub approvals: ApprovalPolicy,
    pub delivery: DeliveryConfig,
    pub templates: TemplateConfig,
    pub tokens: Vec<TokenConfig>,
    pub people: Vec<PersonConfig>,
    pub rules: Vec<RuleConfig>,
    pub channels: BTreeMap<String, ChannelConfig>,
    pub budget: BudgetConfig,
    pub tasks: TasksConfig,
    pub assistant: AssistantConfig,
    pub limits: LimitsConfig,
}

/// Protection against floods and prompt fatigue: request rate limits per API token, agent and
/// session, and folding of identical pending requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Approval requests a minute per API token; 0 is unlimited.
    pub requests_per_minute_per_token: u32,
    /// Per `agent_id`; 0 is unlimited.
    pub requests_per_minute_per_agent: u32,
    /// Per `session_key`; 0 is unlimited.
    pub requests_per_minute_per_session: u32,
    /// How many may arrive at once before the per-minute pace applies.
    pub burst: u32,
    /// An identical request (same requester, agent, session, token, tool, command and args)
    /// while one is pending waits on that one instead of sending a second prompt.
    pub fold_identical: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_minute_per_token: 0,
            requests_per_minute_per_agent: 0,
            requests_per_minute_per_session: 0,
            burst: 20,
            fold_identical: true,
        }
    }
}

/// Spending and execution limits: the rules-based approver of the assistant protocol. Every
/// approved task carries constraints derived from these.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Daily budget in USD (sum of actual costs reported today); none means unlimited.
    pub daily_usd: Option<f64>,
    /// The time zone "today" is counted in: `UTC` or a fixed offset such as `+02:00`.
    pub timezone: String,
    /// Largest estimated cost per task type, in USD (e.g. chat = 1.0, workflow = 10.0).
    pub task_type_limits: BTreeMap<String, f64>,
    /// `time_limit` constraint given to approved tasks, in ms.
    pub default_time_limit_ms: Option<u64>,
    /// `token_limit` constraint given to approved tasks.
    pub token_limit: Option<u64>,
    /// `parallelism` constraint given to approved tasks.
    pub parallelism: Option<u32>,
    /// `resource_limit` (a multiplier) given to approved tasks.
    pub resource_limit: Option<f64>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            daily_usd: None,
            timezone: "UTC".into(),
            task_type_limits: BTreeMap::new(),
            default_time_limit_ms: None,
            token_limit: None,
            parallelism: None,
            resource_limit: None,
        }
    }
}

impl BudgetConfig {
    /// The configured zone as a fixed offset (checked at load).
    pub fn offset(&self) -> chrono::FixedOffset {
        parse_offset(&self.timezone)
            .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("zero offset"))
    }
}

fn parse_offset(tz: &str) -> Option<chrono::FixedOffset> {
    let tz = tz.trim();
    if tz.eq_ignore_ascii_case("utc") || tz == "Z" {
        return chrono::FixedOffset::east_opt(0);
    }
    let (sign, rest) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// How the assistant protocol's task endpoints behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// How long `POST /api/approve` waits for a human before answering "pending".
    pub approve_wait_ms: u64,
    /// `retry_after_seconds` given with a pending answer.
    pub retry_after_seconds: u64,
    /// Logs kept per task (the oldest lines are dropped beyond this).
    pub max_log_bytes: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            approve_wait_ms: 2000,
            retry_after_seconds: 10,
            max_log_bytes: 64 * 1024,
        }
    }
}

/// An upstream assistant approval service approvald asks first (approver factor `assistant`),
/// and the fallback used while it is unreachable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssistantConfig {
    /// Base URL (`APPROVAL_SYSTEM_URL`); none disables the upstream.
    pub url: Option<String>,
    /// Bearer key for the upstream (`APPROVAL_API_KEY`).
    pub api_key: Option<Secret>,
    /// Timeout of one upstream call, in ms (`APPROVAL_TIMEOUT`, in seconds).
    pub timeout_ms: u64,
    /// Attempts per call, the first included (`APPROVAL_MAX_RETRIES` + 1).
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub backoff_multiplier: f64,
    /// How often the upstream's `/health` is probed.
    pub health_check_interval_ms: u64,
    /// Refuse every task while the upstream is down instead of approving with strict
    /// constraints (`APPROVAL_FALLBACK_STRICT`).
    pub fallback_strict: bool,
    /// Constraints applied while in fallback mode.
    pub fallback_cost_limit: f64,
    pub fallback_time_limit_ms: u64,
    pub fallback_resource_limit: f64,
}

impl Default for AssistantConfig {
    fn default() -> Self {
        Self {
            url: None,
            api_key: None,
            timeout_ms: 10_000,
            max_attempts: 3,
            backoff_ms: 200,
            backoff_multiplier: 2.0,
            health_check_interval_ms: 30_000,
            fallback_strict: false,
            fallback_cost_limit: 5.0,
            fallback_time_limit_ms: 300_000,
            fallback_resource_limit: 0.5,
        }
    }
}

impl AssistantConfig {
    /// The seed protocol's environment variables, for settings the file leaves out.
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let flag = |k: &str, v: String| match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(k, format!("{v:?} is not true or false"))),
        };
        if self.url.is_none() {
            self.url = get("APPROVAL_SYSTEM_URL");
        }
        if self.api_key.is_none() {
            self.api_key = get("APPROVAL_API_KEY").map(Secret::new);
        }
        if let Some(v) = get("APPROVAL_TIMEOUT") {
            let secs: f64 = v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "APPROVAL_TIMEOUT",
                    format!("{v:?} is not a number of seconds"),
                )
            })?;
            self.timeout_ms = (secs * 1000.0) as u64;
        }
        if let Some(v) = get("APPROVAL_FALLBACK_STRICT") {
            self.fallback_strict = flag("APPROVAL_FALLBACK_STRICT", v)?;
        }
        if let Some(v) = get("APPROVAL_ENABLE_RETRIES")
            && !flag("APPROVAL_ENABLE_RETRIES", v)?
        {
            self.max_attempts = 1;
        }
        if let Some(v) = get("APPROVAL_MAX_RETRIES") {
            let n: u32 = v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "APPROVAL_MAX_RETRIES",
                    format!("{v:?} is not a whole number"),
                )
            })?;
            if self.max_attempts > 1 {
                self.max_attempts = n + 1;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Mark control UI cookies `Secure` (set this when approvald is served over HTTPS).
    pub secure_cookies: bool,
    /// WebSocket and SSE clients connected at once; more are refused with 503.
    pub max_stream_clients: usize,
    /// A client must send a request's headers within this time (also the keep-alive idle limit),
    /// and then its body within the same time.
    pub header_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            max_body_bytes: 1024 * 1024,
            secure_cookies: false,
            max_stream_clients: 1000,
            header_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory for the SQLite database (created if missing).
    pub data_dir: PathBuf,
    /// `postgres://...` to keep state in PostgreSQL instead (several instances share one
    /// database); unset means SQLite in `data_dir`.
    pub url: Option<String>,
    /// PostgreSQL only: pooled connections per instance (each instance also keeps one to
    /// hear the others and, while it leads, one holding the leader lock).
    pub max_connections: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            url: None,
            max_connections: 16,
        }
    }
}

impl StorageConfig {
    /// True when state lives in PostgreSQL (and other instances may share it).
    pub fn is_postgres(&self) -> bool {
        self.url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    }
}

/// Kinds of approver that can count towards quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApproverFactor {
    /// A person deciding (chat, control UI, CLI, API).
    UserRequest,
    /// Config rules and standing approve-always rules.
    RulesBased,
    /// The upstream assistant approval service (`[assistant]`).
    Assistant,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalPolicy {
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub min_approvals: u32,
    pub allowed_approvers: Vec<ApproverFactor>,
    pub disabled_approvers: Vec<ApproverFactor>,
    /// Whether people may answer approve-always (which adds a standing rule).
    pub allow_always: bool,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        Self {
            default_timeout_ms: 5 * 60 * 1000,
            max_timeout_ms: 24 * 60 * 60 * 1000,
            min_approvals: 1,
            allowed_approvers: vec![ApproverFactor::UserRequest, ApproverFactor::RulesBased],
            disabled_approvers: Vec::new(),
            allow_always: true,
        }
    }
}

impl ApprovalPolicy {
    pub fn factor_enabled(&self, factor: ApproverFactor) -> bool {
        self.allowed_approvers.contains(&factor) && !self.disabled_approvers.contains(&factor)
    }

    pub fn allowed_decisions(&self) -> Vec<Decision> {
        Decision::ALL
            .into_iter()
            .filter(|d| self.allow_always || *d != Decision::ApproveAlways)
            .collect()
    }
}

/// Where prompts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// To the chat the request came from (its `origin`).
    #[default]
    Session,
    /// To the configured targets.
    Targets,
    /// Both, deduplicated.
    Both,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub mode: DeliveryMode,
    /// Only forward requests from agents matching one of these (empty: all).
    pub agent_filter: Vec<Filter>,
    /// Only forward requests from sessions matching one of these (empty: all).
    pub session_filter: Vec<Filter>,
    pub targets: Vec<Target>,
    /// Where operators are told that a request timed out.
    pub timeout_notice_targets: Vec<Target>,
    /// How long a request call waits for deliveries before answering `delivered_to`
    /// (slower ones go on in the background and are recorded).
    pub wait_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::Session,
            agent_filter: Vec::new(),
            session_filter: Vec::new(),
            targets: Vec::new(),
            timeout_notice_targets: Vec::new(),
            wait_ms: 3000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateConfig {
    /// A directory with your own `request.j2`, `resolved.j2`, `expired.j2`, `timeout_notice.j2`
    /// (any missing one falls back to the bundled template).
    pub dir: Option<PathBuf>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Create requests and wait for them.
    Request,
    /// Decide on requests (as the token's identity).
    Resolve,
    /// Everything, including relaying another identity, audit and rules.
    Admin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub token: Secret,
    pub scopes: Vec<TokenScope>,
    /// The person who acts with this token (for self-approval and quorum).
    #[serde(default)]
    pub person: Option<String>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// One human, linked across surfaces so self-approval and quorum see one person.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonConfig {
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// May this person approve? (Requesters who never approve set false.)
    #[serde(default = "yes")]
    pub approver: bool,
    /// Requester ids a gateway may send for this person.
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub discord: Vec<String>,
    #[serde(default)]
    pub slack: Vec<String>,
    #[serde(default)]
    pub telegram: Vec<String>,
    /// Sign-in token for the control UI.
    #[serde(default)]
    pub ui_token: Option<Secret>,
}

fn yes() -> bool {
    true
}

impl PersonConfig {
    pub fn label(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.name)
    }

    /// This person's ids on a platform surface.
    pub fn platform_ids(&self, transport: Transport) -> &[String] {
        match transport {
            Transport::Discord => &self.discord,
            Transport::Slack => &self.slack,
            Transport::Telegram => &self.telegram,
            _ => &[],
        }
    }
}

/// What a rule says about matching requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Allow,
    Deny,
    Ask,
}

/// A rules-based approver entry. Every given condition must match; the first matching rule wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// Tool name, exact, or `/regex/`.
    #[serde(default)]
    pub tool: Option<Filter>,
    /// A regular expression over the command text.
    #[serde(default)]
    pub command: Option<ConfigRegex>,
    /// Risk classes this rule covers (empty: all).
    #[serde(default)]
    pub risk: Vec<RiskClass>,
    /// Agent id, substring or `/regex/`.
    #[serde(default)]
    pub agent: Option<Filter>,
    pub action: RuleAction,
}

/// Settings shared by every channel; platform crates read their own keys from `settings`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ChannelConfig {
    /// Platform user ids allowed to approve through this channel, beyond linked people.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Platform role ids (Discord) whose members may approve.
    #[serde(default)]
    pub approver_roles: Vec<String>,
    /// Where this channel's prompts go, as chat ids or `{ to, thread_id }`: shorthand for
    /// `delivery.targets` entries naming this channel (used in `targets` and `both` modes).
    #[serde(default)]
    pub targets: Vec<ChannelTarget>,
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// One entry of `channels.NAME.targets`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChannelTarget {
    To(String),
    Full {
        to: String,
        #[serde(default)]
        thread_id: Option<String>,
    },
}

impl Config {
    /// Load from `path`, else `./config.toml` if present, else the embedded default.
    pub fn load(path: Option<&Path>) -> anyhow::Result<(Config, String)> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", p.display()))?,
                p.display().to_string(),
            ),
            None if Path::new("config.toml").exists() => (
                std::fs::read_to_string("config.toml")
                    .map_err(|e| anyhow::anyhow!("cannot read config.toml: {e}"))?,
                "config.toml".to_string(),
            ),
            None => (EMBEDDED_DEFAULT.to_string(), "embedded default".to_string()),
        };
        Ok((Config::from_toml_str(&text)?, origin))
    }

    /// Parse, expand `${VAR}` / `${VAR:-default}` in string values, deserialise and validate.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_str_with_env(text, &|k| std::env::var(k).ok())
    }

    pub fn from_toml_str_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| format!("byte {}", s.start))
                .unwrap_or_else(|| "(file)".into());
            ConfigError::new(key, e.message().to_string())
        })?;
        expand_env(&mut value, &mut Vec::new(), env)?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(path, e.into_inner().to_string())
        })?;
        let mut config = config;
        for (name, channel) in &config.channels {
            for t in &channel.targets {
                let (to, thread_id) = match t {
                    ChannelTarget::To(to) => (to.clone(), None),
                    ChannelTarget::Full { to, thread_id } => (to.clone(), thread_id.clone()),
                };
                config.delivery.targets.push(Target {
                    channel: name.clone(),
                    to,
                    thread_id,
                    account_id: None,
                });
            }
        }
        config.assistant.apply_env(env)?;
        // A database URL usually carries a password: it may come from the environment rather
        // than the file.
        if config.storage.url.is_none() {
            config.storage.url = env("APPROVALD_DATABASE_URL").filter(|v| !v.trim().is_empty());
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.storage.url.is_some() && !self.storage.is_postgres() {
            // The URL may hold a password: it is not repeated in the error.
            return Err(ConfigError::new(
                "storage.url",
                "must be a postgres:// (or postgresql://) URL; leave it out to use SQLite in storage.data_dir",
            ));
        }
        if parse_offset(&self.budget.timezone).is_none() {
            return Err(ConfigError::new(
                "budget.timezone",
                format!(
                    "{:?} is not UTC or an offset like +02:00",
                    self.budget.timezone
                ),
            ));
        }
        let money = |key: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(ConfigError::new(key, "must be a non-negative amount"))
            }
        };
        if let Some(d) = self.budget.daily_usd {
            money("budget.daily_usd", d)?;
        }
        for (k, v) in &self.budget.task_type_limits {
            money(&format!("budget.task_type_limits.{k}"), *v)?;
        }
        if let Some(url) = &self.assistant.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "assistant.url",
                "must start with http:// or https://",
            ));
        }
        if self.limits.burst == 0 {
            return Err(ConfigError::new("limits.burst", "must be at least 1"));
        }
        if self.server.max_stream_clients == 0 || self.server.header_timeout_ms == 0 {
            return Err(ConfigError::new(
                "server.max_stream_clients",
                "max_stream_clients and header_timeout_ms must be above 0",
            ));
        }
        if self.assistant.max_attempts == 0 {
            return Err(ConfigError::new(
                "assistant.max_attempts",
                "must be at least 1",
            ));
        }
        if self.approvals.factor_enabled(ApproverFactor::Assistant) && self.assistant.url.is_none()
        {
            return Err(ConfigError::new(
                "approvals.allowed_approvers",
                "\"assistant\" needs [assistant] url (or APPROVAL_SYSTEM_URL)",
            ));
        }
        let a = &self.approvals;
        if a.min_approvals == 0 {
            return Err(ConfigError::new(
                "approvals.min_approvals",
                "must be at least 1",
            ));
        }
        if a.default_timeout_ms == 0 || a.max_timeout_ms == 0 {
            return Err(ConfigError::new(
                "approvals.default_timeout_ms",
                "timeouts must be above 0",
            ));
        }
        if a.default_timeout_ms > a.max_timeout_ms {
            return Err(ConfigError::new(
                "approvals.default_timeout_ms",
                format!(
                    "{} is above approvals.max_timeout_ms ({})",
                    a.default_timeout_ms, a.max_timeout_ms
                ),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        let mut people = HashSet::new();
        let mut platform_ids = HashSet::new();
        for (i, p) in self.people.iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(ConfigError::new(format!("people[{i}].name"), "is empty"));
            }
            if !people.insert(p.name.as_str()) {
                return Err(ConfigError::new(
                    format!("people[{i}].name"),
                    format!("{:?} is defined twice", p.name),
                ));
            }
            for (surface, ids) in [
                ("discord", &p.discord),
                ("slack", &p.slack),
                ("telegram", &p.telegram),
            ] {
                for id in ids {
                    if !platform_ids.insert((surface, id.as_str())) {
                        return Err(ConfigError::new(
                            format!("people[{i}].{surface}"),
                            format!("id {id:?} is linked to two people"),
                        ));
                    }
                }
            }
        }
        let mut names = HashSet::new();
        let mut values = HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if !names.insert(t.name.as_str()) {
                return Err(ConfigError::new(
                    format!("tokens[{i}].name"),
                    format!("{:?} is defined twice", t.name),
                ));
            }
            if t.token.expose().len() < 8 {
                return Err(ConfigError::new(
                    format!("tokens[{i}].token"),
                    "must be at least 8 characters",
                ));
            }
            if !values.insert(t.token.expose()) {
                return Err(ConfigError::new(
                    format!("tokens[{i}].token"),
                    "the same token value is used twice",
                ));
            }
            if t.scopes.is_empty() {
                return Err(ConfigError::new(
                    format!("tokens[{i}].scopes"),
                    "needs at least one of request, resolve, admin",
                ));
            }
            if let Some(person) = &t.person
                && !people.contains(person.as_str())
            {
                return Err(ConfigError::new(
                    format!("tokens[{i}].person"),
                    format!("no person named {person:?} in [[people]]"),
                ));
            }
        }
        for (i, p) in self.people.iter().enumerate() {
            if let Some(ui) = &p.ui_token {
                if ui.expose().len() < 8 {
                    return Err(ConfigError::new(
                        format!("people[{i}].ui_token"),
                        "must be at least 8 characters",
                    ));
                }
                if !values.insert(ui.expose()) {
                    return Err(ConfigError::new(
                        format!("people[{i}].ui_token"),
                        "the same token value is used twice",
                    ));
                }
            }
        }
        for (i, t) in self.delivery.targets.iter().enumerate() {
            check_target(t, &format!("delivery.targets[{i}]"))?;
        }
        for (i, t) in self.delivery.timeout_notice_targets.iter().enumerate() {
            check_target(t, &format!("delivery.timeout_notice_targets[{i}]"))?;
        }
        if let Some(dir) = &self.templates.dir
            && !dir.is_dir()
        {
            return Err(ConfigError::new(
                "templates.dir",
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(())
    }
}

fn check_target(t: &Target, key: &str) -> Result<(), ConfigError> {
    if t.channel.trim().is_empty() {
        return Err(ConfigError::new(format!("{key}.channel"), "is empty"));
    }
    if t.to.trim().is_empty() {
        return Err(ConfigError::new(format!("{key}.to"), "is empty"));
    }
    Ok(())
}

/// Expand `${VAR}` and `${VAR:-default}` in every string value; a missing variable without a
/// default is an error naming the key.
fn expand_env(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand_str(s, env).map_err(|p| ConfigError::new(path.join("."), p))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                expand_env(item, path, env)?;
                path.pop();
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                path.push(k.clone());
                expand_env(v, path, env)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${...}".to_string())?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad variable name in ${{{expr}}}"));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (and no ${{{name}:-default}} is given)"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "SET").then(|| "from-env-value".to_string())
    }

    #[test]
    fn embedded_default_is_valid() {
        Config::from_toml_str_with_env(EMBEDDED_DEFAULT, &|_| None).unwrap();
    }

    #[test]
    fn env_expansion_with_defaults_and_errors_naming_the_key() {
        let c = Config::from_toml_str_with_env(
            r#"
            [[tokens]]
            name = "a"
            token = "${SET}"
            scopes = ["request"]
            [[tokens]]
            name = "b"
            token = "${UNSET:-fallback-token}"
            scopes = ["resolve"]
            "#,
            &env,
        )
        .unwrap();
        assert_eq!(c.tokens[0].token.expose(), "from-env-value");
        assert_eq!(c.tokens[1].token.expose(), "fallback-token");
        assert_eq!(format!("{:?}", c.tokens[0].token), "***");

        let err = Config::from_toml_str_with_env(
            "[[tokens]]\nname='a'\ntoken='${MISSING}'\nscopes=['request']\n",
            &env,
        )
        .unwrap_err();
        assert_eq!(err.key, "tokens.[0].token");
        assert!(err.problem.contains("MISSING"), "{err}");
    }

    #[test]
    fn bad_regex_and_unknown_keys_are_errors_at_load() {
        let err = Config::from_toml_str_with_env("[delivery]\nagent_filter = ['/([a-/']\n", &env)
            .unwrap_err();
        assert!(err.key.starts_with("delivery.agent_filter"), "{err}");
        assert!(err.problem.contains("bad regex"), "{err}");

        let err =
            Config::from_toml_str_with_env("[approvals]\nmin_aprovals = 2\n", &env).unwrap_err();
        assert!(err.to_string().contains("min_aprovals"), "{err}");

        let err =
            Config::from_toml_str_with_env("[approvals]\nmin_approvals = 0\n", &env).unwrap_err();
        assert_eq!(err.key, "approvals.min_approvals");
    }

    #[test]
    fn filters_match_substring_or_regex() {
        let c = Config::from_toml_str_with_env(
            "[delivery]\nagent_filter = ['ops', '/^prod-[0-9]+$/']\n",
            &env,
        )
        .unwrap();
        let f = &c.delivery.agent_filter;
        assert!(f[0].matches("my-ops-agent"));
        assert!(!f[1].matches("prod-x"));
        assert!(f[1].matches("prod-42"));
    }

    #[test]
    fn channel_targets_are_shorthand_for_delivery_targets() {
        let c = Config::from_toml_str_with_env(
            "[channels.telegram]\ntargets = ['-1001', { to = '-1002', thread_id = '7' }]\n",
            &env,
        )
        .unwrap();
        let got: Vec<_> = c
            .delivery
            .targets
            .iter()
            .map(|t| (t.channel.as_str(), t.to.as_str(), t.thread_id.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("telegram", "-1001", None),
                ("telegram", "-1002", Some("7"))
            ]
        );
        assert!(!c.channels["telegram"].settings.contains_key("targets"));
    }
}
