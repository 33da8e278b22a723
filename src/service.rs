//! `flowguard run`: builds every component from config and runs them until shutdown.
//!
//! Threads and tasks (see README "Threads and cores"):
//! - one OS thread per collector socket: recvmmsg → decode → apply to the sharded host
//!   table, or on a cluster collector to the per-second deltas (the hot path; no
//!   channels, no per-record allocation);
//! - a tokio task, the ticker: once per second of the service's [`Clock`], aligned to
//!   whole seconds, it runs the detection pass on a blocking thread (a pass that overruns
//!   skips the seconds it missed) and sends attack events on a bounded channel to
//!   mitigation;
//! - the mitigation task (MITIGATOR client), the external-event task (FastNetMon hook),
//!   and the HTTP API, on a small tokio runtime.
//!
//! Shutdown (SIGINT/SIGTERM or [`Service::shutdown`]) is staged, each stage with its own
//! cancellation token and task tracker, all within [`SHUTDOWN_DEADLINE`]:
//! 1. collectors stop (within their 200 ms receive timeout) and are joined;
//! 2. the ticker and the hook consumer stop, then (not in cluster mode) one last
//!    detection pass runs and its events are queued to mitigation;
//! 3. mitigation takes every event still queued into its planner, persists the state
//!    file (what is in flight and queued is in it, and is reconciled at the next start)
//!    and stops its backends' lanes; a step in flight is abandoned, not finished;
//! 4. the API closes.
//!
//! Cancelling [`Service::shutdown_token`] instead stops every stage at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{AttackEvent, EventKind};
use crate::pipeline::Pipeline;

/// Capacity of the hook endpoint → detect queue (full → 503, the hook spools).
pub const HOOK_QUEUE: usize = 1024;
/// How long a staged shutdown may take in all; a stage still running when it is over is
/// cancelled with the rest.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// One shutdown stage: the token that stops its tasks and the tracker that waits for them.
struct Stage {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Stage {
    fn under(parent: &CancellationToken) -> Stage {
        Stage {
            stop: parent.child_token(),
            tasks: TaskTracker::new(),
        }
    }

    /// Cancels the stage and waits for its tasks until `deadline`; true if they ended.
    async fn stop(&self, deadline: tokio::time::Instant) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok()
    }
}

pub struct Service {
    pub api_addr: SocketAddr,
    pub collector_addrs: Vec<SocketAddr>,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    /// Where every shell of this service reads "now".
    pub clock: Clock,
    shutdown: CancellationToken,
    stop_collectors: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The ticker, the hook consumer and the spool drainer.
    detect: Stage,
    mitigate: Stage,
    api: Stage,
    /// For the last detection pass's events.
    ev_tx: mpsc::Sender<AttackEvent>,
    /// Whether shutdown runs a last detection pass: not in cluster mode, where passes
    /// run per closed second and per owned partition (a pass over everything here
    /// would report partitions other detectors own).
    last_pass: bool,
}

/// The second boundary of the pass after the one at `last_ms`, given that it finished at
/// `now_ms`: the next boundary, or, when the pass ran past it, the first boundary not yet
/// past (a slow pass skips the seconds it overran instead of running back to back; a
/// boundary reached exactly is not past, so it runs at once).
fn next_pass(last_ms: i64, now_ms: i64) -> i64 {
    (last_ms + 1000).max((now_ms + 999).div_euclid(1000) * 1000)
}

/// Forwards detection events to mitigation. Start, end and updates that change an
/// attack (a new vector needs its countermeasure) wait for room (an end must never be
/// lost); periodic updates are dropped and counted when the queue is full.
async fn forward(events: Vec<AttackEvent>, tx: &mpsc::Sender<AttackEvent>, m: &Metrics) {
    for e in events {
        match e.event {
            EventKind::Update if e.is_change() => {
                tracing::info!(
                    attack = %e.id, ip = %e.ip, attack_type = %e.attack_type,
                    previous_attack_type = ?e.previous_attack_type, new_vectors = ?e.new_vectors,
                    "attack changed"
                );
                if tx.send(e).await.is_err() {
                    m.events_dropped.with_label_values(&["closed"]).inc();
                }
            }
            EventKind::Start | EventKind::End => {
                tracing::info!(
                    attack = %e.id, ip = %e.ip, direction = %e.direction, attack_type = %e.attack_type,
                    protocol = %e.protocol, pps = e.pps, bps = e.bps, hostgroup = %e.hostgroup,
                    "attack {}", if e.event == EventKind::Start { "started" } else { "ended" }
                );
                if tx.send(e).await.is_err() {
                    m.events_dropped.with_label_values(&["closed"]).inc();
                }
            }
            EventKind::Update => {
                if let Err(err) = tx.try_send(e) {
                    m.events_dropped.with_label_values(&["update"]).inc();
                    if matches!(err, mpsc::error::TrySendError::Full(_)) {
                        crate::metrics::QueueFull {
                            queue: crate::metrics::Queue::AttackEvents,
                        }
                        .emit(m);
                    }
                }
            }
        }
    }
}

