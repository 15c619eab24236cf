//! Sending pace. Slack allows about one message a second per conversation (bursts are
//! answered with 429), so each call reserves the next free slot for its conversation and the
//! next free global slot before it goes out. Slots are handed out in call order, so prompts
//! queue fairly instead of racing into a 429. A 429 pushes the slots back by `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Pacing;

/// See the module docs.
#[derive(Debug)]
pub struct Pacer {
    pacing: Pacing,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    global_next: Instant,
    per_key: HashMap<String, Instant>,
    /// Set by a 429: calls that reserved a slot before it must not go out before this.
    held_until: Instant,
}

impl Pacer {
    pub fn new(pacing: Pacing) -> Self {
        let now = Instant::now();
        Self {
            pacing,
            state: Mutex::new(State {
                global_next: now,
                per_key: HashMap::new(),
                held_until: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for this call's slot: the conversation `key` (if any) and the global one.
    pub async fn wait(&self, key: Option<&str>) {
        loop {
            let slot = self.reserve(key);
            tokio::time::sleep_until(slot).await;
            // A 429 that arrived while we slept voids the slot: queue again behind it, so the
            // calls waiting keep their order and their spacing.
            if Instant::now() >= self.lock().held_until {
                return;
            }
        }
    }

    fn reserve(&self, key: Option<&str>) -> Instant {
        let mut s = self.lock();
        let now = Instant::now();
        let mut slot = s.global_next.max(now);
        if let Some(k) = key {
            if let Some(next) = s.per_key.get(k) {
                slot = slot.max(*next);
            }
            s.per_key
                .insert(k.to_string(), slot + self.pacing.per_channel);
        }
        s.global_next = slot + self.pacing.global;
        // Forget conversations that are idle, so the map stays small.
        if s.per_key.len() > 1024 {
            s.per_key.retain(|_, next| *next > now);
        }
        slot
    }

    /// Slack said "slow down" (429): nothing goes out before `retry_after` has passed, and
    /// that conversation's next message not before then either.
    pub fn hold(&self, key: Option<&str>, retry_after: Duration) {
        let mut s = self.lock();
        let until = Instant::now() + retry_after;
        s.held_until = s.held_until.max(until);
        s.global_next = s.global_next.max(until);
        if let Some(k) = key {
            let next = s.per_key.entry(k.to_string()).or_insert(until);
            *next = (*next).max(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_conversation_is_spaced_others_are_not_held_by_it() {
        let p = Pacer::new(Pacing {
            per_channel: Duration::from_secs(1),
            global: Duration::from_millis(10),
        });
        let start = Instant::now();
        p.wait(Some("C1")).await;
        p.wait(Some("C2")).await;
        assert!(start.elapsed() < Duration::from_millis(100));
        p.wait(Some("C1")).await;
        assert!(start.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_also_holds_calls_that_had_already_reserved_a_slot() {
        let p = std::sync::Arc::new(Pacer::new(Pacing {
            per_channel: Duration::from_millis(100),
            global: Duration::ZERO,
        }));
        let start = Instant::now();
        p.wait(Some("C1")).await;
        let queued = {
            let p = p.clone();
            tokio::spawn(async move {
                p.wait(Some("C1")).await;
                Instant::now()
            })
        };
        tokio::task::yield_now().await;
        p.hold(Some("C1"), Duration::from_secs(2));
        let sent_at = queued.await.unwrap();
        assert!(
            sent_at - start >= Duration::from_secs(2),
            "{:?}",
            sent_at - start
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_everything_for_retry_after() {
        let p = Pacer::new(Pacing {
            per_channel: Duration::ZERO,
            global: Duration::ZERO,
        });
        let start = Instant::now();
        p.hold(Some("C1"), Duration::from_secs(3));
        p.wait(Some("C9")).await;
        assert!(start.elapsed() >= Duration::from_secs(3));
    }
}
