//! The seam between the planner and the systems that mitigate: a [`Backend`] observes,
//! writes and removes [`Resource`]s of one kind, and one [`Lane`] per backend executes
//! that backend's steps one at a time, in order, retrying the head in the background
//! while the backend is unreachable (never dropping it).
//!
//! Lanes are independent: MITIGATOR being down (the link in front of it saturated, say)
//! never holds back a blackhole route, and the other way round. The decision logic
//! (observe, then [`Planner::decide`], then write) is here once, for every backend.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{ClientError, MitigatorClient};
use super::config::MitigatorConfig;
use super::plan::{BackendKind, Decision, Op, Planner, Resource, Seen, Step};
use super::state::{PersistedState, StateStore, StateWriter};
use crate::clock::Clock;
use crate::metrics::Metrics;

/// A failed step: retried in the background unless `permanent` (the backend refused it
/// for good, e.g. a 4xx from MITIGATOR).
#[derive(Debug, Clone)]
pub struct StepError {
    pub message: String,
    pub permanent: bool,
}

impl StepError {
    pub fn retry(message: String) -> StepError {
        StepError {
            message,
            permanent: false,
        }
    }
    pub fn reject(message: String) -> StepError {
        StepError {
            message,
            permanent: true,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ClientError> for StepError {
    fn from(e: ClientError) -> StepError {
        StepError {
            permanent: e.is_permanent(),
            message: e.to_string(),
        }
    }
}

/// One mitigation system. A new backend implements this and gets the planner's
/// reference counts, ownership, state file and reconciliation for free.
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;
    /// Log the writes instead of making them.
    fn dry_run(&self) -> bool;
    /// Pause before the `attempt`-th retry of a failed step.
    fn backoff(&self, attempt: u32) -> Duration;
    /// The write in words, for logs (`switch tcp on policy 1`, `announce blackhole ...`).
    fn describe(&self, r: &Resource, on: bool) -> String;
    /// Is the resource in place?
    fn observe(&self, r: &Resource) -> impl Future<Output = Result<Seen, StepError>> + Send;
    /// Put it in place (`on`) or remove it.
    fn write(&self, r: &Resource, on: bool) -> impl Future<Output = Result<(), StepError>> + Send;
    /// A one-shot operation of this backend (MITIGATOR's temporary blacklist).
    fn act(&self, op: &Op, attack: &str) -> impl Future<Output = Result<(), StepError>> + Send;
}

/// What a backend write waits for, given the state as it will be once the write is
/// made: cluster mode makes that state durable in its replicated bucket (with
/// compare-and-set, so a deposed controller fails here) before any switch or route
/// changes. An error holds the write back; the step is retried like a failed call.
pub type WriteBarrier = Arc<
    dyn Fn(PersistedState) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// What every lane shares: the planner and the state file.
pub struct Shared {
    pub planner: Arc<Mutex<Planner>>,
    /// The state file's writer thread (fsyncs stay off the runtime).
    pub store: Option<StateWriter>,
    /// None outside cluster mode.
    barrier: Option<WriteBarrier>,
    /// Snapshots from several lanes reach the writer in the order they were taken.
    save: Mutex<()>,
    metrics: Arc<Metrics>,
    /// Every backend's queue, for the pending-operations gauge.
    lanes: Vec<Arc<Lane>>,
}

impl Shared {
    pub fn new(
        planner: Arc<Mutex<Planner>>,
        store: Option<StateStore>,
        metrics: Arc<Metrics>,
        lanes: Vec<Arc<Lane>>,
    ) -> Result<Shared, super::state::StateError> {
        let store = store.map(StateWriter::spawn).transpose()?;
        Ok(Shared {
            planner,
            store,
            barrier: None,
            save: Mutex::new(()),
            metrics,
            lanes,
        })
    }

    /// Steps queued in all lanes; also sets the gauge, so it reads 0 as soon as the last
    /// step is done.
    pub fn pending(&self) -> usize {
        let n: usize = self.lanes.iter().map(|l| l.len()).sum();
        self.metrics.mitigation_pending_ops.set(n as i64);
        n
    }

    pub fn with_barrier(mut self, barrier: Option<WriteBarrier>) -> Shared {
        self.barrier = barrier;
        self
    }

    /// Waits for the write barrier, if any, with the planner's state as of now.
    async fn barrier(&self) -> Result<(), StepError> {
        let Some(b) = &self.barrier else {
            return Ok(());
        };
        let snap = self.planner.lock().snapshot();
        b(snap).await.map_err(StepError::retry)
    }

    /// Saves the planner's state and waits until it is on disk (the write runs on the
    /// state writer's thread, not on the runtime).
    pub async fn persist(&self) {
        let Some(store) = &self.store else { return };
        let written = {
            let _g = self.save.lock();
            let snap = self.planner.lock().snapshot();
            store.submit(snap)
        };
        written.await;
    }
}

/// The queue of one backend's steps.
pub struct Lane {
    queue: Mutex<VecDeque<Step>>,
    wake: Notify,
    /// `[mitigator] max_queued_operations`: past this length a new step is coalesced
    /// into a queued one where it can be.
    cap: usize,
}

impl Default for Lane {
    fn default() -> Lane {
        Lane::with_cap(usize::MAX)
    }
}

impl Lane {
    pub fn with_cap(cap: usize) -> Lane {
        Lane {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            cap,
        }
    }

    /// Queues `steps`; returns how many were coalesced into queued steps (the queue was
    /// at its cap).
    ///
    /// Coalescing loses nothing: an engage or release is decided when it runs, from the
    /// planner's desired state (which the state file holds), so the newest step for a
    /// resource stands for every earlier one still queued; temporary-blacklist additions
    /// of one attack and policy merge their prefixes. The head is never replaced (it may
    /// be in flight). A step with nothing to merge into is queued past the cap: the queue
    /// is then bounded by the distinct resources and attacks, which the active-attack cap
    /// bounds.
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) -> u64 {
        let mut q = self.queue.lock();
        let n = q.len();
        let mut coalesced = 0;
        for s in steps {
            if q.len() >= self.cap && coalesce(&mut q, &s) {
                coalesced += 1;
            } else {
                q.push_back(s);
            }
        }
        if q.len() > n || coalesced > 0 {
            self.wake.notify_one();
        }
        coalesced
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Merges `s` into a queued step after the head, if one is for the same resource (or the
/// same attack's blacklist of the same policy).
fn coalesce(q: &mut VecDeque<Step>, s: &Step) -> bool {
    for queued in q.iter_mut().skip(1) {
        match (&mut queued.op, &s.op) {
            (Op::Engage(a) | Op::Release(a), Op::Engage(b) | Op::Release(b)) if a == b => {
                // The newest op stands for the earlier ones; each attack is accounted
                // once per step it was owed (`also` keeps repeats).
                let mut also = std::mem::take(&mut queued.also);
                also.extend(queued.attack.take());
                also.extend(s.also.iter().cloned());
                *queued = Step {
                    attack: s.attack.clone(),
                    op: s.op.clone(),
                    also,
                };
                return true;
            }
            (
                Op::TblAdd {
                    policy: p,
                    prefixes,
                    ttl,
                },
                Op::TblAdd {
                    policy: p2,
                    prefixes: more,
                    ttl: t2,
                },
            ) if p == p2 && queued.attack == s.attack => {
                for x in more {
                    if !prefixes.contains(x) {
                        prefixes.push(x.clone());
                    }
                }
                *ttl = (*ttl).max(*t2);
                queued.also.extend(s.attack.iter().cloned());
                queued.also.extend(s.also.iter().cloned());
                return true;
            }
            _ => {}
        }
    }
    false
}

enum Outcome {
    Done,
    Rejected(StepError),
    Retry(StepError),
}

/// Executes `lane`'s steps with `b` until `shutdown`; whatever is still queued then is
/// in the state file (live attacks, owned resources) and is reconciled at the next start.
pub async fn run_lane<B: Backend>(
    b: B,
    lane: Arc<Lane>,
    shared: Arc<Shared>,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let name = b.kind().as_str();
    loop {
        let woken = lane.wake.notified();
        let head = lane.queue.lock().front().cloned();
        let Some(step) = head else {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = woken => continue,
            }
        };
        let outcome = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            o = execute(&b, &step, &shared) => o,
        };
        let now = clock.now_ms();
        let attack = step.attack.as_deref().unwrap_or("-");
        match outcome {
            Outcome::Done => {
                lane.queue.lock().pop_front();
                shared.pending();
                attempt = 0;
                shared.planner.lock().step_done(&step, now);
            }
            Outcome::Rejected(e) => {
                lane.queue.lock().pop_front();
                shared.pending();
                attempt = 0;
                tracing::error!(backend = name, attack_id = attack, op = ?step.op, error = %e, "the backend rejected the call; giving up on it");
                shared
                    .planner
                    .lock()
                    .step_rejected(&step, e.to_string(), now);
            }
            Outcome::Retry(e) => {
                attempt = attempt.saturating_add(1);
                let d = b.backoff(attempt);
                tracing::warn!(backend = name, attack_id = attack, op = ?step.op, error = %e, retry_in_ms = d.as_millis() as u64, pending = lane.len(), "call failed; will retry");
                shared.planner.lock().step_failed(&step, e.to_string(), now);
                shared.persist().await;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(d) => {}
                }
                continue;
            }
        }
        shared.persist().await;
    }
    tracing::info!(
        backend = name,
        pending = lane.len(),
        "mitigation backend stopped"
    );
}

async fn execute<B: Backend>(b: &B, step: &Step, shared: &Shared) -> Outcome {
    if !shared.planner.lock().precheck(step) {
        return Outcome::Done;
    }
    let r = match &step.op {
        Op::Engage(k) | Op::Release(k) => resource(b, step, k, shared).await,
        op => {
            if !b.dry_run() {
                if let Err(e) = shared.barrier().await {
                    return Outcome::Retry(e);
                }
            }
            b.act(op, step.attack.as_deref().unwrap_or("-")).await
        }
    };
    match r {
        Ok(()) => Outcome::Done,
        Err(e) if e.permanent => Outcome::Rejected(e),
        Err(e) => Outcome::Retry(e),
    }
}

async fn resource<B: Backend>(
    b: &B,
    step: &Step,
    k: &Resource,
    shared: &Shared,
) -> Result<(), StepError> {
    let attack_id = step.attack.as_deref().unwrap_or("-");
    let backend = b.kind().as_str();
    let seen = if b.dry_run() {
        // Dry run: assume what flowguard would find on a quiet system.
        if matches!(step.op, Op::Release(_)) {
            Seen::Present
        } else {
            Seen::Absent
        }
    } else {
        b.observe(k).await?
    };
    let decision = shared.planner.lock().decide(&step.op, seen);
    match decision {
        Decision::Put(on) => {
            shared.planner.lock().before_put(k, on);
            if on {
                shared.persist().await;
            }
            let what = b.describe(k, on);
            if b.dry_run() {
                tracing::info!(backend, attack_id, on, "dry run: would {what}");
            } else {
                // The intent (the resource owned before a switch-on) is durable, and this
                // process still allowed to act, before the call.
                shared.barrier().await?;
                b.write(k, on).await?;
                tracing::info!(backend, attack_id, on, "{what}");
            }
            shared.planner.lock().after_put(k, on);
        }
        Decision::Keep(why) => {
            shared.planner.lock().observed(&step.op, seen);
            tracing::debug!(backend, attack_id, resource = ?k, ?seen, why, "left as it is");
        }
    }
    Ok(())
}

/// MITIGATOR behind the [`Backend`] seam: switches are resources, the temporary
/// blacklist a one-shot operation.
pub struct Mitigator {
    pub cfg: MitigatorConfig,
    /// None in dry run.
    pub client: Option<MitigatorClient>,
}

fn switch_of(r: &Resource) -> Result<&super::plan::SwitchKey, StepError> {
    match r {
        Resource::Switch(k) => Ok(k),
        Resource::Route(_) => Err(StepError::reject("not a MITIGATOR switch".into())),
    }
}

impl Backend for Mitigator {
    fn kind(&self) -> BackendKind {
        BackendKind::Mitigator
    }

