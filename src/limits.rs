//! Request rate limits per API token, agent and session, so one runaway agent (or a leaked
//! token) cannot flood people with prompts or the store with requests. Token buckets from
//! `governor`, one keyed limiter per scope; a refusal says which scope and when to come back.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitsConfig;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// `token`, `agent` or `session`.
    pub scope: &'static str,
    pub key: String,
    pub retry_after: Duration,
}

/// See the module docs.
pub struct RequestLimiter {
    scopes: Vec<(&'static str, DefaultKeyedRateLimiter<String>)>,
    clock: DefaultClock,
    /// When each (scope, key) was last written to the audit log, so a flood of refusals does
    /// not become a flood of audit rows.
    last_reported: DashMap<String, Instant>,
}

impl RequestLimiter {
    pub fn new(config: &LimitsConfig) -> Self {
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        // Most specific first, so a refusal names the narrowest scope that is over.
        let scopes = [
            ("session", config.requests_per_minute_per_session),
            ("agent", config.requests_per_minute_per_agent),
            ("token", config.requests_per_minute_per_token),
        ]
        .into_iter()
        .filter_map(|(scope, per_minute)| {
            let per_minute = NonZeroU32::new(per_minute)?;
            Some((
                scope,
                RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            ))
        })
        .collect();
        Self {
            scopes,
            clock: DefaultClock::default(),
            last_reported: DashMap::new(),
        }
    }

    /// Count one request; refuse it when any of its scopes is over its rate.
    pub fn check(
        &self,
        token: &str,
        agent: Option<&str>,
        session: Option<&str>,
    ) -> Result<(), Limited> {
        for (scope, limiter) in &self.scopes {
            let key = match *scope {
                "token" => Some(token),
                "agent" => agent,
                _ => session,
            };
            let Some(key) = key else { continue };
            if let Err(not_until) = limiter.check_key(&key.to_string()) {
                return Err(Limited {
                    scope,
                    key: key.to_string(),
                    retry_after: not_until.wait_time_from(self.clock.now()),
                });
            }
        }
        Ok(())
    }

    /// True at most once every 10 s per (scope, key): whether to audit this refusal.
    pub fn should_report(&self, limited: &Limited) -> bool {
        let now = Instant::now();
        let key = format!("{}:{}", limited.scope, limited.key);
        let mut fresh = false;
        self.last_reported
            .entry(key)
            .and_modify(|at| {
                if now.duration_since(*at) >= Duration::from_secs(10) {
                    *at = now;
                    fresh = true;
                }
            })
            .or_insert_with(|| {
                fresh = true;
                now
            });
        fresh
    }

    /// Forget keys that are back to full buckets (bounded memory under many keys).
    pub fn housekeeping(&self) {
        for (_, limiter) in &self.scopes {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let cutoff = Instant::now() - Duration::from_secs(60);
        self.last_reported.retain(|_, at| *at > cutoff);
    }

    pub fn is_active(&self) -> bool {
        !self.scopes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_is_counted_on_its_own_and_refusals_say_when_to_return() {
        let limiter = RequestLimiter::new(&LimitsConfig {
            requests_per_minute_per_token: 0,
            requests_per_minute_per_agent: 0,
            requests_per_minute_per_session: 2,
            burst: 2,
            fold_identical: true,
        });
        assert!(limiter.check("gw", Some("a"), Some("s1")).is_ok());
        assert!(limiter.check("gw", Some("a"), Some("s1")).is_ok());
        let refused = limiter.check("gw", Some("a"), Some("s1")).unwrap_err();
        assert_eq!(refused.scope, "session");
        assert_eq!(refused.key, "s1");
        assert!(refused.retry_after > Duration::from_secs(1));
        assert!(
            limiter.check("gw", Some("a"), Some("s2")).is_ok(),
            "own bucket"
        );
        assert!(
            limiter.check("gw", Some("a"), None).is_ok(),
            "no session, no limit"
        );
        assert!(limiter.should_report(&refused));
        assert!(!limiter.should_report(&refused), "reported once per window");

        let tokens = RequestLimiter::new(&LimitsConfig {
            requests_per_minute_per_token: 60,
            burst: 1,
            ..LimitsConfig::default()
        });
        assert!(tokens.check("gw", None, None).is_ok());
        assert_eq!(tokens.check("gw", None, None).unwrap_err().scope, "token");
        assert!(tokens.check("other", None, None).is_ok());
    }
}
