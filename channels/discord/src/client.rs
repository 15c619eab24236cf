//! The REST side: serenity builds each request (route, API version, auth header, JSON body
//! from its builders), and this client sends it with Discord's rate limits honoured and
//! bounded retries, then turns the answer into a value or a plain-words `ChannelError`.
//!
//! serenity's `Http` methods are not used for sending: with its ratelimiter off (needed for
//! `api_url` to apply) they would neither wait out 429s nor show us the limit headers.

use std::sync::Arc;
use std::time::Duration;

use approvald_channel::ChannelError;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serenity::http::{LightMethod, Request, Route};

use crate::config::{BotToken, PacingSettings};
use crate::health::Health;
use crate::pacing::{Pacer, RateLimitHeaders, RateLimited};

/// Sends Discord API requests for one bot.
pub struct RestClient {
    http: reqwest::Client,
    /// `Bot <token>`, as serenity sends it.
    auth: String,
    token: BotToken,
    api_url: String,
    pacer: Pacer,
    pacing: PacingSettings,
    health: Arc<Health>,
}

/// How one attempt ended.
enum Attempt {
    Done(Vec<u8>),
    Fail {
        message: String,
        reachable: bool,
    },
    /// `after`: what Discord asked for (a 429), or `None` for our exponential backoff.
    Retry {
        after: Option<Duration>,
        why: String,
    },
}

impl RestClient {
    pub fn new(
        http: reqwest::Client,
        token: BotToken,
        api_url: String,
        pacing: PacingSettings,
        health: Arc<Health>,
    ) -> Self {
        let raw = token.expose().trim();
        let auth = if raw.starts_with("Bot ") || raw.starts_with("Bearer ") {
            raw.to_string()
        } else {
            format!("Bot {raw}")
        };
        Self {
            http,
            auth,
            token,
            api_url,
            pacer: Pacer::new(pacing.global_per_second),
            pacing,
            health,
        }
    }

