//! Integration tests of the `dbslots` binary.

mod browser;
mod connections;
mod exec;
mod import;
mod serve;
mod spawn;
mod support;
mod watch;
