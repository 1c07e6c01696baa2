//! Integration tests of the `dbslots` binary.

mod alerts;
mod browser;
mod check;
mod closed_output;
mod connections;
mod docs;
mod exec;
mod gate;
mod import;
mod lease;
mod redaction;
mod serve;
mod spawn;
mod support;
mod terminal;
mod tls;
mod watch;
