//! The wiring of decode → aggregate → detect, once for both the live service and
//! `replay`: it builds the two stages from the config and, once a second, runs the pass
//! by handing one stage's output to the other. It holds no state of its own.
//!
//! Records go straight to [`Aggregate`] (a [`RecordSink`]); [`Pipeline::tick`] is the
//! per-second pass and returns the attack events it produced. Who calls them with which
//! clock is the only difference between `flowguard run` (wall clock, collector threads, a
//! ticker task) and `flowguard replay` (capture timestamps, one thread).

use std::sync::Arc;

use crate::aggregate::{Aggregate, GroupLayout, HostDelta, HostKey, RecordSink};
use crate::config::{Config, ConfigError};
use crate::detect::{Claim, Detection, Hostgroups};
use crate::metrics::Metrics;
use crate::model::AttackEvent;

pub struct Pipeline {
    pub aggregate: Arc<Aggregate>,
    pub detection: Detection,
}

impl Pipeline {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Pipeline, ConfigError> {
        Pipeline::with_seed(cfg, metrics, None)
    }

    /// A pipeline whose host-table hash is seeded with `seed` instead of at random, so
    /// that which hosts share a shard (and so the recent-records ring that seeds attack
    /// reports) is the same on every run: `replay` is reproducible. The service keeps
    /// random seeds: a known hash lets an attacker craft colliding addresses.
    pub fn with_seed(
        cfg: &Config,
        metrics: Arc<Metrics>,
        seed: Option<u64>,
    ) -> Result<Pipeline, ConfigError> {
        let protected = cfg.protected_prefixes()?;
        let whitelist = cfg.whitelist_prefixes()?;
        let hg = Hostgroups::of(&cfg.hostgroups, &protected);
        let layout = GroupLayout {
            prefixes: hg.prefixes,
            default_group: hg.default_group,
            summed: hg.groups.iter().map(|g| g.total.is_some()).collect(),
            names: hg.groups.iter().map(|g| g.name.clone()).collect(),
        };
        Ok(Pipeline {
            aggregate: Arc::new(Aggregate::new(
                cfg,
                &protected,
                &whitelist,
                layout,
                metrics.clone(),
                seed,
            )),
            detection: Detection::new(cfg, hg.groups, hg.group_ip, metrics),
        })
    }

    /// See [`Aggregate::enable_deltas`]. Only before the pipeline is shared (the
    /// service calls it right after [`Self::new`]).
    pub fn enable_deltas(&mut self, cfg: &Config, cap_per_second: usize, local_table: bool) {
        Arc::get_mut(&mut self.aggregate)
            .expect("enable_deltas before the aggregate stage is shared")
            .enable_deltas(cfg, cap_per_second, local_table);
    }

    /// See [`Aggregate::drain_deltas`].
    pub fn drain_deltas(&self, sec: u32) -> Vec<HostDelta> {
        self.aggregate.drain_deltas(sec)
    }

    /// See [`Aggregate::apply_deltas`].
    pub fn apply_deltas(&self, deltas: &[HostDelta]) {
        self.aggregate.apply_deltas(deltas)
    }

    /// See [`Aggregate::revisit_where`].
    pub fn revisit_where(&self, f: impl Fn(&HostKey) -> bool) {
        self.aggregate.revisit_where(f)
    }

    /// Takes over attack `ev` (known from elsewhere: another detector started it) as an
    /// active attack of this detector, unless one is active for its host already.
    pub fn adopt(&self, ev: &AttackEvent, now_ms: i64) -> bool {
        let mut det = self.detection.lock();
        let cmd = det.adopt(ev, self.aggregate.group_of(ev.ip), now_ms);
        if let Some(c) = cmd {
            self.aggregate.apply(&[c]);
        }
        cmd.is_some()
    }

    /// An external detector's ban/unban (FastNetMon hook); returns the events produced.
    pub fn claim(&self, now_ms: i64, mut c: Claim) -> Vec<AttackEvent> {
        c.group = self.aggregate.group_of(c.key.ip);
        let mut det = self.detection.lock();
        let cmds = det.claim(now_ms, &c);
        let sources = self.aggregate.apply(&cmds);
        det.events(now_ms, sources)
    }

    /// The per-second detection pass at `now_ms`; returns the events it produced.
    pub fn tick(&self, now_ms: i64) -> Vec<AttackEvent> {
        self.tick_owned(now_ms, |_| true)
    }

