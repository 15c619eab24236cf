//! The Slack Web API as this channel uses it: slack-morphism's client over a hyper-rustls
//! connector that also speaks plain http (so a test can point `api_url` at a fake), wrapped
//! in pacing, retries and health bookkeeping.
//!
//! Every call waits for its pacing slot, has `request_timeout_ms` to be answered, honours 429
//! `Retry-After`, retries 5xx, network errors, timeouts and Slack's own transient errors with
//! bounded exponential backoff, and then gives up with a
//! [`ChannelError`] whose text names the method and Slack's error code, with every secret
//! scrubbed (these messages reach the audit log and operators).

use std::future::Future;
use std::sync::{Arc, Mutex};

use approvald_channel::{ChannelError, ChannelHealth};
use serde::Serialize;
use serde_json::json;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use slack_morphism::{ClientResult, SlackClientApiCallContext, SlackClientHttpConnector};
use url::Url;

use crate::config::{RetryPolicy, SlackSettings};
use crate::pacing::Pacer;

/// The connector type every Slack call goes through.
pub type Connector = SlackClientHyperHttpsConnector;

/// See the module docs. Shared by the channel, its webhook receivers and Socket Mode.
pub struct SlackApi {
    client: Arc<SlackClient<Connector>>,
    token: Option<SlackApiToken>,
    webhook_url: Option<Url>,
    pacer: Pacer,
    retry: RetryPolicy,
    request_timeout: std::time::Duration,
    secrets: Vec<String>,
    health: Mutex<ChannelHealth>,
}

/// How a failed call should be treated.
enum Failure {
    /// 429: wait this long (Slack's `Retry-After`), then try again.
    RateLimited(std::time::Duration),
    /// 5xx, network, Slack's internal errors: back off and try again.
    Transient(String),
    /// Slack said no (channel_not_found, invalid_auth, ...): trying again will not help.
    Permanent {
        message: String,
        connection_ok: bool,
    },
}

/// Slack error codes that mean "try again later" rather than "you asked for something wrong".
const TRANSIENT_CODES: &[&str] = &[
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
];

/// Slack error codes that mean the token itself does not work.
const AUTH_CODES: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
];

