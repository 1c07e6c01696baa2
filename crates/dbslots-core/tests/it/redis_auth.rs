//! Redis pools behind TLS, passwords and ACL users.

use dbslots_core::{Pool, PoolOptions};
use dbslots_testkit::RedisOptions;

use crate::redis::unique_pool;

const PASSWORD: &str = "default-s3cret";
const APP_PASSWORD: &str = "app-s3cret";

/// Opens the pool at `addr` (creating it), takes a slot, checks it, reads
/// stats and returns the address as the pool shows it.
fn works(addr: &str) -> String {
    let pool = Pool::open(addr, PoolOptions::new().capacity(2)).expect("open");
    // A server that started less than a lease ago may have forgotten
    // holders: a new pool waits that long before it admits anyone.
    let slot = pool
        .blocking_acquire_timeout(std::time::Duration::from_secs(5))
        .expect("a slot");
    assert!(slot.check().is_ok());
    let stats = pool.stats().expect("stats");
    assert_eq!((stats.capacity, stats.active), (2, 1));
    let shown = format!("{} {pool:?} {:?}", pool.addr(), pool.addr());
    drop(slot);
    assert_eq!(pool.stats().expect("stats").active, 0);
    shown
}

fn secured() -> Option<dbslots_testkit::RedisServer> {
    dbslots_testkit::private_redis_with(RedisOptions {
        tls: true,
        unix_socket: true,
        password: Some(PASSWORD.into()),
        users: vec![("app".into(), APP_PASSWORD.into())],
        ..Default::default()
    })
}

#[test]
fn tls_passwords_acl_users_and_unix_sockets_work_and_are_never_shown() {
    let Some(server) = secured() else { return };
    let tls = server.tls_port().expect("tls");
    let ca = server.ca_path().expect("ca");
    let sock = server.socket_path().expect("socket");
    let port = server.port();
    for addr in [
        format!("rediss://:{PASSWORD}@127.0.0.1:{tls}/0?ca={}", ca.display()),
        format!(
            "rediss://app:{APP_PASSWORD}@localhost:{tls}/0?ca={}",
            ca.display()
        ),
        format!("redis://app:{APP_PASSWORD}@127.0.0.1:{port}/0"),
        format!("redis://:{PASSWORD}@127.0.0.1:{port}/0"),
        format!("redis+unix://{}?pass={PASSWORD}", sock.display()),
        format!(
            "redis+unix://{}?user=app&pass={APP_PASSWORD}",
            sock.display()
        ),
    ] {
        let shown = works(&unique_pool(&addr));
        assert!(
            !shown.contains(PASSWORD) && !shown.contains(APP_PASSWORD),
            "{shown}"
        );
        assert!(shown.contains("***"), "{shown}");
    }
}

#[test]
fn wrong_credentials_and_unknown_certificates_fail_clearly_without_secrets() {
    let Some(server) = secured() else { return };
    let tls = server.tls_port().expect("tls");
    let port = server.port();
    let ca = server.ca_path().expect("ca");
    let cases = [
        // A wrong password.
        (
            format!("redis://app:wrong-s3cret@127.0.0.1:{port}/0"),
            "wrong-s3cret",
        ),
        // No password at all.
        (format!("redis://127.0.0.1:{port}/0"), "NOAUTH"),
        // The system's roots do not know the throwaway CA.
        (format!("rediss://:{PASSWORD}@127.0.0.1:{tls}/0"), PASSWORD),
        // A CA file that is not there.
        (
            format!(
                "rediss://:{PASSWORD}@127.0.0.1:{tls}/0?ca={}.missing",
                ca.display()
            ),
            PASSWORD,
        ),
    ];
    for (addr, secret) in cases {
        let err = Pool::open(unique_pool(&addr), PoolOptions::new().capacity(1))
            .expect_err("must not open")
            .to_string();
        if secret == "NOAUTH" {
            assert!(err.to_lowercase().contains("auth"), "{err}");
        } else {
            assert!(!err.contains(secret), "{err}");
        }
        assert!(err.contains("127.0.0.1"), "says which server: {err}");
    }
}