    /// Send and decode the JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: LightMethod,
        route: Route<'_>,
        label: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ChannelError> {
        let bytes = self.send(method, route, label, body, true).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            let message = format!("discord: {label}: unexpected answer: {e}");
            self.health.failed(&message, true);
            ChannelError::permanent(message)
        })
    }

    /// Send and ignore the answer's body (interaction callbacks answer 204).
    pub async fn call_no_content(
        &self,
        method: LightMethod,
        route: Route<'_>,
        label: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        paced_by_route: bool,
    ) -> Result<(), ChannelError> {
        self.send(method, route, label, body, paced_by_route)
            .await
            .map(|_| ())
    }

    /// `label` names the call in errors (`POST /channels/123/messages`); it must not contain
    /// secrets (interaction tokens, the bot token).
    async fn send(
        &self,
        method: LightMethod,
        route: Route<'_>,
        label: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        paced_by_route: bool,
    ) -> Result<Vec<u8>, ChannelError> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| {
                ChannelError::permanent(format!("discord: {label}: cannot encode request: {e}"))
            })?),
            None => None,
        };
        let lane = if paced_by_route {
            self.pacer.lane(method, route.ratelimiting_bucket())
        } else {
            None
        };
        let mut retries = 0u32;
        loop {
            let attempt = {
                let mut guard = match &lane {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                // A bucket (or everything) blocked longer than we keep a prompt waiting, by
                // the headers of an earlier answer or a global 429: fail now, as a 429 asking
                // for that long would, rather than hold this call (and the lane) that long.
                let blocked = guard
                    .as_ref()
                    .and_then(|g| g.blocked_for())
                    .max(self.pacer.global_blocked_for().await);
                match blocked {
                    Some(left) if left > self.pacing.max_retry_after => Attempt::Fail {
                        message: format!(
                            "discord: {label}: rate limited for {:.1}s more, longer than max_retry_after_ms",
                            left.as_secs_f64()
                        ),
                        reachable: true,
                    },
                    _ => {
                        if let Some(g) = &guard {
                            g.wait().await;
                        }
                        self.pacer.wait_global().await;
                        self.attempt(method, route, label, body.clone(), &mut guard)
                            .await
                    }
                }
            };
            match attempt {
                Attempt::Done(bytes) => {
                    self.health.ok();
                    return Ok(bytes);
                }
                Attempt::Fail { message, reachable } => {
                    let message = self.redact(&message);
                    self.health.failed(&message, reachable);
                    return Err(ChannelError::permanent(message));
                }
                Attempt::Retry { after, why } => {
                    retries += 1;
                    if retries > self.pacing.max_retries {
                        let message = self.redact(&format!(
                            "discord: {label}: gave up after {retries} attempts: {why}"
                        ));
                        self.health.failed(&message, false);
                        return Err(ChannelError::transient(message));
                    }
                    let after = after.unwrap_or_else(|| self.backoff(retries));
                    tracing::debug!(call = label, retry_in = ?after, why = %self.redact(&why), "retrying a Discord call");
                    tokio::time::sleep(after).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        method: LightMethod,
        route: Route<'_>,
        label: &str,
        body: Option<Vec<u8>>,
        lane: &mut Option<tokio::sync::MutexGuard<'_, crate::pacing::Lane>>,
    ) -> Attempt {
        let request = match Request::new(route, method).body(body).build(
            &self.http,
            &self.auth,
            Some(&self.api_url),
        ) {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Fail {
                    message: format!("discord: {label}: cannot build request: {e}"),
                    reachable: false,
                };
            }
        };
        let sent = tokio::time::timeout(self.pacing.request_timeout, async {
            let response = request.send().await?;
            let status = response.status();
            let limits = RateLimitHeaders::parse(response.headers());
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, limits, bytes))
        })
        .await;
        let (status, limits, bytes) = match sent {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                return Attempt::Retry {
                    after: None,
                    // Without the URL: it may hold an interaction token.
                    why: format!("network error: {}", e.without_url()),
                };
            }
            Err(_) => {
                return Attempt::Retry {
                    after: None,
                    why: format!("no answer within {:?}", self.pacing.request_timeout),
                };
            }
        };
        if let Some(l) = lane.as_mut() {
            l.observe(&limits);
        }
        if status.is_success() {
            return Attempt::Done(bytes.to_vec());
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let limited = RateLimited::from_answer(&bytes, &limits);
            if limited.retry_after > self.pacing.max_retry_after {
                return Attempt::Fail {
                    message: format!(
                        "discord: {label}: rate limited for {:.1}s, longer than max_retry_after_ms",
                        limited.retry_after.as_secs_f64()
                    ),
                    reachable: true,
                };
            }
            if limited.global {
                self.pacer.block_global(limited.retry_after).await;
            } else if let Some(l) = lane.as_mut() {
                l.block(limited.retry_after);
            }
            return Attempt::Retry {
                after: Some(limited.retry_after),
                why: format!(
                    "429 rate limited{} (retry after {:.3}s)",
                    if limited.global { ", global" } else { "" },
                    limited.retry_after.as_secs_f64()
                ),
            };
        }
        let detail = discord_error(&bytes);
        if status.is_server_error() {
            return Attempt::Retry {
                after: None,
                why: format!("{status}{detail}"),
            };
        }
        let hint = match status {
            StatusCode::UNAUTHORIZED => " (check bot_token)",
            StatusCode::FORBIDDEN => " (is the bot in that server and allowed to post there?)",
            _ => "",
        };
        Attempt::Fail {
            message: format!("discord: {label}: {status}{detail}{hint}"),
            reachable: status != StatusCode::UNAUTHORIZED,
        }
    }

    /// `retry_base`, doubled per retry, at most `retry_max`.
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(16));
        self.pacing
            .retry_base
            .saturating_mul(factor)
            .min(self.pacing.retry_max)
    }

    /// Remove the bot token from text that may end up in logs, errors or the audit trail.
    pub fn redact(&self, text: &str) -> String {
        let raw = self.token.expose().trim();
        let raw = raw
            .strip_prefix("Bot ")
            .or_else(|| raw.strip_prefix("Bearer "))
            .unwrap_or(raw);
        if raw.len() < 4 {
            return text.to_string();
        }
        text.replace(raw, "***")
    }
}

/// `: Missing Access (code 50001)` from Discord's JSON error body, or nothing.
fn discord_error(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct DiscordError {
        #[serde(default)]
        code: Option<i64>,
        #[serde(default)]
        message: Option<String>,
    }
    match serde_json::from_slice::<DiscordError>(body) {
        Ok(DiscordError {
            message: Some(m),
            code,
        }) => {
            let m: String = m.chars().take(200).collect();
            match code {
                Some(c) if c != 0 => format!(": {m} (code {c})"),
                _ => format!(": {m}"),
            }
        }
        _ => String::new(),
    }
}
