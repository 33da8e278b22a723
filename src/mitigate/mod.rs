//! Mitigate stage: turns attack events into MITIGATOR REST calls.
//!
//! - [`plan`]: the pure planner (desired state, reference counts, owned switches);
//! - [`client`]: the REST client (login, 401/421 handling, retries);
//! - [`state`]: the state file that survives restarts;
//! - this module: the async worker that feeds events to the planner and executes its steps
//!   one at a time, in order, retrying in the background while MITIGATOR is unreachable (an
//!   end is never dropped), and the [`MitigationHandle`] the API reads status from.
//!
//! The worker owns no detection logic and never reads the clock inside the planner: it
//! passes `now` in.

pub mod client;
pub mod config;
pub mod plan;
pub mod state;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::MitigatorConfig;
pub use plan::MitigationStatus;

use crate::clock::system_now_ms;
use crate::metrics::Metrics;
use crate::model::{AttackEvent, EventKind};
use client::{ClientError, MitigatorClient};
use plan::{AttackSpec, Decision, Op, Planner, Step};
use state::StateStore;

/// How many ended attacks `status` still knows.
const MAX_ENDED: usize = 1000;
/// How often restored attacks are checked against their grace period.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum MitigateError {
    #[error("invalid [mitigator] configuration: {}", .0.join("; "))]
    Config(Vec<String>),
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

    /// Every attack the stage knows (live, and the most recent ended ones).
    pub fn all(&self) -> Vec<MitigationStatus> {
        self.planner.lock().all()
    }
}

/// Starts the mitigate worker (call from inside a tokio runtime). Validates `cfg`,
/// restores the state file from `state_dir` (not in dry run) and reconciles it against
/// MITIGATOR before handling new events. The task ends when `shutdown` is cancelled,
/// after saving the state file; a closed `rx` alone does not stop it, so queued
/// switch-offs still get applied.
pub fn spawn(
    cfg: MitigatorConfig,
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<AttackEvent>,
    shutdown: CancellationToken,
) -> Result<(MitigationHandle, JoinHandle<()>), MitigateError> {
    let problems = config::validate(&cfg);
    if !problems.is_empty() {
        return Err(MitigateError::Config(problems));
    }
    let dry_run = cfg.is_dry_run();
    let now = system_now_ms();
    let mut planner = Planner::new(dry_run, MAX_ENDED);
    // A dry run must not read or write the state file: it would claim switches it never
    // touched, and a later real run would switch them off.
    let (client, store, steps) = if dry_run {
        tracing::info!("MITIGATOR dry run: calls are logged, not made");
        (None, None, Vec::new())
    } else {
        let client = MitigatorClient::new(&cfg, metrics.clone())?;
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
                    grace_seconds = cfg.restore_grace_seconds,
                    "restoring mitigation state"
                );
                planner.restore(s, now)
            }
            None => Vec::new(),
        };
        (Some(client), Some(store), steps)
    };
    let planner = Arc::new(Mutex::new(planner));
    let worker = Worker {
        backoff_attempt: 0,
        next_attempt: Instant::now(),
        queue: steps.into(),
        planner: planner.clone(),
        client,
        store,
        metrics,
        cfg,
    };
    worker.persist();
    let jh = tokio::spawn(worker.run(rx, shutdown));
    Ok((MitigationHandle { planner }, jh))
}

struct Worker {
    cfg: MitigatorConfig,
    planner: Arc<Mutex<Planner>>,
    client: Option<MitigatorClient>,
    store: Option<StateStore>,
    metrics: Arc<Metrics>,
    /// Steps in the order they must run; the head is retried until it succeeds.
    queue: VecDeque<Step>,
    backoff_attempt: u32,
    next_attempt: Instant,
}

