//! Integration tests of the `dbslots` binary.

mod connections;
mod import;
mod spawn;
