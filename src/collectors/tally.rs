//! The collectors' decode tally: decode outcomes summed per batch of datagrams, then
//! added to the collect metrics (`flowguard_datagrams_total`, `..._decode_errors_total`,
//! ...). Replay counts its datagrams with it too.

use crate::decode::{DecodeErrorKind, DecodeOutcome, Version};
use crate::metrics::Metrics;

/// Decode outcomes summed over a batch of datagrams, so the labelled counters (a label
/// hash and a lock each) are touched once per batch instead of once per datagram.
#[derive(Debug, Default)]
pub struct DecodeTally {
    /// Datagrams and records per [`Version`] (index = `Version as usize`).
    datagrams: [u64; VERSIONS],
    records: [u64; VERSIONS],
    errors: [u64; ERROR_KINDS],
    skips: crate::decode::Skips,
    template_misses: u64,
    counter_samples: u64,
}

const VERSIONS: usize = 5;
const ERROR_KINDS: usize = 4;
/// Every version and error kind, in any order: the tally is indexed by discriminant.
const VERSION_OF: [Version; VERSIONS] = [
    Version::V5,
    Version::V9,
    Version::Ipfix,
    Version::Sflow5,
    Version::Unknown,
];
const ERROR_OF: [DecodeErrorKind; ERROR_KINDS] = [
    DecodeErrorKind::Truncated,
    DecodeErrorKind::BadVersion,
    DecodeErrorKind::Malformed,
    DecodeErrorKind::UnsupportedHeader,
];

impl DecodeTally {
    pub fn add(&mut self, oc: &DecodeOutcome) {
        let v = oc.version.unwrap_or(Version::Unknown) as usize;
        self.datagrams[v] += 1;
        self.records[v] += oc.records as u64;
        if let Some(e) = oc.error {
            self.errors[e as usize] += 1;
        }
        self.skips.merge(&oc.skips);
        self.template_misses += oc.template_misses as u64;
        self.counter_samples += oc.counter_samples as u64;
    }

    /// Adds the tally to the metrics of `collector` and starts over.
    pub fn flush(&mut self, m: &Metrics, collector: &str) {
        for v in VERSION_OF {
            let (i, l) = (v as usize, [collector, v.label()]);
            if self.datagrams[i] > 0 {
                m.datagrams.with_label_values(&l).inc_by(self.datagrams[i]);
            }
            if self.records[i] > 0 {
                m.flow_records.with_label_values(&l).inc_by(self.records[i]);
            }
        }
        for e in ERROR_OF {
            let n = self.errors[e as usize];
            if n > 0 {
                m.decode_errors
                    .with_label_values(&[collector, e.label()])
                    .inc_by(n);
            }
        }
        for r in crate::decode::SkipReason::ALL {
            let n = self.skips.get(r);
            if n > 0 {
                m.records_skipped
                    .with_label_values(&[collector, r.label()])
                    .inc_by(n);
            }
        }
        if self.template_misses > 0 {
            m.template_misses
                .with_label_values(&[collector])
                .inc_by(self.template_misses);
        }
        if self.counter_samples > 0 {
            m.counter_samples
                .with_label_values(&[collector])
                .inc_by(self.counter_samples);
        }
        *self = DecodeTally::default();
    }
}

/// Counts one datagram's decode outcome (for callers without a batch).
pub fn count_decode(m: &Metrics, collector: &str, oc: &DecodeOutcome) {
    let mut t = DecodeTally::default();
    t.add(oc);
    t.flush(m, collector);
}
