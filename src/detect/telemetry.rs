//! Attack metrics, written where attack events are made: totals and active gauges per
//! direction and type, type changes, and per-host series for at most
//! `[detection] max_attack_host_series` attacks in progress (beyond: counted, no series).

use std::net::IpAddr;

use crate::metrics::{Cap, CapReached, Metrics};
use crate::model::{AttackEvent, Direction, EventKind};

/// The host-directions that have per-host series now.
#[derive(Debug, Default)]
pub struct AttackSeries {
    max: usize,
    hosts: ahash::AHashSet<(IpAddr, Direction)>,
}

impl AttackSeries {
    pub fn new(max: usize) -> AttackSeries {
        AttackSeries {
            max,
            hosts: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Counts `events` in `m`.
    pub fn count(&mut self, events: &[AttackEvent], m: &Metrics) {
        let series = &mut self.hosts;
        let mut over_cap = 0;
        for e in events {
            let labels = [e.direction.as_str(), e.attack_type.as_str()];
            let ip = e.ip.to_string();
            // Per-host series only for the first `max_host_series` attacks in progress.
            let host = (e.ip, e.direction);
            let has_series = match e.event {
                EventKind::Start if series.len() < self.max => series.insert(host),
                EventKind::Start => {
                    over_cap += 1;
                    false
                }
                EventKind::Update => series.contains(&host),
                EventKind::End => series.remove(&host),
            };
            match e.event {
                EventKind::Start => {
                    m.attacks_total.with_label_values(&labels).inc();
                    m.attacks_active.with_label_values(&labels).inc();
                    if !has_series {
                        continue;
                    }
                    let hl = [ip.as_str(), e.direction.as_str()];
                    m.attack_host_pps.with_label_values(&hl).set(e.pps as i64);
                    m.attack_host_bps.with_label_values(&hl).set(e.bps as i64);
                }
                EventKind::Update => {
                    if let Some(old) = e.previous_attack_type {
                        // The active gauge follows the type, so the end decrements the
                        // series the attack is counted in.
                        let old_labels = [e.direction.as_str(), old.as_str()];
                        m.attacks_active.with_label_values(&old_labels).dec();
                        m.attacks_active.with_label_values(&labels).inc();
                        m.attack_type_changes
                            .with_label_values(&[
                                e.direction.as_str(),
                                old.as_str(),
                                e.attack_type.as_str(),
                            ])
                            .inc();
                    }
                    if !has_series {
                        continue;
                    }
                    let hl = [ip.as_str(), e.direction.as_str()];
                    m.attack_host_pps.with_label_values(&hl).set(e.pps as i64);
                    m.attack_host_bps.with_label_values(&hl).set(e.bps as i64);
                }
                EventKind::End => {
                    m.attacks_active.with_label_values(&labels).dec();
                    if !has_series {
                        continue;
                    }
                    let hl = [ip.as_str(), e.direction.as_str()];
                    // Per-host series exist only while the host is under attack.
                    let _ = m.attack_host_pps.remove_label_values(&hl);
                    let _ = m.attack_host_bps.remove_label_values(&hl);
                }
            }
        }
        CapReached {
            cap: Cap::AttackHostSeries,
            n: over_cap,
        }
        .emit(m);
    }
}
