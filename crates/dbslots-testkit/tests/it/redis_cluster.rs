use std::time::Instant;

use dbslots_testkit::{ClusterOptions, private_redis_cluster};

use crate::redis::send;

#[test]
fn a_cluster_serves_every_slot_redirects_and_fails_over_to_a_replica() {
    let started = Instant::now();
    let Some(cluster) = private_redis_cluster(ClusterOptions {
        masters: 3,
        replicas: 1,
        ..Default::default()
    }) else {
        return;
    };
    eprintln!("6-node cluster ready in {:?}", started.elapsed());
    assert_eq!(cluster.nodes().len(), 6);
    let url = cluster.url();
    assert!(url.starts_with("redis+cluster://127.0.0.1:"), "{url}");
    assert_eq!(url.matches(',').count(), 2, "three seeds: {url}");
    let key = "dbslots:{probe}:meta";
    let master = cluster.master_of(key).expect("a master serves the key");
    let slot = cluster.slot_of(key).expect("slot");
    assert_eq!(send(master, &format!("SET {key} 1")), "+OK");
    let other = cluster
        .nodes()
        .iter()
        .map(|n| n.port())
        .find(|p| *p != master && cluster.replica_of(*p).is_ok())
        .expect("another master");
    assert_eq!(
        send(other, &format!("GET {key}")),
        format!("-MOVED {slot} 127.0.0.1:{master}")
    );
    let (old, new) = cluster.failover(key).expect("manual failover");
    assert_eq!(old, master);
    assert_eq!(cluster.master_of(key).expect("master"), new);
    assert_eq!(
        send(old, &format!("GET {key}")),
        format!("-MOVED {slot} 127.0.0.1:{new}"),
        "the old master is a replica now"
    );
    assert_eq!(
        send(new, &format!("EXISTS {key}")),
        ":1",
        "the write survived"
    );
    eprintln!("cluster test done in {:?}", started.elapsed());
}

#[test]
fn a_tls_cluster_forms_with_one_ca_and_tls_seeds() {
    let Some(cluster) = private_redis_cluster(ClusterOptions {
        tls: true,
        ..Default::default()
    }) else {
        return;
    };
    let url = cluster.tls_url().expect("TLS");
    let ca = cluster.ca_path().expect("CA");
    assert!(url.starts_with("rediss+cluster://127.0.0.1:"), "{url}");
    assert!(url.ends_with(&format!("/?ca={}", ca.display())), "{url}");
    for node in cluster.nodes() {
        assert_eq!(node.ca_path().as_deref(), Some(ca.as_path()));
        let info = node.command("CLUSTER INFO").expect("CLUSTER INFO");
        assert!(info.contains("cluster_state:ok"), "{info}");
    }
}
