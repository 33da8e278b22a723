//! The vectors of one attack while it lasts: pure, `now` comes in as an argument.
//!
//! The host's counters are split into five vectors that partition its packets (and bytes):
//! - `fragments`: IP fragments, whatever they carry;
//! - `syn`: TCP SYN without ACK;
//! - `icmp`, `udp`: those protocols, less their fragments;
//! - `other`: the rest (TCP without SYN, GRE, ESP, ...).
//!
//! The counters do not say which protocol fragments carry (non-first fragments have no
//! ports or flags), so fragments are taken out of UDP first (amplification replies are what
//! gets fragmented in practice), then TCP, then ICMP; the protocol that gave up most of them
//! is the fragments vector's protocol.
//!
//! The tracker keeps the attack's traffic so far (the window counters the attack started on,
//! then each pass's window-average rates times the time since the previous pass): the
//! attack's type is the classification rule applied to that, and each vector's share is its
//! part of it. A vector *counts* on a pass when it breaks a threshold of its own
//! (`threshold_syn_*`, `threshold_icmp_*`, `threshold_udp_*`, `threshold_fragment_*`;
//! "other" has none), or when the pass is over a threshold and the vector carries at least
//! `min_share` of the attack's current packet rate *and* of its peak rate. The second
//! condition keeps legitimate traffic that is left while a flood fades (a large share of a
//! small remainder) from being taken for a new vector. A vector that counted once stays in
//! the list until the attack ends, so its countermeasure is never switched off in between.

use serde::Serialize;

use crate::aggregate::{Counters, Rates};
use crate::detect::classify;
use crate::detect::config::Thresholds;
use crate::model::{AttackType, Protocol, Vector, VectorSummary};

/// Default of `[detection] vector_min_share_percent`.
pub const DEFAULT_MIN_SHARE: f64 = 0.20;

/// Longest stretch between two passes credited to the attack's traffic: a pass that comes
/// late (a stalled ticker, a gap in a capture) must not multiply one window's rate by it.
const MAX_PASS_GAP_MS: i64 = 10_000;

/// A set of vectors (a bit per [`Vector::ALL`] index); `Copy`, so transitions stay `Copy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VectorSet(u8);

impl VectorSet {
    pub fn insert(&mut self, v: Vector) {
        self.0 |= 1 << index(v);
    }

