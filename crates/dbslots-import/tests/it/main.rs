//! dbslots-import against a real server. Each test works in a scratch
//! database of its own, so they run in parallel; without a test server
//! (`cargo xtask test` provides one) they print SKIPPED and pass, unless
//! `DBSLOTS_TEST_REQUIRE_SERVERS=1`.

mod black_hole;
mod file_problems;
mod heartbeat;
mod hostile;
mod killed_connection;
mod load_data;
mod migration;
mod mixed_types;
mod no_answer;
mod out_of_time;
mod quoting;
mod restart;
mod support;
mod time_zones;
mod twice;
mod two_processors;
