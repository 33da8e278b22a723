//! What the API and `replay --totals` read of the host table: plain copies, made under
//! one shard lock each.

use std::net::IpAddr;

use serde::Serialize;

use super::rate::{Counters, Rates};
use crate::model::Direction;

/// One host-direction's lifetime totals, a line of `replay --totals` output.
#[derive(Debug, Clone, Serialize)]
pub struct HostTotals {
    pub ip: IpAddr,
    pub direction: Direction,
    #[serde(flatten)]
    pub totals: Counters,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectionView {
    pub direction: Direction,
    pub hostgroup: String,
    /// Lifetime totals: only with `[aggregate] host_totals` (or `replay --totals`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<Counters>,
    /// Newest second (unix) with traffic.
    pub last_seen: u32,
    pub rates: Rates,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub ip: IpAddr,
    pub directions: Vec<DirectionView>,
}
