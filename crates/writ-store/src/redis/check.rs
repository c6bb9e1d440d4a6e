//! What the store's guarantees assume of the cluster, checked when it connects: an
//! acknowledged write survives a failover only if every replica that could be promoted
//! acknowledged it (`required_replicas` equals the replicas per shard), and a stored key
//! only goes when Writ says so (no eviction). A mismatch that weakens a guarantee refuses
//! the connection; one that only makes writes fail (a shard short of replicas, say while
//! a failed node rejoins) or that the server will not let Writ read (`CONFIG` renamed, as
//! managed services do) is logged.

use super::{RedisOptions, backend};
use crate::api::StoreError;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use std::collections::BTreeMap;

/// One node of `CLUSTER NODES`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Node {
    pub(super) id: String,
    pub(super) host: String,
    pub(super) port: u16,
    /// The master it replicates, for a replica.
    pub(super) master: Option<String>,
    /// A master serving slots.
    pub(super) serves: bool,
}

/// Parses `CLUSTER NODES`, skipping nodes without an address and failed ones.
pub(super) fn parse_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let (id, addr, flags, master) = (f.first()?, f.get(1)?, f.get(2)?, f.get(3)?);
            if flags.contains("noaddr") || flags.contains("handshake") {
                return None;
            }
            let addr = addr.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            let replica = flags.contains("slave");
            Some(Node {
                id: (*id).to_owned(),
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: port.parse().ok()?,
                master: replica.then(|| (*master).to_owned()),
                serves: flags.contains("master") && !flags.contains("fail") && f.len() > 8,
            })
        })
        .collect()
}

/// The shape problems of a cluster for `required` replicas per acknowledgement:
/// `(refusals, warnings)`.
pub(super) fn judge_shape(nodes: &[Node], required: u32) -> (Vec<String>, Vec<String>) {
    let mut replicas: BTreeMap<&str, u32> = nodes
        .iter()
        .filter(|n| n.serves)
        .map(|n| (n.id.as_str(), 0))
        .collect();
    for n in nodes {
        if let Some(m) = &n.master
            && let Some(count) = replicas.get_mut(m.as_str())
        {
            *count += 1;
        }
    }
    let (mut refuse, mut warn) = (Vec::new(), Vec::new());
    if replicas.is_empty() {
        refuse.push("redis: the cluster has no master serving slots".to_owned());
    }
    for (master, &count) in &replicas {
        let at = nodes
            .iter()
            .find(|n| n.id == *master)
            .map(|n| format!("{}:{}", n.host, n.port))
            .unwrap_or_default();
        if count > required {
            let s = if count == 1 { "" } else { "s" };
            refuse.push(format!(
                "redis: the shard of master {at} has {count} replica{s} but storage.redis.required_replicas is {required}: \
                 a failover could promote a replica that never acknowledged a write Writ acknowledged; \
                 set required_replicas to the replicas per shard"
            ));
        } else if count < required {
            warn.push(format!(
                "redis: the shard of master {at} has {count} of the {required} replicas required: \
                 its writes fail (UNAVAILABLE) until it has them"
            ));
        }
    }
    (refuse, warn)
}