impl SlackApi {
    pub fn new(settings: &SlackSettings) -> Result<Self, ChannelError> {
        // Several crates in one process may install it; the second attempt is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(error = %e, "no system CA certificates found; using the bundled Mozilla roots");
                hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
            }
        };
        // https_or_http: production URLs are https; the test fake is plain http on loopback.
        let https = roots.https_or_http().enable_http1().enable_http2().build();
        let connector = SlackClientHyperConnector::with_connector(https)
            .with_slack_api_url(settings.api_url.as_str());
        Ok(Self {
            client: Arc::new(SlackClient::new(connector)),
            token: settings
                .bot_token
                .as_ref()
                .map(|t| SlackApiToken::new(SlackApiTokenValue::new(t.clone()))),
            webhook_url: settings.webhook_url.clone(),
            pacer: Pacer::new(settings.pacing),
            retry: settings.retry,
            request_timeout: settings.request_timeout,
            secrets: settings.secrets(),
            health: Mutex::new(ChannelHealth {
                // Unknown until auth.test (or the first webhook post) answers.
                connected: settings.bot_token.is_none(),
                last_error: None,
            }),
        })
    }

    pub fn client(&self) -> Arc<SlackClient<Connector>> {
        self.client.clone()
    }

    pub fn has_bot_token(&self) -> bool {
        self.token.is_some()
    }

    pub fn health(&self) -> ChannelHealth {
        self.health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Socket Mode reports its connection state here.
    pub fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.connected = connected;
        if let Some(e) = error {
            h.last_error = Some(self.redact(&e));
        } else if connected {
            h.last_error = None;
        }
    }

    /// Remove every configured secret, and anything shaped like a Slack token, from `text`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if s.len() >= 4 {
                out = out.replace(s.as_str(), "***");
            }
        }
        redact_token_shapes(&out)
    }

    fn token(&self) -> Result<&SlackApiToken, ChannelError> {
        self.token.as_ref().ok_or_else(|| {
            ChannelError::permanent(
                "this Slack channel has no bot_token: it can only send notices to its incoming webhook (target \"webhook\")",
            )
        })
    }

    // ----- Web API methods ----------------------------------------------------------------

    /// Check the bot token (`auth.test`); answers the bot's user id and team.
    pub async fn auth_test(&self) -> Result<SlackApiAuthTestResponse, ChannelError> {
        let token = self.token()?;
        self.call("auth.test", None, || async {
            self.client.open_session(token).auth_test().await
        })
        .await
    }

    /// Open (or find) the DM with a user; answers the IM channel id.
    pub async fn open_dm(&self, user: &str) -> Result<String, ChannelError> {
        let token = self.token()?;
        let req = SlackApiConversationsOpenRequest::new().with_users(vec![user.into()]);
        let res = self
            .call("conversations.open", None, || async {
                self.client
                    .open_session(token)
                    .conversations_open(&req)
                    .await
            })
            .await?;
        Ok(res.channel.id.to_string())
    }

    /// Post a message; answers (channel id, ts).
    pub async fn post_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        content: SlackMessageContent,
    ) -> Result<(String, String), ChannelError> {
        let token = self.token()?;
        let req = SlackApiChatPostMessageRequest::new(channel.into(), content)
            .opt_thread_ts(thread_ts.map(|t| t.into()));
        let res = self
            .call("chat.postMessage", Some(channel), || async {
                self.client
                    .open_session(token)
                    .chat_post_message(&req)
                    .await
            })
            .await?;
        Ok((res.channel.to_string(), res.ts.to_string()))
    }

    /// Replace a message this bot posted (`chat.update`).
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        content: SlackMessageContent,
    ) -> Result<(), ChannelError> {
        let token = self.token()?;
        let req = SlackApiChatUpdateRequest::new(channel.into(), content, ts.into());
        self.call("chat.update", None, || async {
            self.client.open_session(token).chat_update(&req).await
        })
        .await
        .map(|_| ())
    }

    /// A message only `user` sees, in `channel` (`chat.postEphemeral`).
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        thread_ts: Option<&str>,
        text: &str,
    ) -> Result<(), ChannelError> {
        let token = self.token()?;
        let req = SlackApiChatPostEphemeralRequest::new(
            channel.into(),
            user.into(),
            SlackMessageContent::new().with_text(text.to_string()),
        )
        .opt_thread_ts(thread_ts.map(|t| t.into()));
        self.call("chat.postEphemeral", None, || async {
            self.client
                .open_session(token)
                .chat_post_ephemeral(&req)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Answer through an interaction's or slash command's `response_url`, visible only to the
    /// person who acted.
    pub async fn respond_ephemeral(
        &self,
        response_url: &str,
        text: &str,
    ) -> Result<(), ChannelError> {
        let url = Url::parse(response_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| ChannelError::permanent("the response_url Slack sent is not a URL"))?;
        let body = json!({ "response_type": "ephemeral", "replace_original": false, "text": text });
        self.post_url("response_url", None, &url, &body).await
    }

    /// Post a notice to the configured incoming webhook (`APPROVAL_SLACK_WEBHOOK_URL`).
    pub async fn post_webhook(&self, text: &str) -> Result<(), ChannelError> {
        let url = self.webhook_url.clone().ok_or_else(|| {
            ChannelError::permanent(
                "target \"webhook\" needs webhook_url (or APPROVAL_SLACK_WEBHOOK_URL) to be set",
            )
        })?;
        let body = json!({ "text": text });
        // Slack allows about one message a second per incoming webhook.
        self.post_url("incoming webhook", Some("webhook"), &url, &body)
            .await
    }

    async fn post_url<B: Serialize + Send + Sync>(
        &self,
        what: &str,
        key: Option<&str>,
        url: &Url,
        body: &B,
    ) -> Result<(), ChannelError> {
        let span = tracing::Span::none();
        self.call(what, key, || async {
            let ctx = SlackClientApiCallContext {
                rate_control_params: None,
                token: None,
                tracing_span: &span,
                // Keeps the URL (its path is a credential) out of slack-morphism's own logs.
                is_sensitive_url: true,
            };
            self.client
                .http_api
                .connector
                .http_post_uri::<B, serde_json::Value>(url.clone(), body, ctx)
                .await
        })
        .await
        .map(|_| ())
    }

    // ----- pacing, retries, health --------------------------------------------------------

    /// Run one API call with pacing and retries. `key` is the conversation the call posts
    /// into (for per-conversation pacing), if any.
    async fn call<T, F, Fut>(&self, what: &str, key: Option<&str>, f: F) -> Result<T, ChannelError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ClientResult<T>>,
    {
        let mut retry = 0u32;
        loop {
            self.pacer.wait(key).await;
            // slack-morphism's client has no time limit of its own: without this, a Slack
            // that accepts a request and never answers would hold the call forever.
            let failure = match tokio::time::timeout(self.request_timeout, f()).await {
                Ok(Ok(v)) => {
                    self.set_connected(true, None);
                    return Ok(v);
                }
                Ok(Err(e)) => classify(&e),
                Err(_) => Failure::Transient(format!(
                    "no answer within {} ms",
                    self.request_timeout.as_millis()
                )),
            };
            let give_up = retry >= self.retry.max_retries;
            match failure {
                Failure::RateLimited(after) if after <= self.retry.max_retry_after && !give_up => {
                    tracing::warn!(
                        method = what,
                        retry_after_ms = after.as_millis() as u64,
                        "Slack rate limit (429): waiting as asked"
                    );
                    self.pacer.hold(key, after);
                }
                Failure::Transient(ref why) if !give_up => {
                    let pause = self.retry.backoff(retry);
                    tracing::warn!(method = what, error = %self.redact(why), retry = retry + 1, backoff_ms = pause.as_millis() as u64, "Slack call failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                other => {
                    let (why, connection_ok) = match other {
                        Failure::RateLimited(after) => (
                            format!(
                                "rate limited (HTTP 429, retry after {}s) after {} attempt(s)",
                                after.as_secs(),
                                retry + 1
                            ),
                            true,
                        ),
                        Failure::Transient(why) => (
                            format!("{why} (gave up after {} attempt(s))", retry + 1),
                            false,
                        ),
                        Failure::Permanent {
                            message,
                            connection_ok,
                        } => (message, connection_ok),
                    };
                    let message = self.redact(&format!("slack {what}: {why}"));
                    {
                        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
                        h.connected = connection_ok;
                        h.last_error = Some(message.clone());
                    }
                    tracing::warn!(error = %message, "Slack call failed");
                    return Err(ChannelError::permanent(message));
                }
            }
            retry += 1;
        }
    }
}

fn classify(err: &SlackClientError) -> Failure {
    match err {
        SlackClientError::RateLimitError(e) => {
            Failure::RateLimited(e.retry_after.unwrap_or(std::time::Duration::from_secs(1)))
        }
        SlackClientError::ApiError(e) => {
            let code = e.code.as_str();
            if code == "ratelimited" {
                Failure::RateLimited(std::time::Duration::from_secs(1))
            } else if TRANSIENT_CODES.contains(&code) {
                Failure::Transient(format!("Slack answered {code}"))
            } else {
                Failure::Permanent {
                    message: code.to_string(),
                    connection_ok: !AUTH_CODES.contains(&code),
                }
            }
        }
        SlackClientError::HttpError(e) => {
            let status = e.status_code;
            // Bodies are left out: webhooks answer plain words, and nothing there helps.
            if status.is_server_error() || status.as_u16() == 408 {
                Failure::Transient(format!("HTTP {}", status.as_u16()))
            } else {
                Failure::Permanent {
                    message: format!(
                        "HTTP {}{}",
                        status.as_u16(),
                        e.http_response_body
                            .as_deref()
                            .map(short_body)
                            .unwrap_or_default()
                    ),
                    connection_ok: !matches!(status.as_u16(), 401 | 403),
                }
            }
        }
        SlackClientError::HttpProtocolError(_)
        | SlackClientError::SystemError(_)
        | SlackClientError::EndOfStream(_) => Failure::Transient(format!("network error: {err}")),
        SlackClientError::ProtocolError(e) => Failure::Permanent {
            message: format!("unexpected answer from Slack: {}", e.json_error),
            connection_ok: true,
        },
        SlackClientError::SocketModeProtocolError(e) => Failure::Transient(e.message.clone()),
    }
}

/// A short, single-line excerpt of an error body (Slack webhooks answer `invalid_payload`,
/// `no_service`, ...).
fn short_body(body: &str) -> String {
    let line: String = body
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    if line.is_empty() {
        String::new()
    } else {
        format!(" {line}")
    }
}

/// Replace anything that looks like a Slack token (`xoxb-...`, `xapp-...`) with `***`.
pub fn redact_token_shapes(text: &str) -> String {
    const PREFIXES: &[&str] = &[
        "xoxb-", "xoxp-", "xoxa-", "xoxe-", "xoxs-", "xoxr-", "xapp-",
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = PREFIXES.iter().filter_map(|p| rest.find(p)).min() {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(tail.len());
        out.push_str("***");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shapes_are_scrubbed() {
        assert_eq!(
            redact_token_shapes("bad token xoxb-123-abc, app xapp-1-A1; ok"),
            "bad token ***, app ***; ok"
        );
        assert_eq!(redact_token_shapes("nothing here"), "nothing here");
    }
}
