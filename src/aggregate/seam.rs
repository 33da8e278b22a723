//! The aggregate stage's seams, as values: what comes in (decoded records, through
//! [`RecordSink`]), what goes out once a second ([`HostChange`]s and group totals, to a
//! [`SecondSink`]), and what the detect stage may ask of the table ([`Command`]s).
//!
//! The detect stage implements [`SecondSink`] and returns [`Command`]s; it never holds a
//! shard or calls the table. The wiring (`pipeline`) applies the commands.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::rate::{Counters, Rates};
use super::table::{HostEntry, HostKey, Pending};
use crate::decode::FlowRecord;
use crate::model::{Direction, TopSource};

/// Where collectors and replay hand decoded records: the aggregate stage.
pub trait RecordSink: Send + Sync {
    /// Per-thread buffers for [`Self::ingest`], made once per thread and reused so the
    /// hot path does not allocate.
    fn scratch(&self) -> Scratch;
    /// Applies decoded records at time `now_ms`.
    fn ingest(&self, recs: &[FlowRecord], now_ms: i64, s: &mut Scratch);
}

/// Per-thread buffers for [`RecordSink::ingest`].
pub struct Scratch {
    pub(crate) per_shard: Vec<Vec<Pending>>,
}

/// One host-direction as the second that just ended left it: written during that second
/// (or marked for a revisit), or asked for by the detect stage. A plain value, so a
/// distributed mode can ship it.
///
/// It carries the decaying window sums and their rates, which is what detection reads.
/// The per-second counter deltas themselves are [`super::HostDelta`]s (cluster mode).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HostChange {
    pub ip: IpAddr,
    pub direction: Direction,
    /// Index of the host's hostgroup.
    pub group: u16,
    /// Newest second with traffic.
    pub last_seen_sec: u32,
    /// Decaying sums as of the last complete second (rates × window).
    pub sums: Counters,
    pub rates: Rates,
}

impl HostChange {
    #[inline(always)]
    pub fn of(k: &HostKey, e: &HostEntry) -> HostChange {
        HostChange {
            ip: k.ip,
            direction: k.dir,
            group: e.group,
            last_seen_sec: e.last_seen_sec,
            sums: e.sums,
            rates: e.rates,
        }
    }

    pub fn key(&self) -> HostKey {
        HostKey {
            ip: self.ip,
            dir: self.direction,
        }
    }
}

/// What the per-second pass hands the detect stage, shard by shard.
pub trait SecondSink {
    /// The host-directions the detect stage wants read whether or not they had traffic
    /// (those under attack), each with the index of the shard it lives in.
    fn asked(&self) -> &[(usize, HostKey)];
    /// Whether [`Self::changed`] is to see `c`: asked of every changed host, from the
    /// threads that read the shards (so only `&self`), before `changed` of those it
    /// wants. What it refuses must be what `changed` would ignore.
    fn wants(&self, _c: &HostChange) -> bool {
        true
    }
    /// A host-direction written during the second that ended (whitelisted hosts are not
    /// shown: they never start an attack).
    fn changed(&mut self, c: &HostChange);
    /// An asked host-direction, after the changed ones of its shard: its reading (None if
    /// it is no longer tracked) and its top sources (empty if not watched).
    fn answer(&mut self, key: &HostKey, c: Option<HostChange>, sources: Vec<TopSource>);
    /// The sums of hostgroup `group` (only groups with a total threshold are summed).
    fn group_total(&mut self, group: u16, sums: Counters);
}

/// What the detect stage asks of the host table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Track the host's sources (its attack started or was taken over); the answer is its
    /// top sources seen so far. Refused (and counted) beyond `max_watched_hosts`.
    Watch(HostKey),
    /// Stop tracking its sources (its attack ended, or it is no longer this node's).
    Unwatch(HostKey),
    /// Keep it in the table through the sweep these commands are handed to (it is under
    /// attack).
    Keep(HostKey),
}
