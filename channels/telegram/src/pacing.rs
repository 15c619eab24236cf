//! Pacing of outgoing messages: Telegram allows about one message a second per chat and thirty
//! a second overall, and answers bursts beyond that with 429s that hold the whole chat.
//! Sending at the allowed pace up front means a burst of prompts arrives late but complete.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// One chat's queue. Whoever holds its lock is the only sender to that chat, for the whole
/// call including retries, so a 429's retry_after holds back everyone behind it too, and
/// messages to one chat go out in the order they were queued (tokio's mutex is fair).
#[derive(Debug, Default)]
pub struct Lane {
    /// The earliest moment the next message may go to this chat.
    next: Option<Instant>,
}

impl Lane {
    /// Sleep until this chat may get the next message.
    pub async fn turn(&self) {
        if let Some(next) = self.next {
            tokio::time::sleep_until(next).await;
        }
    }

    /// A message just went out (or was refused): the next waits `interval`.
    pub fn sent(&mut self, interval: Duration) {
        self.next = Some(Instant::now() + interval);
    }

    /// Telegram said "retry after `wait`": nothing goes to this chat before then.
    pub fn hold(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        self.next = Some(self.next.map_or(until, |n| n.max(until)));
    }
}

/// Per-chat lanes plus the bot-wide slot clock. See the module docs.
#[derive(Debug)]
pub struct Pacer {
    pub chat_interval: Duration,
    global_interval: Duration,
    lanes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Lane>>>>,
    global_next: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(chat_interval: Duration, global_interval: Duration) -> Self {
        Self {
            chat_interval,
            global_interval,
            lanes: Mutex::default(),
            global_next: Mutex::default(),
        }
    }

    /// The lane of one chat (lock it to send there).
    pub fn lane(&self, chat: &str) -> Arc<tokio::sync::Mutex<Lane>> {
        let mut lanes = self
            .lanes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if lanes.len() > 10_000 {
            // Lanes nobody holds and whose pause is over carry no state worth keeping.
            let now = Instant::now();
            lanes.retain(|_, lane| {
                Arc::strong_count(lane) > 1
                    || lane
                        .try_lock()
                        .map_or(true, |l| l.next.is_some_and(|n| n > now))
            });
        }
        lanes.entry(chat.to_string()).or_default().clone()
    }

    /// Wait for the bot-wide slot. Slots are reserved in order under a lock, so concurrent
    /// senders to different chats are spread `global_interval` apart.
    pub async fn global_turn(&self) {
        let slot = self.reserve_global(Instant::now());
        tokio::time::sleep_until(slot).await;
    }

    fn reserve_global(&self, now: Instant) -> Instant {
        let mut next = self
            .global_next
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let slot = next.map_or(now, |n| now.max(n));
        *next = Some(slot + self.global_interval);
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_slots_are_spread_in_order() {
        let p = Pacer::new(Duration::from_millis(1000), Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(p.reserve_global(t0), t0);
        assert_eq!(p.reserve_global(t0), t0 + Duration::from_millis(100));
        assert_eq!(p.reserve_global(t0), t0 + Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chat_lane_spaces_messages_and_a_hold_pushes_it_back() {
        let p = Pacer::new(Duration::from_millis(1000), Duration::ZERO);
        let lane = p.lane("a");
        let t0 = Instant::now();
        {
            let mut l = lane.lock().await;
            l.turn().await;
            assert_eq!(Instant::now(), t0);
            l.sent(p.chat_interval);
        }
        {
            let mut l = lane.lock().await;
            l.turn().await;
            assert_eq!(Instant::now(), t0 + Duration::from_millis(1000));
            l.sent(p.chat_interval);
            l.hold(Duration::from_secs(5));
        }
        // Another chat is not held up by "a".
        let other = p.lane("b");
        other.lock().await.turn().await;
        assert_eq!(Instant::now(), t0 + Duration::from_millis(1000));
        lane.lock().await.turn().await;
        assert_eq!(Instant::now(), t0 + Duration::from_millis(6000));
    }
}
