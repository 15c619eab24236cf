//! What the status panel and `/healthz` show for this channel.
//!
//! Receiving and sending fail for different reasons (a second poller on the token breaks
//! receiving only; a wrong chat id breaks one target only), so each keeps its own last error
//! and a success clears only its own.

use std::sync::Mutex;

use approvald_channel::ChannelHealth;

/// See the module docs. Texts stored here are already redacted.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
}

/// The two sides' states behind the lock.
#[derive(Debug, Default)]
struct State {
    /// The receiving side works: the last getUpdates (polling) or setWebhook/getMe (webhook)
    /// succeeded.
    receiving: bool,
    receive_error: Option<String>,
    send_error: Option<String>,
}

impl Health {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut s)
    }

    pub fn receive_ok(&self) {
        self.with(|s| {
            s.receiving = true;
            s.receive_error = None;
        });
    }

    pub fn receive_failed(&self, error: String) {
        self.with(|s| {
            s.receiving = false;
            s.receive_error = Some(error);
        });
    }

    pub fn send_ok(&self) {
        self.with(|s| s.send_error = None);
    }

    pub fn send_failed(&self, error: String) {
        self.with(|s| s.send_error = Some(error));
    }

    pub fn snapshot(&self) -> ChannelHealth {
        self.with(|s| ChannelHealth {
            connected: s.receiving,
            last_error: s.receive_error.clone().or_else(|| s.send_error.clone()),
        })
    }
}