impl Service {
    /// Binds every socket and starts every component on the wall clock. Must be called
    /// inside a tokio runtime.
    pub async fn start(cfg: Config) -> anyhow::Result<Service> {
        Service::start_with(cfg, Clock::system()).await
    }

    /// [`Service::start`] with every shell reading `clock` (tests: [`Clock::tokio`],
    /// so paused time drives the ticker, the collectors' arrival times and mitigation).
    pub async fn start_with(cfg: Config, clock: Clock) -> anyhow::Result<Service> {
        let metrics = Arc::new(Metrics::new());
        metrics.pretouch(
            &cfg.collectors
                .iter()
                .map(|c| {
                    (
                        c.label(),
                        c.protocol == crate::config::CollectorProtocol::Sflow,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let mut pipeline = Pipeline::new(&cfg, metrics.clone())?;
        if let Some(c) = cfg
            .cluster
            .as_ref()
            .filter(|c| c.has(crate::cluster::Role::Collector))
        {
            // Cluster collector: records leave as per-second deltas; the detectors (this
            // node too, if it is one) merge them, so a local table would count them twice.
            pipeline.enable_deltas(&cfg, c.max_hosts_per_second, false);
        }
        let pipeline = Arc::new(pipeline);
        let shutdown = CancellationToken::new();
        let stop_collectors = Arc::new(AtomicBool::new(false));
        let (detect, mitigate, api) = (
            Stage::under(&shutdown),
            Stage::under(&shutdown),
            Stage::under(&shutdown),
        );

        let bound = crate::collectors::bind_all(&cfg.collectors)?;
        let collector_addrs = bound.iter().map(|b| b.local).collect();
        let listener = tokio::net::TcpListener::bind(cfg.api.listen)
            .await
            .map_err(|e| anyhow::anyhow!("api.listen {}: {e}", cfg.api.listen))?;
        let api_addr = listener.local_addr()?;

        // detect → mitigate
        let (ev_tx, ev_rx) = mpsc::channel::<AttackEvent>(crate::mitigate::EVENT_QUEUE);
        // In cluster mode the events go to the cluster's event stream and only the
        // elected controller runs mitigation.
        let (mitigation, cluster_router) = if cfg.cluster.is_some() {
            let view = crate::cluster::node::start(
                &cfg,
                pipeline.clone(),
                metrics.clone(),
                ev_rx,
                mitigate.stop.clone(),
                &mitigate.tasks,
                clock.clone(),
            )
            .await?;
            let v = view.clone();
            let mv: MitigationView = Arc::new(move |id: &str| {
                let h = v.mitigation.lock().clone();
                h.and_then(|h| h.status(id))
                    .and_then(|s| serde_json::to_value(s).ok())
            });
            (Some(mv), Some(crate::cluster::node::router(view)))
        } else {
            (
                start_mitigation(&cfg, metrics.clone(), ev_rx, &mitigate, clock.clone())?,
                None,
            )
        };

        let mut threads = Vec::new();
        for b in bound {
            threads.push(crate::collectors::spawn(
                b,
                pipeline.aggregate.clone(),
                pipeline.aggregate.metrics().clone(),
                clock.clone(),
                stop_collectors.clone(),
            )?);
        }

        // The ticker: one detection pass per wall-clock second (a cluster detector runs
        // its passes as seconds close instead).
        if cfg.cluster.is_none() {
            let (p, tx, m, stop, clock) = (
                pipeline.clone(),
                ev_tx.clone(),
                metrics.clone(),
                detect.stop.clone(),
                clock.clone(),
            );
            detect.tasks.spawn(async move {
                let mut next = (clock.now_ms() / 1000 + 1) * 1000;
                loop {
                    let now = clock.now_ms();
                    if next - now > 1000 {
                        // The wall clock stepped back (NTP): follow it rather than
                        // wait, with no pass, until it is back where it was.
                        next = (now / 1000 + 1) * 1000;
                    }
                    if now < next {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis((next - now) as u64)) => {}
                        }
                    } else if stop.is_cancelled() {
                        break;
                    }
                    let p2 = p.clone();
                    let events = match tokio::task::spawn_blocking(move || p2.tick(next)).await {
                        Ok(ev) => ev,
                        Err(e) => {
                            tracing::error!(error = %e, "detection pass failed");
                            continue;
                        }
                    };
                    forward(events, &tx, &m).await;
                    next = next_pass(next, clock.now_ms());
                }
            });
        }

        // External detectors (FastNetMon hook): endpoint + spool → claims → events.
        let hook_router = start_hooks(
            &cfg,
            pipeline.clone(),
            metrics.clone(),
            ev_tx.clone(),
            &detect,
            clock.clone(),
        )
        .await?;

        let state = Arc::new(crate::api::ApiState {
            pipeline: pipeline.clone(),
            metrics: metrics.clone(),
            mitigation,
            mitigator_dry_run: cfg.mitigator.is_dry_run(),
            started_ms: clock.now_ms(),
            clock: clock.clone(),
        });
        let mut app = crate::api::router(state).merge(hook_router);
        if let Some(r) = cluster_router {
            app = app.merge(r);
        }
        let stop = api.stop.clone();
        api.tasks.spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "api server failed");
            }
        });
        tracing::info!(api = %api_addr, "flowguard running");
        Ok(Service {
            api_addr,
            collector_addrs,
            pipeline,
            metrics,
            clock,
            shutdown,
            stop_collectors,
            threads,
            detect,
            mitigate,
            api,
            ev_tx,
            last_pass: cfg.cluster.is_none(),
        })
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops the stages in order (see the module doc) within [`SHUTDOWN_DEADLINE`].
    pub async fn shutdown(self) {
        self.shutdown_within(SHUTDOWN_DEADLINE).await
    }

    pub async fn shutdown_within(mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        // 1. No new records.
        self.stop_collectors.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let joined = tokio::task::spawn_blocking(move || t.join());
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                tracing::warn!("shutdown: a collector did not stop in time");
            }
        }
        // 2. The ticker and the hook consumer stop; one last pass over what arrived.
        if !self.detect.stop(deadline).await {
            tracing::warn!("shutdown: detection did not stop in time");
        }
        let (p, now) = (self.pipeline.clone(), self.clock.now_ms());
        let last = self
            .last_pass
            .then(|| tokio::task::spawn_blocking(move || p.tick((now / 1000 + 1) * 1000)));
        if let Some(Ok(Ok(events))) = match last {
            Some(l) => Some(tokio::time::timeout_at(deadline, l).await),
            None => None,
        } {
            let fwd = forward(events, &self.ev_tx, &self.metrics);
            if tokio::time::timeout_at(deadline, fwd).await.is_err() {
                tracing::warn!("shutdown: the last pass's events did not fit in time");
            }
        }
        // 3. Mitigation takes what is queued, persists it, stops.
        if !self.mitigate.stop(deadline).await {
            tracing::warn!("shutdown: mitigation did not stop in time");
        }
        // 4. The API last, so it answers while the rest stops.
        if !self.api.stop(deadline).await {
            tracing::warn!("shutdown: the API did not close in time");
        }
        self.shutdown.cancel();
    }
}

