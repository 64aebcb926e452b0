//! Flow control: when every endpoint of a pool is full, requests wait in the gateway (not in
//! an engine's queue) in a bounded queue per pool, released as capacity frees: interactive
//! before batch, and round robin between tenants within a priority, so one tenant flooding
//! the queue does not starve another.

use sluice_common::Priority;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

/// What became of a queued request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    Waiting,
    /// Sent on, to this endpoint of its pool (`None`: Envoy's balancer chose).
    Released(Option<usize>),
    /// Refused after waiting too long.
    Refused,
    /// The client went away while it waited.
    Gone,
}

/// A queued request, shared by its stream and the root context that releases it.
#[derive(Debug)]
pub struct Ticket {
    pub state: TicketState,
    /// The prompt's prefix keys and model, to place it when it is released.
    pub keys: Vec<u64>,
    pub model: String,
    pub since_ms: u64,
    pub priority: Priority,
}

pub type SharedTicket = Rc<RefCell<Ticket>>;

/// One waiting request.
#[derive(Debug, Clone)]
pub struct Waiter {
    /// Envoy's id of the stream, to act on it from the root context.
    pub context_id: u32,
    pub ticket: SharedTicket,
}

/// A pool's queue (per worker): a queue per tenant per priority.
#[derive(Debug, Default)]
pub struct PoolQueue {
    classes: [BTreeMap<String, VecDeque<Waiter>>; 2],
    /// The tenant served last in each priority: the next one after it goes first.
    last: [Option<String>; 2],
    len: usize,
}

fn class(p: Priority) -> usize {
    match p {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

impl PoolQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, tenant: &str, priority: Priority, waiter: Waiter) {
        if let Some(c) = self.classes.get_mut(class(priority)) {
            c.entry(tenant.to_string()).or_default().push_back(waiter);
            self.len += 1;
        }
    }

    /// Requests waiting at `priority`.
    pub fn waiting(&self, priority: Priority) -> usize {
        self.classes
            .get(class(priority))
            .map_or(0, |m| m.values().map(VecDeque::len).sum())
    }

    /// The priority of the request [`PoolQueue::pop`] would return.
    pub fn next_priority(&self) -> Option<Priority> {
        [Priority::Interactive, Priority::Batch]
            .into_iter()
            .find(|p| self.classes.get(class(*p)).is_some_and(|m| !m.is_empty()))
    }

    /// The next request to release: interactive first; within a priority, the next tenant
    /// after the one served last (round robin), its oldest request.
    pub fn pop(&mut self) -> Option<Waiter> {
        for c in 0..2 {
            let (Some(map), Some(last)) = (self.classes.get_mut(c), self.last.get_mut(c)) else {
                continue;
            };
            let tenant = match last.as_deref() {
                Some(prev) => map
                    .range::<str, _>((std::ops::Bound::Excluded(prev), std::ops::Bound::Unbounded))
                    .next()
                    .or_else(|| map.iter().next())
                    .map(|(t, _)| t.clone()),
                None => map.keys().next().cloned(),
            };
            let Some(tenant) = tenant else { continue };
            let queue = map.get_mut(&tenant)?;
            let waiter = queue.pop_front();
            if queue.is_empty() {
                map.remove(&tenant);
            }
            *last = Some(tenant);
            if let Some(w) = waiter {
                self.len -= 1;
                return Some(w);
            }
        }
        None
    }

    /// Take out every waiter whose ticket `expired` says so (oldest first per tenant).
    pub fn take_expired(&mut self, mut expired: impl FnMut(&Ticket) -> bool) -> Vec<Waiter> {
        let mut out = Vec::new();
        for map in &mut self.classes {
            for queue in map.values_mut() {
                queue.retain(|w| {
                    let t = w.ticket.borrow();
                    let gone = t.state != TicketState::Waiting;
                    if !gone && expired(&t) {
                        out.push(w.clone());
                        return false;
                    }
                    !gone
                });
            }
            map.retain(|_, q| !q.is_empty());
        }
        self.len = self
            .classes
            .iter()
            .flat_map(|m| m.values())
            .map(VecDeque::len)
            .sum();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(id: u32) -> Waiter {
        Waiter {
            context_id: id,
            ticket: Rc::new(RefCell::new(Ticket {
                state: TicketState::Waiting,
                keys: Vec::new(),
                model: String::new(),
                since_ms: u64::from(id),
                priority: Priority::Interactive,
            })),
        }
    }

    fn order(q: &mut PoolQueue) -> Vec<u32> {
        std::iter::from_fn(|| q.pop().map(|w| w.context_id)).collect()
    }

    #[test]
    fn interactive_before_batch_and_tenants_take_turns() {
        let mut q = PoolQueue::default();
        // Tenant a floods first; b and c come later; a batch request arrived before all.
        q.push("z", Priority::Batch, waiter(100));
        for i in 1..=4 {
            q.push("a", Priority::Interactive, waiter(i));
        }
        q.push("b", Priority::Interactive, waiter(10));
        q.push("c", Priority::Interactive, waiter(20));
        q.push("b", Priority::Interactive, waiter(11));
        assert_eq!(q.len(), 8);
        assert_eq!(q.next_priority(), Some(Priority::Interactive));
        assert_eq!(order(&mut q), [1, 10, 20, 2, 11, 3, 4, 100]);
        assert_eq!(q.next_priority(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn expired_and_gone_waiters_leave_the_queue_once() {
        let mut q = PoolQueue::default();
        for i in 1..=5 {
            q.push("a", Priority::Interactive, waiter(i));
        }
        let gone = waiter(6);
        gone.ticket.borrow_mut().state = TicketState::Gone;
        q.push("b", Priority::Batch, gone);
        let expired = q.take_expired(|t| t.since_ms <= 2);
        assert_eq!(
            expired.iter().map(|w| w.context_id).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(q.len(), 3, "the gone one is dropped too");
        assert_eq!(order(&mut q), [3, 4, 5]);
    }
}