    /// The detection pass over the host-directions `owned` accepts only (a cluster
    /// detector's partitions; group totals count when `owned` accepts the group's key).
    /// Attacks on hosts no longer owned are dropped without an event: their new owner
    /// adopts them.
    pub fn tick_owned(
        &self,
        now_ms: i64,
        owned: impl Fn(&HostKey) -> bool + Sync,
    ) -> Vec<AttackEvent> {
        let timer = self
            .aggregate
            .metrics()
            .detection_pass_seconds
            .start_timer();
        let now_sec = (now_ms / 1000).max(0) as u32;
        let mut det = self.detection.lock();
        self.aggregate.apply(&det.forget_unowned(&owned));
        let asked = self.aggregate.with_shards(det.active_keys());
        let mut pass = det.pass(now_ms, &owned, asked);
        self.aggregate.second(now_sec, &owned, &mut pass);
        let cmds = pass.observe();
        let sources = self.aggregate.apply(&cmds);
        let events = det.events(now_ms, sources);
        if self.aggregate.sweep_due(now_ms) {
            self.aggregate.sweep(now_ms, &det.keep());
        }
        drop(det);
        timer.observe_duration();
        events
    }

    /// Shorthand for the aggregate stage's [`RecordSink::ingest`].
    #[inline]
    pub fn ingest(
        &self,
        recs: &[crate::decode::FlowRecord],
        now_ms: i64,
        s: &mut crate::aggregate::Scratch,
    ) {
        self.aggregate.ingest(recs, now_ms, s)
    }

    /// Shorthand for the aggregate stage's [`RecordSink::scratch`].
    pub fn scratch(&self) -> crate::aggregate::Scratch {
        self.aggregate.scratch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    use crate::aggregate::{Rates, Scratch, TopBy, TOP_HOSTS_MAX};
    use crate::decode::FlowRecord;
    use crate::decode::{PROTO_ICMPV6, PROTO_UDP};
    use crate::metrics::Cap;
    use crate::model::AttackType;
    use crate::model::{Direction, EventKind};

    fn pipeline(toml: &str) -> Pipeline {
        let cfg = Config::from_toml_str(toml).unwrap();
        Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap()
    }

    fn udp(src: &str, dst: &str, packets: u64) -> FlowRecord {
        FlowRecord {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 5353,
            dst_port: 53,
            protocol: PROTO_UDP,
            packets,
            bytes: packets * 100,
            flows: 1,
            ..FlowRecord::default()
        }
    }

    /// Feeds `per_second(sec)` records for seconds t0.., ticking after each second;
    /// returns every event.
    fn run(
        p: &Pipeline,
        secs: i64,
        per_second: impl Fn(i64) -> Vec<FlowRecord>,
    ) -> Vec<AttackEvent> {
        let t0 = 1_800_000_000_000i64;
        let mut s = p.scratch();
        let mut ev = Vec::new();
        for i in 0..secs {
            p.ingest(&per_second(i), t0 + i * 1000 + 500, &mut s);
            ev.extend(p.tick(t0 + (i + 1) * 1000));
        }
        ev
    }

    const PROTECTED_24: &str = r#"
        [networks]
        protected = ["192.0.2.0/24"]
        [[hostgroup]]
        name = "default"
        threshold_pps = 100000000
        "#;

    #[test]
    fn top_hosts_come_from_the_pass_busiest_first_and_are_capped() {
        let p = pipeline(PROTECTED_24);
        // Host h gets h × 10 pps; the flows metric orders the other way round.
        run(&p, 3, |_| {
            (1..=200u64)
                .map(|h| FlowRecord {
                    flows: (300 - h) as _,
                    ..udp("198.51.100.9", &format!("192.0.2.{h}"), h * 10)
                })
                .collect()
        });
        let top = p.aggregate.top(5, TopBy::Pps);
        let ips: Vec<String> = top.iter().map(|(k, _)| k.ip.to_string()).collect();
        assert_eq!(
            ips,
            [
                "192.0.2.200",
                "192.0.2.199",
                "192.0.2.198",
                "192.0.2.197",
                "192.0.2.196"
            ]
        );
        assert!(top.windows(2).all(|w| w[0].1.pps >= w[1].1.pps));
        assert_eq!(
            p.aggregate.top(1, TopBy::Flows)[0].0.ip.to_string(),
            "192.0.2.1"
        );
        assert_eq!(
            p.aggregate.top(1, TopBy::Bps)[0].0.ip.to_string(),
            "192.0.2.200"
        );
        // Incoming only (the sources are not protected): 200 host-directions.
        assert_eq!(p.aggregate.top(TOP_HOSTS_MAX + 5, TopBy::Pps).len(), 200);
    }

    #[test]
    fn top_hosts_keep_the_best_thousand_of_many_and_a_decaying_host() {
        let p = Pipeline::new(
            &Config::from_toml_str(
                r#"
                [networks]
                protected = ["10.0.0.0/8"]
                "#,
            )
            .unwrap(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let host = |i: u64| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        // 5000 hosts, 10·i pps each (apart by more than the integer rates round away),
        // then one second where only a quiet host sends.
        run(&p, 2, |_| {
            (1..=5000u64)
                .map(|i| udp("198.51.100.9", &host(i), 10 * i))
                .collect()
        });
        let top = p.aggregate.top(TOP_HOSTS_MAX, TopBy::Pps);
        assert_eq!(top.len(), TOP_HOSTS_MAX);
        assert_eq!(top[0].0.ip.to_string(), host(5000));
        assert_eq!(top[TOP_HOSTS_MAX - 1].0.ip.to_string(), host(4001));
        let t0 = 1_800_000_000_000i64;
        let mut s = p.scratch();
        p.ingest(&[udp("198.51.100.9", &host(1), 1)], t0 + 2_500, &mut s);
        p.tick(t0 + 3_000);
        // The busiest hosts sent nothing this second: still listed, from the table.
        let top = p.aggregate.top(3, TopBy::Pps);
        assert_eq!(top[0].0.ip.to_string(), host(5000));
        assert!(top[0].1.pps > 0);
    }

    /// The hosts reader takes neither a shard lock nor the detector: with every one of
    /// them held (as a collector or the detection pass would), it still answers.
    #[test]
    fn the_top_hosts_reader_takes_no_lock_the_collectors_or_the_pass_need() {
        let p = pipeline(PROTECTED_24);
        run(&p, 2, |_| vec![udp("198.51.100.9", "192.0.2.7", 500)]);
        let shards: Vec<_> = p.aggregate.table.shards.iter().map(|s| s.lock()).collect();
        let det = p.detection.detector.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let _ = tx.send(p.aggregate.top(10, TopBy::Pps));
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(20));
            // Release before asserting, so a failure is a failure and not a hang.
            drop(det);
            drop(shards);
            let top = got.expect("top() waited for a shard or detector lock");
            assert_eq!(top.len(), 1);
            assert_eq!(top[0].0.ip.to_string(), "192.0.2.7");
        });
    }

