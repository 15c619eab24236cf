//! approvald as a client of an upstream assistant approval service (the approver factor
//! `assistant`): it asks the upstream first, forwards execution reports to it, and probes its
//! health. While the upstream cannot be reached approvald is in *fallback mode*: tasks are
//! refused (`fallback_strict`) or run under strict constraints, until a probe succeeds again.
//! Entering and leaving fallback is reported by the engine (log, audit, event, operators).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::config::AssistantConfig;
use crate::tasks::Constraint;

/// What the upstream said about a task.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamVerdict {
    Approved {
        reason: String,
        constraints: Vec<Constraint>,
    },
    Denied {
        reason: String,
    },
    /// The upstream is waiting for its own human; people here decide.
    Pending {
        reason: String,
    },
    /// It could not be reached (after the configured attempts), or answered nonsense.
    Unreachable {
        error: String,
    },
}

#[derive(Deserialize)]
struct ApproveAnswer {
    approved: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    constraints: Option<Vec<Constraint>>,
    #[serde(default)]
    retry_after_seconds: Option<u64>,
    #[serde(default)]
    pending: bool,
}

/// The fallback state as operators see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FallbackState {
    pub configured: bool,
    pub in_fallback: bool,
    pub since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub strict: bool,
}

/// See the module docs. One per engine; cheap to share behind an `Arc`.
pub struct Upstream {
    config: AssistantConfig,
    base: String,
    http: reqwest::Client,
    in_fallback: AtomicBool,
    state: Mutex<(Option<DateTime<Utc>>, Option<String>)>,
}

impl Upstream {
    /// `None` when no upstream URL is configured.
    pub fn from_config(config: &AssistantConfig) -> anyhow::Result<Option<Self>> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(Self {
            config: config.clone(),
            base: url.trim_end_matches('/').to_string(),
            http,
            in_fallback: AtomicBool::new(false),
            state: Mutex::new((None, None)),
        }))
    }

    pub fn config(&self) -> &AssistantConfig {
        &self.config
    }

    pub fn in_fallback(&self) -> bool {
        self.in_fallback.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> FallbackState {
        let (since, last_error) = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        FallbackState {
            configured: true,
            in_fallback: self.in_fallback(),
            since,
            last_error,
            strict: self.config.fallback_strict,
        }
    }

    /// Record whether the last contact worked. Returns `Some(entered)` when the mode changed.
    pub fn note(&self, reachable: bool, error: Option<String>) -> Option<bool> {
        let was = self.in_fallback.swap(!reachable, Ordering::SeqCst);
        if let Ok(mut s) = self.state.lock() {
            if reachable {
                if was {
                    *s = (None, None);
                }
            } else {
                if !was {
                    s.0 = Some(Utc::now());
                }
                s.1 = error;
            }
        }
        (was == reachable).then_some(!reachable)
    }

    /// POST with the configured attempts and backoff; 5xx and network errors are retried,
    /// other answers are final.
    async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let mut delay = Duration::from_millis(self.config.backoff_ms);
        let mut last = String::new();
        for attempt in 1..=self.config.max_attempts {
            let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
            if let Some(key) = &self.config.api_key {
                req = req.bearer_auth(key.expose());
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    return resp
                        .json::<Value>()
                        .await
                        .map_err(|e| format!("answer is not JSON: {}", e.without_url()));
                }
                Ok(resp) if resp.status().is_server_error() => {
                    last = format!("{path} answered {}", resp.status());
                }
                Ok(resp) => {
                    return Err(format!("{path} answered {}", resp.status()));
                }
                Err(e) => last = format!("{path}: {}", e.without_url()),
            }
            if attempt < self.config.max_attempts {
                tokio::time::sleep(delay).await;
                delay = delay.mul_f64(self.config.backoff_multiplier.max(1.0));
            }
        }
        Err(last)
    }

    /// Ask the upstream about a task (the assistant protocol's `/api/approve` body).
    pub async fn ask(&self, body: &Value) -> UpstreamVerdict {
        let answer = match self.post("/api/approve", body).await {
            Ok(v) => v,
            Err(error) => return UpstreamVerdict::Unreachable { error },
        };
        let answer: ApproveAnswer = match serde_json::from_value(answer) {
            Ok(a) => a,
            Err(e) => {
                return UpstreamVerdict::Unreachable {
                    error: format!("/api/approve answer has the wrong shape: {e}"),
                };
            }
        };
        let reason = answer.reason.unwrap_or_default();
        if answer.approved {
            UpstreamVerdict::Approved {
                reason,
                constraints: answer.constraints.unwrap_or_default(),
            }
        } else if answer.pending
            || (answer.retry_after_seconds.is_some()
                && reason.to_ascii_lowercase().contains("pending"))
        {
            UpstreamVerdict::Pending { reason }
        } else {
            UpstreamVerdict::Denied { reason }
        }
    }

    /// Forward one execution report; an error means it must stay in the outbox.
    pub async fn forward_report(&self, body: &Value) -> Result<(), String> {
        self.post("/api/execution-report", body).await.map(|_| ())
    }

    /// `GET /health`: any 2xx is healthy.
    pub async fn probe(&self) -> Result<(), String> {
        let mut req = self.http.get(format!("{}/health", self.base));
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key.expose());
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("/health answered {}", r.status())),
            Err(e) => Err(format!("/health: {}", e.without_url())),
        }
    }
}
