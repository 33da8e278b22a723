//! Aggregate stage: flow records → per-host, per-direction counters and moving-average rates.
//!
//! - [`networks`]: which addresses are protected, their hostgroup, the whitelist.
//! - [`rate`]: counters, their moving averages, placing NetFlow records in time.
//! - [`table`]: the sharded, capped host table; [`index`]: its hash index.
//!
//! It decides nothing about attacks; the detect stage reads rates from here.

pub mod delta;
pub mod index;
pub mod networks;
pub mod rate;
pub mod table;

pub use delta::{DeltaAccumulator, HostDelta};
pub use networks::Networks;
pub use rate::{Counters, Rates};
pub use table::{host_addr, HostEntry, HostKey, HostTable, Pending, Shard};
