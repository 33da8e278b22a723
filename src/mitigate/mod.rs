//! Mitigate stage: turns attack events into MITIGATOR REST calls and BGP routes.
//!
//! - [`plan`]: the pure planner (desired state, reference counts, owned resources);
//! - [`backend`]: the seam every mitigation system sits behind, and the lane that executes
//!   one backend's steps in order, retrying in the background (an end is never dropped);
//! - [`client`] + [`backend::Mitigator`]: MITIGATOR's REST client (login, 401/421
//!   handling, retries) as a backend;
//! - [`route`], [`bgp_config`], [`gobgp`]: BGP routes (blackhole, FlowSpec), their safety
//!   checks, and the GoBGP backend;
//! - [`state`]: the state file that survives restarts;
//! - this module: the async worker that feeds events to the planner and hands its steps
//!   to the backends' lanes, and the [`MitigationHandle`] the API reads status from.
//!
//! The worker owns no detection logic and never reads the clock inside the planner: it
//! passes `now` in.

pub mod backend;
pub mod bgp_config;
pub mod client;
pub mod config;
pub mod gobgp;
pub mod plan;
pub mod route;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use bgp_config::BgpConfig;
pub use config::MitigatorConfig;
pub use plan::MitigationStatus;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::model::{AttackEvent, EventKind};
use backend::{Lane, Shared};
use client::{ClientError, MitigatorClient};
use plan::{AttackSpec, BackendKind, Planner, Step};
use state::StateStore;

/// How many ended attacks `status` still knows.
const MAX_ENDED: usize = 1000;
/// How often restored attacks are checked against their grace period, and time-based
/// escalations are evaluated.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum MitigateError {
    #[error("invalid [mitigator] configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("invalid [bgp] configuration: {}", .0.join("; "))]
    BgpConfig(Vec<String>),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("mitigation state: {0}")]
    State(#[from] state::StateError),
}

/// Read access to the mitigation state, for the API. Cheap to clone.
#[derive(Clone)]
pub struct MitigationHandle {
    planner: Arc<Mutex<Planner>>,
}

impl MitigationHandle {
    /// Mitigation state of one attack (None if unknown), serializable for the API.
    pub fn status(&self, attack_id: &str) -> Option<MitigationStatus> {
        self.planner.lock().status(attack_id)
    }

    /// What the state file would hold now (cluster mode keeps it in a replicated
    /// bucket).
    pub fn snapshot(&self) -> state::PersistedState {
        self.planner.lock().snapshot()
    }

    /// Every attack the stage knows (live, and the most recent ended ones).
    pub fn all(&self) -> Vec<MitigationStatus> {
        self.planner.lock().all()
    }
}

/// Capacity of the queue of attack events into the mitigate stage (from detection, or in
/// cluster mode from the event stream).
pub const EVENT_QUEUE: usize = 4096;

/// Everything the mitigate stage is configured with.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub mitigator: MitigatorConfig,
    pub bgp: BgpConfig,
    /// `[networks] protected`: no route is ever announced outside these.
    pub protected: Vec<IpNet>,
    /// Where the worker and its lanes read "now" (grace periods, retries, escalation).
    pub clock: Clock,
}

/// Starts the mitigate worker with MITIGATOR only (no BGP action configured).
pub fn spawn(
    cfg: MitigatorConfig,
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<AttackEvent>,
    shutdown: CancellationToken,
) -> Result<(MitigationHandle, JoinHandle<()>), MitigateError> {
    spawn_with(
        Setup {
            mitigator: cfg,
            ..Default::default()
        },
        state_dir,
        metrics,
        rx,
        shutdown,
    )
}

/// Starts the mitigate worker (call from inside a tokio runtime). Validates the
/// configuration, restores the state file from `state_dir` (unless every backend is a
/// dry run) and reconciles it against MITIGATOR and the BGP daemon before handling new
/// events. The task ends when `shutdown` is cancelled, after saving the state file; a
/// closed `rx` alone does not stop it, so queued switch-offs and withdrawals still get
/// applied.
pub fn spawn_with(
    setup: Setup,
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<AttackEvent>,
    shutdown: CancellationToken,
) -> Result<(MitigationHandle, JoinHandle<()>), MitigateError> {
    spawn_guarded(setup, state_dir, metrics, rx, shutdown, None)
}

