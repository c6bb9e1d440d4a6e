//! The audit trail (events that change no token), the disabled parties and the key-count
//! diagnostic, on the cluster.
//!
//! Event ids are the issuer's; the cluster keeps a high-water mark of the greatest one
//! stored (`P:hwm`), raised once a second by a task of this store, so a restarted Writ
//! node seeds its clock past every id it issued.

use super::keys::{corrupt, event_member, event_of_member};
use super::{Inner, backend, function};
use crate::api::StoreError;
use crate::api::StoreStats;
use crate::codec;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use std::collections::BTreeMap;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;
use writ_core::{Event, EventId, PartyDisable, TxnId};

impl Inner {
    /// Appends events (validated, refused) to their transactions' trails. Not waited for
    /// by replicas: like RocksStore's, these survive a crash of the process (the master
    /// fsyncs its AOF), not every failover.
    pub(super) async fn append_events(&self, events: Vec<Event>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut by_txn: BTreeMap<TxnId, Vec<&Event>> = BTreeMap::new();
        for e in &events {
            by_txn.entry(e.txn).or_default().push(e);
        }
        // One pipeline for the batch: the client sends each transaction's commands to its
        // shard.
        let mut pipe = redis::pipe();
        let mut newest = EventId(0);
        for (txn, events) in by_txn {
            let key = self.keys.events(txn);
            let mut last = EventId(0);
            for e in events {
                pipe.zadd(&key, event_member(e.id, &codec::encode_event(e)?), e.id.0)
                    .ignore();
                last = last.max(e.id);
            }
            let at = self.event_expiry(last);
            if at > 0 {
                // Set if the key has no expiry yet (GT alone never sets one), extended if
                // it has an earlier one.
                pipe.cmd("PEXPIREAT").arg(&key).arg(at).arg("NX").ignore();
                pipe.cmd("PEXPIREAT").arg(&key).arg(at).arg("GT").ignore();
            }
            newest = newest.max(last);
        }
        let () = pipe
            .query_async(&mut self.write_conn())
            .await
            .map_err(backend)?;
        self.saw_event(newest);
        Ok(())
    }

    pub(super) async fn events(
        &self,
        txn: TxnId,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let min = after.map_or("-inf".to_owned(), |a| format!("({}", a.0));
        let raw: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(self.keys.events(txn))
            .arg(min)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(super::count(limit))
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let mut events = raw
            .iter()
            .map(|m| codec::decode_event(event_of_member(m)?))
            .collect::<Result<Vec<Event>, _>>()?;
        // Two nodes may issue one id (each issues its own increasing ids): a page never
        // ends between such events, or a reader paging `after` the id would skip one.
        if events.len() == limit
            && let Some(last) = events.last().map(|e| e.id)
        {
            let same: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(self.keys.events(txn))
                .arg(last.0)
                .arg(last.0)
                .arg("BYSCORE")
                .query_async(&mut self.read_conn())
                .await
                .map_err(backend)?;
            if same.len() > 1 {
                events.retain(|e| e.id != last);
                for m in &same {
                    events.push(codec::decode_event(event_of_member(m)?)?);
                }
            }
        }
        Ok(events)
    }

    pub(super) async fn last_event_id(&self) -> Result<Option<EventId>, StoreError> {
        let stored: Option<u64> = redis::cmd("GET")
            .arg(self.keys.high_water())
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let id = stored
            .unwrap_or(0)
            .max(self.high_water.load(Ordering::Relaxed));
        Ok((id > 0).then_some(EventId(id)))
    }

    /// Raises the cluster's high-water mark to what this process stored, if it is behind.
    async fn raise_high_water(&self) -> Result<(), StoreError> {
        let seen = self.high_water.load(Ordering::Relaxed);
        if seen <= self.high_water_stored.load(Ordering::Relaxed) {
            return Ok(());
        }
        let _: i64 = redis::cmd("FCALL")
            .arg(function("raise"))
            .arg(1)
            .arg(self.keys.high_water())
            .arg(seen)
            .query_async(&mut self.write_conn())
            .await
            .map_err(backend)?;
        self.high_water_stored.fetch_max(seen, Ordering::Relaxed);
        Ok(())
    }

    pub(super) async fn set_party_disabled(
        &self,
        party: String,
        disabled: Option<PartyDisable>,
    ) -> Result<(), StoreError> {
        let mut cmd;
        match disabled {
            Some(d) => {
                let d = PartyDisable::new(d.at, d.by, d.reason);
                cmd = redis::cmd("HSET");
                cmd.arg(self.keys.parties())
                    .arg(&party)
                    .arg(codec::encode_party(&d)?);
            }
            None => {
                cmd = redis::cmd("HDEL");
                cmd.arg(self.keys.parties()).arg(&party);
            }
        }
        let _: i64 = self.durable(cmd).await?;
        Ok(())
    }

    pub(super) async fn disabled_parties(&self) -> Result<Vec<(String, PartyDisable)>, StoreError> {
        let raw: BTreeMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.keys.parties())
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        raw.into_iter()
            .map(|(p, d)| Ok((p, codec::decode_party(&d)?)))
            .collect()
    }

    /// Counts every key of the namespace on every master. A diagnostic: it scans the
    /// whole keyspace.
    pub(super) async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut stats = StoreStats::default();
        for (host, port) in self.masters().await? {
            let route = || {
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port,
                })
            };
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(self.keys.pattern())
                    .arg("COUNT")
                    .arg(1000);
                let reply = self
                    .read_conn()
                    .route_command(scan, route())
                    .await
                    .map_err(backend)?;
                let (next, keys): (u64, Vec<String>) =
                    redis::from_redis_value(reply).map_err(super::reply_error)?;
                for key in keys {
                    let Some(kind) = self.keys.kind(&key) else {
                        continue;
                    };
                    let count = match kind.counter() {
                        "HLEN" | "ZCARD" => {
                            let mut c = redis::cmd(kind.counter());
                            c.arg(&key);
                            let v = self
                                .read_conn()
                                .route_command(c, route())
                                .await
                                .map_err(backend)?;
                            redis::from_redis_value::<u64>(v).map_err(super::reply_error)?
                        }
                        _ => 1,
                    };
                    kind.add(&mut stats, count);
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(stats)
    }

    /// The masters' addresses, from `CLUSTER NODES`.
    async fn masters(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut self.read_conn())
            .await
            .map_err(backend)?;
        let mut out = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                continue;
            }
            let addr = addr.split('@').next().unwrap_or_default();
            let Some((host, port)) = addr.rsplit_once(':') else {
                return Err(corrupt("CLUSTER NODES address"));
            };
            let port = port.parse().map_err(|_| corrupt("CLUSTER NODES port"))?;
            out.push((host.to_owned(), port));
        }
        Ok(out)
    }
}

/// Keeps the cluster's high-water mark of event ids, once a second, until the store is
/// dropped.
pub(super) async fn keep_high_water(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.raise_high_water().await {
            tracing::warn!(error = %e, "raising the audit trail's high-water mark");
        }
    }
}
