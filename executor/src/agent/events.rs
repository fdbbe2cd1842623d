//! The endpoint's events on the agent's side: those not yet sent to the
//! service (kept while the link is down, to a bound: the oldest go first),
//! and the last few, which `agent.json` shows to `hpfaas endpoint status`.

use std::collections::VecDeque;

use hpfaas_protocol::endpoint::{AgentMessage, EndpointEvent, MAX_EVENTS_PER_FRAME};

/// Most events kept for the service while it is out of reach.
pub const PENDING_MAX: usize = 1024;
/// Events `agent.json` shows.
pub const RECENT_MAX: usize = 50;

/// Events waiting for the service, and the recent ones.
#[derive(Debug, Default)]
pub struct EventQueue {
    pending: VecDeque<EndpointEvent>,
    recent: VecDeque<EndpointEvent>,
    /// Events dropped unsent since the last frame (the queue was full).
    dropped: u64,
    /// The recent events changed since [`EventQueue::take_changed`].
    changed: bool,
}

impl EventQueue {
    /// Adds events, oldest first.
    pub fn push(&mut self, events: impl IntoIterator<Item = EndpointEvent>) {
        for event in events {
            tracing::info!(kind = event.kind.as_str(), block = ?event.block_id, "{}", event.message);
            if self.pending.len() == PENDING_MAX {
                self.pending.pop_front();
                self.dropped += 1;
            }
            if self.recent.len() == RECENT_MAX {
                self.recent.pop_front();
            }
            self.recent.push_back(event.clone());
            self.pending.push_back(event);
            self.changed = true;
        }
    }

    /// The pending events as frames for the service; they are forgotten
    /// (an event is sent at most once).
    pub fn frames(&mut self) -> Vec<AgentMessage> {
        if self.dropped > 0 {
            tracing::warn!(
                dropped = self.dropped,
                "endpoint events were dropped while the service was out of reach"
            );
            self.dropped = 0;
        }
        let pending: Vec<EndpointEvent> = self.pending.drain(..).collect();
        pending
            .chunks(MAX_EVENTS_PER_FRAME)
            .map(|chunk| AgentMessage::Events {
                events: chunk.to_vec(),
            })
            .collect()
    }

    /// The recent events, oldest first, if they changed since the last call.
    pub fn take_changed(&mut self) -> Option<Vec<EndpointEvent>> {
        std::mem::take(&mut self.changed).then(|| self.recent.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpfaas_protocol::endpoint::EventKind;

    fn event(n: usize) -> EndpointEvent {
        EndpointEvent::new(n as f64, EventKind::BlockSubmitted, n.to_string())
    }

    #[test]
    fn pending_events_are_bounded_framed_and_sent_once() {
        let mut q = EventQueue::default();
        q.push((0..PENDING_MAX + 10).map(event));
        let frames = q.frames();
        let sent: Vec<EndpointEvent> = frames
            .iter()
            .flat_map(|f| match f {
                AgentMessage::Events { events } => {
                    assert!(events.len() <= MAX_EVENTS_PER_FRAME);
                    events.clone()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent.len(), PENDING_MAX);
        assert_eq!(sent[0].message, "10", "the oldest are dropped first");
        assert!(q.frames().is_empty(), "sent once");
        let recent = q.take_changed().unwrap();
        assert_eq!(recent.len(), RECENT_MAX);
        assert_eq!(
            recent.last().unwrap().message,
            (PENDING_MAX + 9).to_string()
        );
        assert!(q.take_changed().is_none());
    }
}