    fn dry_run(&self) -> bool {
        self.client.is_none()
    }

    fn backoff(&self, attempt: u32) -> Duration {
        super::client::backoff(self.cfg.retry_base_ms, self.cfg.retry_max_ms, attempt)
    }

    fn describe(&self, r: &Resource, on: bool) -> String {
        match r {
            Resource::Switch(k) => format!(
                "PUT {}/switch?policy={} {{\"switch\":{}}} (MITIGATOR switch {} {})",
                k.name,
                k.policy,
                u8::from(on),
                k.name,
                if on { "on" } else { "off" }
            ),
            Resource::Route(_) => String::new(),
        }
    }

    async fn observe(&self, r: &Resource) -> Result<Seen, StepError> {
        let k = switch_of(r)?;
        let Some(c) = &self.client else {
            return Ok(Seen::Absent);
        };
        let on = c.get_switch(&k.name, k.policy).await?;
        Ok(if on { Seen::Present } else { Seen::Absent })
    }

    async fn write(&self, r: &Resource, on: bool) -> Result<(), StepError> {
        let k = switch_of(r)?;
        if let Some(c) = &self.client {
            c.put_switch(&k.name, k.policy, on).await?;
        }
        Ok(())
    }

    async fn act(&self, op: &Op, attack_id: &str) -> Result<(), StepError> {
        let Op::TblAdd {
            policy,
            prefixes,
            ttl,
        } = op
        else {
            return Ok(());
        };
        match &self.client {
            Some(c) => {
                c.tbl_add(*policy, prefixes, *ttl).await?;
                tracing::info!(
                    attack_id,
                    policy,
                    count = prefixes.len(),
                    ttl,
                    "top sources added to MITIGATOR's temporary blacklist"
                );
            }
            None => tracing::info!(
                attack_id,
                "dry run: would POST tbl/items?policy={policy} {prefixes:?} ttl {ttl}"
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mitigate::plan::Resource;
    use crate::mitigate::state::SwitchKey;

    fn sw(name: &str) -> Resource {
        Resource::Switch(SwitchKey {
            policy: 1,
            name: name.into(),
        })
    }

    fn step(attack: &str, op: Op) -> Step {
        Step {
            attack: Some(attack.into()),
            op,
            also: Vec::new(),
        }
    }

    #[test]
    fn at_the_cap_the_newest_step_for_a_resource_replaces_the_queued_one() {
        let lane = Lane::with_cap(1);
        let n = lane.push([
            step("a", Op::Engage(sw("toggle"))),
            step("a", Op::Engage(sw("tcp"))),
            step("a", Op::Release(sw("tcp"))),
            step("b", Op::Engage(sw("tcp"))),
        ]);
        assert_eq!(n, 2);
        let q: Vec<Step> = lane.queue.lock().iter().cloned().collect();
        assert_eq!(q.len(), 2);
        // The head (maybe in flight) is left alone.
        assert_eq!(q[0], step("a", Op::Engage(sw("toggle"))));
        assert_eq!(q[1].op, Op::Engage(sw("tcp")));
        assert_eq!(q[1].attack.as_deref(), Some("b"));
        // a was owed two steps for tcp: both are accounted by the one left.
        assert_eq!(q[1].also, vec!["a".to_string(), "a".to_string()]);
        // A release of the head's resource has nothing after the head to merge into.
        assert_eq!(lane.push([step("a", Op::Release(sw("toggle")))]), 0);
        assert_eq!(lane.len(), 3);
    }

    #[test]
    fn under_the_cap_nothing_is_coalesced() {
        let lane = Lane::with_cap(10);
        let n = lane.push([
            step("a", Op::Engage(sw("tcp"))),
            step("a", Op::Release(sw("tcp"))),
            step("b", Op::Engage(sw("tcp"))),
        ]);
        assert_eq!((n, lane.len()), (0, 3));
    }
}
