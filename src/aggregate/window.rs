//! Per host-direction counters and the sliding window of 1-second buckets.
//!
//! Pure: every function takes the time it needs as an argument. A window of `W` buckets
//! is a ring indexed by `second % W`; each bucket remembers its second, so a stale bucket
//! is recognised (and reset) on write and ignored on read without any sweeping. Writes are
//! O(1) per second touched; reads are O(W).
//!
//! NetFlow records span first..last switched: [`spread`] splits a record's packets over
//! the seconds it covers (integer shares that add up exactly), so a 60-second download is
//! seen at its real rate instead of as one 60× spike.

use crate::decode::{FlowRecord, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// Traffic counters; in a bucket they are one second's worth, in totals all since the
/// host was first seen. Packets and bytes are sampling-scaled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
    pub tcp_packets: u64,
    pub tcp_bytes: u64,
    pub tcp_flows: u64,
    pub udp_packets: u64,
    pub udp_bytes: u64,
    pub udp_flows: u64,
    pub icmp_packets: u64,
    pub icmp_bytes: u64,
    pub icmp_flows: u64,
    pub tcp_syn_packets: u64,
    pub tcp_syn_bytes: u64,
    pub fragment_packets: u64,
    pub fragment_bytes: u64,
}

impl Counters {
    /// Counters for `packets`/`bytes`/`flows` of record `r` (a share of it, when spread).
    pub fn of(r: &FlowRecord, packets: u64, bytes: u64, flows: u64) -> Counters {
        let mut c = Counters {
            packets,
            bytes,
            flows,
            ..Counters::default()
        };
        match r.protocol {
            PROTO_TCP => {
                c.tcp_packets = packets;
                c.tcp_bytes = bytes;
                c.tcp_flows = flows;
                if r.is_syn() {
                    c.tcp_syn_packets = packets;
                    c.tcp_syn_bytes = bytes;
                }
            }
            PROTO_UDP => {
                c.udp_packets = packets;
                c.udp_bytes = bytes;
                c.udp_flows = flows;
            }
            PROTO_ICMP | PROTO_ICMPV6 => {
                c.icmp_packets = packets;
                c.icmp_bytes = bytes;
                c.icmp_flows = flows;
            }
            _ => {}
        }
        if r.fragment {
            c.fragment_packets = packets;
            c.fragment_bytes = bytes;
        }
        c
    }

    pub fn add(&mut self, o: &Counters) {
        macro_rules! add {
            ($($f:ident),*) => { $(self.$f = self.$f.saturating_add(o.$f);)* };
        }
        add!(
            packets,
            bytes,
            flows,
            tcp_packets,
            tcp_bytes,
            tcp_flows,
            udp_packets,
            udp_bytes,
            udp_flows,
            icmp_packets,
            icmp_bytes,
            icmp_flows,
            tcp_syn_packets,
            tcp_syn_bytes,
            fragment_packets,
            fragment_bytes
        );
    }

    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// Per-second rates over a window: counters divided by the window length; bytes become
/// bits per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Rates {
    pub pps: u64,
    pub bps: u64,
    pub flows_per_second: u64,
    pub tcp_pps: u64,
    pub tcp_bps: u64,
    pub tcp_flows_per_second: u64,
    pub udp_pps: u64,
    pub udp_bps: u64,
    pub udp_flows_per_second: u64,
    pub icmp_pps: u64,
    pub icmp_bps: u64,
    pub icmp_flows_per_second: u64,
    pub tcp_syn_pps: u64,
    pub tcp_syn_bps: u64,
    pub fragment_pps: u64,
    pub fragment_bps: u64,
}

