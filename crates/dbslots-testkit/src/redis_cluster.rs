//! Throwaway Redis Clusters: `redis-server --cluster-enabled yes` nodes on
//! free loopback ports, joined by `redis-cli --cluster create`.

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use tempfile::TempDir;

use crate::install::install_with_apt;
use crate::process::{find_program, temp_dir};
use crate::redis::{RedisOptions, RedisServer, make_certificates};

/// How long a new cluster may take to agree on its slots and replicas.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a manual failover may take to be seen by every node.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start a [`RedisCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Masters sharing the 16384 hash slots (at least 3, as
    /// `redis-cli --cluster create` requires).
    pub masters: usize,
    /// Replicas of every master (0 or more); needed for a failover.
    pub replicas: usize,
    /// Nodes also listen with TLS (certificates of one throwaway CA,
    /// [`RedisCluster::ca_path`]), and the cluster bus and replication use
    /// it: redirects to TLS clients name TLS ports
    /// ([`RedisCluster::tls_url`]).
    pub tls: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas: 0,
            tls: false,
        }
    }
}

/// A running throwaway Redis Cluster on 127.0.0.1 (local processes only,
/// never containers), stopped and deleted on drop.
#[derive(Debug)]
pub struct RedisCluster {
    // Fields drop in order: the nodes before their certificates.
    nodes: Vec<RedisServer>,
    masters: usize,
    certificates: Option<TempDir>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    failed: bool,
    master_id: String,
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts the nodes, joins them into one cluster and waits until every
    /// node reports `cluster_state:ok` and every replica is in sync.
    ///
    /// # Errors
    ///
    /// Fails when `redis-server` or `redis-cli` is missing and cannot be
    /// installed, or when the cluster does not form in time (the message
    /// holds `redis-cli`'s output or the last `CLUSTER INFO`).
    pub fn start(options: ClusterOptions) -> Result<Self> {
        if options.masters < 3 {
            bail!("a Redis Cluster needs at least 3 masters");
        }
        let cli = redis_cli()?;
        let certificates = match options.tls {
            true => {
                let dir = temp_dir("dbslots-redis-cluster-")?;
                make_certificates(dir.path())?;
                Some(dir)
            }
            false => None,
        };
        let count = options.masters * (1 + options.replicas);
        let nodes = (0..count)
            .map(|_| {
                RedisServer::start_with(RedisOptions {
                    cluster: true,
                    tls: options.tls,
                    tls_certificates: certificates.as_ref().map(|d| d.path().to_owned()),
                    ..Default::default()
                })
            })
            .collect::<Result<Vec<_>>>()
            .context("cannot start the nodes of a Redis Cluster")?;
        let mut create = Command::new(cli);
        if let Some(dir) = &certificates {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(dir.path().join("ca.crt"));
        }
        create.arg("--cluster").arg("create");
        for node in &nodes {
            let port = node.tls_port().unwrap_or(node.port());
            create.arg(format!("127.0.0.1:{port}"));
        }
        create
            .arg("--cluster-replicas")
            .arg(options.replicas.to_string())
            .arg("--cluster-yes");
        // redis-cli waits for the join without a time limit: bound it.
        let log = nodes[0]
            .log_dir()
            .context("cluster nodes are processes")?
            .join("cluster-create.out");
        let out = std::fs::File::create(&log).context("cannot create the redis-cli log")?;
        let mut child = create
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot run redis-cli")?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "redis-cli --cluster create did not finish within {} s: {}",
                    READY_TIMEOUT.as_secs(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let cluster = Self {
            nodes,
            masters: options.masters,
            certificates,
        };
        cluster.wait_until_ready(READY_TIMEOUT)?;
        Ok(cluster)
    }

    /// Whether [`RedisCluster::start`] can run here without installing
    /// anything.
    pub fn available() -> bool {
        find_program(&["redis-server"]).is_some() && find_program(&["redis-cli"]).is_some()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/` (the
    /// masters as they were started: seeds, whatever their role now).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..self.masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}/", seeds.join(","))
    }

    /// `rediss+cluster://127.0.0.1:T1,127.0.0.1:T2,127.0.0.1:T3/?ca=PATH`
    /// (the masters' TLS ports), when started with [`ClusterOptions::tls`].
    pub fn tls_url(&self) -> Option<String> {
        let ca = self.ca_path()?;
        let seeds: Option<Vec<String>> = self.nodes[..self.masters]
            .iter()
            .map(|n| Some(format!("127.0.0.1:{}", n.tls_port()?)))
            .collect();
        Some(format!(
            "rediss+cluster://{}/?ca={}",
            seeds?.join(","),
            ca.display()
        ))
    }

    /// The CA that signed every node's certificate, when started with
    /// [`ClusterOptions::tls`].
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.certificates.as_ref().map(|d| d.path().join("ca.crt"))
    }

    /// Every node, masters first (as started; roles change on failover).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node on `port`.
    ///
    /// # Errors
    ///
    /// When no node of this cluster listens there.
    pub fn node(&self, port: u16) -> Result<&RedisServer> {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .with_context(|| format!("no node of the cluster on port {port}"))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    ///
    /// # Errors
    ///
    /// When the cluster cannot be asked.
    pub fn slot_of(&self, key: &str) -> Result<u16> {
        self.any_node(|n| n.command(&format!("CLUSTER KEYSLOT {key}")))?
            .parse()
            .context("CLUSTER KEYSLOT answered no number")
    }

    /// The port of the master serving `key`'s hash slot, as the cluster's
    /// nodes agree on it.
    ///
    /// # Errors
    ///
    /// When no master serves that slot.
    pub fn master_of(&self, key: &str) -> Result<u16> {
        let slot = self.slot_of(key)?;
        self.serving(slot)?
            .map(|m| m.port)
            .with_context(|| format!("no master serves slot {slot}"))
    }

    /// The port of a replica of the master on `master`.
    ///
    /// # Errors
    ///
    /// When that master has no replica.
    pub fn replica_of(&self, master: u16) -> Result<u16> {
        let lines = self.cluster_nodes()?;
        let id = lines
            .iter()
            .find(|l| l.port == master)
            .map(|l| l.id.clone())
            .with_context(|| format!("no node on port {master}"))?;
        lines
            .iter()
            .find(|l| !l.master && !l.failed && l.master_id == id)
            .map(|l| l.port)
            .with_context(|| format!("the master on port {master} has no replica"))
    }

    /// A manual failover of the master serving `key`: `CLUSTER FAILOVER` on
    /// one of its replicas (which first catches up with the master, so no
    /// acknowledged write is lost), then waits until every node names that
    /// replica as the slot's master. Returns `(old master, new master)`.
    ///
    /// # Errors
    ///
    /// When the master has no replica, or the failover is not seen by every
    /// node within 15 s.
    pub fn failover(&self, key: &str) -> Result<(u16, u16)> {
        let slot = self.slot_of(key)?;
        let master = self.master_of(key)?;
        let replica = self.replica_of(master)?;
        let answer = self.node(replica)?.command("CLUSTER FAILOVER")?;
        if answer != "OK" {
            bail!("CLUSTER FAILOVER answered {answer:?}");
        }
        let started = Instant::now();
        loop {
            let agreed = self.nodes.iter().all(|n| {
                cluster_nodes_of(n).is_ok_and(|lines| {
                    lines
                        .iter()
                        .any(|l| l.port == replica && l.master && serves(l, slot))
                })
            });
            if agreed {
                return Ok((master, replica));
            }
            if started.elapsed() > FAILOVER_TIMEOUT {
                bail!(
                    "the failover of slot {slot} from port {master} to {replica} was not seen by every node within {} s",
                    FAILOVER_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node id of the node on `port` (`CLUSTER MYID`).
    ///
    /// # Errors
    ///
    /// When the node cannot be asked.
    pub fn id_of(&self, port: u16) -> Result<String> {
        self.node(port)?.command("CLUSTER MYID")
    }

    /// Stops every node and deletes their directories.
    ///
    /// # Errors
    ///
    /// The first node that could not be stopped.
    pub fn stop(self) -> Result<()> {
        let mut result = Ok(());
        for node in self.nodes {
            let stopped = node.stop();
            if result.is_ok() {
                result = stopped;
            }
        }
        result
    }

    fn wait_until_ready(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let mut last = String::new();
            let ready = self.nodes.iter().all(|n| {
                let ok = n
                    .command("CLUSTER INFO")
                    .is_ok_and(|i| i.contains("cluster_state:ok"));
                let synced = n.command("INFO replication").is_ok_and(|i| {
                    i.contains("role:master") || i.contains("master_link_status:up")
                });
                if !(ok && synced) {
                    last = n.command("CLUSTER INFO").unwrap_or_default();
                }
                ok && synced
            });
            if ready {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "the Redis Cluster did not become ready within {} s: {last}",
                    timeout.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn any_node(&self, f: impl Fn(&RedisServer) -> Result<String>) -> Result<String> {
        let mut error = None;
        for node in &self.nodes {
            match f(node) {
                Ok(v) => return Ok(v),
                Err(e) => error = Some(e),
            }
        }
        Err(error.unwrap_or_else(|| anyhow::anyhow!("the cluster has no nodes")))
    }

    fn cluster_nodes(&self) -> Result<Vec<NodeLine>> {
        let mut error = None;
        for node in &self.nodes {
            match cluster_nodes_of(node) {
                Ok(v) => return Ok(v),
                Err(e) => error = Some(e),
            }
        }
        Err(error.unwrap_or_else(|| anyhow::anyhow!("the cluster has no nodes")))
    }

    fn serving(&self, slot: u16) -> Result<Option<NodeLine>> {
        Ok(self
            .cluster_nodes()?
            .into_iter()
            .find(|l| l.master && !l.failed && serves(l, slot)))
    }
}

fn serves(line: &NodeLine, slot: u16) -> bool {
    line.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
}

/// `CLUSTER NODES` as one node sees it.
fn cluster_nodes_of(node: &RedisServer) -> Result<Vec<NodeLine>> {
    let text = node.command("CLUSTER NODES")?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() < 8 {
                bail!("unexpected CLUSTER NODES line {line:?}");
            }
            let address = words[1].split('@').next().unwrap_or_default();
            let port = address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("no port in CLUSTER NODES line {line:?}"))?;
            let flags: Vec<&str> = words[2].split(',').collect();
            let slots = words[8..]
                .iter()
                .filter(|w| !w.starts_with('['))
                .filter_map(|w| match w.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => w.parse().ok().map(|s| (s, s)),
                })
                .collect();
            Ok(NodeLine {
                id: words[0].to_owned(),
                port,
                master: flags.contains(&"master"),
                failed: flags.contains(&"fail"),
                master_id: words[3].to_owned(),
                slots,
            })
        })
        .collect()
}

/// `redis-cli` (Debian's `redis-tools`, which `redis-server` depends on),
/// installed with apt-get as root when missing.
fn redis_cli() -> Result<PathBuf> {
    if let Some(cli) = find_program(&["redis-cli"]) {
        return Ok(cli);
    }
    install_with_apt(
        "redis-tools",
        "redis-cli",
        || find_program(&["redis-cli"]).is_some(),
        "no redis-cli found: install the `redis-tools` package",
    )?;
    find_program(&["redis-cli"]).context("redis-cli is still missing after installing it")
}
