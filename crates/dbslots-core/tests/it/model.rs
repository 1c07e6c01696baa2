//! Property-based state-machine test: random sequences of acquire, release,
//! timeout and holder crash (SIGKILL) against a model of the semaphore.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use dbslots_core::{Error, Pool, PoolOptions};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

use crate::support::{Holder, Outcome, pool_dir};

/// The model: a capacity and the holders, oldest first.
#[derive(Clone, Debug)]
pub struct Model {
    capacity: u32,
    holders: usize,
}

#[derive(Clone, Debug)]
pub enum Step {
    /// A new process acquires (waiting up to 100 ms).
    Acquire,
    /// The test process tries to acquire without waiting, then releases.
    TryAcquire,
    /// The test process waits 30 ms for a slot on a full pool.
    Timeout,
    /// Holder `n` (modulo the number of holders) releases.
    Release(usize),
    /// Holder `n` is killed with SIGKILL.
    Crash(usize),
}

pub struct ModelRef;

impl ReferenceStateMachine for ModelRef {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        (1u32..=4)
            .prop_map(|capacity| Model {
                capacity,
                holders: 0,
            })
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        if state.holders == 0 {
            prop_oneof![3 => Just(Step::Acquire), 1 => Just(Step::TryAcquire)].boxed()
        } else {
            prop_oneof![
                4 => Just(Step::Acquire),
                1 => Just(Step::TryAcquire),
                1 => Just(Step::Timeout),
                2 => any::<usize>().prop_map(Step::Release),
                2 => any::<usize>().prop_map(Step::Crash),
            ]
            .boxed()
        }
    }

    fn preconditions(state: &Model, step: &Step) -> bool {
        match step {
            Step::Release(_) | Step::Crash(_) => state.holders > 0,
            Step::Timeout => state.holders as u32 == state.capacity,
            _ => true,
        }
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        match step {
            Step::Acquire if (state.holders as u32) < state.capacity => state.holders += 1,
            Step::Release(_) | Step::Crash(_) => state.holders -= 1,
            _ => {}
        }
        state
    }
}

/// A backend the model runs against.
pub trait Backend: 'static {
    /// A fresh pool address, and what keeps it alive.
    fn fresh() -> (Box<dyn std::any::Any>, String);
    /// How long after its holder is killed a slot is free again.
    fn crash_latency() -> Duration;
}

/// Pools in a temporary directory: a killed holder's slot is free at once.
pub struct Files;

impl Backend for Files {
    fn fresh() -> (Box<dyn std::any::Any>, String) {
        let (dir, addr) = pool_dir();
        (Box::new(dir), addr)
    }
    fn crash_latency() -> Duration {
        Duration::ZERO
    }
}

pub struct System<B: Backend> {
    _keep: Box<dyn std::any::Any>,
    addr: String,
    pool: Pool,
    holders: Vec<(Holder, u32)>,
    _backend: PhantomData<B>,
}

impl<B: Backend> StateMachineTest for System<B> {
    type SystemUnderTest = System<B>;
    type Reference = ModelRef;

    fn init_test(model: &Model) -> System<B> {
        let (keep, addr) = B::fresh();
        let pool =
            Pool::open(&addr, PoolOptions::new().capacity(model.capacity)).expect("create pool");
        System {
            _keep: keep,
            addr,
            pool,
            holders: Vec::new(),
            _backend: PhantomData,
        }
    }

    fn apply(mut sut: System<B>, model: &Model, step: Step) -> System<B> {
        match step {
            Step::Acquire => {
                let room = sut.holders.len() < model.holders;
                let mut h = Holder::spawn(&sut.addr, Some(100));
                match h.outcome() {
                    Outcome::Held(slot) => {
                        assert!(room, "a holder got slot {slot} of a full pool");
                        sut.holders.push((h, slot));
                    }
                    Outcome::TimedOut => assert!(!room, "a holder timed out with a slot free"),
                }
            }
            Step::TryAcquire => {
                let room = (model.holders as u32) < model.capacity;
                let got = sut.pool.try_acquire().expect("try_acquire");
                assert_eq!(
                    got.is_some(),
                    room,
                    "try_acquire with {} of {} held",
                    model.holders,
                    model.capacity
                );
            }
            Step::Timeout => {
                let err = sut
                    .pool
                    .blocking_acquire_timeout(Duration::from_millis(30))
                    .expect_err("a full pool must time out");
                assert!(matches!(err, Error::Timeout { .. }), "{err}");
            }
            Step::Release(n) => {
                let (h, _) = sut.holders.remove(n % sut.holders.len());
                h.release();
            }
            Step::Crash(n) => {
                let (h, slot) = sut.holders.remove(n % sut.holders.len());
                h.crash();
                // Freed without any cleanup step: at once for locks, after
                // the lease for leases.
                let latency = B::crash_latency();
                let killed = Instant::now();
                loop {
                    let stats = sut.pool.stats().expect("stats");
                    if stats.holders.iter().all(|x| x.slot != slot) {
                        break;
                    }
                    assert!(
                        killed.elapsed() <= latency + latency / 2,
                        "slot {slot} still held {:?} after its holder was killed: {stats:?}",
                        killed.elapsed()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        sut
    }

    fn check_invariants(sut: &System<B>, model: &Model) {
        let stats = sut.pool.stats().expect("stats");
        assert!(stats.active <= stats.capacity, "{stats:?}");
        assert_eq!(stats.active as usize, model.holders, "{stats:?}");
        let slots: HashSet<u32> = sut.holders.iter().map(|(_, s)| *s).collect();
        assert_eq!(slots.len(), sut.holders.len(), "a slot is owned twice");
        let held: HashSet<u32> = stats.holders.iter().map(|h| h.slot).collect();
        assert_eq!(held, slots, "stats disagree with the holders");
        assert!(slots.iter().all(|s| *s < stats.capacity));
        assert_eq!(stats.waiting, 0, "nobody should be left waiting");
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 200,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn file_pool_behaves_like_a_counting_semaphore(sequential 1..20 => System<Files>);
}
