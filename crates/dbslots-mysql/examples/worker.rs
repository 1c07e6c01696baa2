//! A worker as `dbslots spawn` or `dbslots exec` starts it: one line opens
//! its connection, through the slot its parent already holds for it
//! (`DBSLOTS_SLOT`) or else through a slot of its own (`DBSLOTS_POOL`).
//!
//! `worker URL` prints `SLOT CONNECTION_ID` and closes the connection; the
//! tests of `Connector::from_env` run it.

use std::time::Duration;

use dbslots_mysql::{Connection, Connector, ConnectorOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match work().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn work() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).ok_or("usage: worker MYSQL_URL")?;
    let options = ConnectorOptions::new().slot_timeout(Duration::from_millis(500));
    let conn = Connector::from_env(&url, options)?.connect().await?;
    let slot = conn.slot_index().ok_or("a new connection uses a slot")?;
    println!("{slot} {}", conn.id());
    Connection::close(conn).await?;
    Ok(())
}
