//! Integration tests of the `dbslots` binary.

mod alerts;
mod browser;
mod check;
mod connections;
mod exec;
mod import;
mod lease;
mod serve;
mod spawn;
mod support;
mod watch;
