use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use dbslots_testkit::{private_redis, shared_redis};

/// Sends one inline command and returns the first reply line.
pub fn send(port: u16, command: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .expect("writes");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("reads");
    line.trim_end().to_owned()
}

fn port_of(url: &str) -> u16 {
    let rest = url.strip_prefix("redis://127.0.0.1:").expect("a local URL");
    rest.split('/').next().unwrap().parse().expect("a port")
}

#[test]
fn private_redis_answers_and_restarts_empty_on_the_same_port() {
    let Some(mut redis) = private_redis() else {
        return;
    };
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/0"));
    assert_eq!(send(port, "PING"), "+PONG");
    assert_eq!(send(port, "SET dbslots:probe 1"), "+OK");
    assert_eq!(send(port, "EXISTS dbslots:probe"), ":1");

    redis.restart().expect("restarts");
    assert_eq!(redis.port(), port);
    assert_eq!(send(port, "PING"), "+PONG");
    assert_eq!(
        send(port, "EXISTS dbslots:probe"),
        ":0",
        "nothing persisted"
    );

    redis.stop().expect("stops");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening"
    );
}

#[test]
fn shared_redis_from_the_environment_answers() {
    let Some(url) = shared_redis() else {
        return;
    };
    assert_eq!(send(port_of(&url), "PING"), "+PONG");
}
