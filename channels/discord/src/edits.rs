//! Hand-over of the engine's edit of a pressed message to the press's own answer.
//!
//! When someone presses a button the engine decides and then edits every prompt, the pressed
//! one included. Discord lets the press answer edit its message directly (UPDATE_MESSAGE), so
//! the press handler waits briefly for the engine's `update` of that message and answers with
//! it: the message changes once, to the same layout as every other copy. If the edit does not
//! come in time, `update` falls back to a normal REST edit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use approvald_channel::Prompt;
use tokio::sync::oneshot;

/// One waiting press: its ticket and where to send the edit.
type Waiter = (u64, oneshot::Sender<Prompt>);

/// Press handlers waiting for the edit of their message, by message id.
#[derive(Default)]
pub struct EditWaiters {
    next: AtomicU64,
    waiting: Mutex<HashMap<String, Vec<Waiter>>>,
}

impl EditWaiters {
    /// Wait for the next edit of `message_id`; the ticket withdraws the wait.
    pub fn wait_for(&self, message_id: &str) -> (u64, oneshot::Receiver<Prompt>) {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.entry(message_id.to_string())
                .or_default()
                .push((ticket, tx));
        }
        (ticket, rx)
    }

    /// Withdraw a wait. After this no edit can reach the receiver any more, so one
    /// `try_recv` tells for sure whether an edit was handed over.
    pub fn stop_waiting(&self, message_id: &str, ticket: u64) {
        if let Ok(mut w) = self.waiting.lock()
            && let Some(list) = w.get_mut(message_id)
        {
            list.retain(|(t, _)| *t != ticket);
            if list.is_empty() {
                w.remove(message_id);
            }
        }
    }

    /// Give an edit to whoever waits for it; `false` when nobody took it (edit it yourself).
    pub fn hand_over(&self, message_id: &str, prompt: &Prompt) -> bool {
        let Ok(mut w) = self.waiting.lock() else {
            return false;
        };
        let Some(list) = w.remove(message_id) else {
            return false;
        };
        let mut taken = false;
        for (_, tx) in list {
            taken |= tx.send(prompt.clone()).is_ok();
        }
        taken
    }
}
