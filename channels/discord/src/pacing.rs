//! Discord's rate limits, honoured on our side.
//!
//! serenity's own ratelimiter has to be off so requests reach `api_url` (with it on, the proxy
//! setting is ignored), so this module does its job: one lane per route bucket (method, route
//! and major id, serenity's own bucketing) where requests go one at a time and wait out
//! `X-RateLimit-Remaining: 0` / `X-RateLimit-Reset-After`; a global pace (50 requests per
//! second by default); and 429 answers that block their lane, or everything when Discord says
//! the limit is global.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use serenity::http::{LightMethod, RatelimitingBucket};
use tokio::time::Instant;

/// Requests to one route bucket, one at a time, with the time Discord asked us to wait until.
#[derive(Debug, Default)]
pub struct Lane {
    blocked_until: Option<Instant>,
}

impl Lane {
    /// Sleep until this bucket may be used again.
    pub async fn wait(&self) {
        if let Some(until) = self.blocked_until {
            tokio::time::sleep_until(until).await;
        }
    }

    /// How much longer this bucket is blocked, if it is.
    pub fn blocked_for(&self) -> Option<Duration> {
        self.blocked_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// Take note of the limit headers of an answer on this bucket.
    pub fn observe(&mut self, limits: &RateLimitHeaders) {
        if limits.remaining == Some(0)
            && let Some(reset) = limits.reset_after
        {
            self.block(reset);
        }
    }

    pub fn block(&mut self, for_: Duration) {
        let until = Instant::now() + for_;
        if self.blocked_until.is_none_or(|b| b < until) {
            self.blocked_until = Some(until);
        }
    }
}

#[derive(Debug)]
struct GlobalState {
    next_slot: Instant,
    blocked_until: Option<Instant>,
}

/// A route bucket: method, route and major id.
type LaneKey = (LightMethod, RatelimitingBucket);

/// Rate limits shared by every request of one bot.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    global: tokio::sync::Mutex<GlobalState>,
    lanes: Mutex<HashMap<LaneKey, Arc<tokio::sync::Mutex<Lane>>>>,
}

/// Lanes kept before idle ones are dropped (DM channels and threads come and go).
const MAX_IDLE_LANES: usize = 512;