use crate::api::MitigationView;

/// Starts the mitigate stage; returns the API's view of mitigation state per attack.
fn start_mitigation(
    cfg: &Config,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<AttackEvent>,
    stage: &Stage,
    clock: Clock,
) -> anyhow::Result<Option<MitigationView>> {
    let setup = crate::mitigate::Setup {
        mitigator: cfg.mitigator.clone(),
        bgp: cfg.bgp.clone(),
        protected: cfg.protected_prefixes()?,
        clock,
    };
    let (handle, join) = crate::mitigate::spawn_with(
        setup,
        cfg.state.dir.clone(),
        metrics,
        rx,
        stage.stop.clone(),
    )?;
    stage.tasks.spawn(async move {
        if let Err(e) = join.await {
            tracing::error!(error = %e, "mitigation task failed");
        }
    });
    Ok(Some(Arc::new(move |id: &str| {
        handle.status(id).and_then(|s| serde_json::to_value(s).ok())
    })))
}

/// Starts the FastNetMon hook: spool drainer, event consumer; returns the endpoint's
/// router. External events become claims on the same attacks flowguard's own detection
/// manages, so a hook event and our own detection of one flood are one attack.
async fn start_hooks(
    cfg: &Config,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    ev_tx: mpsc::Sender<AttackEvent>,
    stage: &Stage,
    clock: Clock,
) -> anyhow::Result<axum::Router> {
    use crate::hooks::{spool, ExternalEvent, HookAction};
    let (tx, mut rx) = mpsc::channel::<ExternalEvent>(HOOK_QUEUE);
    {
        let (m, stop) = (metrics.clone(), stage.stop.clone());
        stage.tasks.spawn(async move {
            // Several detector instances reporting one victim: one claim, ended by the last.
            let mut book = crate::hooks::claims::ClaimBook::default();
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = rx.recv() => match ev { Some(e) => e, None => break },
                };
                let (attack_type, protocol) = ev.classified();
                tracing::info!(event = %ev.summary(), "external detector event");
                if !book.admit_counted(&ev, &m) {
                    continue;
                }
                let claim = crate::detect::Claim {
                    key: crate::aggregate::HostKey {
                        ip: ev.ip,
                        dir: ev.direction,
                    },
                    ban: ev.action != HookAction::Unban,
                    attack_type,
                    protocol,
                    pps: ev.pps,
                    group: 0,
                };
                let events = pipeline.claim(clock.now_ms(), claim);
                forward(events, &ev_tx, &m).await;
            }
        });
    }
    let dir = spool::spool_dir(&cfg.state.dir);
    // Whatever hooks spooled while the service was down goes first.
    let n = spool::drain_spool(&dir, &tx, &metrics).await;
    if n > 0 {
        tracing::info!(events = n, "delivered spooled hook events");
    }
    stage.tasks.spawn(spool::run_spool_drainer(
        dir,
        tx.clone(),
        metrics.clone(),
        stage.stop.clone(),
    ));
    Ok(crate::hooks::endpoint::router(
        crate::hooks::endpoint::HookEndpoint {
            token: cfg.api.token.clone(),
            tx,
            metrics,
            max_body_bytes: cfg.api.max_body_bytes,
            hostgroups: crate::hooks::advanced::Hostgroups::from_config(cfg),
        },
    ))
}

