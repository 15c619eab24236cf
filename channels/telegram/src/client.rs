//! The Bot API client: one HTTP round trip per call, with pacing, 429 handling, bounded
//! retries, and the bot token kept out of every error text.
//!
//! Requests are teloxide-core's typed payloads (`SendMessage`, `EditMessageText`, ...) and
//! answers its types (`Message`, `Update`), but the round trip is ours, because teloxide's own
//! (`Bot`) drops the HTTP status and `error_code` (a 5xx cannot be told from a 400), sleeps a
//! fixed 10 s on every 5xx, ignores the long-poll timeout when setting the HTTP timeout, and
//! puts the token-bearing URL into its network errors.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use teloxide_core::requests::Payload;

use crate::config::{BotToken, TelegramSettings};
use crate::pacing::Pacer;

/// Backoff never grows beyond this, however many attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why one Bot API call failed, with the token already redacted from every text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFailure {
    /// 429: flood control; try again after `wait`.
    RetryAfter { wait: Duration },
    /// An error answer (`ok: false`) or an HTTP error status without a Bot API body.
    Api {
        code: u16,
        description: String,
        /// A group became a supergroup with this new chat id.
        migrate_to: Option<i64>,
    },
    /// The request did not get an answer: connection refused, reset, timed out.
    Network(String),
    /// An answer that is not what the Bot API sends.
    BadAnswer(String),
}

impl ApiFailure {
    /// 5xx and network trouble may go away on their own; 4xx answers will not.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiFailure::Network(_) => true,
            ApiFailure::Api { code, .. } => *code >= 500,
            ApiFailure::RetryAfter { .. } | ApiFailure::BadAnswer(_) => false,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match self {
            ApiFailure::Api { code, .. } => Some(*code),
            ApiFailure::RetryAfter { .. } => Some(429),
            _ => None,
        }
    }

    /// The description Telegram gave, lowercased, for matching well-known 400s.
    pub fn description_lower(&self) -> String {
        match self {
            ApiFailure::Api { description, .. } => description.to_ascii_lowercase(),
            _ => String::new(),
        }
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiFailure::RetryAfter { wait } => {
                write!(f, "429 Too Many Requests: retry after {}s", wait.as_secs())
            }
            ApiFailure::Api {
                code, description, ..
            } => write!(f, "{code} {description}"),
            ApiFailure::Network(e) => write!(f, "network error: {e}"),
            ApiFailure::BadAnswer(e) => write!(f, "unexpected answer: {e}"),
        }
    }
}

/// The Bot API's answer envelope, read by hand because it carries what teloxide drops
/// (`error_code`, `parameters`).
#[derive(serde::Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// `parameters` of an error answer: how long to wait, or where a group moved.
#[derive(serde::Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    migrate_to_chat_id: Option<i64>,
}

/// See the module docs. One per channel; shared by deliveries, edits and the receiver.
pub struct BotApi {
    http: reqwest::Client,
    /// `<api_url>/bot<token>`: never logged, only used to build request URLs.
    method_base: String,
    token: BotToken,
    pacer: Pacer,
    retry_base: Duration,
    max_retries: u32,
    max_retry_after: Duration,
    request_timeout: Duration,
}