impl Pacer {
    pub fn new(per_second: u32) -> Self {
        Self {
            // 3 % slower than the limit: sends spaced exactly at it put one too many in some
            // one-second window once the network jitters, and earn a 429.
            interval: Duration::from_secs(1) * 103 / 100 / per_second.max(1),
            global: tokio::sync::Mutex::new(GlobalState {
                next_slot: Instant::now(),
                blocked_until: None,
            }),
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// The lane of a route, or `None` for routes without a bucket.
    pub fn lane(
        &self,
        method: LightMethod,
        bucket: RatelimitingBucket,
    ) -> Option<Arc<tokio::sync::Mutex<Lane>>> {
        if bucket.is_none() {
            return None;
        }
        let mut lanes = self.lanes.lock().ok()?;
        if lanes.len() > MAX_IDLE_LANES {
            let now = Instant::now();
            lanes.retain(|_, lane| {
                Arc::strong_count(lane) > 1
                    || lane
                        .try_lock()
                        .map_or(true, |l| l.blocked_until.is_some_and(|b| b > now))
            });
        }
        Some(lanes.entry((method, bucket)).or_default().clone())
    }

    /// Wait for a global slot: the steady pace, and any global 429 block.
    pub async fn wait_global(&self) {
        let start = {
            let mut g = self.global.lock().await;
            let now = Instant::now();
            let mut start = g.next_slot.max(now);
            if let Some(blocked) = g.blocked_until {
                start = start.max(blocked);
            }
            g.next_slot = start + self.interval;
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// How much longer a global 429 blocks every request, if it does.
    pub async fn global_blocked_for(&self) -> Option<Duration> {
        self.global
            .lock()
            .await
            .blocked_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// Discord said the global limit was hit: everyone waits.
    pub async fn block_global(&self, for_: Duration) {
        let until = Instant::now() + for_;
        let mut g = self.global.lock().await;
        if g.blocked_until.is_none_or(|b| b < until) {
            g.blocked_until = Some(until);
        }
    }
}

/// The rate-limit facts of one answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimitHeaders {
    pub remaining: Option<u64>,
    pub reset_after: Option<Duration>,
    /// `Retry-After` (seconds) on a 429.
    pub retry_after: Option<Duration>,
    /// `X-RateLimit-Global: true` or `X-RateLimit-Scope: global`.
    pub global: bool,
}

impl RateLimitHeaders {
    pub fn parse(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let secs = |name: &str| text(name).and_then(|v| seconds(v.trim().parse().ok()?));
        Self {
            remaining: text("x-ratelimit-remaining").and_then(|v| v.trim().parse().ok()),
            reset_after: secs("x-ratelimit-reset-after"),
            retry_after: secs("retry-after"),
            global: text("x-ratelimit-global").is_some_and(|v| v.eq_ignore_ascii_case("true"))
                || text("x-ratelimit-scope").is_some_and(|v| v.eq_ignore_ascii_case("global")),
        }
    }
}

/// What a 429 asks for: how long to wait and whether the limit is global.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimited {
    pub retry_after: Duration,
    pub global: bool,
}

impl RateLimited {
    /// From the 429's JSON body (`retry_after` in seconds, `global`), falling back to the
    /// headers, then to one second.
    pub fn from_answer(body: &[u8], limits: &RateLimitHeaders) -> Self {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let from_body = json
            .get("retry_after")
            .and_then(|v| v.as_f64())
            .and_then(seconds);
        Self {
            retry_after: from_body
                .or(limits.retry_after)
                .or(limits.reset_after)
                .unwrap_or(Duration::from_secs(1)),
            global: json
                .get("global")
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
                || limits.global,
        }
    }
}

fn seconds(s: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serenity::http::Route;
    use serenity::model::id::ChannelId;

    #[test]
    fn headers_and_429_bodies_are_read_leniently() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("x-ratelimit-reset-after", HeaderValue::from_static("0.25"));
        h.insert("x-ratelimit-scope", HeaderValue::from_static("global"));
        let limits = RateLimitHeaders::parse(&h);
        assert_eq!(limits.remaining, Some(0));
        assert_eq!(limits.reset_after, Some(Duration::from_millis(250)));
        assert!(limits.global);

        let r = RateLimited::from_answer(
            br#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#,
            &RateLimitHeaders::default(),
        );
        assert_eq!(
            r,
            RateLimited {
                retry_after: Duration::from_millis(1500),
                global: false
            }
        );
        // Garbage body and a negative header fall back to the next source.
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("-3"));
        h.insert("x-ratelimit-reset-after", HeaderValue::from_static("2"));
        let r = RateLimited::from_answer(b"<html>", &RateLimitHeaders::parse(&h));
        assert_eq!(r.retry_after, Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_lane_with_no_requests_left_waits_for_the_reset() {
        let pacer = Pacer::new(1000);
        let route = Route::ChannelMessages {
            channel_id: ChannelId::new(5),
        };
        let lane = pacer
            .lane(LightMethod::Post, route.ratelimiting_bucket())
            .unwrap();
        let same = pacer
            .lane(LightMethod::Post, route.ratelimiting_bucket())
            .unwrap();
        assert!(Arc::ptr_eq(&lane, &same));
        lane.lock().await.observe(&RateLimitHeaders {
            remaining: Some(0),
            reset_after: Some(Duration::from_millis(80)),
            ..Default::default()
        });
        let left = same.lock().await.blocked_for().expect("blocked");
        assert!(left <= Duration::from_millis(80), "{left:?}");
        let start = Instant::now();
        same.lock().await.wait().await;
        assert!(
            start.elapsed() >= Duration::from_millis(75),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(same.lock().await.blocked_for(), None);
    }

    #[tokio::test]
    async fn the_global_pace_spaces_requests() {
        let pacer = Pacer::new(20); // one slot per 50 ms
        let start = Instant::now();
        for _ in 0..4 {
            pacer.wait_global().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(145),
            "{:?}",
            start.elapsed()
        );
    }
}
