//! Integration tests of the `dbslots` binary.

mod import;
mod spawn;