impl BotApi {
    pub fn new(settings: &TelegramSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            method_base: format!(
                "{}/bot{}",
                settings.api_url.as_str().trim_end_matches('/'),
                settings.bot_token.expose()
            ),
            token: settings.bot_token.clone(),
            pacer: Pacer::new(settings.chat_interval, settings.global_interval),
            retry_base: settings.retry_base,
            max_retries: settings.max_retries,
            max_retry_after: settings.max_retry_after,
            request_timeout: settings.request_timeout,
        })
    }

    /// Remove the token from any text that may leave this crate (errors, logs, health).
    pub fn redact(&self, text: &str) -> String {
        redact_token(text, self.token.expose())
    }

    /// The wait before retry number `attempt` (0-based) after a 5xx or network error.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_base, attempt)
    }

    /// Call a method with retries: paced per chat when `pace` names one, 429s waited out
    /// (up to `max_retry_after`), 5xx and network errors retried with exponential backoff.
    pub async fn call<P>(&self, pace: Option<&str>, payload: &P) -> Result<P::Output, ApiFailure>
    where
        P: Payload + Serialize,
        P::Output: DeserializeOwned,
    {
        let body = serde_json::to_vec(payload)
            .map_err(|e| ApiFailure::BadAnswer(format!("cannot encode {}: {e}", P::NAME)))?;
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        // Holding the chat's lane for the whole call (retries included) keeps its messages
        // in order and makes a 429 pause everything queued behind it.
        let lane = pace.map(|chat| self.pacer.lane(chat));
        let mut lane = match &lane {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        loop {
            if let Some(l) = &lane {
                l.turn().await;
                self.pacer.global_turn().await;
            }
            let result = self
                .round_trip(P::NAME, body.clone(), self.request_timeout)
                .await;
            if let Some(l) = lane.as_mut() {
                l.sent(self.pacer.chat_interval);
            }
            let failure = match result {
                Ok(value) => {
                    return serde_json::from_value(value).map_err(|e| {
                        ApiFailure::BadAnswer(format!("cannot read the {} answer: {e}", P::NAME))
                    });
                }
                Err(f) => f,
            };
            match &failure {
                ApiFailure::RetryAfter { wait }
                    if *wait <= self.max_retry_after && rate_limited < self.max_retries.max(1) =>
                {
                    rate_limited += 1;
                    tracing::warn!(
                        method = P::NAME,
                        chat = pace.unwrap_or("-"),
                        retry_after_secs = wait.as_secs(),
                        "telegram rate limit (429): waiting as told, then sending again"
                    );
                    match lane.as_mut() {
                        Some(l) => l.hold(*wait),
                        None => tokio::time::sleep(*wait).await,
                    }
                }
                f if f.is_transient() && failures < self.max_retries => {
                    let wait = self.backoff(failures);
                    failures += 1;
                    tracing::warn!(
                        method = P::NAME,
                        attempt = failures,
                        of = self.max_retries,
                        wait_ms = wait.as_millis() as u64,
                        error = %f,
                        "telegram call failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(failure),
            }
        }
    }

    /// One call without retries; `extra` is added to the HTTP timeout (a long poll).
    pub async fn call_once_raw<P>(&self, payload: &P, extra: Duration) -> Result<Value, ApiFailure>
    where
        P: Payload + Serialize,
    {
        let body = serde_json::to_vec(payload)
            .map_err(|e| ApiFailure::BadAnswer(format!("cannot encode {}: {e}", P::NAME)))?;
        self.round_trip(P::NAME, body, self.request_timeout + extra)
            .await
    }

    /// POST the JSON body to `<base>/<Method>` and open the envelope.
    async fn round_trip(
        &self,
        method: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Value, ApiFailure> {
        let response = self
            .http
            .post(format!("{}/{method}", self.method_base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| self.network_failure(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.network_failure(e))?;
        let envelope: Envelope = match serde_json::from_str(&text) {
            Ok(e) => e,
            // A proxy or load balancer in front of the Bot API answers in HTML.
            Err(_) if !status.is_success() => {
                return Err(ApiFailure::Api {
                    code: status.as_u16(),
                    description: format!(
                        "{} (no Bot API answer)",
                        status.canonical_reason().unwrap_or("HTTP error")
                    ),
                    migrate_to: None,
                });
            }
            Err(e) => {
                return Err(ApiFailure::BadAnswer(format!(
                    "{method}: HTTP {status} with a body that is not a Bot API answer ({e})"
                )));
            }
        };
        if envelope.ok {
            return Ok(envelope.result.unwrap_or(Value::Null));
        }
        let params = envelope.parameters;
        if let Some(secs) = params.as_ref().and_then(|p| p.retry_after) {
            return Err(ApiFailure::RetryAfter {
                wait: Duration::from_secs(secs),
            });
        }
        let code = envelope.error_code.unwrap_or(status.as_u16());
        if code == 429 {
            // A 429 without retry_after: wait one second, Telegram's usual minimum.
            return Err(ApiFailure::RetryAfter {
                wait: Duration::from_secs(1),
            });
        }
        Err(ApiFailure::Api {
            code,
            description: self.redact(
                envelope
                    .description
                    .as_deref()
                    .unwrap_or("error without a description"),
            ),
            migrate_to: params.and_then(|p| p.migrate_to_chat_id),
        })
    }

    fn network_failure(&self, e: reqwest::Error) -> ApiFailure {
        let timeout = e.is_timeout();
        // reqwest's text carries the URL, and so the token: drop it, keep the causes.
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if timeout {
            text = format!("timed out ({text})");
        }
        ApiFailure::Network(self.redact(&text))
    }
}

/// Replace every occurrence of `token` (and of its secret half after the colon) in `text`.
pub fn redact_token(text: &str, token: &str) -> String {
    if token.is_empty() {
        return text.to_string();
    }
    let mut out = text.replace(token, "<bot-token>");
    if let Some((_, secret)) = token.split_once(':')
        && secret.len() >= 8
    {
        out = out.replace(secret, "<bot-token>");
    }
    out
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_the_whole_token_and_its_secret_half() {
        let token = "123456:AAbbCCddEEff_gg";
        assert_eq!(
            redact_token("POST /bot123456:AAbbCCddEEff_gg/SendMessage", token),
            "POST /bot<bot-token>/SendMessage"
        );
        assert_eq!(
            redact_token("key AAbbCCddEEff_gg leaked", token),
            "key <bot-token> leaked"
        );
    }

    #[tokio::test]
    async fn network_errors_never_carry_the_token() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let table: toml::Table = toml::from_str(&format!(
            "bot_token = '42:SeCrEtPaRtOfTheToken'\napi_url = 'http://127.0.0.1:{port}'\nmax_retries = 1\nretry_base_ms = 1"
        ))
        .unwrap();
        let settings = TelegramSettings::from_table("t", &table).unwrap();
        let api = BotApi::new(&settings).unwrap();
        let err = api
            .call(None, &teloxide_core::payloads::GetMe::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ApiFailure::Network(_)), "{err:?}");
        let text = err.to_string();
        assert!(!text.contains("SeCrEtPaRtOfTheToken"), "{text}");
        assert!(!text.contains("42:"), "{text}");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 0), Duration::from_millis(100));
        assert_eq!(backoff(b, 3), Duration::from_millis(800));
        assert_eq!(backoff(b, 30), MAX_BACKOFF);
    }

    #[test]
    fn only_5xx_and_network_errors_are_transient() {
        let api = |code| ApiFailure::Api {
            code,
            description: String::new(),
            migrate_to: None,
        };
        assert!(api(502).is_transient());
        assert!(!api(400).is_transient());
        assert!(!api(409).is_transient());
        assert!(ApiFailure::Network("reset".into()).is_transient());
    }
}
