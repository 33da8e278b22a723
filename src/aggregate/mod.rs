//! Aggregate stage: flow records → per-host, per-direction counters and moving-average rates.
//!
//! - [`seam`]: what comes in ([`RecordSink`]: decoded records from the collectors and
//!   replay), what goes out once a second ([`HostChange`]s to a [`SecondSink`]) and what
//!   the detect stage may ask of the table ([`Command`]s).
//! - [`stage`]: [`Aggregate`], the stage as one value: routing, the per-second pass's
//!   reading of the table, sweeps, the watched-host cap, the views.
//! - [`networks`]: which addresses are protected, their hostgroup, the whitelist.
//! - [`rate`]: counters, their moving averages, placing NetFlow records in time.
//! - [`table`]: the sharded, capped host table; [`index`]: its hash index.
//! - [`top`]: the busiest host-directions as of the last pass; [`view`]: what the API
//!   and `replay --totals` read.
//! - [`delta`]: per-second deltas per host-direction, for cluster mode.
//!
//! It decides nothing about attacks and imports no later stage: the detect stage reads
//! [`HostChange`]s and answers with [`Command`]s, which the wiring applies.

pub mod delta;
pub mod index;
pub mod networks;
pub mod rate;
pub mod seam;
pub mod stage;
pub mod table;
pub mod top;
pub mod view;

pub use delta::{DeltaAccumulator, HostDelta};
pub use networks::Networks;
pub use rate::{Counters, Rates};
pub use seam::{Command, HostChange, RecordSink, Scratch, SecondSink};
pub use stage::{Aggregate, GroupLayout};
pub use table::{host_addr, HostEntry, HostKey, HostTable, Pending, Shard};
pub use top::{TopBy, TopHosts, TOP_HOSTS_MAX};
pub use view::{DirectionView, HostTotals, HostView};