    pub fn contains(self, v: Vector) -> bool {
        self.0 & (1 << index(v)) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Vector> {
        Vector::ALL.into_iter().filter(move |v| self.contains(*v))
    }
}

fn index(v: Vector) -> usize {
    match v {
        Vector::Syn => 0,
        Vector::Icmp => 1,
        Vector::Udp => 2,
        Vector::Fragments => 3,
        Vector::Other => 4,
    }
}

/// One quantity (packets, bytes, pps or bps) as the counters give it.
#[derive(Debug, Clone, Copy)]
struct Parts {
    total: u64,
    tcp: u64,
    syn: u64,
    udp: u64,
    icmp: u64,
    fragments: u64,
}

/// `p` split into the five vectors ([`Vector::ALL`] order), and the protocol the
/// fragments were taken from (most of them) and the one of "other".
fn split(p: Parts) -> ([u64; 5], Protocol, Protocol) {
    let frag = p.fragments.min(p.total);
    let mut left = frag;
    let mut take = |x: u64| {
        let t = x.min(left);
        left -= t;
        t
    };
    let (from_udp, from_tcp, from_icmp) = (take(p.udp), take(p.tcp), take(p.icmp));
    let udp = p.udp - from_udp;
    let tcp = p.tcp - from_tcp;
    let icmp = p.icmp - from_icmp;
    let syn = p.syn.min(tcp);
    let other = p
        .total
        .saturating_sub(frag)
        .saturating_sub(syn)
        .saturating_sub(udp)
        .saturating_sub(icmp);
    let frag_proto = if frag == 0 {
        Protocol::Unknown
    } else if from_udp >= from_tcp && from_udp >= from_icmp {
        Protocol::Udp
    } else if from_tcp >= from_icmp {
        Protocol::Tcp
    } else {
        Protocol::Icmp
    };
    let other_tcp = tcp - syn;
    let other_proto = if other > 0 && other_tcp.saturating_mul(2) >= other {
        Protocol::Tcp
    } else {
        Protocol::Unknown
    };
    ([syn, icmp, udp, frag, other], frag_proto, other_proto)
}

fn packets(c: &Counters) -> Parts {
    Parts {
        total: c.packets,
        tcp: c.tcp_packets,
        syn: c.tcp_syn_packets,
        udp: c.udp_packets,
        icmp: c.icmp_packets,
        fragments: c.fragment_packets,
    }
}

fn pps(r: &Rates) -> Parts {
    Parts {
        total: r.pps,
        tcp: r.tcp_pps,
        syn: r.tcp_syn_pps,
        udp: r.udp_pps,
        icmp: r.icmp_pps,
        fragments: r.fragment_pps,
    }
}

fn bps(r: &Rates) -> Parts {
    Parts {
        total: r.bps,
        tcp: r.tcp_bps,
        syn: r.tcp_syn_bps,
        udp: r.udp_bps,
        icmp: r.icmp_bps,
        fragments: r.fragment_bps,
    }
}

/// The threshold of its own that vector `v` breaks at rates `r`, if any ("over" is strictly
/// above, 0 is off, as for the host thresholds).
pub fn own_threshold(v: Vector, t: &Thresholds, r: &Rates) -> Option<&'static str> {
    let mbps = |b: u64| b / 1_000_000;
    let checks: &[(Option<u64>, u64, &'static str)] = match v {
        Vector::Syn => &[
            (t.threshold_syn_pps, r.tcp_syn_pps, "threshold_syn_pps"),
            (
                t.threshold_syn_mbps,
                mbps(r.tcp_syn_bps),
                "threshold_syn_mbps",
            ),
        ],
        Vector::Icmp => &[
            (t.threshold_icmp_pps, r.icmp_pps, "threshold_icmp_pps"),
            (
                t.threshold_icmp_mbps,
                mbps(r.icmp_bps),
                "threshold_icmp_mbps",
            ),
            (
                t.threshold_icmp_flows,
                r.icmp_flows_per_second,
                "threshold_icmp_flows",
            ),
        ],
        Vector::Udp => &[
            (t.threshold_udp_pps, r.udp_pps, "threshold_udp_pps"),
            (t.threshold_udp_mbps, mbps(r.udp_bps), "threshold_udp_mbps"),
            (
                t.threshold_udp_flows,
                r.udp_flows_per_second,
                "threshold_udp_flows",
            ),
        ],
        Vector::Fragments => &[
            (
                t.threshold_fragment_pps,
                r.fragment_pps,
                "threshold_fragment_pps",
            ),
            (
                t.threshold_fragment_mbps,
                mbps(r.fragment_bps),
                "threshold_fragment_mbps",
            ),
        ],
        Vector::Other => &[],
    };
    checks
        .iter()
        .find(|(lim, val, _)| matches!(lim, Some(l) if *l > 0 && val > l))
        .map(|(_, _, k)| *k)
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    pps: u64,
    bps: u64,
    peak_pps: u64,
    peak_bps: u64,
    over: bool,
    active: bool,
    /// When it first counted; None: not (yet) a vector of this attack.
    since_ms: Option<i64>,
}

/// What one pass of the tracker found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassResult {
    /// Vectors that counted for the first time on this pass.
    pub new_vectors: VectorSet,
}

#[derive(Debug, Clone)]
pub struct VectorTracker {
    min_share: f64,
    /// The attack's traffic so far (estimated from window averages).
    totals: Counters,
    states: [State; 5],
    /// Protocols of the fragments and "other" vectors, from the traffic so far.
    frag_proto: Protocol,
    other_proto: Protocol,
    /// Peak total packet rate of the attack.
    peak_pps: u64,
    last_ms: i64,
}

impl VectorTracker {
    /// A tracker for an attack that starts at `now_ms` on a pass that saw the window
    /// `counters` at `rates`; `over`: the pass broke one of the host's thresholds.
    pub fn begin(
        min_share: f64,
        now_ms: i64,
        counters: &Counters,
        rates: &Rates,
        t: Option<&Thresholds>,
        over: bool,
    ) -> (VectorTracker, PassResult) {
        let mut tr = VectorTracker {
            min_share: if min_share.is_finite() {
                min_share.clamp(0.0, 1.0)
            } else {
                DEFAULT_MIN_SHARE
            },
            totals: *counters,
            states: [State::default(); 5],
            frag_proto: Protocol::Unknown,
            other_proto: Protocol::Unknown,
            peak_pps: 0,
            last_ms: now_ms,
        };
        let r = tr.pass(now_ms, rates, t, over);
        (tr, r)
    }

