//! Integration tests of the `dbslots` binary.

mod spawn;
