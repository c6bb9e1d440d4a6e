//! The live feed of audit events across Writ nodes: each node announces the events it has
//! stored on one Redis stream (`XADD … MAXLEN ~`), and reads the others' from it
//! (`XREAD BLOCK` on a connection of its own), so a WatchEvents stream on any node sees
//! what every node stored. Nodes announce only while a node elsewhere has a watcher
//! (each says so, on a lease, in a sorted set), so a cluster nobody watches pays nothing. Announced only once stored, as a node's own feed is. A reader
//! that fell so far behind that the stream was trimmed past it is told (`gap`), so its
//! watchers are ended rather than silently missing events (conservatively: a reader whose
//! last entry was trimmed is told, even if nothing after it was).

use super::{RedisStore, backend, reply_error};
use crate::api::StoreError;
use crate::codec;
use redis::Value;
use std::time::Duration;
use writ_core::Event;

/// A position in the feed (a stream entry id, `ms-seq`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedCursor(String);

/// What one read of the feed found.
#[derive(Debug, Default)]
pub struct FeedRead {
    /// Events other nodes announced, in feed order.
    pub events: Vec<Event>,
    /// Entries were trimmed from the feed before this reader saw them.
    pub gap: bool,
}

/// One stream entry as `XREAD` answers it: its id and its fields and values in turn.
type Entry = (String, Vec<Vec<u8>>);
/// `XREAD`'s answer: each stream's name and entries (`None`: nothing new in time).
type Streams = Vec<(String, Vec<Entry>)>;

/// `ms-seq` as numbers, for ordering (`None`: not an entry id).
fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl RedisStore {
    /// Creates the feed if it is not there (with an entry no reader shows), so a read can
    /// always ask how much was trimmed from it.
    pub(super) async fn open_feed(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let exists: bool = redis::cmd("EXISTS")
            .arg(inner.keys.feed())
            .query_async(&mut inner.read_conn())
            .await
            .map_err(backend)?;
        if !exists {
            let _: String = redis::cmd("XADD")
                .arg(inner.keys.feed())
                .arg("*")
                .arg("o")
                .arg(0)
                .query_async(&mut inner.write_conn())
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    /// Announces `events` (stored already) to the other nodes, in one round trip.
    pub async fn announce(&self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let key = inner.keys.feed();
        let mut pipe = redis::pipe();
        for e in events {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(inner.opts.feed_entries)
                .arg("*")
                .arg("o")
                .arg(inner.origin)
                .arg("e")
                .arg(codec::encode_event(e)?)
                .ignore();
        }
        let () = pipe
            .query_async(&mut inner.write_conn())
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Tells the other nodes whether anyone watches events here (`watching`, kept for
    /// `lease` from `now`, ms since the epoch), and answers whether anyone watches on
    /// another node: only then are events worth announcing.
    pub async fn watchers_elsewhere(
        &self,
        watching: bool,
        now: u64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let key = inner.keys.watching();
        let lease = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        if watching {
            pipe.zadd(&key, inner.origin, now.saturating_add(lease))
                .ignore();
        } else {
            pipe.zrem(&key, inner.origin).ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1);
        let (nodes,): (Vec<u64>,) = pipe
            .query_async(&mut inner.write_conn())
            .await
            .map_err(backend)?;
        Ok(nodes.iter().any(|&n| n != inner.origin))
    }

    /// Where the feed ends now: read from here to see what is announced from now on.
    pub async fn feed_end(&self) -> Result<FeedCursor, StoreError> {
        let last: Vec<(String, Value)> = redis::cmd("XREVRANGE")
            .arg(self.inner.keys.feed())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.inner.feed_conn())
            .await
            .map_err(backend)?;
        Ok(FeedCursor(
            last.into_iter()
                .next()
                .map_or_else(|| "0-0".to_owned(), |(id, _)| id),
        ))
    }

    /// Reads what other nodes announced after `cursor`, waiting up to `wait` for the first
    /// entry, and moves `cursor` past it.
    pub async fn read_feed(
        &self,
        cursor: &mut FeedCursor,
        wait: Duration,
    ) -> Result<FeedRead, StoreError> {
        let inner = &self.inner;
        let key = inner.keys.feed();
        // The wait stays well inside the command's response timeout.
        let wait = wait.min(inner.opts.response_timeout / 2);
        let (entries, info): (Option<Streams>, Value) = redis::pipe()
            .cmd("XREAD")
            .arg("COUNT")
            .arg(1024)
            .arg("BLOCK")
            .arg(u64::try_from(wait.as_millis()).unwrap_or(1000).max(1))
            .arg("STREAMS")
            .arg(&key)
            .arg(&cursor.0)
            .cmd("XINFO")
            .arg("STREAM")
            .arg(&key)
            .query_async(&mut inner.feed_conn())
            .await
            .map_err(backend)?;
        let before = entry_id(&cursor.0).unwrap_or((0, 0));
        let mut read = FeedRead::default();
        for (_, items) in entries.into_iter().flatten() {
            for (id, fields) in items {
                let mut origin = None;
                let mut event = None;
                for pair in fields.chunks(2) {
                    match pair {
                        [k, v] if k.as_slice() == b"o" => {
                            origin = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
                        }
                        [k, v] if k.as_slice() == b"e" => event = Some(v),
                        _ => {}
                    }
                }
                cursor.0 = id;
                if origin != Some(inner.origin)
                    && let Some(e) = event
                {
                    read.events.push(codec::decode_event(e)?);
                }
            }
        }
        read.gap = trimmed_after(&info, before)?;
        Ok(read)
    }
}

/// Whether `XINFO STREAM` says the feed was trimmed past `before`: its oldest entry is
/// later, so `before` itself is gone, and with it (trimming drops whole runs of the oldest
/// entries) almost surely what came right after it, which this reader may not have read.
fn trimmed_after(info: &Value, before: (u64, u64)) -> Result<bool, StoreError> {
    if before == (0, 0) {
        return Ok(false);
    }
    let pairs: Vec<(Value, Value)> = match info {
        Value::Map(m) => m.clone(),
        Value::Array(a) => a
            .chunks(2)
            .filter_map(|p| match p {
                [k, v] => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        // No stream: nothing to have missed.
        _ => return Ok(false),
    };
    let first = pairs.into_iter().find(|(k, _)| {
        redis::from_redis_value::<String>(k.clone()).is_ok_and(|k| k == "first-entry")
    });
    let oldest = match first {
        Some((_, Value::Array(entry))) => match entry.first() {
            Some(id) => Some(redis::from_redis_value::<String>(id.clone()).map_err(reply_error)?),
            None => None,
        },
        _ => None,
    };
    Ok(oldest
        .as_deref()
        .and_then(entry_id)
        .is_some_and(|o| o > before))
}