    fn capped(caps: &str) -> Pipeline {
        pipeline(&format!(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [detection]
            {caps}
            [[hostgroup]]
            name = "default"
            threshold_pps = 1000
            ban_time_seconds = 2
            "#
        ))
    }

    /// Three hosts flooded for 3 s, then 17 quiet seconds (the averages decay, the ban
    /// time passes, their attacks end).
    fn three_floods(p: &Pipeline) -> Vec<AttackEvent> {
        run(p, 20, |i| {
            if i < 3 {
                (1..=3)
                    .map(|h| udp(&format!("198.51.100.{h}"), &format!("192.0.2.{h}"), 30_000))
                    .collect()
            } else {
                Vec::new()
            }
        })
    }

    fn overflow(p: &Pipeline, cap: Cap) -> u64 {
        p.aggregate
            .metrics()
            .cap_overflow
            .with_label_values(&[cap.as_str()])
            .get()
    }

    #[test]
    fn the_active_attack_cap_refuses_new_attacks_and_counts_them() {
        let p = capped("max_active_attacks = 2");
        let ev = three_floods(&p);
        let starts = ev.iter().filter(|e| e.event == EventKind::Start).count();
        assert_eq!(starts, 2, "{ev:?}");
        // The third host is refused on each pass it is over the threshold: at least the
        // 3 flooded seconds (more while its average decays).
        let refused = overflow(&p, Cap::ActiveAttacks);
        assert!(refused >= 3, "{refused}");
        assert_eq!(p.detection.active_attacks(), 0);
        // A hook claim at the cap is refused too.
        let claim = |ip: &str| Claim {
            key: HostKey {
                ip: ip.parse().unwrap(),
                dir: Direction::Incoming,
            },
            ban: true,
            attack_type: AttackType::UdpFlood,
            protocol: crate::model::Protocol::Udp,
            pps: 1,
            group: 0,
        };
        let t = 1_800_000_100_000;
        assert_eq!(p.claim(t, claim("192.0.2.50")).len(), 1);
        assert_eq!(p.claim(t, claim("192.0.2.51")).len(), 1);
        assert!(p.claim(t, claim("192.0.2.52")).is_empty());
        assert_eq!(overflow(&p, Cap::ActiveAttacks), refused + 1);
    }

