//! Per host-direction rates: counters, their exponentially weighted moving average, and
//! the placement of NetFlow records in time.
//!
//! Pure: every function takes the time it needs as an argument.
//!
//! Why an average and not a ring of 1-second buckets: a host table must hold a million
//! host-directions (a random-destination flood over a /8 creates them), and 16 counters
//! × (W+1) buckets is ~1 KB per host-direction. The average needs one set of 16 sums
//! ([`Ewma`], 76 bytes) and is what FastNetMon computes too (`average_calculation_time`).
//!
//! NetFlow records span first..last switched. By default a record counts whole in the
//! second it arrives; with a spread bound, [`place`] weighs its packets over the seconds it
//! covers instead (see there for why that is not the default).

use crate::decode::{FlowRecord, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// Traffic counters: one second's worth in a [`HostDelta`](super::HostDelta), rate × window
/// in a host's sums, all since the host was first seen in totals. Packets and bytes are
/// sampling-scaled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
        let (mut a, b) = (self.to_array(), o.to_array());
        for (x, y) in a.iter_mut().zip(b) {
            *x = x.saturating_add(y);
        }
        *self = Counters::from_array(a);
    }

    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// Per-second rates over a window: counters divided by the window length; bytes become
/// bits per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
        let d = Divisor::new(u64::from(seconds.max(1)));
        let pps = |x: u64| d.div(x);
        let bps = |x: u64| d.div(x.saturating_mul(8));
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

/// Exact `x / w` for a small divisor known at run time by a multiply and a shift: the
/// pass divides 16 sums per host by the window length, and 16 `div`s per host were
/// measurable at 1 M hosts.
#[derive(Debug, Clone, Copy)]
struct Divisor {
    w: u64,
    /// ⌈2^64 / w⌉ (unused for w = 1).
    m: u64,
}

impl Divisor {
    fn new(w: u64) -> Divisor {
        let w = w.max(1);
        Divisor {
            w,
            m: if w == 1 { 0 } else { u64::MAX / w + 1 },
        }
    }

    /// With m = (2^64 + e)/w, 0 ≤ e < w, x·m/2^64 = x/w + x·e/(w·2^64): the error stays
    /// under the 1/w that would change the floor while x·e < 2^64, which x < 2^57 and
    /// w < 128 ensure. Anything else takes the division.
    #[inline(always)]
    fn div(self, x: u64) -> u64 {
        if self.w == 1 {
            x
        } else if x < 1 << 57 && self.w < 128 {
            ((u128::from(x) * u128::from(self.m)) >> 64) as u64
        } else {
            x / self.w
        }
    }
}

/// Index of each field in [`Counters`] order, the order every store below uses.
pub const FIELDS: usize = 16;
const PACKETS: usize = 0;
const BYTES: usize = 1;
const FLOWS: usize = 2;
/// First field of tcp (3), udp (6), icmp (9): packets, bytes, flows.
const PROTO_BASE: [usize; 3] = [3, 6, 9];
const SYN_PACKETS: usize = 12;
const FRAG_PACKETS: usize = 14;

impl Counters {
    pub fn to_array(self) -> [u64; FIELDS] {
        [
            self.packets,
            self.bytes,
            self.flows,
            self.tcp_packets,
            self.tcp_bytes,
            self.tcp_flows,
            self.udp_packets,
            self.udp_bytes,
            self.udp_flows,
            self.icmp_packets,
            self.icmp_bytes,
            self.icmp_flows,
            self.tcp_syn_packets,
            self.tcp_syn_bytes,
            self.fragment_packets,
            self.fragment_bytes,
        ]
    }

    pub fn from_array(a: [u64; FIELDS]) -> Counters {
        let [packets, bytes, flows, tcp_packets, tcp_bytes, tcp_flows, udp_packets, udp_bytes, udp_flows, icmp_packets, icmp_bytes, icmp_flows, tcp_syn_packets, tcp_syn_bytes, fragment_packets, fragment_bytes] =
            a;
        Counters {
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
            fragment_bytes,
        }
    }
}

/// Which counters a record adds to, computed once per record.
#[derive(Debug, Clone, Copy)]
pub struct Class {
    /// Index into `PROTO_BASE`, or [`NO_PROTO`] for other protocols.
    proto: u8,
    syn: bool,
    frag: bool,
}

/// [`Class::proto`] of a protocol without counters of its own.
const NO_PROTO: u8 = 3;

