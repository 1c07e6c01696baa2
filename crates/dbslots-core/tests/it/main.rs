//! Integration tests of the slot pool with real processes.

mod api;
mod model;
mod procs;
mod support;
