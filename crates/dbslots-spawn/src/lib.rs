//! Start a fleet of worker processes as fast as a slot pool allows
//! ([`Spawner`]), or one command under a slot ([`exec`]).
//!
//! A key design decision made in this crate is that **a worker's slot is
//! taken before the worker starts and given back only after the worker has
//! been reaped**. The spawner never guesses how long a worker needs its
//! connection: in the default *adaptive* mode the next worker starts the
//! moment a slot frees (one futex wake-up after the previous worker exits),
//! so 1000 workers on 150 slots take as long as the work, not as long as a
//! schedule of fixed delays. The *batch* mode of the reference system (batch
//! `k` starts `delay` after batch `k-1` was started, whether or not slots
//! are free) is kept for comparison and for workers that take their own
//! slots.
//!
//! # Who holds a worker's slot
//!
//! Whenever the spawner takes a slot for a worker, it takes it before the
//! worker starts and hands it over: the worker's stdin is a duplicate of
//! the slot's locked descriptor (the slot file is empty and read-only, so
//! reading stdin gives end of file, as from `/dev/null`). The worker then
//! holds the slot for its whole life, even if the spawner dies; the spawner
//! keeps its own guard until it has reaped the worker, and only then gives
//! the slot back. A worker that closes or replaces its stdin keeps its slot
//! only while the spawner lives.
//!
//! A slot of a Redis pool is a lease, which cannot be handed over: the
//! spawner renews it until it has reaped the worker, and the worker's stdin
//! is `/dev/null`. If the spawner dies, the lease runs out (`lease_ms`)
//! while the worker may still run, so by default such a worker is killed
//! with the spawner, with every process of its process group: the kernel
//! kills the worker itself (`PR_SET_PDEATHSIG`), and the *keeper*, a small
//! process the spawner forks for this, kills the rest of the group (a
//! death signal reaches a direct child only). Each such worker registers
//! its group with the keeper before its program runs; the keeper needs no
//! code of the spawner to run when it dies (it notices the end of a pipe
//! only the spawner holds), so this holds for a SIGKILLed spawner too.
//!
//! | mode | slot taken by the spawner | if the spawner is SIGKILLed |
//! | --- | --- | --- |
//! | adaptive (default) | yes, before the worker starts; the worker holds it | the worker keeps its slot and runs to its end; it is not signalled |
//! | adaptive, Redis pool | yes; the spawner renews the lease | the worker and its process group get SIGKILL (the kernel's death signal, the keeper): a worker must never run without its slot |
//! | adaptive, Redis pool, [`hold_slot`](SpawnOptions::hold_slot) | yes; the spawner renews the lease | the worker runs to its end; its slot is lost when the lease runs out |
//! | batches | no: workers take their own (reference behaviour) | workers get SIGTERM and close their connections |
//! | batches, [`hold_slot`](SpawnOptions::hold_slot) | yes, each worker of a batch waits for one | as adaptive (with `hold_slot`) |
//!
//! So on a file pool, adaptive mode is the same with or without
//! [`hold_slot`](SpawnOptions::hold_slot); the option makes batch mode take
//! slots, and lets workers of a Redis pool outlive a killed spawner.
//!
//! "Runs to its end" holds in both output modes, with one limit in the
//! default [`Output::Prefixed`]: the workers' stdout and stderr are pipes
//! to the spawner, so once it is dead their output has nowhere to go.
//! Workers start with SIGPIPE ignored, so a write then fails with `EPIPE`
//! instead of killing the worker; a worker that gives up on a failed write
//! (`set -e` in a shell, an uncaught `BrokenPipeError` in Python) ends
//! there, releasing its slot. With [`Output::LogDir`] nothing changes for
//! the workers when the spawner dies. Workers are started with
//! `posix_spawn` (a vfork): std's own, or, for prefixed output, one called
//! by the spawner, since std cannot leave SIGPIPE ignored without a
//! `pre_exec` hook. Only workers with a death signal need the hook and pay
//! for fork + exec.
//!
//! # A slot outlives the worker's processes
//!
//! Whatever a worker starts stays in its process group unless it leaves it
//! (`setsid`: daemons). When a worker exits, the spawner keeps its slot
//! until no process of the group is left, relays the stop signals to the
//! group meanwhile (and, on a Redis pool, stops the group if the lease is
//! lost), and only then gives the slot to the next worker. The
//! spawner makes itself the child subreaper of its process
//! (`PR_SET_CHILD_SUBREAPER`, process-wide and permanent) so that it reaps
//! the group's orphans itself. A process that leaves the group is not
//! waited for (once it exits it is reaped, if it left with `setsid`, so
//! that it is no zombie of a long run); it holds the slot (of a file pool) for as long as it keeps
//! the worker's stdin, the slot's descriptor, open, whether or not the
//! spawner lives: the spawner gives the slot back with
//! [`Slot::release_unless_inherited`](dbslots_core::Slot::release_unless_inherited).
//! Shells give background jobs `/dev/null`, so only a process handed the
//! descriptor on purpose keeps the slot.
//!
//! In a program that embeds this crate: while a spawner or `exec` runs,
//! a child of the program's own that runs in a session of its own
//! (started with `setsid`, as programs on a pseudo-terminal are) is reaped
//! by it when it exits, and the program's own wait for it then fails with
//! `ECHILD`. Children in the program's session are never touched.
//!
//! A worker learns what it holds from its environment ([`ENV_SLOT`]): when
//! `DBSLOTS_SLOT` is set, a slot of `DBSLOTS_POOL` is already taken on its
//! behalf and it must not take a second one from the same pool for the same
//! connection (it would wait for itself once the pool is full). The pool's
//! stats show the worker as the slot's holder.
//!
//! # Stopping
//!
//! SIGINT, SIGTERM or SIGHUP (or [`Stopper::stop`]): nothing new starts,
//! every running worker's process group (also the group of a worker that
//! exited but left processes behind) gets SIGTERM, and whatever is still
//! running after the grace period (or at a second signal) gets SIGKILL.
//! Signals are obeyed at once whatever the spawner's stdout and stderr do
//! (see [`Output::Prefixed`]). Each
//! worker runs in its own process group, so a Ctrl-C at the terminal reaches
//! the spawner alone, which then stops the workers in order, their children
//! included. [`run`](Spawner::run) returns only once every started worker
//! has been reaped and its process group is empty.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dbslots_core::{Pool, PoolOptions};
//! use dbslots_spawn::{SpawnOptions, Spawner, Template};
//!
//! let pool = Pool::open("/run/myapp/db-slots", PoolOptions::new().capacity(150))?;
//! let template = Template::from_argv(["php", "worker.php", "--shard={index}/{count}"])?;
//! let summary = Spawner::new(pool, template, SpawnOptions::new(1000))?
//!     .run()
//!     .await?;
//! eprintln!("{summary}");
//! std::process::exit(summary.exit_code().into());
//! # }
//! ```
#![deny(missing_docs)]

mod console;
mod error;
pub mod exec;
mod group;
mod joblog;
mod keeper;
mod options;
mod output;
mod progress;
pub mod script;
mod spawner;
mod summary;
mod template;

pub use error::{Error, Result};
pub use joblog::JOBLOG_HEADER;
pub use options::{Mode, Output, ProgressDisplay, SpawnOptions};
pub use spawner::{Spawner, Stopper};
pub use summary::{StopReason, Summary};
pub use template::{ENV_JOB_ID, ENV_POOL, ENV_SLOT, ENV_WORKER_COUNT, ENV_WORKER_INDEX, Template};
