//! Start a fleet of worker processes as fast as a slot pool allows.
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
//! | mode | slot taken by the spawner | worker inherits the lock | if the spawner is SIGKILLed |
//! | --- | --- | --- | --- |
//! | adaptive | yes, held for the worker until it is reaped | no | the kernel frees the slot and kills the worker (`PR_SET_PDEATHSIG`, SIGKILL): a worker must never run without its slot |
//! | adaptive, [`hold_slot`](SpawnOptions::hold_slot) | yes, and held until it is reaped | yes | the worker keeps its slot and runs to its end; it is not signalled |
//! | batches | no: workers take their own (reference behaviour) | no | workers get SIGTERM and close their connections |
//! | batches, [`hold_slot`](SpawnOptions::hold_slot) | yes, each worker of a batch waits for one | yes | as adaptive with `hold_slot` |
//!
//! A worker learns what it holds from its environment ([`ENV_SLOT`]): when
//! `DBSLOTS_SLOT` is set, a slot of `DBSLOTS_POOL` is already taken on its
//! behalf and it must not take a second one from the same pool for the same
//! connection (it would wait for itself once the pool is full).
//!
//! # Stopping
//!
//! SIGINT, SIGTERM or SIGHUP (or [`Stopper::stop`]): nothing new starts,
//! every running worker's process group gets SIGTERM, and whatever is still
//! running after the grace period (or at a second signal) gets SIGKILL. Each
//! worker runs in its own process group, so a Ctrl-C at the terminal reaches
//! the spawner alone, which then stops the workers in order, their children
//! included. [`run`](Spawner::run) returns only once every started worker
//! has been reaped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dbslots_spawn::Error> {
//! use dbslots_core::{Pool, PoolOptions};
//! use dbslots_spawn::{SpawnOptions, Spawner, Template};
//!
//! let pool = Pool::open(std::path::Path::new("/run/myapp/db-slots"), &PoolOptions::new().capacity(150))?;
//! let template = Template::from_argv(["php", "worker.php", "--shard={index}/{count}"])?;
//! let summary = Spawner::new(pool, template, SpawnOptions::new(1000).hold_slot(true))?
//!     .run()
//!     .await?;
//! eprintln!("{summary}");
//! std::process::exit(summary.exit_code().into());
//! # }
//! ```
#![deny(missing_docs)]

mod error;
mod joblog;
mod options;
mod output;
mod progress;
mod spawner;
mod summary;
mod template;

pub use error::{Error, Result};
pub use joblog::JOBLOG_HEADER;
pub use options::{Mode, Output, Progress, SpawnOptions};
pub use spawner::{Spawner, Stopper};
pub use summary::{StopReason, Summary};
pub use template::{ENV_JOB_ID, ENV_POOL, ENV_SLOT, ENV_WORKER_COUNT, ENV_WORKER_INDEX, Template};