    #[test]
    fn over_the_watched_host_cap_an_attack_starts_without_top_sources() {
        let p = capped("max_watched_hosts = 1");
        let ev = three_floods(&p);
        let starts: Vec<_> = ev.iter().filter(|e| e.event == EventKind::Start).collect();
        assert_eq!(starts.len(), 3);
        let with_sources = starts.iter().filter(|e| !e.top_sources.is_empty()).count();
        assert_eq!(with_sources, 1, "{starts:?}");
        assert_eq!(overflow(&p, Cap::WatchedHosts), 2);
        // All ended: the cap is free again.
        assert_eq!(p.aggregate.watched(), 0);
    }

    #[test]
    fn over_the_series_cap_an_attack_gets_no_per_host_series() {
        let p = capped("max_attack_host_series = 1");
        let series = |p: &Pipeline| {
            p.aggregate
                .metrics()
                .render()
                .lines()
                .filter(|l| l.starts_with("flowguard_attack_host_pps{"))
                .count()
        };
        run(&p, 2, |_| {
            (1..=3)
                .map(|h| udp("198.51.100.9", &format!("192.0.2.{h}"), 30_000))
                .collect()
        });
        assert_eq!(p.detection.active_attacks(), 3);
        assert_eq!(series(&p), 1);
        assert_eq!(overflow(&p, Cap::AttackHostSeries), 2);
        let p = capped("max_attack_host_series = 1");
        three_floods(&p);
        assert_eq!(p.detection.active_attacks(), 0);
        assert_eq!(
            series(&p),
            0,
            "the one series is removed at its attack's end"
        );
        assert_eq!(p.detection.series.lock().len(), 0);
    }

    #[test]
    fn carpet_bombing_over_a_24_is_caught_by_the_group_total() {
        let p = pipeline(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "web"
            prefixes = ["192.0.2.0/24"]
            threshold_pps = 1000
            ban_time_seconds = 3
            [hostgroup.total]
            threshold_pps = 50000
            "#,
        );
        // 254 hosts × 400 pps: each under 1000, together 101 600 pps.
        let ev = run(&p, 12, |i| {
            if i < 6 {
                (1..255)
                    .map(|h| udp("198.51.100.9", &format!("192.0.2.{h}"), 400))
                    .collect()
            } else {
                Vec::new()
            }
        });
        let starts: Vec<_> = ev.iter().filter(|e| e.event == EventKind::Start).collect();
        assert_eq!(
            starts.len(),
            1,
            "one group attack, no per-host one: {starts:?}"
        );
        let s = starts[0];
        assert_eq!(s.ip, "192.0.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(
            (s.hostgroup.as_str(), s.attack_type),
            ("web", AttackType::UdpFlood)
        );
        assert!(ev.iter().any(|e| e.event == EventKind::End && e.id == s.id));
    }

    #[test]
    fn most_specific_hostgroup_decides_the_thresholds() {
        let p = pipeline(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 1000
            [[hostgroup]]
            name = "dns"
            prefixes = ["192.0.2.53/32"]
            threshold_pps = 100000
            "#,
        );
        // 5000 pps to each: over the default threshold, under the dns one.
        let ev = run(&p, 3, |_| {
            vec![
                udp("198.51.100.9", "192.0.2.53", 5000),
                udp("198.51.100.9", "192.0.2.80", 5000),
            ]
        });
        let started: Vec<_> = ev
            .iter()
            .filter(|e| e.event == EventKind::Start)
            .map(|e| (e.ip.to_string(), e.hostgroup.clone()))
            .collect();
        assert_eq!(
            started,
            vec![("192.0.2.80".to_string(), "default".to_string())]
        );
    }

