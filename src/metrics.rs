//! Every metric flowguard exports is named here, and only here.
//!
//! Stages receive an `Arc<Metrics>` from the service builder instead of reaching for a
//! global registry, so tests can build a fresh one and read it back. Label values are
//! small fixed sets (collector name, protocol version, error kind, direction, attack type,
//! MITIGATOR op/outcome); exporter labels are bounded by [`MAX_EXPORTER_SERIES`], and
//! per-host series exist only for hosts under attack (removed when the attack ends).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Upper bound on exporters (per collector) that get their own series (sampling rate,
/// records, decode errors, templates); the rest are counted in
/// `flowguard_exporter_series_overflow_total` instead of growing the registry.
pub const MAX_EXPORTER_SERIES: usize = 256;

/// How many ranks `flowguard_top_host_pps` / `flowguard_top_host_bps` carry per direction.
/// The series are keyed by rank, not by address, so their number stays fixed however many
/// hosts pass through the top list.
pub const TOP_HOST_RANKS: usize = 10;

/// The bounded queues between stages: the `queue` label of
/// `flowguard_queue_full_drops_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// detect → mitigate (periodic updates are dropped when it is full).
    AttackEvents,
    /// hook endpoint → detect (the hook is answered 503 and spools the event).
    HookEvents,
}

impl Queue {
    pub const ALL: [Queue; 2] = [Queue::AttackEvents, Queue::HookEvents];

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::AttackEvents => "attack_events",
            Queue::HookEvents => "hook_events",
        }
    }
}

/// Event: an item did not fit in the bounded queue `queue`. The log line and the counter
/// in one place, so neither is forgotten where the event happens.
#[derive(Debug, Clone, Copy)]
pub struct QueueFull {
    pub queue: Queue,
}

impl QueueFull {
    pub fn emit(self, m: &Metrics) {
        // Debug, not warn: under a flood this happens per item; the counter (and its
        // alert, FlowguardQueueFull) is what an operator watches.
        tracing::debug!(queue = self.queue.as_str(), "queue full: item dropped");
        m.queue_full_drops
            .with_label_values(&[self.queue.as_str()])
            .inc();
    }
}

/// The caps on state that input can grow: the `cap` label of
/// `flowguard_cap_overflow_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `[detection] max_active_attacks`: an attack over the cap is not started.
    ActiveAttacks,
    /// `[detection] max_watched_hosts`: an attack over the cap gets no top sources.
    WatchedHosts,
    /// `[detection] max_attack_host_series`: an attack over the cap gets no
    /// `flowguard_attack_host_pps`/`_bps` series.
    AttackHostSeries,
    /// `[mitigator] max_queued_operations`: a step over the cap is coalesced into a
    /// queued one.
    MitigationQueue,
}

impl Cap {
    pub const ALL: [Cap; 4] = [
        Cap::ActiveAttacks,
        Cap::WatchedHosts,
        Cap::AttackHostSeries,
        Cap::MitigationQueue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cap::ActiveAttacks => "active_attacks",
            Cap::WatchedHosts => "watched_hosts",
            Cap::AttackHostSeries => "attack_host_series",
            Cap::MitigationQueue => "mitigation_queue",
        }
    }
}

/// Event: `n` items were refused because `cap` was reached.
#[derive(Debug, Clone, Copy)]
pub struct CapReached {
    pub cap: Cap,
    pub n: u64,
}

impl CapReached {
    pub fn emit(self, m: &Metrics) {
        if self.n == 0 {
            return;
        }
        tracing::warn!(
            cap = self.cap.as_str(),
            refused = self.n,
            "cap reached: refused"
        );
        m.cap_overflow
            .with_label_values(&[self.cap.as_str()])
            .inc_by(self.n);
    }
}