/// `flowguard run`: start, wait for SIGINT/SIGTERM, shut down.
pub fn run_blocking(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("flowguard-rt")
        .build()?;
    rt.block_on(async move {
        let svc = Service::start(cfg).await?;
        wait_for_signal().await;
        tracing::info!("shutting down");
        svc.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::HostKey;
    use crate::detect::Claim;
    use crate::model::{AttackType, Direction, Protocol};

    #[tokio::test]
    async fn a_periodic_update_that_finds_the_queue_full_counts_a_queue_full_drop() {
        let cfg = Config::from_toml_str(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            "#,
        )
        .unwrap();
        let m = Arc::new(Metrics::new());
        let p = Pipeline::new(&cfg, m.clone()).unwrap();
        let start = p.claim(
            1_800_000_000_000,
            Claim {
                key: HostKey {
                    ip: "192.0.2.1".parse().unwrap(),
                    dir: Direction::Incoming,
                },
                ban: true,
                attack_type: AttackType::UdpFlood,
                protocol: Protocol::Udp,
                pps: 1,
                group: 0,
            },
        );
        let mut update = start[0].clone();
        update.event = EventKind::Update;
        let (tx, _rx) = mpsc::channel(1);
        forward(start, &tx, &m).await;
        let drops = |q: &str| m.queue_full_drops.with_label_values(&[q]).get();
        assert_eq!(drops("attack_events"), 0);
        forward(vec![update], &tx, &m).await;
        assert_eq!(drops("attack_events"), 1);
        assert_eq!(m.events_dropped.with_label_values(&["update"]).get(), 1);
    }

    #[test]
    fn a_pass_that_overruns_a_second_skips_it() {
        let b = 1_800_000_000_000;
        assert_eq!(next_pass(b, b + 300), b + 1000);
        assert_eq!(
            next_pass(b, b + 1000),
            b + 1000,
            "a boundary reached is due now"
        );
        assert_eq!(next_pass(b, b + 1300), b + 2000);
        assert_eq!(next_pass(b, b + 3999), b + 4000);
    }

    /// Waits, in real time, for work done on other threads (the collector, a pass on a
    /// blocking thread) while tokio's paused clock stands still: yielding keeps this
    /// task ready, so the runtime is never idle and never advances time on its own.
    async fn settle(what: &str, mut done: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The whole service on paused time (`Clock::tokio`): the collector stamps records
    /// with the paused "now", the ticker's pass runs when the test moves time to the next
    /// second, and the attack ends `ban_time_seconds` after its rates fell under the
    /// threshold: 25 seconds of the service's time, none of them waited for.
    // Linux only, as the collectors' thread tests whose datagram builder it uses.
    #[cfg(target_os = "linux")]
    #[tokio::test(start_paused = true)]
    async fn on_paused_time_an_attack_starts_at_the_next_pass_and_ends_after_its_ban_time() {
        let state = tempfile::tempdir().unwrap();
        let cfg = Config::from_toml_str(&format!(
            r#"
            [api]
            listen = "127.0.0.1:0"
            [[collector]]
            name = "nf"
            protocol = "netflow"
            listen = "127.0.0.1:0"
            threads = 1
            [networks]
            protected = ["127.0.0.16/28"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 1000
            ban_time_seconds = 10
            [state]
            dir = "{}"
            "#,
            state.path().display()
        ))
        .unwrap();
        // 0.2 s into a second: the ticker's first pass is due 0.8 s later.
        let base = 1_800_000_000_200;
        let svc = Service::start_with(cfg, Clock::tokio(base)).await.unwrap();
        let passes = || svc.metrics.detection_pass_seconds.get_sample_count();
        let attacks = || svc.pipeline.detection.attacks();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // 10 datagrams × 30 records × 100 packets to one host, all in second `base`.
        for seq in 0..10 {
            let d = crate::collectors::thread_tests::v5([127, 0, 0, 20], 30, 100, seq * 30);
            tx.send_to(&d, svc.collector_addrs[0]).unwrap();
        }
        let records = || {
            svc.metrics
                .flow_records
                .with_label_values(&["nf", "v5"])
                .get()
        };
        settle("300 records", || records() == 300).await;
        assert_eq!(svc.clock.now_ms(), base, "time moved by itself");
        assert_eq!((passes(), attacks().len()), (0, 0));

        tokio::time::advance(Duration::from_millis(800)).await;
        settle("the first pass", || passes() == 1).await;
        let a = attacks().pop().expect("an attack at the first pass");
        assert_eq!(a.ip.to_string(), "127.0.0.20");
        assert_eq!(
            a.start_ms, 1_800_000_001_000,
            "started at the pass's second"
        );
        assert_eq!(a.end_ms, None);

        // One pass per second from here; nothing more arrives, so the average falls
        // under 1000 pps within the 5 s window, and 10 s after that the attack ends.
        let mut ended = None;
        for n in 2..=25 {
            tokio::time::advance(Duration::from_secs(1)).await;
            settle(&format!("pass {n} (at {})", svc.clock.now_ms()), || {
                passes() >= n
            })
            .await;
            assert_eq!(passes(), n);
            if let Some(end) = attacks()[0].end_ms {
                ended = Some((n, end, attacks()[0].last_over_ms));
                break;
            }
        }
        let (n, end, last_over) = ended.expect("the attack ended within 25 s");
        assert_eq!(
            end - last_over,
            10_000,
            "ended ban_time after the last second over"
        );
        assert!(n > 10, "ended after {n} passes");
        assert_eq!(svc.clock.now_ms(), base + 800 + (n as i64 - 1) * 1000);
        svc.shutdown().await;
    }
}