    /// A later pass at `now_ms` with the host's current window-average `rates`.
    pub fn observe(
        &mut self,
        now_ms: i64,
        rates: &Rates,
        t: Option<&Thresholds>,
        over: bool,
    ) -> PassResult {
        let dt = (now_ms - self.last_ms).clamp(0, MAX_PASS_GAP_MS) as u64;
        self.last_ms = self.last_ms.max(now_ms);
        add_rates(&mut self.totals, rates, dt);
        self.pass(now_ms, rates, t, over)
    }

    fn pass(
        &mut self,
        now_ms: i64,
        rates: &Rates,
        t: Option<&Thresholds>,
        over: bool,
    ) -> PassResult {
        self.peak_pps = self.peak_pps.max(rates.pps);
        let (p, _, _) = split(pps(rates));
        let (b, _, _) = split(bps(rates));
        let (_, fp, op) = split(packets(&self.totals));
        self.frag_proto = fp;
        self.other_proto = op;
        let mut out = PassResult::default();
        for (i, v) in Vector::ALL.into_iter().enumerate() {
            let s = &mut self.states[i];
            s.pps = p[i];
            s.bps = b[i];
            s.peak_pps = s.peak_pps.max(p[i]);
            s.peak_bps = s.peak_bps.max(b[i]);
            s.over = t.and_then(|t| own_threshold(v, t, rates)).is_some();
            let share_of = |total: u64| p[i] as f64 >= self.min_share * total as f64;
            let big = over && p[i] > 0 && share_of(rates.pps) && share_of(self.peak_pps);
            s.active = s.over || big;
            if s.active && s.since_ms.is_none() {
                s.since_ms = Some(now_ms);
                out.new_vectors.insert(v);
            }
        }
        out
    }

    /// The attack's traffic so far.
    pub fn totals(&self) -> &Counters {
        &self.totals
    }

    /// The classification rule applied to the attack's traffic so far.
    pub fn classify(&self) -> (AttackType, Protocol) {
        classify::classify(&self.totals)
    }

    fn protocol(&self, v: Vector) -> Protocol {
        match v {
            Vector::Syn => Protocol::Tcp,
            Vector::Icmp => Protocol::Icmp,
            Vector::Udp => Protocol::Udp,
            Vector::Fragments => self.frag_proto,
            Vector::Other => self.other_proto,
        }
    }

    /// The vectors that have counted so far, dominant (largest share so far) first.
    pub fn summaries(&self) -> Vec<VectorSummary> {
        let (so_far, _, _) = split(packets(&self.totals));
        let total = self.totals.packets.max(1) as f64;
        let mut v: Vec<VectorSummary> = Vector::ALL
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let s = &self.states[i];
                Some(VectorSummary {
                    attack_type: v.attack_type(),
                    vector: v,
                    protocol: self.protocol(v),
                    share: (so_far[i] as f64 / total * 1000.0).round() / 1000.0,
                    pps: s.pps,
                    bps: s.bps,
                    peak_pps: s.peak_pps,
                    peak_bps: s.peak_bps,
                    over_threshold: s.over,
                    active: s.active,
                    since_ms: s.since_ms?,
                })
            })
            .collect();
        v.sort_by(|a, b| {
            b.share
                .total_cmp(&a.share)
                .then(a.since_ms.cmp(&b.since_ms))
                .then(a.vector.cmp(&b.vector))
        });
        v
    }
}