pub struct Metrics {
    pub registry: Registry,
    // collect
    pub datagrams: IntCounterVec,
    pub flow_records: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub datagrams_dropped: IntCounterVec,
    pub socket_drops: IntGaugeVec,
    pub template_misses: IntCounterVec,
    pub records_skipped: IntCounterVec,
    pub templates_known: IntGaugeVec,
    pub exporter_sampling_rate: IntGaugeVec,
    pub exporter_series_overflow: IntCounter,
    pub exporter_records: IntCounterVec,
    pub exporter_decode_errors: IntCounterVec,
    pub exporter_templates_known: IntGaugeVec,
    pub counter_samples: IntCounterVec,
    pub exporters_known: IntGaugeVec,
    // aggregate
    pub tracked_hosts: IntGauge,
    pub host_evictions: IntCounterVec,
    pub records_unprotected: IntCounter,
    pub queue_full_drops: IntCounterVec,
    pub cap_overflow: IntCounterVec,
    pub traffic_packets: IntCounterVec,
    pub traffic_bytes: IntCounterVec,
    // detect
    pub attacks_active: IntGaugeVec,
    pub attacks_total: IntCounterVec,
    pub attack_type_changes: IntCounterVec,
    pub attack_host_pps: IntGaugeVec,
    pub attack_host_bps: IntGaugeVec,
    pub top_host_pps: IntGaugeVec,
    pub top_host_bps: IntGaugeVec,
    pub detection_pass_seconds: Histogram,
    pub events_dropped: IntCounterVec,
    // mitigate
    pub mitigator_requests: IntCounterVec,
    pub mitigator_request_duration: HistogramVec,
    pub mitigations_active: IntGauge,
    pub mitigation_pending_ops: IntGauge,
    pub bgp_announcements: IntCounterVec,
    pub bgp_withdrawals: IntCounterVec,
    pub bgp_refusals: IntCounterVec,
    pub bgp_errors: IntCounterVec,
    pub bgp_routes_wanted: IntGauge,
    // hooks / api
    pub hook_events: IntCounterVec,
    pub api_requests: IntCounterVec,
    pub build_info: IntGaugeVec,
    // cluster
    pub cluster: ClusterMetrics,
}

/// `flowguard_cluster_*`: written by `src/cluster/` (and the delta cap by the aggregate stage).
pub struct ClusterMetrics {
    pub merge_lag_seconds: Histogram,
    pub late_frames: IntCounter,
    pub cold_takeovers: IntCounter,
    pub lease_changes: IntCounterVec,
    pub publish_errors: IntCounterVec,
    pub fenced: IntGauge,
    pub bad_frames: IntCounterVec,
    pub frames_published: IntCounter,
    pub frames_merged: IntCounter,
    pub delta_overflow: IntCounter,
    pub partitions_owned: IntGauge,
    pub controller_leader: IntGauge,
    pub gap_seconds: IntCounter,
}

/// Label sets of [`ClusterMetrics`] (pretouched).
pub const CLUSTER_LEASES: [&str; 2] = ["partition", "controller"];
pub const CLUSTER_PUBLISH: [&str; 5] = ["deltas", "events", "state", "heartbeat", "events_dropped"];
pub const CLUSTER_BAD_FRAMES: [&str; 5] = [
    "magic",
    "version",
    "truncated",
    "unknown_node",
    "config_hash",
];