/// [`Class::proto`] by IP protocol number: one load instead of a chain of compares.
const PROTO_CLASS: [u8; 256] = {
    let mut t = [NO_PROTO; 256];
    t[PROTO_TCP as usize] = 0;
    t[PROTO_UDP as usize] = 1;
    t[PROTO_ICMP as usize] = 2;
    t[PROTO_ICMPV6 as usize] = 2;
    t
};

/// 0 tcp, 1 udp, 2 icmp (v4 or v6), 3 any other protocol.
#[inline]
pub fn proto_index(protocol: u8) -> usize {
    usize::from(PROTO_CLASS[usize::from(protocol)])
}

impl Class {
    #[inline]
    pub fn of(r: &FlowRecord) -> Class {
        Class {
            proto: proto_index(r.protocol) as u8,
            syn: r.is_syn(),
            frag: r.fragment,
        }
    }
}

/// Longest age (seconds) a decay factor is tabled for; older contributions weigh 0.
const MAX_AGE: usize = 4096;

/// Powers of the per-second decay `d = (W-1)/(W+1)` (W = `window_seconds`), in 32.32
/// fixed point for the per-second decay of stored sums and in f64 for weights.
#[derive(Debug, Clone)]
pub struct Decay {
    window_seconds: u32,
    d: f64,
    q32: Box<[u64]>,
}

impl Decay {
    pub fn new(window_seconds: u32) -> Decay {
        let w = window_seconds.max(1);
        let d = f64::from(w - 1) / f64::from(w + 1);
        let mut q32 = Vec::new();
        let mut f = 1.0f64;
        // Up to the age where the factor rounds to 0 in 32.32 fixed point.
        while q32.len() < MAX_AGE {
            let q = (f * 4_294_967_296.0).round() as u64;
            if q == 0 {
                break;
            }
            q32.push(q);
            f *= d;
        }
        Decay {
            window_seconds: w,
            d,
            q32: q32.into_boxed_slice(),
        }
    }

    pub fn window_seconds(&self) -> u32 {
        self.window_seconds
    }

    /// From a decaying sum S to the equivalent W-second window sum: rate × W, where the
    /// rate is S·(1-d) = S·2/(W+1).
    fn to_window_sum(&self) -> f64 {
        2.0 * f64::from(self.window_seconds) / f64::from(self.window_seconds + 1)
    }

    /// d^age in 32.32 fixed point (0 once negligible).
    fn q32(&self, age: u32) -> u64 {
        self.q32.get(age as usize).copied().unwrap_or(0)
    }

    /// d^age.
    pub fn factor(&self, age: u32) -> f64 {
        self.q32(age) as f64 / 4_294_967_296.0
    }

    /// Weight, relative to the second of its last packet, of a record whose packets are
    /// spread evenly over `dur_ms` ending at `end_ms`: Σ share(s)·d^(end_sec - s). Exact
    /// for the share model, in O(1) whatever the span (a 300-second flow costs the same as
    /// a one-second one): the last and first partial seconds plus a geometric series for
    /// the whole seconds between.
    fn span_weight(&self, end_ms: i64, dur_ms: i64) -> f64 {
        let end_sec = end_ms.div_euclid(1000);
        let start = end_ms - dur_ms;
        let start_sec = start.div_euclid(1000);
        if dur_ms <= 0 || start_sec == end_sec {
            return 1.0;
        }
        let age_first = end_sec - start_sec;
        let last_ms = (end_ms - end_sec * 1000) as f64;
        let first_ms = ((start_sec + 1) * 1000 - start) as f64;
        let d = self.d;
        let whole = age_first - 1; // whole seconds of ages 1..=whole
        let series = if d == 0.0 || whole <= 0 {
            0.0
        } else {
            d * (1.0 - d.powi(whole.min(i64::from(i32::MAX)) as i32)) / (1.0 - d)
        };
        let first_w = d.powi(age_first.min(i64::from(i32::MAX)) as i32);
        (last_ms + 1000.0 * series + first_ms * first_w) / dur_ms as f64
    }
}

