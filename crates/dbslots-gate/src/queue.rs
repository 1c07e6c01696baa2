//! The gate's queue of clients waiting for a slot.
//!
//! # Implementation Details
//!
//! Clients queue here, in memory, in the order they were accepted; the pool
//! sees only a few *agents* of the gate. An agent is a task that waits in
//! the pool like any other acquirer (FIFO with every other user of the
//! pool) and, when it gets a slot, hands it to whichever client is at the
//! head of the gate's queue at that moment. So clients are served in accept
//! order whichever agent got the slot, and 10,000 queued clients cost
//! 10,000 small queue entries, not 10,000 threads or Redis connections.
//!
//! Invariant: `agents ≤ min(waiters, max_agents)` after every change. A
//! client that leaves the queue (timeout, hang-up) while more agents wait
//! than clients do aborts the most recent agent; dropping its acquisition
//! cancels it, and a slot that arrived anyway is released by the pool's
//! cancellation guarantee. An agent that gets a slot nobody is left to take
//! releases it at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dbslots_core::{Pool, Slot};
use tokio::sync::{Notify, oneshot};
use tokio::task::AbortHandle;

use crate::stats::Counters;

/// What a queued client gets: a slot, or why it cannot have one.
pub(crate) type Admit = Result<Slot, String>;

pub(crate) struct Admission {
    pool: Pool,
    max_agents: usize,
    counters: Arc<Counters>,
    state: Mutex<State>,
    /// Woken when a client queues (idle connections may have to make room).
    pub(crate) demand: Notify,
}

#[derive(Default)]
struct State {
    waiters: VecDeque<Waiter>,
    agents: Vec<(u64, AbortHandle)>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Admit>,
}

/// A client's place in the queue. Dropping it leaves the queue.
pub(crate) struct Ticket {
    id: u64,
    /// When the client queued.
    pub(crate) queued_at: std::time::Instant,
    pub(crate) rx: oneshot::Receiver<Admit>,
    admission: Arc<Admission>,
    left: bool,
}

impl Admission {
    pub(crate) fn new(pool: Pool, max_agents: usize, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(Admission {
            pool,
            max_agents: max_agents.max(1),
            counters,
            state: Mutex::new(State::default()),
            demand: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue torn (every
        // change is a single push/pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Clients waiting right now.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Agents waiting in the pool for them right now.
    pub(crate) fn agents(&self) -> usize {
        self.lock().agents.len()
    }

    /// Queues a client at the tail.
    ///
    /// With nobody queued on a pool of locks, the client first tries for a
    /// slot itself (a non-blocking `flock`, about a microsecond): a free
    /// slot then costs no agent task, no blocking-pool thread and no
    /// hand-over. A lease (Redis pool) needs a round trip, which the
    /// runtime must not wait for, so it always goes through an agent.
    pub(crate) fn enqueue(self: &Arc<Self>) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        if st.waiters.is_empty() && matches!(self.pool.addr(), dbslots_core::PoolAddr::Dir(_)) {
            // If every slot is taken, or the try fails, the client queues
            // below and an agent waits (and reports a failure to it).
            if let Ok(Some(slot)) = self.pool.try_acquire() {
                // Sent before anyone can read it: the receiver is ours.
                let _ = tx.send(Ok(slot));
                return Ticket {
                    id,
                    queued_at: std::time::Instant::now(),
                    rx,
                    admission: self.clone(),
                    left: false,
                };
            }
        }
        st.waiters.push_back(Waiter { id, tx });
        crate::stats::bump(&self.counters.queued);
        self.add_agents(&mut st);
        drop(st);
        self.demand.notify_waiters();
        Ticket {
            id,
            queued_at: std::time::Instant::now(),
            rx,
            admission: self.clone(),
            left: false,
        }
    }

    fn add_agents(self: &Arc<Self>, st: &mut State) {
        while st.agents.len() < st.waiters.len().min(self.max_agents) {
            st.next_id += 1;
            let id = st.next_id;
            let me = self.clone();
            let task = tokio::spawn(async move { me.agent(id).await });
            st.agents.push((id, task.abort_handle()));
        }
    }

    fn trim_agents(st: &mut State) {
        while st.agents.len() > st.waiters.len() {
            if let Some((_, agent)) = st.agents.pop() {
                agent.abort();
            }
        }
    }

    /// Hands `admit` to the head of the queue; what nobody took comes back.
    fn hand_over(&self, st: &mut State, mut admit: Admit) -> Option<Admit> {
        while let Some(w) = st.waiters.pop_front() {
            crate::stats::drop_one(&self.counters.queued);
            match w.tx.send(admit) {
                Ok(()) => return None,
                Err(back) => admit = back,
            }
        }
        Some(admit)
    }

    async fn agent(self: Arc<Self>, id: u64) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let got = self.pool.acquire().await;
            let failed = got.is_err();
            let admit = got.map_err(|e| e.to_string());
            let leftover = {
                let mut st = self.lock();
                let leftover = self.hand_over(&mut st, admit);
                let still_needed = match st.agents.iter().position(|(a, _)| *a == id) {
                    None => false,
                    Some(i) if st.agents.len() > st.waiters.len() => {
                        st.agents.remove(i);
                        false
                    }
                    Some(_) => true,
                };
                (leftover, still_needed)
            };
            if let (Some(Ok(slot)), _) = leftover {
                release(slot);
            }
            if !leftover.1 {
                return;
            }
            if failed {
                // The pool failed (a Redis server away, say): the head client
                // was told; do not spin while it stays down.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            } else {
                backoff = Duration::from_millis(50);
            }
        }
    }
}

impl Ticket {
    /// Leaves the queue. Returns the slot if one was handed over meanwhile
    /// (the caller decides whether to use it).
    pub(crate) fn leave(&mut self) -> Option<Admit> {
        if !self.left {
            self.left = true;
            let mut st = self.admission.lock();
            if let Some(i) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(i);
                crate::stats::drop_one(&self.admission.counters.queued);
                Admission::trim_agents(&mut st);
                return None;
            }
        }
        self.rx.try_recv().ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(Ok(slot)) = self.leave() {
            release(slot);
        }
    }
}

/// Releases a slot without blocking the runtime: a lease (Redis pool) is
/// given back over the network, from a blocking thread.
pub(crate) fn release(slot: Slot) {
    match slot.pool().addr() {
        dbslots_core::PoolAddr::Dir(_) => drop(slot),
        _ => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn_blocking(move || drop(slot));
            } else {
                drop(slot);
            }
        }
    }
}
