//! Aggregate stage: flow records → per-host, per-direction counters and sliding windows.
//!
//! - [`networks`]: which addresses are protected, their hostgroup, the whitelist.
//! - [`window`]: counters, 1-second buckets, spreading of NetFlow records over time.
//! - [`table`]: the sharded, capped host table.
//!
//! It decides nothing about attacks; the detect stage reads windows from here.

pub mod networks;
pub mod table;
pub mod window;

pub use networks::Networks;
pub use table::{HostEntry, HostKey, HostTable, Shard, Update};
pub use window::{Counters, Rates, Window};