    #[test]
    fn ipv6_icmp_flood_and_whitelist() {
        let p = pipeline(
            r#"
            [networks]
            protected = ["2001:db8::/32"]
            whitelist = ["2001:db8::beef/128"]
            [[hostgroup]]
            name = "default"
            threshold_icmp_pps = 1000
            "#,
        );
        let icmp6 = |dst: &str| FlowRecord {
            protocol: PROTO_ICMPV6,
            src_port: 0,
            dst_port: 0,
            ..udp("2001:db8:ffff::1", dst, 20_000)
        };
        let ev = run(&p, 3, |_| {
            vec![icmp6("2001:db8::1"), icmp6("2001:db8::beef")]
        });
        let starts: Vec<_> = ev.iter().filter(|e| e.event == EventKind::Start).collect();
        assert_eq!(
            starts.len(),
            1,
            "the whitelisted host never starts one: {starts:?}"
        );
        assert_eq!(starts[0].ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(starts[0].attack_type, AttackType::IcmpFlood);
        assert_eq!(starts[0].protocol, crate::model::Protocol::Icmp);
        // Still tracked, visible in the API.
        assert!(p
            .aggregate
            .host("2001:db8::beef".parse().unwrap(), 1_800_000_003_000)
            .is_some());
    }

    #[test]
    fn the_text_report_parses_back_with_fastnetmons_labels() {
        let p = pipeline(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 1000
            "#,
        );
        run(&p, 3, |_| vec![udp("198.51.100.9", "192.0.2.7", 30_000)]);
        let a = p.detection.attacks().into_iter().next().expect("an attack");
        let text = crate::detect::report::text(&a, &Rates::default());
        let r = crate::fnm_report::parse_report(&text);
        assert_eq!(r.ip, Some(a.ip));
        assert_eq!(r.attack_type, Some(AttackType::UdpFlood));
        assert_eq!(r.protocol, Some(crate::model::Protocol::Udp));
        assert_eq!(r.direction.as_deref(), Some("incoming"));
        assert_eq!(r.initial_attack_power, Some(a.initial.pps));
        assert_eq!(r.total_incoming_pps, Some(a.initial.pps));
        assert_eq!(r.incoming_udp_pps, Some(a.initial.udp_pps));
        assert_eq!(
            r.total_incoming_traffic_mbps,
            Some(a.initial.bps / 1_000_000)
        );
        assert!(text.contains("Top sources"), "{text}");
        assert!(text.contains("198.51.100.9"), "{text}");
    }

    /// The cluster seam: two collecting pipelines ship per-second deltas, a third merges
    /// them; it sees the rates and attacks of one pipeline fed everything, and a victim
    /// at 0.6 × threshold on each half is detected in the merge only.
    #[test]
    fn merged_deltas_of_two_halves_detect_like_one_pipeline() {
        let toml = r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 10000
            ban_time_seconds = 3
            "#;
        let cfg = Config::from_toml_str(toml).unwrap();
        let one = pipeline(toml);
        let merged = pipeline(toml);
        let halves: Vec<Pipeline> = (0..2)
            .map(|_| {
                let mut p = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
                p.enable_deltas(&cfg, 10_000, false);
                p
            })
            .collect();
        let t0 = 1_800_000_000_000i64;
        let mut s1 = one.scratch();
        let mut hs: Vec<Scratch> = halves.iter().map(|p| p.scratch()).collect();
        let (mut ev_one, mut ev_merged) = (Vec::new(), Vec::new());
        for i in 0..14i64 {
            let now = t0 + i * 1000 + 500;
            for j in 0..10 {
                // 12 000 pps to .10 while i < 8 (6 000 through each half), 1 500 to .20
                // throughout.
                let mut recs = vec![udp("198.51.100.9", "192.0.2.20", 150)];
                if i < 8 {
                    recs.push(udp("198.51.100.9", "192.0.2.10", 1200));
                }
                one.ingest(&recs, now + j, &mut s1);
                halves[(j % 2) as usize].ingest(&recs, now + j, &mut hs[(j % 2) as usize]);
            }
            let end = t0 + (i + 1) * 1000;
            ev_one.extend(one.tick(end));
            let sec = (end / 1000) as u32;
            for h in &halves {
                let d = h.drain_deltas(sec);
                assert!(
                    d.iter().all(|x| x.sec + 1 == sec),
                    "only the second that ended"
                );
                merged.apply_deltas(&d);
            }
            assert!(
                halves.iter().all(|h| h.aggregate.table.is_empty()),
                "collectors keep no table"
            );
            ev_merged.extend(merged.tick(end));
            let ip = "192.0.2.10".parse().unwrap();
            let (a, b) = (one.aggregate.host(ip, end), merged.aggregate.host(ip, end));
            if let (Some(a), Some(b)) = (a, b) {
                let (ra, rb) = (a.directions[0].rates.pps, b.directions[0].rates.pps);
                assert!(
                    ra.abs_diff(rb) <= ra / 100 + 1,
                    "second {i}: {ra} vs {rb} pps"
                );
            }
        }
        let kinds = |v: &[AttackEvent]| -> Vec<(EventKind, IpAddr, i64)> {
            v.iter()
                .filter(|e| e.event != EventKind::Update)
                .map(|e| (e.event, e.ip, e.time_ms))
                .collect()
        };
        assert_eq!(kinds(&ev_one), kinds(&ev_merged));
        assert_eq!(
            kinds(&ev_merged)
                .iter()
                .filter(|e| e.0 == EventKind::Start)
                .count(),
            1,
            "{ev_merged:?}"
        );
    }
}
