//! The outbox: one Redis stream per partition, written by the transition scripts and read by
//! the relays through the consumer group `relay`.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;

use super::{Error, Partition, Store, cmd};

/// Consumer group of the outbox relays (lib.lua's `delivered()` names it too).
pub const OUTBOX_GROUP: &str = "relay";

/// One outbox entry, as read by the relay: the messages of one script run (up to 64).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub stream_id: String,
    /// Empty when the entry is gone already (acknowledged and deleted by another relay after
    /// a takeover).
    pub msgs: Vec<OutboxMsg>,
}

/// One message of an outbox entry: what `outbox` in lib.lua packs, in its order (an entry's
/// one field `m` is a JSON array of these, each an array of 12 strings; entries written before
/// there could be several hold the one array). An entry that does not decode has one message
/// of kind `undecodable`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxMsg {
    /// run | processing | complete | failed | cancelled
    pub kind: String,
    pub id: String,
    pub queue: String,
    pub job_type: String,
    pub attempt: String,
    pub state: String,
    pub worker_id: String,
    /// Time of the transition, ms since the epoch.
    pub ts: String,
    pub error: String,
    pub seq: String,
    /// The job's W3C traceparent.
    pub tp: String,
    /// Suffix of a run message's id (a run written again by the sweeper).
    pub sfx: String,
    /// Microseconds past `ts` (0-999; empty in entries of earlier versions).
    pub us: String,
}

impl OutboxMsg {
    fn undecodable() -> OutboxMsg {
        OutboxMsg {
            kind: "undecodable".into(),
            ..OutboxMsg::default()
        }
    }
}

/// The outbox entries one script run wrote, read into the prompt publisher's consumer, as the
/// script returned them (`[[id, [k, v, ...]], ...]`; decoded by the publisher, not the call).
pub type Delivered = (Partition, Value);

/// Prompt publishing: each script run reads the outbox entries it wrote into a relay
/// consumer's pending list and returns them, and the store hands them to the publisher
/// (relay.rs) at once, instead of a relay finding them with a read of its own. The entries stay
/// in the outbox, pending, until they are published and deleted; one the publisher could not
/// take (its queue full) or failed to publish is what `missed` is notified about, and the
/// relay then re-reads its consumer's pending entries.
#[derive(Clone)]
pub struct Prompt {
    consumer: String,
    tx: tokio::sync::mpsc::Sender<Delivered>,
    missed: std::sync::Arc<tokio::sync::Notify>,
}

impl Prompt {
    pub fn new(
        consumer: String,
        tx: tokio::sync::mpsc::Sender<Delivered>,
        missed: std::sync::Arc<tokio::sync::Notify>,
    ) -> Prompt {
        Prompt { consumer, tx, missed }
    }

    /// Hands a script's delivered entries (`[[id, [k, v, ...]], ...]`) to the publisher.
    pub(super) fn hand(&self, p: Partition, delivered: Value) {
        if delivered.array_len().unwrap_or(0) == 0 {
            return;
        }
        if self.tx.try_send((p, delivered)).is_err() {
            // The publisher is behind (or stopping): the relay publishes them.
            self.missed.notify_one();
        }
    }
}

impl Store {
    /// This store with prompt publishing: every script run hands the outbox entries it wrote
    /// to `prompt` (their consumer is `prompt`'s).
    pub fn with_prompt(&self, prompt: Prompt) -> Store {
        let mut store = self.clone();
        store.retention = format!("{}|{}", self.retention, prompt.consumer).into();
        store.prompt = Some(prompt);
        store
    }