/// [`spawn_with`], every backend write first waiting for `barrier` (cluster mode: the
/// state in the replicated bucket, see [`backend::WriteBarrier`]).
pub fn spawn_guarded(
    setup: Setup,
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<AttackEvent>,
    shutdown: CancellationToken,
    barrier: Option<backend::WriteBarrier>,
) -> Result<(MitigationHandle, JoinHandle<()>), MitigateError> {
    let Setup {
        mitigator: cfg,
        bgp,
        protected,
        clock,
    } = setup;
    let problems = config::validate(&cfg);
    if !problems.is_empty() {
        return Err(MitigateError::Config(problems));
    }
    let problems = bgp_config::validate(&bgp);
    if !problems.is_empty() {
        return Err(MitigateError::BgpConfig(problems));
    }
    let mit_dry = cfg.is_dry_run();
    // Without any BGP action there is nothing to announce: count it as a dry run, so it
    // neither touches the state file nor needs a gobgpd.
    let bgp_dry = bgp.is_dry_run() || !bgp.enabled();
    let all_dry = mit_dry && bgp_dry;
    let now = clock.now_ms();
    let mut planner = Planner::new(all_dry, MAX_ENDED);
    planner.set_dry(BackendKind::Mitigator, mit_dry);
    planner.set_dry(BackendKind::Bgp, bgp_dry);
    planner.set_max_routes(bgp.max_routes);
    if mit_dry {
        tracing::info!("MITIGATOR dry run: calls are logged, not made");
    }
    if bgp.enabled() && bgp_dry {
        tracing::info!("BGP dry run: routes are logged, not announced");
    }
    let client = if mit_dry {
        None
    } else {
        Some(MitigatorClient::new(&cfg, metrics.clone())?)
    };
    // A dry run must not read or write the state file: it would claim switches it never
    // touched, and a later real run would switch them off. With one backend real, the
    // file is used and the planner keeps the dry one's resources out of it.
    let (store, steps) = if all_dry {
        (None, Vec::new())
    } else {
        let store = StateStore::new(state_dir);
        let saved = match store.load() {
            Ok(s) => s,
            Err(e @ state::StateError::Corrupt { .. }) => {
                let to = store.quarantine(now)?;
                tracing::error!(error = %e, moved_to = %to.display(), "mitigation state file unreadable; starting empty");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let steps = match saved {
            Some(s) => {
                tracing::info!(
                    attacks = s.attacks.len(),
                    owned = s.owned.len(),
                    owned_routes = s.owned_routes.len(),
                    grace_seconds = cfg.restore_grace_seconds,
                    "restoring mitigation state"
                );
                planner.restore(s, now)
            }
            None => Vec::new(),
        };
        (Some(store), steps)
    };
    let planner = Arc::new(Mutex::new(planner));
    let lanes: [Arc<Lane>; 2] =
        std::array::from_fn(|_| Arc::new(Lane::with_cap(cfg.max_queued_operations)));
    let shared = Arc::new(
        Shared::new(planner.clone(), store, metrics.clone(), lanes.to_vec())?.with_barrier(barrier),
    );
    let lane_tasks = vec![
        tokio::spawn(backend::run_lane(
            backend::Mitigator {
                cfg: cfg.clone(),
                client,
            },
            lanes[BackendKind::Mitigator.index()].clone(),
            shared.clone(),
            clock.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(backend::run_lane(
            gobgp::Gobgp::new(bgp.clone(), metrics.clone()),
            lanes[BackendKind::Bgp.index()].clone(),
            shared.clone(),
            clock.clone(),
            shutdown.clone(),
        )),
    ];
    let worker = Worker {
        planner: planner.clone(),
        shared,
        lanes,
        lane_tasks,
        metrics,
        cfg,
        bgp,
        bgp_dry,
        protected,
        last_reassert_ms: now,
        clock,
    };
    worker.dispatch(steps);
    // The restored state is saved first thing in the worker (off the runtime, like every
    // save); the lanes save again before any switch they turn on.
    let jh = tokio::spawn(worker.run(rx, shutdown));
    Ok((MitigationHandle { planner }, jh))
}

struct Worker {
    cfg: MitigatorConfig,
    bgp: BgpConfig,
    bgp_dry: bool,
    protected: Vec<IpNet>,
    planner: Arc<Mutex<Planner>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    /// One queue per backend, indexed by [`BackendKind::index`].
    lanes: [Arc<Lane>; 2],
    lane_tasks: Vec<JoinHandle<()>>,
    last_reassert_ms: i64,
    clock: Clock,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<AttackEvent>, shutdown: CancellationToken) {
        self.shared.persist().await;
        let mut rx_open = true;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.gauges();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Events already queued (an end sent just before the stop, say) go
                    // into the planner and the state file: none is lost.
                    while let Ok(ev) = rx.try_recv() {
                        self.on_event(ev).await;
                    }
                    break;
                }
                ev = rx.recv(), if rx_open => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => rx_open = false,
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
        // The lanes stop on the same token; whatever is still queued is in the state
        // file (live attacks, owned resources) and is reconciled at the next start.
        for t in self.lane_tasks.drain(..) {
            let _ = t.await;
        }
        self.shared.persist().await;
        self.gauges();
        tracing::info!(pending = self.pending(), "mitigate worker stopped");
    }

    async fn on_tick(&mut self) {
        let now = self.clock.now_ms();
        let grace = (self.cfg.restore_grace_seconds as i64).saturating_mul(1000);
        let mut steps = {
            let mut p = self.planner.lock();
            let expired = p.expire_restored(now, grace);
            if !expired.is_empty() {
                tracing::info!("restored attacks not renewed within the grace period: ending them");
            }
            let mut s = expired;
            s.extend(p.escalate(now));
            s
        };
        // gobgpd keeps API-added routes only in memory: after its restart they are gone.
        // Look the announced ones up now and then and put back what is missing; only when
        // the lane is idle, so a down daemon does not pile up lookups behind the retry.
        let every = (self.bgp.reassert_interval_seconds as i64).saturating_mul(1000);
        if !self.bgp_dry
            && now - self.last_reassert_ms >= every
            && self.lanes[BackendKind::Bgp.index()].is_empty()
        {
            self.last_reassert_ms = now;
            steps.extend(self.planner.lock().reassert_routes());
        }
        if !steps.is_empty() {
            self.dispatch(steps);
            self.shared.persist().await;
        }
    }

    fn spec(&self, ev: &AttackEvent) -> AttackSpec {
        let routes = if self.bgp.enabled() {
            route::plan(ev, &route::vectors_of(ev), &self.bgp, &self.protected)
        } else {
            Vec::new()
        };
        AttackSpec {
            id: ev.id.clone(),
            ip: ev.ip,
            policy: self.cfg.policy_for(ev.ip, &ev.hostgroup),
            // Per vector: a vector that appears later adds its countermeasure.
            countermeasures: self.cfg.countermeasures_for_event(ev),
            tbl: self.cfg.tbl_selection(&ev.top_sources).0,
            tbl_ttl: self.cfg.tbl_ttl_seconds,
            bps: ev.bps,
            routes,
        }
    }

    async fn on_event(&mut self, ev: AttackEvent) {
        let now = self.clock.now_ms();
        let steps = match ev.event {
            EventKind::Start => {
                let s = self.spec(&ev);
                for r in &s.routes {
                    if let Some(why) = r.refused {
                        tracing::warn!(attack_id = %s.id, route = %r.route.describe(), reason = why.as_str(), "BGP route refused");
                        self.metrics
                            .bgp_refusals
                            .with_label_values(&[why.as_str()])
                            .inc();
                    }
                }
                tracing::info!(attack_id = %s.id, ip = %s.ip, policy = s.policy, countermeasures = ?s.countermeasures, routes = s.routes.len(), "mitigation requested");
                self.planner.lock().start(s, now)
            }
            EventKind::Update => {
                let s = self.spec(&ev);
                if ev.is_change() {
                    tracing::info!(attack_id = %s.id, countermeasures = ?s.countermeasures, new_vectors = ?ev.new_vectors, "attack changed: mitigation follows its vectors");
                }
                self.planner.lock().update(s, now)
            }
            EventKind::End => {
                tracing::info!(attack_id = %ev.id, "mitigation end requested");
                self.planner.lock().end(&ev.id, now)
            }
        };
        if ev.event != EventKind::End && self.cfg.tbl_top_sources > 0 {
            let skipped = self.cfg.tbl_selection(&ev.top_sources).1;
            let reason = format!(
                "share of the attack's packets under tbl_min_source_share_percent = {} % \
                 (random or spoofed sources)",
                self.cfg.tbl_min_source_share_percent
            );
            if skipped > 0 {
                tracing::info!(attack_id = %ev.id, skipped, "top sources not blacklisted: {reason}");
            }
            self.planner
                .lock()
                .note_tbl_skipped(&ev.id, skipped, reason);
        }
        self.dispatch(steps);
        self.shared.persist().await;
    }

    /// Hands each step to its backend's lane, in order.
    fn dispatch(&self, steps: Vec<Step>) {
        let mut by: [Vec<Step>; 2] = Default::default();
        for s in steps {
            by[s.op.backend().index()].push(s);
        }
        for (lane, steps) in self.lanes.iter().zip(by) {
            crate::metrics::CapReached {
                cap: crate::metrics::Cap::MitigationQueue,
                n: lane.push(steps),
            }
            .emit(&self.metrics);
        }
        self.gauges();
    }

    fn pending(&self) -> usize {
        self.shared.pending()
    }

    fn gauges(&self) {
        let mut p = self.planner.lock();
        for r in p.take_refusals() {
            self.metrics
                .bgp_refusals
                .with_label_values(&[r.as_str()])
                .inc();
        }
        self.metrics
            .mitigation_pending_ops
            .set(self.pending() as i64);
        self.metrics.mitigations_active.set(p.live_count() as i64);
        self.metrics.bgp_routes_wanted.set(p.routes_wanted() as i64);
    }
}