/// Where a record lands in time: the second it arrived in and the weight of its packets
/// and bytes relative to that second (1.0 when they all fall in it).
///
/// With `max_spread_ms` = 0 (the default) the record weighs 1 in its arrival second.
/// Otherwise its packets are spread evenly over its `duration_ms` (at most
/// `max_spread_ms`) ending at arrival, so a long flow reported once is seen at its real
/// rate instead of as one spike. With a single decaying sum the spread is only a weight
/// below 1, and it biases steady traffic low: the newest seconds of every flow still
/// running are not reported yet. 1-second records arriving steadily read 5/6 of their
/// rate (W = 5), flows exported on a 60 s active timeout 1/30 to 1/20. Counting on arrival
/// reads a steady rate exactly whatever the exporter's timeouts. The export delay (`end_age_ms`: an
/// exporter's inactive/active timeouts) is deliberately not subtracted: with an average
/// that decays from the moment traffic happened, a flood whose records arrive 3 s late
/// would read at d³ of its rate, about 30 % (W = 5), and be missed. Counting records on
/// arrival is also what FastNetMon does. Flows count once, in the arrival second.
pub fn place(r: &FlowRecord, now_ms: i64, max_spread_ms: u32, decay: &Decay) -> (u32, f64) {
    let end = now_ms.max(0);
    let dur = i64::from(r.duration_ms.min(max_spread_ms));
    ((end / 1000) as u32, decay.span_weight(end, dur))
}

/// Unbiased rounding of the fractional amounts that weights produce: a 1-packet record
/// weighing 0.8 adds 1 four times in five, so many small late records still sum right
/// where plain rounding would bias them. Deterministic (xorshift64*), seeded per shard.
#[derive(Debug, Clone)]
pub struct Dither(u64);

impl Dither {
    pub fn new(seed: u64) -> Dither {
        Dither(seed | 1)
    }

    fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn round(&mut self, x: f64) -> u64 {
        // Also catches NaN (a NaN weight cannot come from `place`, but stays harmless).
        if x.is_nan() || x <= 0.0 {
            return 0;
        }
        let f = x.floor();
        f as u64 + u64::from(self.unit() < x - f)
    }
}

/// Adds packets, bytes and flows to the three cells from `base` (a protocol's).
#[inline(always)]
fn add_three<C: Cells>(c: &mut C, base: usize, p: u64, b: u64, f: u64) {
    c.add(base, p);
    c.add(base + 1, b);
    c.add(base + 2, f);
}

/// Adds a record's packets, bytes and flows to the cells its class names: the totals, its
/// protocol's three, and SYN and fragment pairs when they apply.
#[inline(always)]
pub fn add_classed<C: Cells>(c: &mut C, class: Class, p: u64, b: u64, f: u64) {
    c.add(PACKETS, p);
    c.add(BYTES, b);
    c.add(FLOWS, f);
    // One arm per protocol, so every cell index is a constant and the cell lookup
    // folds away (an index from `PROTO_BASE` at run time kept it).
    match class.proto {
        0 => add_three(c, PROTO_BASE[0], p, b, f),
        1 => add_three(c, PROTO_BASE[1], p, b, f),
        2 => add_three(c, PROTO_BASE[2], p, b, f),
        _ => {}
    }
    if class.syn {
        c.add(SYN_PACKETS, p);
        c.add(SYN_PACKETS + 1, b);
    }
    if class.frag {
        c.add(FRAG_PACKETS, p);
        c.add(FRAG_PACKETS + 1, b);
    }
}

/// Storage of the 16 decaying sums: [`Compact`] for hosts, [`Wide`] for hostgroup sums.
pub trait Cells: Copy + Default {
    fn get(&self, i: usize) -> u64;
    /// Adds `v`, saturating at what the cell can hold.
    fn add(&mut self, i: usize, v: u64);
    fn scale_q32(&mut self, q: u64);
}

/// Packets and flows in u32 cells, bytes in 40-bit cells (u32 + u8): 70 bytes (72 with
/// padding). With the default 5-second window a cell saturates at 1.4 G packets/s or
/// 2.9 Tbit/s for one host-direction (the stored decaying sum of a steady rate is the rate
/// times (W+1)/2).
#[derive(Debug, Clone, Copy, Default)]
pub struct Compact {
    narrow: [u32; 10],
    wide_lo: [u32; 6],
    wide_hi: [u8; 6],
}