/// `c += r × ms` (rates are per second, bps in bits).
fn add_rates(c: &mut Counters, r: &Rates, ms: u64) {
    let n = |x: u64| x.saturating_mul(ms) / 1000;
    let by = |x: u64| x.saturating_mul(ms) / 8000;
    c.packets = c.packets.saturating_add(n(r.pps));
    c.bytes = c.bytes.saturating_add(by(r.bps));
    c.flows = c.flows.saturating_add(n(r.flows_per_second));
    c.tcp_packets = c.tcp_packets.saturating_add(n(r.tcp_pps));
    c.tcp_bytes = c.tcp_bytes.saturating_add(by(r.tcp_bps));
    c.tcp_flows = c.tcp_flows.saturating_add(n(r.tcp_flows_per_second));
    c.udp_packets = c.udp_packets.saturating_add(n(r.udp_pps));
    c.udp_bytes = c.udp_bytes.saturating_add(by(r.udp_bps));
    c.udp_flows = c.udp_flows.saturating_add(n(r.udp_flows_per_second));
    c.icmp_packets = c.icmp_packets.saturating_add(n(r.icmp_pps));
    c.icmp_bytes = c.icmp_bytes.saturating_add(by(r.icmp_bps));
    c.icmp_flows = c.icmp_flows.saturating_add(n(r.icmp_flows_per_second));
    c.tcp_syn_packets = c.tcp_syn_packets.saturating_add(n(r.tcp_syn_pps));
    c.tcp_syn_bytes = c.tcp_syn_bytes.saturating_add(by(r.tcp_syn_bps));
    c.fragment_packets = c.fragment_packets.saturating_add(n(r.fragment_pps));
    c.fragment_bytes = c.fragment_bytes.saturating_add(by(r.fragment_bps));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Window counters (5 s) of `syn`, `udp` and `icmp` packets per second, 60-byte SYNs,
    /// 100-byte UDP, 64-byte ICMP.
    fn window(syn: u64, udp: u64, icmp: u64) -> (Counters, Rates) {
        let c = Counters {
            packets: 5 * (syn + udp + icmp),
            bytes: 5 * (syn * 60 + udp * 100 + icmp * 64),
            tcp_packets: 5 * syn,
            tcp_bytes: 5 * syn * 60,
            tcp_syn_packets: 5 * syn,
            tcp_syn_bytes: 5 * syn * 60,
            udp_packets: 5 * udp,
            udp_bytes: 5 * udp * 100,
            icmp_packets: 5 * icmp,
            icmp_bytes: 5 * icmp * 64,
            ..Counters::default()
        };
        (c, Rates::from_window(&c, 5))
    }

    #[test]
    fn split_partitions_packets_and_takes_fragments_from_udp_first() {
        // softflowd's fragment flood: 25 000 UDP packets, 20 000 of them non-first fragments.
        let p = Parts {
            total: 25_000,
            tcp: 0,
            syn: 0,
            udp: 25_000,
            icmp: 0,
            fragments: 20_000,
        };
        let (s, fp, _) = split(p);
        assert_eq!(s, [0, 0, 5_000, 20_000, 0]);
        assert_eq!(fp, Protocol::Udp);
        // TCP without SYN is "other", with TCP as its protocol; the parts add up.
        let p = Parts {
            total: 1000,
            tcp: 700,
            syn: 300,
            udp: 200,
            icmp: 50,
            fragments: 0,
        };
        let (s, _, op) = split(p);
        assert_eq!(s, [300, 50, 200, 0, 450]);
        assert_eq!(s.iter().sum::<u64>(), 1000);
        assert_eq!(op, Protocol::Tcp);
        // Inconsistent counters (more per protocol than in total) never underflow.
        let p = Parts {
            total: 10,
            tcp: 50,
            syn: 60,
            udp: 50,
            icmp: 50,
            fragments: 99,
        };
        let (s, _, _) = split(p);
        assert_eq!(s[3], 10);
    }

    #[test]
    fn single_vector_attack_has_one_vector_and_todays_type() {
        let (c, r) = window(0, 20_000, 0);
        let (mut tr, first) = VectorTracker::begin(0.2, 1_000, &c, &r, None, true);
        assert_eq!(first.new_vectors.iter().collect::<Vec<_>>(), [Vector::Udp]);
        assert_eq!(tr.classify(), classify::classify(&c));
        for t in 2..30 {
            let r = tr.observe(t * 1000, &r, None, true);
            assert!(r.new_vectors.is_empty());
        }
        let v = tr.summaries();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].attack_type, v[0].protocol, v[0].share),
            (AttackType::UdpFlood, Protocol::Udp, 1.0)
        );
        assert_eq!(v[0].peak_pps, 20_000);
        assert_eq!(v[0].peak_bps, 20_000 * 800);
        assert_eq!(tr.classify(), (AttackType::UdpFlood, Protocol::Udp));
    }

    #[test]
    fn a_vector_appearing_late_is_added_and_the_type_follows_the_traffic() {
        // UDP first (softflowd expires UDP flows a second before TCP ones)...
        let (c, r) = window(0, 10_000, 0);
        let (mut tr, _) = VectorTracker::begin(0.2, 1_000, &c, &r, None, true);
        assert_eq!(tr.classify().0, AttackType::UdpFlood);
        // ...then SYN at 1.3 times the UDP rate joins it.
        let (_, both) = window(13_000, 10_000, 0);
        let r = tr.observe(2_000, &both, None, true);
        assert_eq!(r.new_vectors.iter().collect::<Vec<_>>(), [Vector::Syn]);
        let mut flipped_at = None;
        for t in 3..60 {
            assert!(tr
                .observe(t * 1000, &both, None, true)
                .new_vectors
                .is_empty());
            if flipped_at.is_none() && tr.classify().0 == AttackType::SynFlood {
                flipped_at = Some(t);
            }
        }
        assert!(flipped_at.is_some(), "SYN carries 56 % of the packets");
        let v = tr.summaries();
        assert_eq!(
            v.iter().map(|v| v.vector).collect::<Vec<_>>(),
            [Vector::Syn, Vector::Udp],
            "dominant first"
        );
        assert!(v[0].share > 0.5 && v[1].share > 0.4, "{v:?}");
        assert_eq!(v[0].since_ms, 2_000);
        assert_eq!(v[1].since_ms, 1_000);
    }

    #[test]
    fn a_vector_fading_and_returning_stays_one_vector() {
        let (c, r) = window(10_000, 10_000, 0);
        let (mut tr, first) = VectorTracker::begin(0.2, 1_000, &c, &r, None, true);
        assert_eq!(first.new_vectors.iter().count(), 2);
        // UDP fades to 5 % of the packets: listed, but not counting now.
        let (_, faded) = window(19_000, 1_000, 0);
        assert!(tr.observe(2_000, &faded, None, true).new_vectors.is_empty());
        let udp = |tr: &VectorTracker| {
            tr.summaries()
                .into_iter()
                .find(|v| v.vector == Vector::Udp)
                .unwrap()
        };
        assert!(!udp(&tr).active);
        assert_eq!(udp(&tr).pps, 1_000);
        // It returns: not new, still the same vector since the start.
        assert!(tr.observe(3_000, &r, None, true).new_vectors.is_empty());
        assert!(udp(&tr).active);
        assert_eq!(udp(&tr).since_ms, 1_000);
        assert_eq!(tr.summaries().len(), 2);
    }

    #[test]
    fn leftover_traffic_of_a_fading_flood_is_not_a_new_vector() {
        let (c, r) = window(20_000, 0, 0);
        let (mut tr, _) = VectorTracker::begin(0.2, 1_000, &c, &r, None, true);
        // The flood's window average falls while 1 000 pps of legitimate UDP stay: 25 %
        // of what is left, but 5 % of the attack's peak.
        let (_, tail) = window(3_000, 1_000, 0);
        assert!(tr.observe(2_000, &tail, None, true).new_vectors.is_empty());
        // Under every threshold: no new vector however large its share.
        let (_, quiet) = window(0, 1_000, 0);
        assert!(tr
            .observe(3_000, &quiet, None, false)
            .new_vectors
            .is_empty());
        assert_eq!(tr.summaries().len(), 1);
    }

    #[test]
    fn a_small_vector_breaking_its_own_threshold_counts() {
        let t = Thresholds {
            threshold_icmp_pps: Some(500),
            ..Thresholds::default()
        };
        let (c, r) = window(20_000, 0, 600);
        let (tr, first) = VectorTracker::begin(0.2, 1_000, &c, &r, Some(&t), true);
        assert!(first.new_vectors.contains(Vector::Icmp));
        let icmp = tr
            .summaries()
            .into_iter()
            .find(|v| v.vector == Vector::Icmp)
            .unwrap();
        assert!(icmp.over_threshold && icmp.share < 0.05);
        assert_eq!(own_threshold(Vector::Other, &t, &r), None);
    }

    #[test]
    fn a_late_or_stalled_pass_credits_at_most_ten_seconds() {
        let (c, r) = window(0, 1_000, 0);
        let (mut tr, _) = VectorTracker::begin(0.2, 0, &c, &r, None, true);
        tr.observe(3_600_000, &r, None, true);
        assert_eq!(tr.totals().packets, 5_000 + 10_000);
        // A clock going back credits nothing.
        tr.observe(1_000, &r, None, true);
        assert_eq!(tr.totals().packets, 15_000);
    }
}
