//! Sending pace. Slack allows about one message a second per conversation (bursts are
//! answered with 429), so each call reserves the next free slot for its conversation and a
//! free global slot before it goes out. Calls to a conversation go out in call order; a call
//! to an idle conversation is not kept waiting behind a busy one: the global pace keeps its
//! own reservations and gives each call the earliest one free at or after the moment its
//! conversation allows. A 429 pushes every slot back by `Retry-After`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Pacing;

/// Added to the per-conversation spacing: sends spaced exactly one second apart arrive less
/// than a second apart whenever the network jitters, and earn a 429.
const JITTER_MARGIN: Duration = Duration::from_millis(25);

/// See the module docs.
#[derive(Debug)]
pub struct Pacer {
    pacing: Pacing,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Global slots handed out and not yet past.
    global: BTreeSet<Instant>,
    per_key: HashMap<String, Instant>,
    /// Set by a 429: calls that reserved a slot before it must not go out before this.
    held_until: Instant,
}

impl Pacer {
    pub fn new(pacing: Pacing) -> Self {
        Self {
            pacing,
            state: Mutex::new(State {
                global: BTreeSet::new(),
                per_key: HashMap::new(),
                held_until: Instant::now(),
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
        let gap = self.pacing.global;
        // Past slots no longer constrain anyone.
        let horizon = now.checked_sub(gap).unwrap_or(now);
        s.global = s.global.split_off(&horizon);
        let mut slot = now.max(s.held_until);
        if let Some(next) = key.and_then(|k| s.per_key.get(k)) {
            slot = slot.max(*next);
        }
        // The earliest moment at or after `slot` that is `gap` away from every reservation.
        if !gap.is_zero() {
            let from = slot.checked_sub(gap).unwrap_or(slot);
            for taken in s.global.range(from..) {
                if *taken >= slot + gap {
                    break;
                }
                slot = slot.max(*taken + gap);
            }
            s.global.insert(slot);
        }
        if let Some(k) = key {
            // No spacing asked for (pacing switched off), no margin either.
            let spacing = if self.pacing.per_channel.is_zero() {
                Duration::ZERO
            } else {
                self.pacing.per_channel + JITTER_MARGIN
            };
            s.per_key.insert(k.to_string(), slot + spacing);
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_busy_conversation_does_not_hold_up_the_others() {
        let p = std::sync::Arc::new(Pacer::new(Pacing {
            per_channel: Duration::from_secs(1),
            global: Duration::from_millis(50),
        }));
        let start = Instant::now();
        // Ten messages queued for C1 reach a second apart...
        let busy: Vec<_> = (0..10)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move {
                    p.wait(Some("C1")).await;
                    Instant::now()
                })
            })
            .collect();
        tokio::task::yield_now().await;
        // ...while a message to another conversation goes out at once, not after them.
        p.wait(Some("C2")).await;
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
        let mut sent = Vec::new();
        for b in busy {
            sent.push(b.await.unwrap());
        }
        sent.sort();
        for pair in sent.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_secs(1),
                "{:?}",
                pair[1] - pair[0]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_pace_holds_across_conversations() {
        let p = Pacer::new(Pacing {
            per_channel: Duration::from_secs(1),
            global: Duration::from_millis(50),
        });
        let mut at = Vec::new();
        for i in 0..20 {
            p.wait(Some(&format!("C{i}"))).await;
            at.push(Instant::now());
        }
        for pair in at.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(50));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_switched_off_sends_at_once() {
        let p = Pacer::new(Pacing {
            per_channel: Duration::ZERO,
            global: Duration::ZERO,
        });
        let start = Instant::now();
        for _ in 0..100 {
            p.wait(Some("C1")).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