/// Where field `i` lives in [`Compact`]: (is bytes, slot).
const COMPACT_SLOT: [(bool, u8); FIELDS] = [
    (false, 0),
    (true, 0),
    (false, 1),
    (false, 2),
    (true, 1),
    (false, 3),
    (false, 4),
    (true, 2),
    (false, 5),
    (false, 6),
    (true, 3),
    (false, 7),
    (false, 8),
    (true, 4),
    (false, 9),
    (true, 5),
];
const WIDE_MAX: u64 = (1 << 40) - 1;
/// One half in 32.32 fixed point.
const HALF: u64 = 1 << 31;

impl Cells for Compact {
    #[inline]
    fn get(&self, i: usize) -> u64 {
        let (wide, s) = COMPACT_SLOT[i];
        let s = usize::from(s);
        if wide {
            u64::from(self.wide_hi[s]) << 32 | u64::from(self.wide_lo[s])
        } else {
            u64::from(self.narrow[s])
        }
    }

    #[inline]
    fn add(&mut self, i: usize, v: u64) {
        let (wide, s) = COMPACT_SLOT[i];
        let s = usize::from(s);
        if wide {
            let x = (self.get(i).saturating_add(v)).min(WIDE_MAX);
            self.wide_lo[s] = x as u32;
            self.wide_hi[s] = (x >> 32) as u8;
        } else {
            self.narrow[s] =
                (u64::from(self.narrow[s]).saturating_add(v)).min(u64::from(u32::MAX)) as u32;
        }
    }

    fn scale_q32(&mut self, q: u64) {
        // Rounded, not truncated: truncating every second would bleed a steady small
        // count (5 flows in the sum become 4, then 3...).
        for c in &mut self.narrow {
            *c = ((u64::from(*c) * q + HALF) >> 32) as u32;
        }
        for s in 0..6 {
            let x = u64::from(self.wide_hi[s]) << 32 | u64::from(self.wide_lo[s]);
            let y = ((u128::from(x) * u128::from(q) + u128::from(HALF)) >> 32) as u64;
            self.wide_lo[s] = y as u32;
            self.wide_hi[s] = (y >> 32) as u8;
        }
    }
}

/// Plain u64 cells, for sums over a whole hostgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wide([u64; FIELDS]);

impl Cells for Wide {
    fn get(&self, i: usize) -> u64 {
        self.0[i]
    }

    fn add(&mut self, i: usize, v: u64) {
        self.0[i] = self.0[i].saturating_add(v);
    }

    fn scale_q32(&mut self, q: u64) {
        for c in &mut self.0 {
            *c = ((u128::from(*c) * u128::from(q) + u128::from(HALF)) >> 32) as u64;
        }
    }
}

/// Exponentially weighted moving average of per-second counters (FastNetMon averages its
/// rates the same way, `average_calculation_time`). For a window of W seconds the weight
/// of the newest second is α = 2/(W+1), the usual span convention: the average then has
/// the same mean age, (W-1)/2 seconds, as a W-second sliding window. Stored is the
/// decaying sum `S(t) = Σ count(s)·d^(t-s)` with `d = 1-α`; the rate is `α·S`. A steady
/// rate reads exactly; a one-second burst of N reads 2N/(W+1) at first (N/3 for W = 5, a
/// sliding window would read N/5), then fades by `d` per second; a burst spread over the
/// whole window reads about what the window would (0.87 of it for W = 5).
///
/// Writes are integer adds; the decay (16 multiplications) runs once per host per
/// second, on its first write of a new second. Pure: every call takes the time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ewma<C: Cells = Compact> {
    /// The second `cells` are decayed to; 0 = never written.
    last_sec: u32,
    cells: C,
}

impl<C: Cells> Ewma<C> {
    /// The stored packet sum (undecayed since the last write): how busy a host has been,
    /// for choosing eviction victims.
    pub fn packet_sum(&self) -> u64 {
        self.cells.get(PACKETS)
    }

    /// The newest second with data (0 = none).
    pub fn last_sec(&self) -> u32 {
        self.last_sec
    }