    /// Creates the relay consumer group on every partition's outbox (when missing).
    pub(super) async fn ensure_outbox_groups(&self) -> Result<(), Error> {
        for p in self.layout.all() {
            let r: Result<Value, _> = self
                .client
                .custom(
                    cmd("XGROUP"),
                    vec!["CREATE", &p.outbox(), OUTBOX_GROUP, "0", "MKSTREAM"],
                )
                .await;
            match r {
                Ok(_) => {}
                Err(e) if e.details().contains("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Relay: up to `count` entries of each partition in `reads` for `consumer`: its own
    /// unacknowledged ones first where the flag says so (a publish that failed, entries taken
    /// over), else new ones. One list per partition, in order. One command for every stream
    /// on one Redis; on a cluster (streams in different slots) one command per stream, in one
    /// pipeline.
    pub async fn outbox_read_many(
        &self,
        consumer: &str,
        count: usize,
        reads: &[(Partition, bool)],
    ) -> Result<Vec<Vec<OutboxEntry>>, Error> {
        let count = count.to_string();
        let command = |reads: &[(Partition, bool)]| {
            let mut args = vec![
                "GROUP".to_string(),
                OUTBOX_GROUP.into(),
                consumer.into(),
                "COUNT".into(),
                count.clone(),
                "STREAMS".into(),
            ];
            args.extend(reads.iter().map(|(p, _)| p.outbox()));
            args.extend(
                reads
                    .iter()
                    .map(|(_, pending)| if *pending { "0" } else { ">" }.to_string()),
            );
            args
        };
        if !self.client.is_clustered() {
            let reply: Value = self.client.custom(cmd("XREADGROUP"), command(reads)).await?;
            return read_reply(reply, reads);
        }
        let pipeline = self.client.pipeline();
        for read in reads {
            let _: () = pipeline
                .custom(cmd("XREADGROUP"), command(std::slice::from_ref(read)))
                .await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        let mut out = Vec::with_capacity(reads.len());
        for (reply, read) in replies.into_iter().zip(reads) {
            out.extend(read_reply(reply, std::slice::from_ref(read))?);
        }
        Ok(out)
    }

    /// Relay: takes over entries of partition `p` another relay left unacknowledged for
    /// `idle_ms`.
    pub async fn outbox_autoclaim(
        &self,
        p: Partition,
        consumer: &str,
        idle_ms: u64,
        count: usize,
    ) -> Result<usize, Error> {
        let v: Value = self
            .client
            .custom(
                cmd("XAUTOCLAIM"),
                vec![
                    p.outbox().as_str(),
                    OUTBOX_GROUP,
                    consumer,
                    &idle_ms.to_string(),
                    "0",
                    "COUNT",
                    &count.to_string(),
                    "JUSTID",
                ],
            )
            .await?;
        let mut parts = v.into_array().into_iter();
        let _next = parts.next();
        Ok(parts.next().map(|ids| ids.into_array().len()).unwrap_or(0))
    }

    /// Relay: removes consumers of partition `p`'s group that hold no entry and have been idle
    /// for `idle_ms` (relays of dispatch processes that are gone), except `keep`. Returns how
    /// many went.
    pub async fn outbox_forget_idle(&self, p: Partition, keep: &str, idle_ms: u64) -> Result<usize, Error> {
        let key = p.outbox();
        let v: Value = self
            .client
            .custom(cmd("XINFO"), vec!["CONSUMERS", key.as_str(), OUTBOX_GROUP])
            .await?;
        let mut gone = 0;
        for consumer in v.into_array() {
            let mut info: HashMap<String, Value> = HashMap::new();
            let mut kv = consumer.into_array().into_iter();
            while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                if let Some(k) = k.into_string() {
                    info.insert(k, v);
                }
            }
            let name = info.get("name").and_then(|v| v.as_string()).unwrap_or_default();
            let pending = info.get("pending").and_then(|v| v.as_u64()).unwrap_or(1);
            let idle = info.get("idle").and_then(|v| v.as_u64()).unwrap_or(0);
            if name.is_empty() || name == keep || pending > 0 || idle < idle_ms {
                continue;
            }
            let _: Value = self
                .client
                .custom(
                    cmd("XGROUP"),
                    vec!["DELCONSUMER", key.as_str(), OUTBOX_GROUP, name.as_str()],
                )
                .await?;
            gone += 1;
        }
        Ok(gone)
    }

    /// Relay: acknowledges and deletes published entries, per partition, in one pipeline.
    pub async fn outbox_done_many(&self, done: &[(Partition, Vec<String>)]) -> Result<(), Error> {
        let pipeline = self.client.pipeline();
        let mut n = 0;
        for (p, ids) in done.iter().filter(|(_, ids)| !ids.is_empty()) {
            let key = p.outbox();
            let mut ack = vec![key.clone(), OUTBOX_GROUP.to_string()];
            ack.extend(ids.iter().cloned());
            let mut del = vec![key];
            del.extend(ids.iter().cloned());
            let _: () = pipeline.custom(cmd("XACK"), ack).await?;
            let _: () = pipeline.custom(cmd("XDEL"), del).await?;
            n += 1;
        }
        if n > 0 {
            let _: Vec<Value> = pipeline.all().await?;
        }
        Ok(())
    }

    /// Entries waiting in every partition's outbox.
    pub async fn outbox_len(&self) -> Result<u64, Error> {
        Ok(self.outbox_stats().await?.0)
    }

    /// Entries waiting in every partition's outbox, and when the oldest was written (ms since
    /// the epoch).
    pub async fn outbox_stats(&self) -> Result<(u64, Option<u64>), Error> {
        let heads = self.outbox_heads().await?;
        let len = heads.iter().map(|(_, n, _)| n).sum();
        Ok((len, heads.iter().filter_map(|(_, _, oldest)| *oldest).min()))
    }

    /// Per partition: the entries waiting in its outbox, and when the oldest of them was
    /// written (ms since the epoch; a stream id starts with its time). One pipeline.
    pub async fn outbox_heads(&self) -> Result<Vec<(Partition, u64, Option<u64>)>, Error> {
        let pipeline = self.client.pipeline();
        for p in self.layout.all() {
            let key = p.outbox();
            let _: () = pipeline.xlen(key.as_str()).await?;
            let _: () = pipeline
                .custom(
                    cmd("XRANGE"),
                    vec![key, "-".into(), "+".into(), "COUNT".into(), "1".into()],
                )
                .await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        let mut it = replies.into_iter();
        let mut heads = Vec::new();
        for p in self.layout.all() {
            let (Some(n), Some(first)) = (it.next(), it.next()) else {
                return Err(Error::Corrupt("short outbox pipeline reply".into()));
            };
            let oldest = first
                .into_array()
                .into_iter()
                .next()
                .and_then(|e| e.into_array().into_iter().next())
                .and_then(|id| id.into_string())
                .and_then(|id| id.split('-').next().and_then(|ms| ms.parse::<u64>().ok()));
            heads.push((p, n.as_u64().unwrap_or(0), oldest));
        }
        Ok(heads)
    }
}

/// Parses an XREADGROUP reply (`[[stream, [[id, [k, v, ...]], ...]], ...]`, or nil when no
/// stream had anything) into one list per partition of `reads`, in its order.
fn read_reply(v: Value, reads: &[(Partition, bool)]) -> Result<Vec<Vec<OutboxEntry>>, Error> {
    let mut out: Vec<Vec<OutboxEntry>> = reads.iter().map(|_| Vec::new()).collect();
    if v.is_null() {
        return Ok(out);
    }
    let names: Vec<String> = reads.iter().map(|(p, _)| p.outbox()).collect();
    for stream in v.into_array() {
        let mut parts = stream.into_array().into_iter();
        let name = parts.next().and_then(|n| n.into_string()).unwrap_or_default();
        let i = names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| Error::Corrupt(format!("reply for an unknown stream {name:?}")))?;
        if let Some(entries) = parts.next() {
            out[i] = parse_entries(entries)?;
        }
    }
    Ok(out)
}

/// Parses stream entries `[[id, [k, v, ...]], ...]` (a read's, or what [`Prompt::hand`]
/// handed over).
pub fn parse_entries(v: Value) -> Result<Vec<OutboxEntry>, Error> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    v.into_array()
        .into_iter()
        .map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let stream_id = parts
                .next()
                .and_then(|v| v.into_string())
                .ok_or_else(|| Error::Corrupt("stream entry without id".into()))?;
            // Fields come as [k, v, ...]: ours is the one field `m`.
            let mut kv = parts.next().map(|v| v.into_array()).unwrap_or_default().into_iter();
            let mut any = false;
            let mut msgs = Vec::new();
            while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                any = true;
                if k.as_str().as_deref() == Some("m") {
                    let packed = v.as_str().unwrap_or_default();
                    // An undecodable entry gets an unknown kind: the relay logs and drops it
                    // rather than stall on it.
                    msgs = unpack_outbox(&packed).unwrap_or_else(|e| {
                        tracing::error!(error = %e, "undecodable outbox entry");
                        vec![OutboxMsg::undecodable()]
                    });
                }
            }
            if any && msgs.is_empty() {
                msgs.push(OutboxMsg::undecodable());
            }
            Ok(OutboxEntry { stream_id, msgs })
        })
        .collect()
}

