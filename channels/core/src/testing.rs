//! An in-process channel for tests: it records every delivery, edit and notice, can be told to
//! fail or stall for a target, and can inject button presses as a given platform user.
//! It is what the engine's integration tests talk to instead of a real chat platform.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::{
    Channel, ChannelError, Decision, InboundAction, InboundReply, InboundSink, Markup, MessageRef,
    PlatformUser, Prompt, Target, Transport,
};

/// One thing the channel was asked to do, in order.
#[derive(Debug, Clone)]
pub enum RecordedCall {
    Deliver {
        target: Target,
        prompt: Prompt,
        message: MessageRef,
    },
    Update {
        message: MessageRef,
        prompt: Prompt,
    },
    Notify {
        target: Target,
        text: String,
    },
}

#[derive(Default)]
struct State {
    calls: Vec<RecordedCall>,
    failing: HashSet<String>,
    stalled: HashSet<String>,
    next_id: u64,
}

/// See the module docs. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct TestChannel {
    name: String,
    transport: Transport,
    markup: Markup,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    sink: Arc<Mutex<Option<Arc<dyn InboundSink>>>>,
}

impl TestChannel {
    /// A channel called `name` whose users decide with the given transport (e.g. a fake
    /// "discord" surface), rendering plain text.
    pub fn new(name: &str, transport: Transport) -> Self {
        Self {
            name: name.to_string(),
            transport,
            markup: Markup::Plain,
            state: Arc::default(),
            changed: Arc::default(),
            sink: Arc::default(),
        }
    }

    /// Render prompts for this markup instead of plain text.
    pub fn with_markup(mut self, markup: Markup) -> Self {
        self.markup = markup;
        self
    }

    /// Deliveries and notices to `to` fail permanently from now on.
    pub fn fail_target(&self, to: &str) {
        self.lock().failing.insert(to.to_string());
    }

    /// Deliveries to `to` hang (until the caller gives up) from now on.
    pub fn stall_target(&self, to: &str) {
        self.lock().stalled.insert(to.to_string());
    }

    pub fn calls(&self) -> Vec<RecordedCall> {
        self.lock().calls.clone()
    }

    /// Deliveries so far, as (target, prompt, message reference).
    pub fn deliveries(&self) -> Vec<(Target, Prompt, MessageRef)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                RecordedCall::Deliver {
                    target,
                    prompt,
                    message,
                } => Some((target, prompt, message)),
                _ => None,
            })
            .collect()
    }

    /// Edits so far, as (message reference, new prompt).
    pub fn updates(&self) -> Vec<(MessageRef, Prompt)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                RecordedCall::Update { message, prompt } => Some((message, prompt)),
                _ => None,
            })
            .collect()
    }

    pub fn notices(&self) -> Vec<(Target, String)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                RecordedCall::Notify { target, text } => Some((target, text)),
                _ => None,
            })
            .collect()
    }

    /// Wait until `pred` holds over the recorded calls, or panic after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[RecordedCall]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let calls = self.calls();
            if pred(&calls) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let calls = self.calls();
                panic!("timed out waiting for {what}; calls so far: {calls:#?}");
            }
        }
    }

    /// The sink the engine gave this channel at start, for receivers' other questions
    /// (`/pending`, which approval a replied-to message belongs to).
    pub fn sink(&self) -> Arc<dyn InboundSink> {
        let sink = self.sink.lock().map(|s| s.clone()).ok().flatten();
        match sink {
            Some(sink) => sink,
            None => panic!("TestChannel {} was never started by the engine", self.name),
        }
    }

    /// Press a button (or type a command) as `user`, the way a platform receiver would.
    pub async fn press(
        &self,
        approval: &str,
        decision: Decision,
        user: PlatformUser,
    ) -> InboundReply {
        let sink = self.sink.lock().map(|s| s.clone()).ok().flatten();
        let Some(sink) = sink else {
            panic!("TestChannel {} was never started by the engine", self.name);
        };
        sink.decide(InboundAction {
            channel: self.name.clone(),
            approval: approval.to_string(),
            decision,
            user,
            reason: None,
            abort: false,
        })
        .await
    }

    /// Press the Abort button of a running task as `user`.
    pub async fn press_abort(&self, approval: &str, user: PlatformUser) -> InboundReply {
        let sink = self.sink.lock().map(|s| s.clone()).ok().flatten();
        let Some(sink) = sink else {
            panic!("TestChannel {} was never started by the engine", self.name);
        };
        sink.decide(InboundAction {
            channel: self.name.clone(),
            approval: approval.to_string(),
            decision: Decision::Deny,
            user,
            reason: None,
            abort: true,
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, call: RecordedCall) {
        self.lock().calls.push(call);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl Channel for TestChannel {
    fn name(&self) -> &str {
        &self.name
    }

    fn transport(&self) -> Transport {
        self.transport
    }

    fn markup(&self) -> Markup {
        self.markup
    }

    async fn start(&self, sink: Arc<dyn InboundSink>) -> Result<(), ChannelError> {
        if let Ok(mut slot) = self.sink.lock() {
            *slot = Some(sink);
        }
        Ok(())
    }

    async fn deliver(&self, target: &Target, prompt: &Prompt) -> Result<MessageRef, ChannelError> {
        let (failing, stalled) = {
            let s = self.lock();
            (
                s.failing.contains(&target.to),
                s.stalled.contains(&target.to),
            )
        };
        if stalled {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if failing {
            return Err(ChannelError::permanent(format!(
                "test channel refuses {}",
                target.to
            )));
        }
        let message = {
            let mut s = self.lock();
            s.next_id += 1;
            MessageRef {
                channel: self.name.clone(),
                to: target.to.clone(),
                thread_id: target.thread_id.clone(),
                message_id: format!("m{}", s.next_id),
            }
        };
        self.record(RecordedCall::Deliver {
            target: target.clone(),
            prompt: prompt.clone(),
            message: message.clone(),
        });
        Ok(message)
    }

    async fn update(&self, message: &MessageRef, prompt: &Prompt) -> Result<(), ChannelError> {
        self.record(RecordedCall::Update {
            message: message.clone(),
            prompt: prompt.clone(),
        });
        Ok(())
    }

    async fn notify(&self, target: &Target, text: &str) -> Result<MessageRef, ChannelError> {
        if self.lock().failing.contains(&target.to) {
            return Err(ChannelError::permanent(format!(
                "test channel refuses {}",
                target.to
            )));
        }
        self.record(RecordedCall::Notify {
            target: target.clone(),
            text: text.to_string(),
        });
        Ok(MessageRef {
            channel: self.name.clone(),
            to: target.to.clone(),
            thread_id: target.thread_id.clone(),
            message_id: "notice".into(),
        })
    }
}
