//! `flowguard run`: builds every component from config and runs them until shutdown.
//!
//! Threads and tasks (see README "Threads and cores"):
//! - one OS thread per collector socket: recvmmsg → decode → apply to the sharded host
//!   table (the hot path; no channels, no per-record allocation);
//! - a tokio task, the ticker: the once-per-second detection pass, aligned to wall-clock
//!   seconds, which sends attack events on a bounded channel to mitigation;
//! - the mitigation task (MITIGATOR client), the external-event task (FastNetMon hook),
//!   and the HTTP API, on a small tokio runtime.
//!
//! Shutdown (SIGINT/SIGTERM or [`Service::shutdown`]) is staged, each stage with its own
//! cancellation token and task tracker, all within [`SHUTDOWN_DEADLINE`]:
//! 1. collectors stop (within their 200 ms receive timeout) and are joined;
//! 2. the ticker and the hook consumer stop, then one last detection pass runs and its
//!    events are queued to mitigation;
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

use crate::clock::system_now_ms;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{AttackEvent, EventKind};
use crate::pipeline::Pipeline;

/// Capacity of the detect → mitigate queue.
pub const EVENT_QUEUE: usize = 4096;
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
    /// Binds every socket and starts every component. Must be called inside a tokio
    /// runtime.
    pub async fn start(cfg: Config) -> anyhow::Result<Service> {
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
        let (ev_tx, ev_rx) = mpsc::channel::<AttackEvent>(EVENT_QUEUE);
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
                start_mitigation(&cfg, metrics.clone(), ev_rx, &mitigate)?,
                None,
            )
        };

        let mut threads = Vec::new();
        for b in bound {
            threads.push(crate::collectors::spawn(
                b,
                pipeline.aggregate.clone(),
                pipeline.aggregate.metrics().clone(),
                stop_collectors.clone(),
            )?);
        }

        // The ticker: one detection pass per wall-clock second (a cluster detector runs
        // its passes as seconds close instead).
        if cfg.cluster.is_none() {
            let (p, tx, m, stop) = (
                pipeline.clone(),
                ev_tx.clone(),
                metrics.clone(),
                detect.stop.clone(),
            );
            detect.tasks.spawn(async move {
                loop {
                    let now = system_now_ms();
                    let next = (now / 1000 + 1) * 1000;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis((next - now).max(1) as u64)) => {}
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
        )
        .await?;

        let state = Arc::new(crate::api::ApiState {
            pipeline: pipeline.clone(),
            metrics: metrics.clone(),
            mitigation,
            mitigator_dry_run: cfg.mitigator.is_dry_run(),
            started_ms: system_now_ms(),
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
        let (p, now) = (self.pipeline.clone(), system_now_ms());
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
) -> anyhow::Result<Option<MitigationView>> {
    let setup = crate::mitigate::Setup {
        mitigator: cfg.mitigator.clone(),
        bgp: cfg.bgp.clone(),
        protected: cfg.protected_prefixes()?,
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
                let events = pipeline.claim(system_now_ms(), claim);
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
}