impl Rates {
    pub fn from_window(c: &Counters, seconds: u32) -> Rates {
        let w = u64::from(seconds.max(1));
        let pps = |x: u64| x / w;
        let bps = |x: u64| x.saturating_mul(8) / w;
        Rates {
            pps: pps(c.packets),
            bps: bps(c.bytes),
            flows_per_second: pps(c.flows),
            tcp_pps: pps(c.tcp_packets),
            tcp_bps: bps(c.tcp_bytes),
            tcp_flows_per_second: pps(c.tcp_flows),
            udp_pps: pps(c.udp_packets),
            udp_bps: bps(c.udp_bytes),
            udp_flows_per_second: pps(c.udp_flows),
            icmp_pps: pps(c.icmp_packets),
            icmp_bps: bps(c.icmp_bytes),
            icmp_flows_per_second: pps(c.icmp_flows),
            tcp_syn_pps: pps(c.tcp_syn_packets),
            tcp_syn_bps: bps(c.tcp_syn_bytes),
            fragment_pps: pps(c.fragment_packets),
            fragment_bps: bps(c.fragment_bytes),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Unix second this bucket holds; 0 = never written.
    sec: u32,
    c: Counters,
}

/// Ring of 1-second buckets.
#[derive(Debug, Clone)]
pub struct Window {
    buckets: Box<[Bucket]>,
}

impl Window {
    /// A window of `seconds` complete seconds. The ring has one slot more, for the
    /// second still filling, so writing "now" never overwrites a second still read.
    pub fn new(seconds: u32) -> Window {
        Window {
            buckets: vec![Bucket::default(); seconds.max(1) as usize + 1].into_boxed_slice(),
        }
    }

    pub fn seconds(&self) -> u32 {
        self.buckets.len() as u32 - 1
    }

    /// Adds `c` to second `sec`. A second older than what the ring holds at its slot is
    /// dropped: it fell out of the window. Returns whether it was kept.
    pub fn add(&mut self, sec: u32, c: &Counters) -> bool {
        let n = self.buckets.len() as u32;
        let b = &mut self.buckets[(sec % n) as usize];
        if b.sec == sec {
            b.c.add(c);
        } else if b.sec < sec {
            *b = Bucket { sec, c: *c };
        } else {
            return false;
        }
        true
    }

    /// Sum over the `W` complete seconds before `now_sec`: `[now_sec - W, now_sec - 1]`.
    /// The current, still-filling second is left out so a rate never dips because a
    /// second has only just begun.
    pub fn sum(&self, now_sec: u32) -> Counters {
        let n = self.seconds();
        let lo = now_sec.saturating_sub(n);
        let mut s = Counters::default();
        for b in self.buckets.iter() {
            if b.sec >= lo && b.sec < now_sec && b.sec != 0 {
                s.add(&b.c);
            }
        }
        s
    }

    pub fn rates(&self, now_sec: u32) -> Rates {
        Rates::from_window(&self.sum(now_sec), self.seconds())
    }

    /// Newest second with data.
    pub fn newest(&self) -> u32 {
        self.buckets.iter().map(|b| b.sec).max().unwrap_or(0)
    }
}

/// Splits a record into per-second shares and calls `f(second, counters)` for each
/// second that can still be in a window ending at `now_ms` (older seconds are skipped;
/// they would be dropped anyway). `max_spread_ms` bounds the span trusted.
///
/// The record's last packet is placed at `now_ms - end_age_ms`, its first
/// `duration_ms` earlier. Shares are integer and add up to the record exactly over the
/// whole span. Flows count once, in the last second.
pub fn spread(
    r: &FlowRecord,
    now_ms: i64,
    window_seconds: u32,
    max_spread_ms: u32,
    mut f: impl FnMut(u32, Counters),
) {
    let end = (now_ms - i64::from(r.end_age_ms)).max(0);
    let dur = i64::from(r.duration_ms.min(max_spread_ms));
    let end_sec = end / 1000;
    let start = end - dur;
    let start_sec = start / 1000;
    let oldest_useful = now_ms / 1000 - i64::from(window_seconds) - 1;
    if end_sec < oldest_useful {
        return;
    }
    if start_sec == end_sec || dur == 0 {
        f(
            end_sec as u32,
            Counters::of(r, r.packets, r.bytes, u64::from(r.flows)),
        );
        return;
    }
    // Cumulative integer allocation: share(k) = floor(total*cum_k/dur) - floor(total*cum_{k-1}/dur).
    let total_p = u128::from(r.packets);
    let total_b = u128::from(r.bytes);
    let d = dur as u128;
    let mut prev_p = 0u128;
    let mut prev_b = 0u128;
    let first = start_sec.max(oldest_useful);
    if first > start_sec {
        let cum = ((first * 1000) - start) as u128;
        prev_p = total_p * cum / d;
        prev_b = total_b * cum / d;
    }
    for sec in first..=end_sec {
        let sec_end = ((sec + 1) * 1000).min(end);
        let cum = (sec_end - start).max(0) as u128;
        let (p, b) = (total_p * cum / d, total_b * cum / d);
        let (sp, sb) = ((p - prev_p) as u64, (b - prev_b) as u64);
        prev_p = p;
        prev_b = b;
        let flows = if sec == end_sec {
            u64::from(r.flows)
        } else {
            0
        };
        if sp > 0 || sb > 0 || flows > 0 {
            f(sec as u32, Counters::of(r, sp, sb, flows));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(packets: u64, bytes: u64, dur: u32, age: u32) -> FlowRecord {
        FlowRecord {
            src: "198.51.100.1".parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            protocol: PROTO_TCP,
            tcp_flags: 0x18,
            packets,
            bytes,
            flows: 1,
            duration_ms: dur,
            end_age_ms: age,
            ..FlowRecord::default()
        }
    }

    #[test]
    fn a_long_flow_is_spread_not_dumped() {
        // 60 s download, 60 000 packets, exported at t=1_000_060 s as it ends.
        let r = rec(60_000, 60_000_000, 60_000, 0);
        let now = 1_000_060_000;
        let mut w = Window::new(5);
        let mut seen = Vec::new();
        spread(&r, now, 5, 300_000, |s, c| {
            seen.push((s, c.packets));
            w.add(s, &c);
        });
        // Only the seconds that can still be in the window are visited.
        assert!(seen.iter().all(|(s, _)| *s >= 1_000_054), "{seen:?}");
        // Rate over the last 5 complete seconds is the flow's real 1000 pps, not 60 000.
        let rates = w.rates(1_000_060);
        assert_eq!(rates.pps, 1000);
        assert_eq!(rates.bps, 8_000_000);
    }

    #[test]
    fn shares_add_up_exactly() {
        let r = rec(1001, 77_777, 2_500, 0);
        let mut p = 0;
        let mut b = 0;
        let mut flows = 0;
        spread(&r, 10_000_000, 60, 300_000, |_, c| {
            p += c.packets;
            b += c.bytes;
            flows += c.flows;
        });
        assert_eq!((p, b, flows), (1001, 77_777, 1));
    }

    #[test]
    fn end_age_places_the_record_in_the_past() {
        let r = rec(100, 1000, 0, 3_000);
        let mut secs = Vec::new();
        spread(&r, 50_000_500, 5, 300_000, |s, _| secs.push(s));
        assert_eq!(secs, vec![49_997]);
    }

    #[test]
    fn window_drops_stale_seconds_and_excludes_the_current_one() {
        let mut w = Window::new(3);
        let c = Counters {
            packets: 30,
            ..Counters::default()
        };
        assert!(w.add(99, &c));
        assert!(w.add(101, &c));
        assert!(w.add(102, &c));
        assert!(w.add(103, &c)); // overwrites slot of 99 (4 slots: 3 + the filling one)
        assert!(!w.add(99, &c), "99 is older than the ring now holds");
        assert_eq!(w.sum(103).packets, 60); // 101, 102 (103 is still filling)
        assert_eq!(w.sum(104).packets, 90); // 101..103
        assert_eq!(w.sum(110).packets, 0); // all stale
        assert_eq!(w.rates(104).pps, 30);
    }

    #[test]
    fn counters_classify_protocols_syn_and_fragments() {
        let mut r = rec(10, 400, 0, 0);
        r.tcp_flags = 0x02;
        let c = Counters::of(&r, 10, 400, 1);
        assert_eq!(
            (c.tcp_packets, c.tcp_syn_packets, c.udp_packets),
            (10, 10, 0)
        );
        r.tcp_flags = 0x12; // SYN+ACK is not a SYN-flood packet
        assert_eq!(Counters::of(&r, 10, 400, 1).tcp_syn_packets, 0);
        r.protocol = PROTO_ICMPV6;
        assert_eq!(Counters::of(&r, 10, 400, 1).icmp_packets, 10);
        r.protocol = PROTO_UDP;
        r.fragment = true;
        let c = Counters::of(&r, 10, 400, 1);
        assert_eq!((c.udp_packets, c.fragment_packets), (10, 10));
    }
}