/// The settings one node runs with that Writ's guarantees rest on: `(refusals,
/// warnings)`. `settings` are `CONFIG GET` pairs.
pub(super) fn judge_settings(
    at: &str,
    settings: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let get = |k: &str| {
        settings
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    let (mut refuse, mut warn) = (Vec::new(), Vec::new());
    match get("maxmemory-policy") {
        Some("noeviction") | None => {}
        Some(policy) => refuse.push(format!(
            "redis {at}: maxmemory-policy is {policy}: an evicted index or state makes a token \
             look unknown or escape a revocation; set it to noeviction"
        )),
    }
    if let Some(v) = get("appendonly")
        && v != "yes"
    {
        refuse.push(format!(
            "redis {at}: appendonly is {v}: a node that restarts loses what it acknowledged; set appendonly yes"
        ));
    }
    if let Some(v) = get("appendfsync")
        && v != "always"
    {
        warn.push(format!(
            "redis {at}: appendfsync is {v}: a write is on disk only on the next sync, so losing a master \
             and its replicas at once loses acknowledged writes (appendfsync always closes that)"
        ));
    }
    if get("min-replicas-to-write") == Some("0") {
        warn.push(format!(
            "redis {at}: min-replicas-to-write is 0: a master cut off from its replicas still applies \
             writes it cannot acknowledge, which readers of that master see until it rejoins"
        ));
    }
    (refuse, warn)
}

/// Checks the cluster behind `conn` for `opts`; refuses with every refusal found, and
/// logs every warning.
pub(super) async fn verify(
    conn: &mut ClusterConnection,
    opts: &RedisOptions,
) -> Result<(), StoreError> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(conn)
        .await
        .map_err(backend)?;
    let nodes = parse_nodes(&text);
    let (mut refuse, mut warn) = judge_shape(&nodes, opts.required_replicas);
    for n in &nodes {
        let at = format!("{}:{}", n.host, n.port);
        let mut get = redis::cmd("CONFIG");
        get.arg("GET")
            .arg("maxmemory-policy")
            .arg("appendonly")
            .arg("appendfsync")
            .arg("min-replicas-to-write");
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: n.host.clone(),
            port: n.port,
        });
        let settings = match conn.route_command(get, route).await {
            Ok(v) => redis::from_redis_value::<BTreeMap<String, String>>(v)
                .map(|m| m.into_iter().collect::<Vec<_>>())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match settings {
            Ok(settings) => {
                let (r, w) = judge_settings(&at, &settings);
                refuse.extend(r);
                warn.extend(w);
            }
            Err(e) => warn.push(format!(
                "redis {at}: its settings could not be read ({e}); check by hand that it runs with \
                 maxmemory-policy noeviction, appendonly yes, appendfsync always and min-replicas-to-write 1"
            )),
        }
    }
    for w in &warn {
        tracing::warn!("{w}");
    }
    if refuse.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Backend(refuse.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
a3 127.0.0.1:7003@17003 master - 0 0 3 connected 10923-16383
b1 127.0.0.1:7004@17004 slave a1 0 0 1 connected
b2 127.0.0.1:7005@17005 slave a2 0 0 2 connected
b3 127.0.0.1:7006@17006 slave a3 0 0 3 connected
";

    #[test]
    fn a_shard_with_more_replicas_than_required_is_refused_and_fewer_is_a_warning() {
        let nodes = parse_nodes(NODES);
        assert_eq!(nodes.len(), 6);
        assert_eq!(judge_shape(&nodes, 1), (vec![], vec![]));
        let (refuse, warn) = judge_shape(&nodes, 0);
        assert_eq!((refuse.len(), warn.len()), (3, 0), "{refuse:?}");
        let (refuse, warn) = judge_shape(&nodes, 2);
        assert_eq!((refuse.len(), warn.len()), (0, 3), "{warn:?}");
        // A second replica for one shard: that shard is refused at 1.
        let more = format!("{NODES}b4 127.0.0.1:7007@17007 slave a2 0 0 2 connected\n");
        let (refuse, _) = judge_shape(&parse_nodes(&more), 1);
        assert_eq!(refuse.len(), 1);
        assert!(refuse[0].contains("7002"), "{refuse:?}");
        // A failed master serves nothing; a master without slots is no shard.
        let failed = NODES.replace("master - 0 0 2", "master,fail - 0 0 2");
        assert_eq!(judge_shape(&parse_nodes(&failed), 1).0.len(), 0);
        assert_eq!(judge_shape(&[], 1).0.len(), 1);
    }

    #[test]
    fn settings_that_weaken_a_guarantee_are_refused_or_named() {
        let s = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let good = s(&[
            ("maxmemory-policy", "noeviction"),
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("min-replicas-to-write", "1"),
        ]);
        assert_eq!(judge_settings("n", &good), (vec![], vec![]));
        let (refuse, warn) = judge_settings(
            "n",
            &s(&[
                ("maxmemory-policy", "volatile-lru"),
                ("appendonly", "no"),
                ("appendfsync", "everysec"),
                ("min-replicas-to-write", "0"),
            ]),
        );
        assert_eq!(refuse.len(), 2, "{refuse:?}");
        assert!(refuse[0].contains("volatile-lru") && refuse[1].contains("appendonly"));
        assert_eq!(warn.len(), 2, "{warn:?}");
    }
}
