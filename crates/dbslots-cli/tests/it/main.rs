//! Integration tests of the `dbslots` binary.

mod browser;
mod connections;
mod exec;
mod gate;
mod import;
mod serve;
mod spawn;
mod watch;