enum Outcome {
    Done,
    Rejected(ClientError),
    Retry(ClientError),
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<AttackEvent>, shutdown: CancellationToken) {
        let mut rx_open = true;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Take every queued event first, so steps are planned on the newest state.
            while rx_open {
                match rx.try_recv() {
                    Ok(ev) => self.on_event(ev),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => rx_open = false,
                }
            }
            self.gauges();
            if !self.queue.is_empty() && Instant::now() >= self.next_attempt {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = self.run_head() => {}
                }
                continue;
            }
            let wait = if self.queue.is_empty() {
                None
            } else {
                Some(self.next_attempt)
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ev = rx.recv(), if rx_open => match ev {
                    Some(ev) => self.on_event(ev),
                    None => rx_open = false,
                },
                _ = tokio::time::sleep_until(wait.unwrap_or_else(Instant::now)), if wait.is_some() => {}
                _ = tick.tick() => {
                    let grace = (self.cfg.restore_grace_seconds as i64).saturating_mul(1000);
                    let steps = self.planner.lock().expire_restored(system_now_ms(), grace);
                    if !steps.is_empty() {
                        tracing::info!("restored attacks not renewed within the grace period: ending them");
                        self.enqueue(steps);
                    }
                }
            }
        }
        // Whatever is still queued is in the state file (live attacks, owned switches)
        // and is reconciled at the next start.
        self.persist();
        self.gauges();
        tracing::info!(pending = self.queue.len(), "mitigate worker stopped");
    }

    fn on_event(&mut self, ev: AttackEvent) {
        let now = system_now_ms();
        let (tbl, tbl_skipped) = self.cfg.tbl_selection(&ev.top_sources);
        let spec = || AttackSpec {
            id: ev.id.clone(),
            ip: ev.ip,
            policy: self.cfg.policy_for(ev.ip, &ev.hostgroup),
            // Per vector: a vector that appears later adds its countermeasure.
            countermeasures: self.cfg.countermeasures_for_event(&ev),
            tbl: tbl.clone(),
            tbl_ttl: self.cfg.tbl_ttl_seconds,
        };
        let skip_reason = || {
            format!(
                "share of the attack's packets under tbl_min_source_share_percent = {} % \
                 (random or spoofed sources)",
                self.cfg.tbl_min_source_share_percent
            )
        };
        let steps = {
            let mut p = self.planner.lock();
            let steps = match ev.event {
                EventKind::Start => {
                    let s = spec();
                    tracing::info!(attack_id = %s.id, ip = %s.ip, policy = s.policy, countermeasures = ?s.countermeasures, "mitigation requested");
                    p.start(s, now)
                }
                EventKind::Update => {
                    let s = spec();
                    if ev.is_change() {
                        tracing::info!(attack_id = %s.id, countermeasures = ?s.countermeasures, new_vectors = ?ev.new_vectors, "attack changed: mitigation follows its vectors");
                    }
                    p.update(s, now)
                }
                EventKind::End => {
                    tracing::info!(attack_id = %ev.id, "mitigation end requested");
                    p.end(&ev.id, now)
                }
            };
            if ev.event != EventKind::End && self.cfg.tbl_top_sources > 0 {
                if tbl_skipped > 0 {
                    tracing::info!(attack_id = %ev.id, skipped = tbl_skipped, "top sources not blacklisted: {}", skip_reason());
                }
                p.note_tbl_skipped(&ev.id, tbl_skipped, skip_reason());
            }
            steps
        };
        self.enqueue(steps);
        self.persist();
    }

    fn enqueue(&mut self, steps: Vec<Step>) {
        self.queue.extend(steps);
        self.gauges();
    }

    fn gauges(&self) {
        self.metrics
            .mitigation_pending_ops
            .set(self.queue.len() as i64);
        self.metrics
            .mitigations_active
            .set(self.planner.lock().live_count() as i64);
    }

    fn persist(&self) {
        let Some(store) = &self.store else { return };
        let snap = self.planner.lock().snapshot();
        if let Err(e) = store.save(&snap) {
            tracing::error!(error = %e, "cannot save the mitigation state file");
        }
    }

    async fn run_head(&mut self) {
        let Some(step) = self.queue.front().cloned() else {
            return;
        };
        let outcome = self.execute(&step).await;
        let now = system_now_ms();
        match outcome {
            Outcome::Done => {
                self.queue.pop_front();
                self.backoff_attempt = 0;
                self.planner.lock().step_done(&step, now);
            }
            Outcome::Rejected(e) => {
                self.queue.pop_front();
                self.backoff_attempt = 0;
                tracing::error!(attack_id = step.attack.as_deref().unwrap_or("-"), op = ?step.op, error = %e, "MITIGATOR rejected the call; giving up on it");
                self.planner.lock().step_rejected(&step, e.to_string(), now);
            }
            Outcome::Retry(e) => {
                self.backoff_attempt = self.backoff_attempt.saturating_add(1);
                let d = client::backoff(
                    self.cfg.retry_base_ms,
                    self.cfg.retry_max_ms,
                    self.backoff_attempt,
                );
                self.next_attempt = Instant::now() + d;
                tracing::warn!(attack_id = step.attack.as_deref().unwrap_or("-"), op = ?step.op, error = %e, retry_in_ms = d.as_millis() as u64, pending = self.queue.len(), "MITIGATOR call failed; will retry");
                self.planner.lock().step_failed(&step, e.to_string(), now);
            }
        }
        self.persist();
    }

    async fn execute(&self, step: &Step) -> Outcome {
        if !self.planner.lock().precheck(step) {
            return Outcome::Done;
        }
        let r = match &step.op {
            Op::Engage(k) | Op::Release(k) => self.switch(step, k).await,
            Op::TblAdd {
                policy,
                prefixes,
                ttl,
            } => match &self.client {
                Some(c) => c.tbl_add(*policy, prefixes, *ttl).await.map(|_| {
                    tracing::info!(
                        attack_id = step.attack.as_deref().unwrap_or("-"),
                        policy,
                        count = prefixes.len(),
                        ttl,
                        "top sources added to MITIGATOR's temporary blacklist"
                    );
                }),
                None => {
                    tracing::info!(
                        attack_id = step.attack.as_deref().unwrap_or("-"),
                        "dry run: would POST tbl/items?policy={policy} {prefixes:?} ttl {ttl}"
                    );
                    Ok(())
                }
            },
        };
        match r {
            Ok(()) => Outcome::Done,
            Err(e) if e.is_permanent() => Outcome::Rejected(e),
            Err(e) => Outcome::Retry(e),
        }
    }

    async fn switch(&self, step: &Step, k: &plan::SwitchKey) -> Result<(), ClientError> {
        let attack_id = step.attack.as_deref().unwrap_or("-");
        let observed = match &self.client {
            Some(c) => c.get_switch(&k.name, k.policy).await?,
            None => {
                // Dry run: assume what flowguard would find on a quiet appliance.
                tracing::debug!("dry run: would GET {}/switch?policy={}", k.name, k.policy);
                matches!(step.op, Op::Release(_))
            }
        };
        let decision = self.planner.lock().decide(&step.op, observed);
        match decision {
            Decision::Put(on) => {
                self.planner.lock().before_put(k, on);
                if on {
                    self.persist();
                }
                match &self.client {
                    Some(c) => {
                        c.put_switch(&k.name, k.policy, on).await?;
                        tracing::info!(attack_id, policy = k.policy, switch = %k.name, on, "MITIGATOR switch {} {}", k.name, if on { "on" } else { "off" });
                    }
                    None => {
                        tracing::info!(attack_id, policy = k.policy, switch = %k.name, on, "dry run: would PUT {}/switch?policy={} {{\"switch\":{}}}", k.name, k.policy, u8::from(on));
                    }
                }
                self.planner.lock().after_put(k, on);
            }
            Decision::Keep(why) => {
                if !observed {
                    self.planner.lock().observed_off(&step.op);
                }
                tracing::debug!(attack_id, policy = k.policy, switch = %k.name, observed, why, "MITIGATOR switch left as it is");
            }
        }
        Ok(())
    }
}