    /// Adds a record's `packets`/`bytes`/`flows` as of second `sec`; packets and bytes
    /// weigh `weight` (see [`place`]). A second older than the newest one written adds
    /// with its decay applied, so late records count for what they weigh now.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        sec: u32,
        weight: f64,
        class: Class,
        packets: u64,
        bytes: u64,
        flows: u64,
        decay: &Decay,
        dither: &mut Dither,
    ) {
        let age = self.age_of(sec, decay);
        let (p, b, f) = if age == 0 && weight >= 1.0 {
            (packets, bytes, flows)
        } else {
            let a = decay.factor(age);
            let w = weight * a;
            (
                dither.round(packets as f64 * w),
                dither.round(bytes as f64 * w),
                dither.round(flows as f64 * a),
            )
        };
        add_classed(&mut self.cells, class, p, b, f);
    }

    /// How many seconds `sec` lies before the newest second seen (0 for the newest); a
    /// newer `sec` first decays every cell by the seconds that passed and becomes the
    /// newest.
    #[inline(always)]
    fn age_of(&mut self, sec: u32, decay: &Decay) -> u32 {
        if sec > self.last_sec {
            if self.last_sec != 0 {
                self.cells.scale_q32(decay.q32(sec - self.last_sec));
            }
            self.last_sec = sec;
            0
        } else {
            self.last_sec - sec
        }
    }

    /// Adds one second's counter deltas (another process's [`place`]d and weighted
    /// records, see `aggregate::delta`) as of second `sec`: the same cells a record adds
    /// to, so sums merged from several collectors equal those of one process that saw
    /// every record. An older second adds with its decay applied, as a late record does.
    pub fn add_counters(&mut self, sec: u32, c: &Counters, decay: &Decay, dither: &mut Dither) {
        let age = self.age_of(sec, decay);
        let a = decay.factor(age);
        for (i, v) in c.to_array().into_iter().enumerate() {
            if v == 0 {
                continue;
            }
            let v = if age == 0 {
                v
            } else {
                dither.round(v as f64 * a)
            };
            self.cells.add(i, v);
        }
    }

    /// Rate × W (what a W-second window would sum) as of the end of second `eval_sec`,
    /// from the decaying sums. Data written for
    /// a second after `eval_sec` (a pass that runs a few ms after the boundary, when the
    /// new second's first records are in) is un-decayed back, which counts those few ms
    /// once more instead of dipping the rate by a factor `d`.
    pub fn sums(&self, eval_sec: u32, decay: &Decay) -> Counters {
        if self.last_sec == 0 {
            return Counters::default();
        }
        let f = decay.to_window_sum()
            * if self.last_sec <= eval_sec {
                decay.factor(eval_sec - self.last_sec)
            } else {
                let back = decay.factor(self.last_sec - eval_sec);
                if back > 0.0 {
                    1.0 / back
                } else {
                    1.0
                }
            };
        let mut a = [0u64; FIELDS];
        for (i, v) in a.iter_mut().enumerate() {
            // Rounded half up by hand: `f64::round` is a libm call without SSE4.1, and
            // 16 of them per host were a tenth of the detection pass at 1 M hosts
            // (perf). The product is never negative, and under 2^53 it is exact enough.
            *v = (self.cells.get(i) as f64 * f + 0.5) as u64;
        }
        Counters::from_array(a)
    }

    /// Rates as of the end of second `eval_sec`.
    pub fn rates(&self, eval_sec: u32, decay: &Decay) -> Rates {
        Rates::from_window(&self.sums(eval_sec, decay), decay.window_seconds())
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

    fn add_rec<C: Cells>(
        e: &mut Ewma<C>,
        r: &FlowRecord,
        now_ms: i64,
        d: &Decay,
        dither: &mut Dither,
    ) {
        let (sec, w) = place(r, now_ms, 300_000, d);
        e.add(
            sec,
            w,
            Class::of(r),
            r.packets,
            r.bytes,
            u64::from(r.flows),
            d,
            dither,
        );
    }

    #[test]
    fn a_steady_rate_reads_exactly_and_a_burst_reads_like_a_window_then_fades() {
        let d = Decay::new(5);
        let mut dither = Dither::new(1);
        let mut e = Ewma::<Compact>::default();
        let t0 = 1_000_000u32;
        for s in 0..60 {
            let r = rec(1000, 1_000_000, 0, 0);
            add_rec(&mut e, &r, i64::from(t0 + s) * 1000 + 500, &d, &mut dither);
        }
        let r = e.rates(t0 + 59, &d);
        // Rounding at each decay step can settle the sum up to W/2 units off its limit:
        // rates are exact to within one unit per second.
        assert!((999..=1000).contains(&r.pps), "{r:?}");
        assert!((7_999_000..=8_000_000).contains(&r.bps), "{r:?}");
        assert!(r.tcp_flows_per_second <= 1, "{r:?}");

        let mut b = Ewma::<Compact>::default();
        b.add(
            t0,
            1.0,
            Class::of(&rec(1, 1, 0, 0)),
            10_000,
            0,
            0,
            &d,
            &mut dither,
        );
        assert_eq!(b.rates(t0, &d).pps, 3333, "2N/(W+1) right after the burst");
        assert_eq!(b.rates(t0 + 1, &d).pps, 2222, "then × d per second");
        assert_eq!(b.rates(t0 + 3, &d).pps, 987);
        assert_eq!(b.rates(t0 + 200, &d).pps, 0);
    }

    /// Reads the pps of `per_second` records of `packets` each, `dur` ms long, arriving
    /// evenly over 120 s, placed with spread bound `spread_ms`, as the pass after the last
    /// second reads it.
    fn steady_pps(per_second: u32, packets: u64, dur: u32, spread_ms: u32) -> u64 {
        let d = Decay::new(5);
        let mut dither = Dither::new(7);
        let mut e = Ewma::<Compact>::default();
        let t0 = 1_000_000i64;
        for s in 0..120 {
            for i in 0..per_second {
                let r = rec(packets, packets * 60, dur, 0);
                let now = (t0 + s) * 1000 + i64::from(i * 1000 / per_second);
                let (sec, w) = place(&r, now, spread_ms, &d);
                e.add(
                    sec,
                    w,
                    Class::of(&r),
                    r.packets,
                    r.bytes,
                    1,
                    &d,
                    &mut dither,
                );
            }
        }
        e.rates((t0 + 119) as u32, &d).pps
    }

    #[test]
    fn steady_traffic_reads_its_rate_on_arrival_and_low_when_spread() {
        // What the cluster contract check sends: 120 one-second records/s of 100 packets.
        let on_arrival = steady_pps(120, 100, 1_000, 0);
        assert!((11_900..=12_000).contains(&on_arrival), "{on_arrival}");
        // Spread back over the second before arrival: the newest second is never complete.
        let spread = steady_pps(120, 100, 1_000, 300_000);
        assert!(
            (9_900..=10_100).contains(&spread),
            "5/6 of 12 000: {spread}"
        );
        // Flows exported on a 60 s active timeout, one export a second of 1 000 packets
        // (60 flows running at once, 1 000 pps in all): spread reads 1/30 to 1/20 of it
        // (exports at the start of a second here: 1/30).
        let long_on_arrival = steady_pps(1, 1_000, 60_000, 0);
        assert!(
            (990..=1_000).contains(&long_on_arrival),
            "{long_on_arrival}"
        );
        let long_spread = steady_pps(1, 1_000, 60_000, 300_000);
        assert!((30..=60).contains(&long_spread), "{long_spread}");
    }

    #[test]
    fn the_divisor_divides_exactly() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for w in 1..=200u64 {
            let d = Divisor::new(w);
            for v in [
                0,
                1,
                w - 1,
                w,
                w + 1,
                2 * w - 1,
                (1 << 57) - 1,
                1 << 57,
                u64::MAX,
            ] {
                assert_eq!(d.div(v), v / w, "{v} / {w}");
            }
            for _ in 0..2_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = x >> (x % 40);
                assert_eq!(d.div(v), v / w, "{v} / {w}");
            }
        }
    }

    #[test]
    fn a_window_of_one_second_is_the_last_second() {
        let d = Decay::new(1);
        let mut dither = Dither::new(1);
        let mut e = Ewma::<Compact>::default();
        e.add(
            10,
            1.0,
            Class::of(&rec(1, 1, 0, 0)),
            700,
            0,
            0,
            &d,
            &mut dither,
        );
        assert_eq!(e.rates(10, &d).pps, 700);
        assert_eq!(e.rates(11, &d).pps, 0);
    }

    #[test]
    fn a_long_flow_is_spread_not_dumped() {
        // 60 s download, 60 000 packets, exported at t=1_000_060 s as it ends.
        let d = Decay::new(5);
        let mut dither = Dither::new(1);
        let mut e = Ewma::<Compact>::default();
        let r = rec(60_000, 60_000_000, 60_000, 0);
        add_rec(&mut e, &r, 1_000_060_000, &d, &mut dither);
        // What the pass at 1_000_060 reads: the second before.
        let rates = e.rates(1_000_059, &d);
        // Its real 1000 pps (60 000 would be the spike of dumping it in one second).
        assert!((990..=1010).contains(&rates.pps), "{rates:?}");
        assert_eq!(rates.flows_per_second, 0, "1 flow / 5 rounds down");
        assert_eq!(e.rates(1_000_060, &d).pps, 666, "a second later: × d");
    }

    #[test]
    fn span_weight_matches_the_sum_over_seconds() {
        for w in [1, 2, 5, 30] {
            let d = Decay::new(w);
            for (end, dur) in [
                (10_500i64, 2_000i64),
                (10_000, 1_000),
                (10_999, 5_998),
                (20_250, 300_000),
                (10_400, 300),
            ] {
                let start = end - dur;
                let end_sec = end.div_euclid(1000);
                let mut brute = 0.0;
                for s in start.div_euclid(1000)..=end_sec {
                    let lo = start.max(s * 1000);
                    let hi = end.min(s * 1000 + 1000);
                    if hi > lo {
                        let dd = f64::from(w - 1) / f64::from(w + 1);
                        brute += (hi - lo) as f64 / dur as f64 * dd.powi((end_sec - s) as i32);
                    }
                }
                let got = d.span_weight(end, dur);
                assert!(
                    (got - brute).abs() < 1e-9,
                    "w={w} end={end} dur={dur}: {got} vs {brute}"
                );
            }
        }
    }

    #[test]
    fn late_records_count_for_what_they_weigh_now_without_rounding_bias() {
        let d = Decay::new(5);
        let mut dither = Dither::new(7);
        let mut e = Ewma::<Compact>::default();
        // One fresh packet makes second 100 the newest, then 10 000 one-packet records
        // from second 99 (weight 2/3 each): 6 667 expected, not 10 000 (round up) or 0.
        e.add(
            100,
            1.0,
            Class::of(&rec(1, 1, 0, 0)),
            1,
            0,
            0,
            &d,
            &mut dither,
        );
        for _ in 0..10_000 {
            e.add(
                99,
                1.0,
                Class::of(&rec(1, 1, 0, 0)),
                1,
                0,
                0,
                &d,
                &mut dither,
            );
        }
        // Window-equivalent sums are S × 2W/(W+1) = S × 5/3.
        let s = e.sums(100, &d).packets * 3 / 5;
        assert!((6_520..=6_820).contains(&s), "{s}");
    }

    #[test]
    fn a_pass_just_after_the_boundary_does_not_dip() {
        let d = Decay::new(5);
        let mut dither = Dither::new(1);
        let mut e = Ewma::<Compact>::default();
        for s in 1..=50 {
            e.add(
                s,
                1.0,
                Class::of(&rec(1, 1, 0, 0)),
                10_000,
                0,
                0,
                &d,
                &mut dither,
            );
        }
        // A few records of second 51 are in before the pass for second 50 runs.
        e.add(
            51,
            1.0,
            Class::of(&rec(1, 1, 0, 0)),
            20,
            0,
            0,
            &d,
            &mut dither,
        );
        let pps = e.rates(50, &d).pps;
        assert!((9_990..=10_010).contains(&pps), "{pps}");
    }

    #[test]
    fn compact_cells_saturate_instead_of_wrapping_and_agree_with_wide_ones() {
        let d = Decay::new(5);
        let mut dither = Dither::new(1);
        let mut c = Ewma::<Compact>::default();
        let mut w = Ewma::<Wide>::default();
        let r = rec(123_456, 98_765_432_100, 0, 0);
        for s in 1..=20 {
            add_rec(&mut c, &r, i64::from(s) * 1000, &d, &mut dither);
            add_rec(&mut w, &r, i64::from(s) * 1000, &d, &mut dither);
        }
        assert_eq!(c.sums(20, &d), w.sums(20, &d));
        let huge = rec(u64::MAX / 2, u64::MAX / 2, 0, 0);
        add_rec(&mut c, &huge, 20_000, &d, &mut dither);
        assert_eq!(c.cells.get(PACKETS), u64::from(u32::MAX));
        assert_eq!(c.cells.get(BYTES), WIDE_MAX);
        assert!(std::mem::size_of::<Ewma<Compact>>() <= 80);
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
        // Class agrees with Counters::of.
        let mut e = Ewma::<Wide>::default();
        let d = Decay::new(1);
        e.add(5, 1.0, Class::of(&r), 10, 400, 1, &d, &mut Dither::new(1));
        assert_eq!(e.sums(5, &d), c);
    }
}
