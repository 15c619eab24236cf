//! What the control UI's status panel shows for a Discord channel: whether the last call to
//! Discord got through (and, in gateway mode, whether the websocket is up), and the last error.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use approvald_channel::ChannelHealth;

/// Shared between the REST client, the gateway task and `Channel::health`.
#[derive(Debug, Default)]
pub struct Health {
    /// The last REST call reached Discord and was accepted (a 4xx about one message still
    /// counts as reachable; a bad token, 5xx or network error does not).
    rest_ok: AtomicBool,
    /// `None` in interactions-endpoint mode; the gateway's state otherwise.
    gateway: Option<AtomicBool>,
    last_error: Mutex<Option<String>>,
}

impl Health {
    pub fn new(gateway_mode: bool) -> Self {
        Self {
            rest_ok: AtomicBool::new(false),
            gateway: gateway_mode.then(|| AtomicBool::new(false)),
            last_error: Mutex::new(None),
        }
    }

    /// A call succeeded: Discord is reachable and the token works.
    pub fn ok(&self) {
        self.rest_ok.store(true, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    /// A call failed for good. `reachable` says whether Discord answered at all (a refusal of
    /// one message leaves the channel connected).
    pub fn failed(&self, message: &str, reachable: bool) {
        if !reachable {
            self.rest_ok.store(false, Ordering::Relaxed);
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(message.to_string());
        }
    }

    /// The gateway websocket came up or went down.
    pub fn gateway(&self, connected: bool, error: Option<&str>) {
        if let Some(g) = &self.gateway {
            g.store(connected, Ordering::Relaxed);
        }
        if let Some(error) = error
            && let Ok(mut e) = self.last_error.lock()
        {
            *e = Some(error.to_string());
        }
    }

    pub fn snapshot(&self) -> ChannelHealth {
        let rest = self.rest_ok.load(Ordering::Relaxed);
        let gateway = self
            .gateway
            .as_ref()
            .is_none_or(|g| g.load(Ordering::Relaxed));
        ChannelHealth {
            connected: rest && gateway,
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_channel_connected_but_outages_do_not() {
        let h = Health::new(false);
        assert!(!h.snapshot().connected, "nothing has reached Discord yet");
        h.ok();
        assert_eq!(
            h.snapshot(),
            ChannelHealth {
                connected: true,
                last_error: None
            }
        );
        h.failed("403 Missing Access", true);
        let s = h.snapshot();
        assert!(s.connected);
        assert_eq!(s.last_error.as_deref(), Some("403 Missing Access"));
        h.failed("503", false);
        assert!(!h.snapshot().connected);
        h.ok();
        assert_eq!(h.snapshot().last_error, None);

        let g = Health::new(true);
        g.ok();
        assert!(!g.snapshot().connected, "gateway not up yet");
        g.gateway(true, None);
        assert!(g.snapshot().connected);
    }
}