impl ClusterMetrics {
    fn new(r: &Registry) -> ClusterMetrics {
        let merge_lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "flowguard_cluster_merge_lag_seconds",
                "Time from the end of a second to its merge on a detector (every live collector's frames in, or the bounded wait over).",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0]),
        )
        .expect("static metric definition");
        r.register(Box::new(merge_lag_seconds.clone()))
            .expect("metric registered once");
        ClusterMetrics {
            merge_lag_seconds,
            late_frames: counter(r, "flowguard_cluster_late_frames_total", "Delta frames that arrived after their second was merged (applied late, with their decay)."),
            cold_takeovers: counter(r, "flowguard_cluster_cold_takeovers_total", "Partitions this detector took over from another owner (adopting its active attacks)."),
            lease_changes: counter_vec(r, "flowguard_cluster_lease_changes_total", "Leases this node gained or lost, by kind.", &["lease"]),
            publish_errors: counter_vec(r, "flowguard_cluster_publish_errors_total", "Failed NATS publishes and KV writes, by what was written.", &["what"]),
            fenced: gauge(r, "flowguard_cluster_fenced", "1 while this controller node cannot act: its lease is not fresh, or NATS does not take its lease or state writes (quorum lost); no MITIGATOR call is made, MITIGATOR stays as it is."),
            bad_frames: counter_vec(r, "flowguard_cluster_bad_frames_total", "Delta frames dropped, by reason.", &["reason"]),
            frames_published: counter(r, "flowguard_cluster_frames_published_total", "Delta frames this collector published."),
            frames_merged: counter(r, "flowguard_cluster_frames_merged_total", "Delta frames this detector merged."),
            delta_overflow: counter(r, "flowguard_cluster_delta_overflow_total", "Host-seconds not shipped because the per-second delta cap was reached."),
            partitions_owned: gauge(r, "flowguard_cluster_partitions_owned", "Partitions whose lease this detector holds."),
            controller_leader: gauge(r, "flowguard_cluster_controller_leader", "1 while this node holds the controller lease."),
            gap_seconds: counter(r, "flowguard_cluster_gap_seconds_total", "Seconds this detector merged without a collector that sent the seconds before (attack ends decided then are held)."),
        }
    }

    fn pretouch(&self) {
        for l in CLUSTER_LEASES {
            self.lease_changes.with_label_values(&[l]);
        }
        for w in CLUSTER_PUBLISH {
            self.publish_errors.with_label_values(&[w]);
        }
        for b in CLUSTER_BAD_FRAMES {
            self.bad_frames.with_label_values(&[b]);
        }
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let detection_pass_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "flowguard_detection_pass_seconds",
                "Time one per-second detection pass took.",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
        )
        .expect("static metric definition");
        r.register(Box::new(detection_pass_seconds.clone()))
            .expect("metric registered once");
        let mitigator_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "flowguard_mitigator_request_duration_seconds",
                "Duration of MITIGATOR REST calls, retries included.",
            )
            .buckets(vec![
                0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 10.0, 30.0,
            ]),
            &["op"],
        )
        .expect("static metric definition");
        r.register(Box::new(mitigator_request_duration.clone()))
            .expect("metric registered once");
        Metrics {
            datagrams: counter_vec(&r, "flowguard_datagrams_total", "Datagrams received, by collector and protocol version (v5, v9, ipfix, sflow5, unknown).", &["collector", "version"]),
            flow_records: counter_vec(&r, "flowguard_flow_records_total", "Flow records and flow samples decoded, by collector and protocol version.", &["collector", "version"]),
            decode_errors: counter_vec(&r, "flowguard_decode_errors_total", "Datagrams or records that failed to decode, by collector and error kind.", &["collector", "kind"]),
            datagrams_dropped: counter_vec(&r, "flowguard_datagrams_dropped_total", "Datagrams dropped before decoding, by collector and reason.", &["collector", "reason"]),
            socket_drops: gauge_vec(&r, "flowguard_socket_receive_drops", "Datagrams the kernel dropped on a collector socket (SO_MEMINFO, cumulative since the socket opened).", &["collector"]),
            template_misses: counter_vec(&r, "flowguard_template_misses_total", "NetFlow v9/IPFIX data flowsets that arrived before their template.", &["collector"]),
            records_skipped: counter_vec(&r, "flowguard_records_skipped_total", "Records (data sets, for no_template) not counted as traffic, by collector and reason.", &["collector", "reason"]),
            templates_known: gauge_vec(&r, "flowguard_templates_known", "NetFlow v9/IPFIX templates currently cached, by collector.", &["collector"]),
            exporter_sampling_rate: gauge_vec(&r, "flowguard_exporter_sampling_rate", "Sampling rate (1 in N) in force per exporter.", &["collector", "exporter"]),
            exporter_series_overflow: counter(&r, "flowguard_exporter_series_overflow_total", "Exporters not given their own series because the series cap was reached."),
            exporter_records: counter_vec(&r, "flowguard_exporter_records_total", "Flow records and flow samples decoded, per exporter (router address).", &["collector", "exporter"]),
            exporter_decode_errors: counter_vec(&r, "flowguard_exporter_decode_errors_total", "Datagrams that failed (part-way) to decode, per exporter.", &["collector", "exporter"]),
            exporter_templates_known: gauge_vec(&r, "flowguard_exporter_templates_known", "NetFlow v9/IPFIX templates currently cached, per exporter (all its source ids).", &["collector", "exporter"]),
            counter_samples: counter_vec(&r, "flowguard_sflow_stats_samples_total", "sFlow counter (interface statistics) samples received; counted, not used for detection.", &["collector"]),
            exporters_known: gauge_vec(&r, "flowguard_exporters_known", "Exporters known (template scopes and v5 exporters), by collector.", &["collector"]),
            tracked_hosts: gauge(&r, "flowguard_tracked_hosts", "Host-directions with a live window."),
            host_evictions: counter_vec(&r, "flowguard_host_evictions_total", "Host-directions removed from the host table, by reason (idle, cap).", &["reason"]),
            records_unprotected: counter(&r, "flowguard_records_unprotected_total", "Flow records that touched no protected host."),
            queue_full_drops: counter_vec(&r, "flowguard_queue_full_drops_total", "Items dropped because a bounded queue between stages was full, by queue.", &["queue"]),
            cap_overflow: counter_vec(&r, "flowguard_cap_overflow_total", "Items refused because a cap on state was reached, by cap (active_attacks, watched_hosts, attack_host_series, mitigation_queue).", &["cap"]),
            traffic_packets: counter_vec(&r, "flowguard_traffic_packets_total", "Packets to (incoming) or from (outgoing) protected hosts, sampling applied, by direction and protocol (tcp, udp, icmp, other).", &["direction", "protocol"]),
            traffic_bytes: counter_vec(&r, "flowguard_traffic_bytes_total", "Bytes to (incoming) or from (outgoing) protected hosts, sampling applied, by direction and protocol (tcp, udp, icmp, other).", &["direction", "protocol"]),
            attacks_active: gauge_vec(&r, "flowguard_attacks_active", "Attacks in progress, by direction and attack type.", &["direction", "attack_type"]),
            attacks_total: counter_vec(&r, "flowguard_attacks_total", "Attacks started, by direction and attack type.", &["direction", "attack_type"]),
            attack_type_changes: counter_vec(&r, "flowguard_attack_type_changes_total", "Attacks whose type changed while they lasted (the type follows the traffic), by direction, old and new type.", &["direction", "old_type", "new_type"]),
            attack_host_pps: gauge_vec(&r, "flowguard_attack_host_pps", "Packet rate of a host under attack (series exist only while the attack lasts).", &["ip", "direction"]),
            attack_host_bps: gauge_vec(&r, "flowguard_attack_host_bps", "Bit rate of a host under attack (series exist only while the attack lasts).", &["ip", "direction"]),
            top_host_pps: gauge_vec(&r, "flowguard_top_host_pps", "Packet rate of the N-th busiest protected host by packets (rank 1..=10), whatever its address; 0 when fewer hosts are seen.", &["direction", "rank"]),
            top_host_bps: gauge_vec(&r, "flowguard_top_host_bps", "Bit rate of the N-th busiest protected host by bits (rank 1..=10), whatever its address; 0 when fewer hosts are seen.", &["direction", "rank"]),
            detection_pass_seconds,
            events_dropped: counter_vec(&r, "flowguard_attack_events_dropped_total", "Attack events that could not be queued, by kind.", &["event"]),
            mitigator_requests: counter_vec(&r, "flowguard_mitigator_requests_total", "MITIGATOR REST calls, by operation and outcome.", &["op", "outcome"]),
            mitigator_request_duration,
            mitigations_active: gauge(&r, "flowguard_mitigations_active", "Attacks with a mitigation in force on MITIGATOR."),
            mitigation_pending_ops: gauge(&r, "flowguard_mitigation_pending_operations", "MITIGATOR switch changes waiting to be applied (retrying)."),
            bgp_announcements: counter_vec(&r, "flowguard_bgp_announcements_total", "Routes announced through the BGP daemon (re-additions after a daemon restart included), by kind (blackhole, flowspec).", &["kind"]),
            bgp_withdrawals: counter_vec(&r, "flowguard_bgp_withdrawals_total", "Routes withdrawn through the BGP daemon, by kind.", &["kind"]),
            bgp_refusals: counter_vec(&r, "flowguard_bgp_refusals_total", "Routes not announced because a safety check failed, by reason (outside_protected, prefix_too_short, route_cap).", &["reason"]),
            bgp_errors: counter_vec(&r, "flowguard_bgp_errors_total", "Failed calls to the BGP daemon (each is retried), by operation (lookup, announce, withdraw).", &["op"]),
            bgp_routes_wanted: gauge(&r, "flowguard_bgp_routes_wanted", "Distinct BGP routes live attacks want announced now."),
            hook_events: counter_vec(&r, "flowguard_hook_events_total", "Events received from external detectors (FastNetMon hook), by action and outcome.", &["action", "outcome"]),
            api_requests: counter_vec(&r, "flowguard_api_requests_total", "HTTP API requests, by endpoint and status class.", &["endpoint", "status"]),
            build_info: {
                let g = gauge_vec(&r, "flowguard_build_info", "Always 1; labels carry the version.", &["version"]);
                g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
                g
            },
            cluster: ClusterMetrics::new(&r),
            registry: r,
        }
    }

    /// Creates the zero series of every bounded label set, so dashboards and alerts see
    /// each family (and `rate()` has a starting point) before the first event.
    pub fn pretouch(&self, collectors: &[(String, bool)]) {
        self.cluster.pretouch();
        for (c, is_sflow) in collectors {
            let c = c.as_str();
            let versions: &[&str] = if *is_sflow {
                &["sflow5"]
            } else {
                &["v5", "v9", "ipfix"]
            };
            for v in versions.iter().copied() {
                self.datagrams.with_label_values(&[c, v]);
                self.flow_records.with_label_values(&[c, v]);
            }
            for k in [
                "truncated",
                "bad_version",
                "malformed",
                "unsupported_header",
            ] {
                self.decode_errors.with_label_values(&[c, k]);
            }
            for r in crate::decode::SkipReason::ALL {
                self.records_skipped.with_label_values(&[c, r.label()]);
            }
            for r in ["not_allowed", "truncated"] {
                self.datagrams_dropped.with_label_values(&[c, r]);
            }
            self.socket_drops.with_label_values(&[c]);
            self.template_misses.with_label_values(&[c]);
            self.templates_known.with_label_values(&[c]);
            self.counter_samples.with_label_values(&[c]);
            self.exporters_known.with_label_values(&[c]);
        }
        for r in ["idle", "pressure", "cap_refused"] {
            self.host_evictions.with_label_values(&[r]);
        }
        for q in Queue::ALL {
            self.queue_full_drops.with_label_values(&[q.as_str()]);
        }
        for c in Cap::ALL {
            self.cap_overflow.with_label_values(&[c.as_str()]);
        }
        for e in ["update", "closed"] {
            self.events_dropped.with_label_values(&[e]);
        }
        for d in crate::model::Direction::ALL {
            for p in ["tcp", "udp", "icmp", "other"] {
                self.traffic_packets.with_label_values(&[d.as_str(), p]);
                self.traffic_bytes.with_label_values(&[d.as_str(), p]);
            }
            for t in crate::model::AttackType::ALL {
                self.attacks_active
                    .with_label_values(&[d.as_str(), t.as_str()]);
                self.attacks_total
                    .with_label_values(&[d.as_str(), t.as_str()]);
            }
            for rank in 1..=TOP_HOST_RANKS {
                self.top_host_pps
                    .with_label_values(&[d.as_str(), &rank.to_string()]);
                self.top_host_bps
                    .with_label_values(&[d.as_str(), &rank.to_string()]);
            }
        }
        // The op and outcome sets of src/mitigate/client.rs.
        for op in ["login", "get_switch", "put_switch", "tbl_add", "ping"] {
            self.mitigator_request_duration.with_label_values(&[op]);
            for o in [
                "ok",
                "unauthorized",
                "misdirected",
                "client_error",
                "server_error",
                "timeout",
                "transport_error",
            ] {
                self.mitigator_requests.with_label_values(&[op, o]);
            }
        }
        // The kinds, reasons and operations of src/mitigate/{route,gobgp}.rs.
        for k in ["blackhole", "flowspec"] {
            self.bgp_announcements.with_label_values(&[k]);
            self.bgp_withdrawals.with_label_values(&[k]);
        }
        for r in ["outside_protected", "prefix_too_short", "route_cap"] {
            self.bgp_refusals.with_label_values(&[r]);
        }
        for o in ["lookup", "announce", "withdraw"] {
            self.bgp_errors.with_label_values(&[o]);
        }
        for a in ["ban", "unban", "attack_details"] {
            for o in ["accepted", "rejected", "spooled"] {
                self.hook_events.with_label_values(&[a, o]);
            }
        }
    }

    /// Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = enc.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