/// One value of a packed outbox entry: a string, or a number taken as its text (cjson encodes
/// Lua numbers as such).
struct Text(String);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(
                    serde_json::Number::from_f64(v)
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// Decodes a packed outbox entry (see `flush_outbox` in lib.lua): a JSON array of messages,
/// or (written by an earlier version) one message.
fn unpack_outbox(packed: &str) -> Result<Vec<OutboxMsg>, Error> {
    let corrupt = |e: serde_json::Error| Error::Corrupt(format!("outbox entry {packed:?}: {e}"));
    if packed
        .trim_start()
        .strip_prefix('[')
        .is_some_and(|r| r.trim_start().starts_with('['))
    {
        let all: Vec<Vec<Text>> = serde_json::from_str(packed).map_err(corrupt)?;
        all.into_iter().map(message).collect()
    } else {
        message(serde_json::from_str(packed).map_err(corrupt)?).map(|m| vec![m])
    }
}

/// One message from its 13 values (see `outbox` in lib.lua), or the first 12 of them (an
/// entry of an earlier version, without the microseconds).
fn message(mut values: Vec<Text>) -> Result<OutboxMsg, Error> {
    let n = values.len();
    let us = if n == 13 {
        values.pop().map(|t| t.0).unwrap_or_default()
    } else {
        String::new()
    };
    let Ok(
        [
            kind,
            id,
            queue,
            job_type,
            attempt,
            state,
            worker_id,
            ts,
            error,
            seq,
            tp,
            sfx,
        ],
    ) = <[Text; 12]>::try_from(values)
    else {
        return Err(Error::Corrupt(format!("outbox message of {n} values")));
    };
    Ok(OutboxMsg {
        kind: kind.0,
        id: id.0,
        queue: queue.0,
        job_type: job_type.0,
        attempt: attempt.0,
        state: state.0,
        worker_id: worker_id.0,
        ts: ts.0,
        error: error.0,
        seq: seq.0,
        tp: tp.0,
        sfx: sfx.0,
        us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_outbox_entries_unpack_to_named_fields() {
        let m = r#"["failed","j1","q","noop","2","SCHEDULED","w-1","1700","bad \"x\" | y","4","00-ab-cd-01",""]"#;
        // An entry of an earlier version: one message.
        let f = &unpack_outbox(m).unwrap()[0];
        assert_eq!(f.kind, "failed");
        assert_eq!(f.error, "bad \"x\" | y");
        assert_eq!(f.seq, "4");
        assert_eq!(f.tp, "00-ab-cd-01");
        assert_eq!(f.sfx, "");
        // An entry of several messages, in order.
        let two = format!(r#"[{m}, ["run","j2","q","t","1","QUEUED","","1701","","1","","",371]]"#);
        let both = unpack_outbox(&two).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!((both[0].id.as_str(), both[1].id.as_str()), ("j1", "j2"));
        assert_eq!(both[1].kind, "run");
        // The microseconds past the ms, and none in an earlier version's message.
        assert_eq!((both[0].us.as_str(), both[1].us.as_str()), ("", "371"));
        assert!(unpack_outbox(r#"["run","j1"]"#).is_err());
        assert!(unpack_outbox(r#"[["run","j1"]]"#).is_err());
        // A number where a string belongs is read as its text.
        let n = &unpack_outbox(r#"["run","j1","q","t",1,"QUEUED","",1700,"",0,"",":s1"]"#).unwrap()[0];
        assert_eq!((n.attempt.as_str(), n.seq.as_str(), n.sfx.as_str()), ("1", "0", ":s1"));
        assert!(unpack_outbox(r#"["run","j1","q","t",[1],"QUEUED","",1700,"",0,"",""]"#).is_err());
        assert!(unpack_outbox("not json").is_err());
        // An undecodable entry in a stream reply is dropped by the relay, not fatal to the batch.
        let reply = Value::Array(vec![Value::Array(vec![
            Value::from("1-0"),
            Value::Array(vec![Value::from("m"), Value::from("{")]),
        ])]);
        let entries = parse_entries(reply).unwrap();
        let msg = &entries[0].msgs[0];
        assert_eq!(msg.kind, "undecodable");
        assert!(crate::bus::outgoing(msg).is_none());
        // A deleted entry (no fields) has no message.
        let gone = parse_entries(Value::Array(vec![Value::Array(vec![Value::from("2-0"), Value::Null])])).unwrap();
        assert!(gone[0].msgs.is_empty());
    }
}
