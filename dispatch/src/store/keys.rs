//! Key names and partitions.
//!
//! Records live in P partitions. Every key of partition `p` carries the hash tag `{p<p>}`
//! (`dispatch:{p7}:job:<id>`), so a partition sits in one Redis Cluster slot and a script,
//! which is always given the keys of one partition, never crosses slots. A job's partition is
//! fixed when it is created and written into its id (see [`Layout::new_id`]), so every call by
//! id finds it with no lookup. "Which partition" is one function, [`Layout::partition_of_key`],
//! for anything keyed (idempotency keys today; per-key limits tomorrow).

use rand::Rng;

use super::State;

/// Prefix of every key and channel.
pub const PREFIX: &str = "dispatch:";
/// The key holding the layout version and partition count of this Redis.
pub const META: &str = "dispatch:{meta}";
/// When each paused queue was paused (a hash, queue → ms): what ListQueues shows. The
/// partitions' `paused` sets are what claims obey.
pub const PAUSED: &str = "dispatch:{meta}:paused";
/// Jobs finished per minute: `dispatch:{stats}:<minute>` hashes, field `<queue>|<outcome>`.
pub const STATS_PREFIX: &str = "dispatch:{stats}:";
/// The workers that announced themselves (a hash, worker id → JSON).
pub const WORKERS: &str = "dispatch:{workers}";
/// The layout these scripts read and write.
pub const LAYOUT_VERSION: &str = "2";
/// Keys of the layout before partitions (layout 1); their presence stops the start-up.
pub const LEGACY_KEYS: [&str; 5] = [
    "dispatch:queues",
    "dispatch:outbox",
    "dispatch:scheduled",
    "dispatch:queued",
    "dispatch:leases",
];

/// One partition. Its keys (see lib.lua for what each holds):
/// `timers`, `idx:<STATE>` (six), `outbox`, `queues`, `paused`, then per job `job:<id>` and
/// `job:<id>:p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(pub u16);

impl Partition {
    fn key(self, rest: &str) -> String {
        format!("{PREFIX}{{p{}}}:{rest}", self.0)
    }

    /// The job's record (a hash, with its history).
    pub fn job(self, id: &str) -> String {
        format!("{PREFIX}{{p{}}}:job:{id}", self.0)
    }

    /// The job's payload (a string).
    pub fn payload(self, id: &str) -> String {
        format!("{PREFIX}{{p{}}}:job:{id}:p", self.0)
    }

    /// SCHEDULED jobs by run time, RUNNING jobs by lease deadline, finished jobs by expiry.
    pub fn timers(self) -> String {
        self.key("timers")
    }

    /// Jobs in `state`, members `<queue>:<id>` with score 0 (ordered by queue, then id).
    pub fn idx(self, state: State) -> String {
        format!("{PREFIX}{{p{}}}:idx:{}", self.0, state.as_str())
    }

    /// Messages waiting to be published to NATS by the relay.
    pub fn outbox(self) -> String {
        self.key("outbox")
    }

    /// Names of the queues with jobs in this partition.
    pub fn queues(self) -> String {
        self.key("queues")
    }

    /// Names of the paused queues (the same in every partition; claims check it).
    pub fn paused(self) -> String {
        self.key("paused")
    }

    /// How many WatchJob streams (of every dispatch) follow a job of this partition: the
    /// scripts publish wake-ups only while it is above zero.
    pub fn watchers(self) -> String {
        self.key("watchers")
    }

    /// The job id of an idempotency key.
    pub fn idem(self, queue: &str, key: &str) -> String {
        format!("{PREFIX}{{p{}}}:idem:{queue}:{key}", self.0)
    }

    /// The keys every script gets first, in this order (KEYS[1..11] in lib.lua).
    pub fn header(self) -> Vec<String> {
        let mut keys = Vec::with_capacity(11);
        keys.push(self.timers());
        keys.extend(State::ALL.iter().map(|s| self.idx(*s)));
        keys.push(self.outbox());
        keys.push(self.queues());
        keys.push(self.paused());
        keys.push(self.watchers());
        keys
    }
}

/// How many partitions there are, and how ids and keys map onto them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub partitions: u16,
}

impl Layout {
    /// Every partition.
    pub fn all(self) -> impl Iterator<Item = Partition> {
        (0..self.partitions).map(Partition)
    }

    /// The partition of job `id`: the id's last four hex digits, modulo P. Ids made here end
    /// in the partition number itself; any other text (a mistyped id) still maps somewhere,
    /// where it is not found.
    pub fn partition_of(self, id: &str) -> Partition {
        let tail = id.get(id.len().saturating_sub(4)..).unwrap_or("");
        let n = u16::from_str_radix(tail, 16).unwrap_or_else(|_| (fnv1a(id.as_bytes()) & 0xffff) as u16);
        Partition(n % self.partitions)
    }

    /// The partition of something keyed, e.g. an idempotency key of a queue: every job with
    /// that key lands in one partition, so checking and creating are one atomic step.
    pub fn partition_of_key(self, scope: &str, key: &str) -> Partition {
        let mut bytes = Vec::with_capacity(scope.len() + 1 + key.len());
        bytes.extend_from_slice(scope.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(key.as_bytes());
        Partition((fnv1a(&bytes) % u64::from(self.partitions)) as u16)
    }

    /// A partition picked at random, for a job with no key.
    pub fn any(self) -> Partition {
        Partition(rand::rng().random_range(0..self.partitions))
    }

    /// A new job id in partition `p`: a UUIDv7 (time-ordered) whose last 16 bits are `p`.
    pub fn new_id(self, p: Partition) -> String {
        let mut bytes = *uuid::Uuid::now_v7().as_bytes();
        bytes[14..16].copy_from_slice(&p.0.to_be_bytes());
        uuid::Uuid::from_bytes(bytes).to_string()
    }
}

/// 64-bit FNV-1a: stable across versions and machines (unlike std's hasher), which a
/// partition choice stored in Redis needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_partition_and_keys_share_its_hash_tag() {
        let l = Layout { partitions: 16 };
        for p in l.all() {
            let id = l.new_id(p);
            assert_eq!(l.partition_of(&id), p, "{id}");
            assert!(uuid::Uuid::parse_str(&id).is_ok());
            assert!(p.job(&id).contains(&format!("{{p{}}}", p.0)));
            assert!(p.header().iter().all(|k| k.contains(&format!("{{p{}}}", p.0))));
        }
        // Not an id of ours: mapped somewhere in range, the same way every time.
        let q = l.partition_of("not-an-id");
        assert!(q.0 < 16);
        assert_eq!(q, l.partition_of("not-an-id"));
        // One partition: everything in it.
        let one = Layout { partitions: 1 };
        assert_eq!(one.partition_of(&l.new_id(Partition(9))), Partition(0));
    }

    #[test]
    fn a_key_always_maps_to_one_partition_and_keys_spread() {
        let l = Layout { partitions: 16 };
        assert_eq!(l.partition_of_key("q", "k1"), l.partition_of_key("q", "k1"));
        // The queue is part of the key's scope.
        let spread: std::collections::HashSet<_> = (0..200).map(|i| l.partition_of_key("q", &i.to_string())).collect();
        assert!(spread.len() >= 12, "keys reach {} of 16 partitions", spread.len());
        assert_ne!(
            (0..50)
                .map(|i| l.partition_of_key("a", &i.to_string()))
                .collect::<Vec<_>>(),
            (0..50)
                .map(|i| l.partition_of_key("b", &i.to_string()))
                .collect::<Vec<_>>()
        );
    }
}
