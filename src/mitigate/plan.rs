//! The mitigation planner: the pure core of the mitigate stage. No I/O, no clock.
//!
//! It holds the desired state (live attacks → policy, countermeasures and BGP routes),
//! derives the reference count of every [`Resource`] from it, and remembers which
//! resources flowguard itself put in place ("owned"). A resource is a MITIGATOR switch or
//! a BGP route; the planner treats both alike and the worker hands each to its backend.
//! Events become ordered [`Step`]s; the worker executes a step by observing the resource
//! (GET the switch, look the route up) and asking [`Planner::decide`] whether to write
//! it, so every decision is taken against the *current* desired state and the *observed*
//! resource:
//!
//! - a resource is put in place only when it is absent; if it was already there, flowguard
//!   does not own it and will never remove it (an operator's countermeasure or route
//!   survives);
//! - a resource is removed only when flowguard owns it and no live attack needs it any
//!   more (two attacks on one policy: the policy stays on until the second ends);
//! - countermeasures go on after the policy and off before it;
//! - an attack's countermeasures only grow while it lasts: a Start or Update that names a
//!   countermeasure more (a new vector of the attack) engages it, and none is released
//!   before the attack ends (a vector that fades and returns does not flap its switch).
//!
//! Routes can be conditional ([`Escalation`]): wanted only while the attack's bits/s is
//! above a level, or once it has lasted long enough. [`Planner::escalate`] re-evaluates
//! them; the route cap (`max_routes`) is checked whenever a route becomes wanted.
//!
//! Restart: [`Planner::restore`] takes the state file's attacks as live ("restored") and
//! emits steps that re-assert them and release owned resources nothing needs. Detection
//! starts empty after a restart, so a restored attack that is not renewed by a Start (same
//! id, or same address) or ended by an End within the grace period is ended by
//! [`Planner::expire_restored`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use serde::Serialize;

use super::route::{Escalation, Refusal, Route, RoutePlan};
pub use super::state::SwitchKey;
use super::state::{PersistedAttack, PersistedState};

/// The policy protection switch's name.
pub const TOGGLE: &str = "toggle";

/// Something a backend puts in place for attacks and removes when none needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// A MITIGATOR switch.
    Switch(SwitchKey),
    /// A route in the BGP daemon.
    Route(Route),
}

impl Resource {
    /// Which backend handles it.
    pub fn backend(&self) -> BackendKind {
        match self {
            Resource::Switch(_) => BackendKind::Mitigator,
            Resource::Route(_) => BackendKind::Bgp,
        }
    }
}

/// The backends, as the planner knows them (the order of [`BackendKind::ALL`] is the
/// index of each in the worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Mitigator,
    Bgp,
}

impl BackendKind {
    pub const ALL: [BackendKind; 2] = [BackendKind::Mitigator, BackendKind::Bgp];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Mitigator => "mitigator",
            BackendKind::Bgp => "bgp",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a start asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackSpec {
    pub id: String,
    pub ip: IpAddr,
    pub policy: u32,
    /// API names, in the order they are switched on.
    pub countermeasures: Vec<String>,
    /// Prefixes for the temporary blacklist (empty = none).
    pub tbl: Vec<String>,
    pub tbl_ttl: u32,
    /// The attack's bits/s in the event (escalation by rate).
    pub bps: u64,
    /// BGP routes it asks for, each with its condition (empty = no BGP action).
    pub routes: Vec<RoutePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Make sure the resource is in place: observe it, then add it if it is absent.
    Engage(Resource),
    /// Remove what flowguard put in place and nothing needs: observe, then remove.
    Release(Resource),
    /// Add prefixes to a policy's temporary blacklist.
    TblAdd {
        policy: u32,
        prefixes: Vec<String>,
        ttl: u32,
    },
}

impl Op {
    pub fn backend(&self) -> BackendKind {
        match self {
            Op::Engage(r) | Op::Release(r) => r.backend(),
            Op::TblAdd { .. } => BackendKind::Mitigator,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The attack the step is for (None: reconciliation of an orphan resource).
    pub attack: Option<String>,
    pub op: Op,
    /// Attacks whose steps for the same resource were coalesced into this one (the lane
    /// was at its cap): the step counts as done, failed or rejected for them too.
    pub also: Vec<String>,
}

/// A resource as observed in its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Absent,
    Present,
    /// Present, but not flowguard's (a route without flowguard's marker community).
    Foreign,
}

/// The answer to "the resource was observed in this state: write it?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Put(bool),
    Keep(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    Active,
    Ending,
    Ended,
}

/// One planned route of an attack and where it stands.
#[derive(Debug, Clone)]
struct RouteRun {
    plan: RoutePlan,
    /// Wanted now (its condition holds, nothing refused it).
    on: bool,
    /// Refused: by the plan's checks, or by the route cap when it became wanted.
    refused: Option<Refusal>,
}

#[derive(Debug, Clone)]
struct Record {
    spec: AttackSpec,
    phase: Phase,
    started_ms: i64,
    updated_ms: i64,
    /// Set for attacks taken from the state file until a Start or End renews them.
    restored_at: Option<i64>,
    /// Steps queued for this attack and not finished.
    outstanding: u32,
    /// Last failure of one of its steps; cleared by the next success.
    retrying: Option<String>,
    /// A step that the backend rejected for good (4xx).
    rejected: Option<String>,
    routes: Vec<RouteRun>,
    /// Top sources of the latest blacklist selection left out, and why.
    tbl_skipped: Option<(usize, String)>,
}

impl Record {
    fn new(spec: AttackSpec, phase: Phase, started_ms: i64, now: i64) -> Record {
        let routes = spec
            .routes
            .iter()
            .map(|p| RouteRun {
                plan: p.clone(),
                on: false,
                refused: p.refused,
            })
            .collect();
        Record {
            spec,
            phase,
            started_ms,
            updated_ms: now,
            restored_at: None,
            outstanding: 0,
            retrying: None,
            rejected: None,
            routes,
            tbl_skipped: None,
        }
    }

    fn live(&self) -> bool {
        matches!(self.phase, Phase::Pending | Phase::Active)
    }

    /// Policy protection first, then countermeasures in configured order, then the
    /// routes wanted now.
    fn keys(&self) -> Vec<Resource> {
        let mut v = vec![Resource::Switch(SwitchKey {
            policy: self.spec.policy,
            name: TOGGLE.into(),
        })];
        for c in &self.spec.countermeasures {
            let k = Resource::Switch(SwitchKey {
                policy: self.spec.policy,
                name: c.clone(),
            });
            if !v.contains(&k) {
                v.push(k);
            }
        }
        for r in self.routes.iter().filter(|r| r.on) {
            let k = Resource::Route(r.plan.route.clone());
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    }
}

/// One route of an attack, as the API shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct RouteStatus {
    /// `blackhole` or `flowspec`.
    pub kind: &'static str,
    pub prefix: String,
    pub route: String,
    /// `waiting` (its escalation condition does not hold), `pending` (being announced),
    /// `announced`, `failed_retrying` (the BGP daemon is unreachable or failing; retried
    /// in the background), `withdrawing`, `withdrawn`, `refused` (see `reason`),
    /// `not_ours` (the same route was already there, not flowguard's: left alone),
    /// `dry_run`.
    pub state: &'static str,
    pub reason: Option<String>,
}

/// One MITIGATOR switch of an attack (the policy protection, then each countermeasure),
/// as the API shows it: what flowguard wants for this attack and what MITIGATOR has
/// acknowledged for that switch. A switch is one resource shared by every attack on its
/// policy, so two attacks show the same acknowledged state for it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SwitchStatus {
    /// `toggle` (the policy's protection) or a countermeasure's API name.
    pub name: String,
    pub policy: u32,
    /// `on` while the attack is live, `off` after it.
    pub wanted: &'static str,
    /// `pending` (not confirmed on yet), `on` (read back or written on), `not_ours` (on,
    /// but someone else switched it on: flowguard leaves it on), `failed_retrying`
    /// (MITIGATOR unreachable or failing; retried in the background), `failed`
    /// (MITIGATOR rejected the call for good), `switching_off`, `off`, `dry_run`.
    pub state: &'static str,
    /// The last error of this switch's calls (for the two failed states).
    pub error: Option<String>,
    /// Why the state is not simply what is wanted (e.g. kept on for another attack).
    pub note: Option<String>,
}

/// Mitigation state of one attack, as the API shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct MitigationStatus {
    pub attack_id: String,
    pub ip: IpAddr,
    pub policy: u32,
    pub countermeasures: Vec<String>,
    /// `pending` (switches being set), `active`, `ending` (being released), `ended`,
    /// `dry_run` (no calls are made), `failed_retrying` (MITIGATOR unreachable or
    /// failing; retried in the background), `failed` (MITIGATOR rejected a call).
    pub state: String,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// Taken from the state file after a restart and not renewed yet.
    pub restored: bool,
    pub last_error: Option<String>,
    /// Per switch, in the order they are switched on.
    pub switches: Vec<SwitchStatus>,
    /// BGP routes of the attack (none when no BGP action applies to it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteStatus>,
    /// Top sources the latest blacklist selection left out (0 when none or off).
    pub tbl_skipped_sources: usize,
    /// Why they were left out.
    pub tbl_skip_reason: Option<String>,
}

pub struct Planner {
    records: BTreeMap<String, Record>,
    owned: BTreeSet<Resource>,
    /// Resources observed in place (or written) and not removed since; for the status.
    present: BTreeSet<Resource>,
    /// Resources found in place but not flowguard's.
    foreign: BTreeSet<Resource>,
    /// Last error of a resource's step, cleared by its next success.
    errors: BTreeMap<Resource, String>,
    /// Resources whose last step the backend rejected for good (their error is in
    /// `errors`); cleared by the next success or retry.
    rejected: BTreeSet<Resource>,
    /// Ended attacks in the order they ended; the oldest are forgotten past `max_ended`.
    ended: VecDeque<String>,
    max_ended: usize,
    dry_run: bool,
    /// Backends in dry run while another one is real: their resources are neither
    /// written to the state file nor taken from it (a dry run must not claim what it never
    /// touched); owned resources of theirs found in the file are carried through as they are.
    dry: [bool; 2],
    carried: Vec<Resource>,
    max_routes: usize,
    /// Refusals not yet counted in the metrics.
    refusals: Vec<Refusal>,
}

impl Planner {
    pub fn new(dry_run: bool, max_ended: usize) -> Planner {
        Planner {
            records: BTreeMap::new(),
            owned: BTreeSet::new(),
            present: BTreeSet::new(),
            foreign: BTreeSet::new(),
            errors: BTreeMap::new(),
            rejected: BTreeSet::new(),
            ended: VecDeque::new(),
            max_ended,
            dry_run,
            dry: [dry_run; 2],
            carried: Vec::new(),
            max_routes: usize::MAX,
            refusals: Vec::new(),
        }
    }

    /// Which backends are dry runs (when not all are: see `dry`).
    pub fn set_dry(&mut self, kind: BackendKind, dry: bool) {
        self.dry[kind.index()] = dry;
    }

    /// The most routes wanted at once; more are refused (and counted).
    pub fn set_max_routes(&mut self, n: usize) {
        self.max_routes = n;
    }

    /// Refusals since the last call, for the metrics.
    pub fn take_refusals(&mut self) -> Vec<Refusal> {
        std::mem::take(&mut self.refusals)
    }

    /// Live attacks that need `key`.
    pub fn refcount(&self, key: &Resource) -> usize {
        self.records
            .values()
            .filter(|r| r.live() && r.keys().contains(key))
            .count()
    }

    pub fn owns(&self, key: &Resource) -> bool {
        self.owned.contains(key)
    }

    pub fn owned(&self) -> impl Iterator<Item = &Resource> {
        self.owned.iter()
    }

    /// Attacks whose mitigation is wanted (pending or active).
    pub fn live_count(&self) -> usize {
        self.records.values().filter(|r| r.live()).count()
    }

    /// Distinct routes wanted now.
    pub fn routes_wanted(&self) -> usize {
        self.needed()
            .iter()
            .filter(|k| matches!(k, Resource::Route(_)))
            .count()
    }

    fn needed(&self) -> BTreeSet<Resource> {
        self.records
            .values()
            .filter(|r| r.live())
            .flat_map(|r| r.keys())
            .collect()
    }

    /// Releases for keys needed before and not after: countermeasures before policies,
    /// routes after the switches (another backend: the order between them is moot).
    fn releases(before: &BTreeSet<Resource>, after: &BTreeSet<Resource>) -> Vec<Resource> {
        let mut v: Vec<Resource> = before.difference(after).cloned().collect();
        v.sort_by_key(|k| match k {
            Resource::Switch(s) => (0, s.policy, s.name == TOGGLE, s.name.clone()),
            Resource::Route(_) => (1, 0, false, String::new()),
        });
        v
    }

    /// Re-evaluates which routes of live attacks are wanted at `now`, checking the route
    /// cap for every route that becomes wanted. Records are visited in id order, so when
    /// the cap is reached the outcome does not depend on hash order.
    fn evaluate_routes(&mut self, now: i64) {
        // First what is no longer wanted, so the room it leaves counts below.
        for r in self.records.values_mut() {
            let live = r.live();
            let (bps, started) = (r.spec.bps, r.started_ms);
            for run in &mut r.routes {
                if !(live && run.plan.when.wanted(bps, started, now)) {
                    run.on = false;
                    if run.refused == Some(Refusal::RouteCap) {
                        run.refused = None;
                    }
                }
            }
        }
        let mut wanted: BTreeSet<Route> = self
            .records
            .values()
            .filter(|r| r.live())
            .flat_map(|r| r.routes.iter().filter(|x| x.on))
            .map(|x| x.plan.route.clone())
            .collect();
        for r in self.records.values_mut() {
            let live = r.live();
            let (bps, started) = (r.spec.bps, r.started_ms);
            for run in &mut r.routes {
                if run.on
                    || run.plan.refused.is_some()
                    || !(live && run.plan.when.wanted(bps, started, now))
                {
                    continue;
                }
                if wanted.contains(&run.plan.route) || wanted.len() < self.max_routes {
                    wanted.insert(run.plan.route.clone());
                    run.on = true;
                    run.refused = None;
                } else if run.refused.is_none() {
                    // Counted once per route and attack, not on every re-evaluation.
                    run.refused = Some(Refusal::RouteCap);
                    self.refusals.push(Refusal::RouteCap);
                }
            }
        }
    }

    /// Steps from the needed set `before` to the current one: engages in the order of
    /// the records' keys (`first` first), each for the first attack that needs it;
    /// releases for `release_owner`. Counts each step as outstanding for its attack.
    fn transition(
        &mut self,
        before: &BTreeSet<Resource>,
        first: Option<&str>,
        release_owner: Option<&str>,
        now: i64,
    ) -> Vec<Step> {
        let after = self.needed();
        let mut order: Vec<&Record> = Vec::new();
        if let Some(f) = first.and_then(|f| self.records.get(f)) {
            order.push(f);
        }
        order.extend(
            self.records
                .values()
                .filter(|r| Some(r.spec.id.as_str()) != first),
        );
        let mut seen = BTreeSet::new();
        let mut steps = Vec::new();
        for r in order.into_iter().filter(|r| r.live()) {
            for k in r.keys() {
                if !before.contains(&k) && after.contains(&k) && seen.insert(k.clone()) {
                    steps.push(Step {
                        attack: Some(r.spec.id.clone()),
                        also: Vec::new(),
                        op: Op::Engage(k),
                    });
                }
            }
        }
        steps.extend(Self::releases(before, &after).into_iter().map(|k| Step {
            attack: release_owner.map(str::to_string),
            also: Vec::new(),
            op: Op::Release(k),
        }));
        let mut per: BTreeMap<String, u32> = BTreeMap::new();
        for s in &steps {
            if let Some(a) = &s.attack {
                *per.entry(a.clone()).or_default() += 1;
            }
        }
        for (id, n) in per {
            self.bump(&id, n, now);
        }
        steps
    }

    fn bump(&mut self, id: &str, n: u32, now: i64) {
        if let Some(r) = self.records.get_mut(id) {
            r.outstanding += n;
            r.updated_ms = now;
            if r.outstanding == 0 {
                Self::settle_phase(r);
            }
        }
    }

    fn settle_phase(r: &mut Record) {
        r.phase = match r.phase {
            Phase::Pending => Phase::Active,
            Phase::Ending => Phase::Ended,
            p => p,
        };
    }

    fn mark_ended(&mut self, id: &str) {
        self.ended.retain(|e| e != id);
        self.ended.push_back(id.to_string());
        while self.ended.len() > self.max_ended {
            if let Some(old) = self.ended.pop_front() {
                if self.records.get(&old).is_some_and(|r| !r.live()) {
                    self.records.remove(&old);
                }
            }
        }
    }

    /// An attack starts (or a restored one is renewed).
    pub fn start(&mut self, spec: AttackSpec, now: i64) -> Vec<Step> {
        let id = spec.id.clone();
        if let Some(r) = self.records.get_mut(&id) {
            if r.live() {
                // A repeated Start renews a restored attack; its switches and routes are
                // already wanted, so only new blacklist entries (and escalations by the
                // new rate) can come of it.
                r.restored_at = None;
                r.updated_ms = now;
                r.spec.bps = spec.bps;
                let before = self.needed();
                self.grow(&spec);
                self.evaluate_routes(now);
                let mut steps = self.transition(&before, Some(&id), Some(&id), now);
                let tbl = self.tbl_steps(&spec);
                self.bump(&id, tbl.len() as u32, now);
                steps.extend(tbl);
                return steps;
            }
        }
        let before = self.needed();
        // After a restart detection begins anew and gives the same attack a new id:
        // a restored attack on the same address is superseded by it.
        let superseded: Vec<String> = self
            .records
            .iter()
            .filter(|(k, r)| {
                **k != id && r.live() && r.restored_at.is_some() && r.spec.ip == spec.ip
            })
            .map(|(k, _)| k.clone())
            .collect();
        for s in &superseded {
            if let Some(r) = self.records.get_mut(s) {
                r.phase = Phase::Ended;
                r.updated_ms = now;
            }
            self.mark_ended(s);
        }
        self.records.insert(
            id.clone(),
            Record::new(spec.clone(), Phase::Pending, now, now),
        );
        self.evaluate_routes(now);
        let mut steps = self.transition(&before, Some(&id), None, now);
        let tbl = self.tbl_steps(&spec);
        self.bump(&id, tbl.len() as u32, now);
        steps.extend(tbl);
        steps
    }

    /// The blacklist step for a live attack; the caller counts it as outstanding.
    fn tbl_steps(&self, spec: &AttackSpec) -> Vec<Step> {
        if spec.tbl.is_empty() {
            return Vec::new();
        }
        let policy = match self.records.get(&spec.id) {
            Some(r) => r.spec.policy,
            None => return Vec::new(),
        };
        vec![Step {
            attack: Some(spec.id.clone()),
            op: Op::TblAdd {
                policy,
                prefixes: spec.tbl.clone(),
                ttl: spec.tbl_ttl,
            },
            also: Vec::new(),
        }]
    }

    /// Adds to the live record of `spec`'s id the countermeasures and routes it lacks
    /// (in `spec`'s order); the caller's [`Self::transition`] engages what is newly needed.
    fn grow(&mut self, spec: &AttackSpec) {
        let Some(r) = self.records.get_mut(&spec.id) else {
            return;
        };
        for c in &spec.countermeasures {
            if !r.spec.countermeasures.contains(c) {
                r.spec.countermeasures.push(c.clone());
            }
        }
        for p in &spec.routes {
            if !r.routes.iter().any(|x| x.plan.route == p.route) {
                r.spec.routes.push(p.clone());
                r.routes.push(RouteRun {
                    plan: p.clone(),
                    on: false,
                    refused: p.refused,
                });
            }
        }
    }

    /// Records how many top sources the latest blacklist selection of attack `id` left out
    /// and why (shown in its status).
    pub fn note_tbl_skipped(&mut self, id: &str, skipped: usize, reason: String) {
        if let Some(r) = self.records.get_mut(id) {
            r.tbl_skipped = (skipped > 0).then_some((skipped, reason));
        }
    }

    /// New top sources, rates and vectors for a live attack (Update events): blacklist
    /// entries, countermeasures and routes it names more (a new vector; engaged, never
    /// released before the end), and routes whose escalation condition changed with the
    /// rate.
    pub fn update(&mut self, spec: AttackSpec, now: i64) -> Vec<Step> {
        match self.records.get_mut(&spec.id) {
            Some(r) if r.live() => {
                r.spec.bps = spec.bps;
                let before = self.needed();
                self.grow(&spec);
                self.evaluate_routes(now);
                let mut steps = self.transition(&before, Some(&spec.id), Some(&spec.id), now);
                let tbl = self.tbl_steps(&spec);
                self.bump(&spec.id, tbl.len() as u32, now);
                steps.extend(tbl);
                steps
            }
            _ => Vec::new(),
        }
    }

    /// Time-based escalation (and routes the cap held back that now fit): call once a
    /// second or so.
    pub fn escalate(&mut self, now: i64) -> Vec<Step> {
        let before = self.needed();
        self.evaluate_routes(now);
        self.transition(&before, None, None, now)
    }

    /// Engage steps for every route flowguard announced and still wants: the BGP daemon
    /// may have lost them (it was restarted) and the engage re-adds what is missing.
    pub fn reassert_routes(&self) -> Vec<Step> {
        self.needed()
            .into_iter()
            .filter(|k| matches!(k, Resource::Route(_)) && self.owned.contains(k))
            .map(|k| Step {
                attack: None,
                also: Vec::new(),
                op: Op::Engage(k),
            })
            .collect()
    }

    /// An attack ends. Unknown or already ended attacks produce nothing.
    pub fn end(&mut self, id: &str, now: i64) -> Vec<Step> {
        if !self.records.get(id).is_some_and(Record::live) {
            return Vec::new();
        }
        let before = self.needed();
        if let Some(r) = self.records.get_mut(id) {
            r.phase = Phase::Ending;
            r.restored_at = None;
            for run in &mut r.routes {
                run.on = false;
            }
        }
        // What the cap held back for other attacks may fit now.
        self.evaluate_routes(now);
        let steps = self.transition(&before, None, Some(id), now);
        self.bump(id, 0, now);
        if self
            .records
            .get(id)
            .is_some_and(|r| r.phase == Phase::Ended)
        {
            self.mark_ended(id);
        }
        steps
    }

    /// Ends restored attacks nobody renewed within `grace_ms`.
    pub fn expire_restored(&mut self, now: i64, grace_ms: i64) -> Vec<Step> {
        let due: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| r.live() && r.restored_at.is_some_and(|t| now - t >= grace_ms))
            .map(|(k, _)| k.clone())
            .collect();
        due.iter().flat_map(|id| self.end(id, now)).collect()
    }

    /// Loads the state file's content (at start) and returns the reconciliation steps:
    /// re-assert every restored attack's switches and routes, release owned ones nothing
    /// needs.
    pub fn restore(&mut self, st: PersistedState, now: i64) -> Vec<Step> {
        for a in st.attacks {
            let id = a.id.clone();
            let routes = if self.dry[BackendKind::Bgp.index()] {
                Vec::new()
            } else {
                a.routes
            };
            let spec = AttackSpec {
                id: a.id,
                ip: a.ip,
                policy: a.policy,
                countermeasures: a.countermeasures,
                tbl: Vec::new(),
                tbl_ttl: 0,
                bps: a.bps,
                routes,
            };
            let mut rec = Record::new(spec, Phase::Pending, a.started_ms, now);
            rec.restored_at = Some(now);
            self.records.insert(id, rec);
        }
        let owned = st
            .owned
            .into_iter()
            .map(Resource::Switch)
            .chain(st.owned_routes.into_iter().map(Resource::Route));
        for k in owned {
            if self.dry[k.backend().index()] {
                self.carried.push(k);
            } else {
                self.owned.insert(k);
            }
        }
        self.evaluate_routes(now);
        let mut steps = Vec::new();
        let mut seen = BTreeSet::new();
        let ids: Vec<String> = self.records.keys().cloned().collect();
        for id in ids {
            let keys = self.records.get(&id).map(Record::keys).unwrap_or_default();
            let mut n = 0;
            for k in keys {
                if seen.insert(k.clone()) {
                    steps.push(Step {
                        attack: Some(id.clone()),
                        also: Vec::new(),
                        op: Op::Engage(k),
                    });
                    n += 1;
                }
            }
            self.bump(&id, n, now);
        }
        let needed = self.needed();
        let orphans: BTreeSet<Resource> = self.owned.difference(&needed).cloned().collect();
        steps.extend(
            Self::releases(&orphans, &BTreeSet::new())
                .into_iter()
                .map(|k| Step {
                    attack: None,
                    also: Vec::new(),
                    op: Op::Release(k),
                }),
        );
        steps
    }

    /// What to write to the state file.
    pub fn snapshot(&self) -> PersistedState {
        let kept = |k: &&Resource| !self.dry[k.backend().index()];
        let owned: Vec<&Resource> = self
            .owned
            .iter()
            .filter(kept)
            .chain(&self.carried)
            .collect();
        PersistedState {
            version: 0,
            attacks: self
                .records
                .values()
                .filter(|r| r.live())
                .map(|r| PersistedAttack {
                    id: r.spec.id.clone(),
                    ip: r.spec.ip,
                    policy: r.spec.policy,
                    countermeasures: r.spec.countermeasures.clone(),
                    started_ms: r.started_ms,
                    bps: r.spec.bps,
                    routes: if self.dry[BackendKind::Bgp.index()] {
                        Vec::new()
                    } else {
                        r.spec.routes.clone()
                    },
                })
                .collect(),
            owned: owned
                .iter()
                .filter_map(|k| match k {
                    Resource::Switch(s) => Some(s.clone()),
                    Resource::Route(_) => None,
                })
                .collect(),
            owned_routes: owned
                .iter()
                .filter_map(|k| match k {
                    Resource::Route(r) => Some(r.clone()),
                    Resource::Switch(_) => None,
                })
                .collect(),
        }
    }

    /// Does the step still need any call? An engage for a resource nothing needs any more
    /// (the attack ended before the step ran) and a release of a resource that is needed
    /// again are dropped without a call.
    pub fn precheck(&self, step: &Step) -> bool {
        match &step.op {
            Op::Engage(k) => self.refcount(k) > 0,
            Op::Release(k) => self.refcount(k) == 0,
            Op::TblAdd { .. } => step
                .attack
                .as_ref()
                .is_some_and(|id| self.records.get(id).is_some_and(Record::live)),
        }
    }

    /// Given the observed state of the step's resource, write it or leave it.
    pub fn decide(&self, op: &Op, seen: Seen) -> Decision {
        match op {
            Op::Engage(k) => {
                if self.refcount(k) == 0 {
                    Decision::Keep("no longer needed")
                } else {
                    match seen {
                        Seen::Absent => Decision::Put(true),
                        Seen::Present if self.owned.contains(k) => {
                            Decision::Keep("already on (flowguard's)")
                        }
                        Seen::Present | Seen::Foreign => {
                            Decision::Keep("already on (not flowguard's: will be left on)")
                        }
                    }
                }
            }
            Op::Release(k) => {
                if self.refcount(k) > 0 {
                    Decision::Keep("still needed by another attack")
                } else if !self.owned.contains(k) {
                    Decision::Keep("not put in place by flowguard: left as it is")
                } else {
                    match seen {
                        Seen::Present => Decision::Put(false),
                        Seen::Absent => Decision::Keep("already off"),
                        Seen::Foreign => Decision::Keep("replaced by someone else: left as it is"),
                    }
                }
            }
            Op::TblAdd { .. } => Decision::Keep("not a switch"),
        }
    }

    /// Record the outcome of a read (and of the write `decide` asked for, if any).
    /// A resource flowguard is about to put in place is owned *before* the write, so that
    /// a crash between the write and the next state-file save cannot leave it on forever.
    pub fn before_put(&mut self, key: &Resource, on: bool) {
        if on {
            self.owned.insert(key.clone());
        }
    }

    pub fn after_put(&mut self, key: &Resource, on: bool) {
        self.foreign.remove(key);
        if on {
            self.present.insert(key.clone());
        } else {
            self.owned.remove(key);
            self.present.remove(key);
        }
    }

    /// The step left the resource as it was observed. A release that found the owned
    /// resource gone (someone else removed it) or replaced: flowguard no longer owns it.
    /// An engage that found an owned one missing would have put it back instead.
    pub fn observed(&mut self, op: &Op, seen: Seen) {
        let (Op::Engage(k) | Op::Release(k)) = op else {
            return;
        };
        match seen {
            Seen::Absent => {
                self.present.remove(k);
                self.foreign.remove(k);
            }
            Seen::Present => {
                self.present.insert(k.clone());
                if !self.owned.contains(k) {
                    self.foreign.insert(k.clone());
                }
            }
            Seen::Foreign => {
                self.present.remove(k);
                self.foreign.insert(k.clone());
            }
        }
        if matches!(op, Op::Release(_)) && seen != Seen::Present && self.refcount(k) == 0 {
            self.owned.remove(k);
        }
    }

    /// The step finished (written, left alone or skipped).
    pub fn step_done(&mut self, step: &Step, now: i64) {
        self.finish(step, now, None);
    }

    /// The backend rejected the step for good; it is dropped.
    pub fn step_rejected(&mut self, step: &Step, err: String, now: i64) {
        self.finish(step, now, Some(err));
    }

    fn finish(&mut self, step: &Step, now: i64, rejected: Option<String>) {
        if let Op::Engage(k) | Op::Release(k) = &step.op {
            match &rejected {
                Some(e) => {
                    self.errors.insert(k.clone(), e.clone());
                    self.rejected.insert(k.clone());
                }
                None => {
                    self.errors.remove(k);
                    self.rejected.remove(k);
                }
            }
        }
        for id in step.attack.iter().chain(&step.also) {
            let Some(r) = self.records.get_mut(id) else {
                continue;
            };
            r.outstanding = r.outstanding.saturating_sub(1);
            r.retrying = None;
            r.updated_ms = now;
            if rejected.is_some() {
                r.rejected = rejected.clone();
            }
            if r.outstanding == 0 {
                Self::settle_phase(r);
                if r.phase == Phase::Ended {
                    let id = id.clone();
                    self.mark_ended(&id);
                }
            }
        }
    }

    /// The step failed and will be retried.
    pub fn step_failed(&mut self, step: &Step, err: String, now: i64) {
        if let Op::Engage(k) | Op::Release(k) = &step.op {
            self.errors.insert(k.clone(), err.clone());
            self.rejected.remove(k);
        }
        for id in step.attack.iter().chain(&step.also) {
            if let Some(r) = self.records.get_mut(id) {
                r.retrying = Some(err.clone());
                r.updated_ms = now;
            }
        }
    }

    pub fn status(&self, id: &str) -> Option<MitigationStatus> {
        self.records.get(id).map(|r| self.status_of(r))
    }

    pub fn all(&self) -> Vec<MitigationStatus> {
        self.records.values().map(|r| self.status_of(r)).collect()
    }

    fn route_status(&self, r: &Record, run: &RouteRun) -> RouteStatus {
        let k = Resource::Route(run.plan.route.clone());
        let err = self.errors.get(&k);
        let (state, reason) = if let Some(why) = run.refused {
            ("refused", Some(why.as_str().to_string()))
        } else if r.live() && !run.on {
            ("waiting", Some(escalation_text(&run.plan.when)))
        } else if self.dry[BackendKind::Bgp.index()] {
            (if run.on { "dry_run" } else { "withdrawn" }, None)
        } else if run.on && r.live() {
            if self.foreign.contains(&k) {
                ("not_ours", None)
            } else if err.is_some() {
                ("failed_retrying", err.cloned())
            } else if self.present.contains(&k) && self.owned.contains(&k) {
                ("announced", None)
            } else {
                ("pending", None)
            }
        } else if self.refcount(&k) > 0 {
            // Ended here, still announced for another attack.
            ("withdrawn", Some("still wanted by another attack".into()))
        } else if self.owned.contains(&k) {
            (
                if err.is_some() {
                    "failed_retrying"
                } else {
                    "withdrawing"
                },
                err.cloned(),
            )
        } else {
            ("withdrawn", None)
        };
        RouteStatus {
            kind: run.plan.route.kind(),
            prefix: run.plan.route.prefix().to_string(),
            route: run.plan.route.describe(),
            state,
            reason,
        }
    }

    fn switch_status(&self, r: &Record, k: &SwitchKey) -> SwitchStatus {
        let key = Resource::Switch(k.clone());
        let err = self.errors.get(&key).cloned();
        let failed = if self.rejected.contains(&key) {
            "failed"
        } else {
            "failed_retrying"
        };
        let (present, owned) = (self.present.contains(&key), self.owned.contains(&key));
        let not_ours = self.foreign.contains(&key) || (present && !owned);
        let (state, note) = if self.dry[BackendKind::Mitigator.index()] {
            (if r.live() { "dry_run" } else { "off" }, None)
        } else if r.live() {
            if err.is_some() {
                (failed, None)
            } else if not_ours {
                (
                    "not_ours",
                    Some("already on, not flowguard's: will be left on".into()),
                )
            } else if present {
                ("on", None)
            } else {
                ("pending", None)
            }
        } else if self.refcount(&key) > 0 {
            // Off for this attack, on for another one on the same policy.
            (
                if present { "on" } else { "pending" },
                Some("still wanted by another attack".into()),
            )
        } else if owned {
            (
                if err.is_some() {
                    failed
                } else {
                    "switching_off"
                },
                None,
            )
        } else if not_ours {
            (
                "not_ours",
                Some("not switched on by flowguard: left on".into()),
            )
        } else {
            ("off", None)
        };
        let error = matches!(state, "failed" | "failed_retrying")
            .then_some(err)
            .flatten();
        SwitchStatus {
            name: k.name.clone(),
            policy: k.policy,
            wanted: if r.live() { "on" } else { "off" },
            state,
            error,
            note,
        }
    }

    fn status_of(&self, r: &Record) -> MitigationStatus {
        let state = if r.retrying.is_some() {
            "failed_retrying"
        } else if r.rejected.is_some() && r.phase != Phase::Ended {
            "failed"
        } else if self.dry_run && r.live() {
            "dry_run"
        } else {
            match r.phase {
                Phase::Pending => "pending",
                Phase::Active => "active",
                Phase::Ending => "ending",
                Phase::Ended => "ended",
            }
        };
        MitigationStatus {
            attack_id: r.spec.id.clone(),
            ip: r.spec.ip,
            policy: r.spec.policy,
            countermeasures: r.spec.countermeasures.clone(),
            state: state.into(),
            started_ms: r.started_ms,
            updated_ms: r.updated_ms,
            restored: r.restored_at.is_some(),
            last_error: r.retrying.clone().or_else(|| r.rejected.clone()),
            switches: r
                .keys()
                .iter()
                .filter_map(|k| match k {
                    Resource::Switch(s) => Some(self.switch_status(r, s)),
                    Resource::Route(_) => None,
                })
                .collect(),
            routes: r.routes.iter().map(|x| self.route_status(r, x)).collect(),
            tbl_skipped_sources: r.tbl_skipped.as_ref().map_or(0, |t| t.0),
            tbl_skip_reason: r.tbl_skipped.as_ref().map(|t| t.1.clone()),
        }
    }
}

fn escalation_text(e: &Escalation) -> String {
    let mut v = Vec::new();
    if let Some(b) = e.above_bps {
        v.push(format!("while above {b} bps"));
    }
    if let Some(a) = e.after_ms {
        v.push(format!("after {} s", a / 1000));
    }
    v.join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mitigate::route::{Escalation, Refusal, Route, RoutePlan};

    /// A fake appliance: switch states, and the writes made, in order.
    #[derive(Default)]
    struct World {
        on: BTreeSet<Resource>,
        puts: Vec<String>,
    }

    fn key(policy: u32, name: &str) -> Resource {
        Resource::Switch(SwitchKey {
            policy,
            name: name.into(),
        })
    }

    fn show(k: &Resource) -> String {
        match k {
            Resource::Switch(s) => format!("{}:{}", s.policy, s.name),
            Resource::Route(r) => r.describe(),
        }
    }

    /// Executes steps the way the worker does, without I/O.
    fn run(p: &mut Planner, w: &mut World, steps: Vec<Step>) {
        for s in steps {
            if !p.precheck(&s) {
                p.step_done(&s, 0);
                continue;
            }
            match &s.op {
                Op::Engage(k) | Op::Release(k) => {
                    let observed = if w.on.contains(k) {
                        Seen::Present
                    } else {
                        Seen::Absent
                    };
                    match p.decide(&s.op, observed) {
                        Decision::Put(on) => {
                            p.before_put(k, on);
                            if on {
                                w.on.insert(k.clone());
                            } else {
                                w.on.remove(k);
                            }
                            w.puts.push(format!("{}:{}", show(k), u8::from(on)));
                            p.after_put(k, on);
                        }
                        Decision::Keep(_) => p.observed(&s.op, observed),
                    }
                }
                Op::TblAdd {
                    policy, prefixes, ..
                } => w.puts.push(format!("{policy}:tbl:{}", prefixes.join(","))),
            }
            p.step_done(&s, 0);
        }
    }

    fn spec(id: &str, ip: &str, policy: u32, cms: &[&str]) -> AttackSpec {
        AttackSpec {
            id: id.into(),
            ip: ip.parse().unwrap(),
            policy,
            countermeasures: cms.iter().map(|s| s.to_string()).collect(),
            tbl: Vec::new(),
            tbl_ttl: 0,
            bps: 0,
            routes: Vec::new(),
        }
    }

    fn take(w: &mut World) -> Vec<String> {
        std::mem::take(&mut w.puts)
    }

    #[test]
    fn single_attack_policy_first_on_last_off() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let s = p.start(spec("a", "192.0.2.1", 1, &["tcp"]), 0);
        assert_eq!(p.status("a").unwrap().state, "pending");
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:toggle:1", "1:tcp:1"]);
        assert_eq!(p.status("a").unwrap().state, "active");
        let s = p.end("a", 1);
        assert_eq!(p.status("a").unwrap().state, "ending");
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:tcp:0", "1:toggle:0"]);
        assert_eq!(p.status("a").unwrap().state, "ended");
        assert_eq!(p.owned().count(), 0);
    }

    #[test]
    fn overlapping_attacks_keep_the_policy_on_until_the_last_ends() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let s = p.start(spec("a", "192.0.2.1", 1, &["tcp"]), 0);
        run(&mut p, &mut w, s);
        let s = p.start(spec("b", "192.0.2.2", 1, &["sorb"]), 0);
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:toggle:1", "1:tcp:1", "1:sorb:1"]);
        assert_eq!(p.refcount(&key(1, TOGGLE)), 2);
        let s = p.end("a", 1);
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:tcp:0"]);
        let s = p.end("b", 2);
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:sorb:0", "1:toggle:0"]);
    }

    #[test]
    fn two_attacks_needing_the_same_countermeasure_share_it() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let s = p.start(spec("a", "192.0.2.1", 1, &["tcp"]), 0);
        run(&mut p, &mut w, s);
        let s = p.start(spec("b", "192.0.2.2", 1, &["tcp"]), 0);
        assert!(s.is_empty(), "{s:?}");
        let s = p.end("b", 1);
        assert!(s.is_empty(), "{s:?}");
        let s = p.end("a", 2);
        run(&mut p, &mut w, s);
        assert_eq!(
            take(&mut w),
            ["1:toggle:1", "1:tcp:1", "1:tcp:0", "1:toggle:0"]
        );
    }

    #[test]
    fn operator_enabled_countermeasure_is_left_on() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        w.on.insert(key(1, "tcp"));
        let s = p.start(spec("a", "192.0.2.1", 1, &["tcp"]), 0);
        run(&mut p, &mut w, s);
        assert!(!p.owns(&key(1, "tcp")));
        let s = p.end("a", 1);
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:toggle:1", "1:toggle:0"]);
        assert!(w.on.contains(&key(1, "tcp")));
    }

    #[test]
    fn end_of_an_unknown_or_ended_attack_does_nothing() {
        let mut p = Planner::new(false, 10);
        assert!(p.end("nope", 0).is_empty());
        assert!(p.status("nope").is_none());
        let mut w = World::default();
        let s = p.start(spec("a", "192.0.2.1", 1, &["acl"]), 0);
        run(&mut p, &mut w, s);
        let s = p.end("a", 1);
        run(&mut p, &mut w, s);
        assert!(p.end("a", 2).is_empty());
    }

    #[test]
    fn an_attack_ending_before_its_steps_ran_makes_no_write() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let mut s = p.start(spec("a", "192.0.2.1", 1, &["acl"]), 0);
        s.extend(p.end("a", 0));
        run(&mut p, &mut w, s);
        assert!(take(&mut w).is_empty());
        assert_eq!(p.status("a").unwrap().state, "ended");
    }

    #[test]
    fn a_release_queued_before_a_new_start_is_skipped() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let s = p.start(spec("a", "192.0.2.1", 1, &["tcp"]), 0);
        run(&mut p, &mut w, s);
        take(&mut w);
        // a ends and b starts before the release steps run.
        let mut s = p.end("a", 1);
        s.extend(p.start(spec("b", "192.0.2.2", 1, &["tcp"]), 1));
        run(&mut p, &mut w, s);
        assert!(take(&mut w).is_empty());
        assert!(p.owns(&key(1, "tcp")));
    }

    #[test]
    fn restart_restores_reasserts_and_releases_orphans() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let s = p.start(spec("a", "192.0.2.1", 1, &["tcp"]), 0);
        run(&mut p, &mut w, s);
        let s = p.start(spec("b", "192.0.2.9", 2, &["acl"]), 0);
        run(&mut p, &mut w, s);
        // b ends, but the process dies before the releases run.
        let _lost = p.end("b", 1);
        let saved = p.snapshot();
        take(&mut w);

        let mut q = Planner::new(false, 10);
        let s = q.restore(saved, 100);
        assert_eq!(q.status("a").unwrap().state, "pending");
        assert!(q.status("a").unwrap().restored);
        run(&mut q, &mut w, s);
        // a is still on (nothing to write), b's switches are released.
        assert_eq!(take(&mut w), ["2:acl:0", "2:toggle:0"]);
        assert_eq!(q.status("a").unwrap().state, "active");
        // No renewal within the grace period: a is ended.
        assert!(q.expire_restored(100 + 599, 600).is_empty());
        let s = q.expire_restored(100 + 600, 600);
        run(&mut q, &mut w, s);
        assert_eq!(take(&mut w), ["1:tcp:0", "1:toggle:0"]);
        assert!(w.on.is_empty());
    }

    #[test]
    fn restored_attack_renewed_by_start_or_superseded_by_same_address() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let s = p.start(spec("a", "192.0.2.1", 1, &["tcp"]), 0);
        run(&mut p, &mut w, s);
        let s = p.start(spec("b", "192.0.2.2", 1, &["acl"]), 0);
        run(&mut p, &mut w, s);
        let saved = p.snapshot();
        take(&mut w);
        let mut q = Planner::new(false, 10);
        let s = q.restore(saved, 0);
        run(&mut q, &mut w, s);
        // Same id: renewed, no call.
        assert!(q.start(spec("a", "192.0.2.1", 1, &["tcp"]), 1).is_empty());
        assert!(!q.status("a").unwrap().restored);
        // New id for b's address, another countermeasure: acl is released, sorb engaged.
        let s = q.start(spec("b2", "192.0.2.2", 1, &["sorb"]), 1);
        run(&mut q, &mut w, s);
        assert_eq!(take(&mut w), ["1:sorb:1", "1:acl:0"]);
        assert_eq!(q.status("b").unwrap().state, "ended");
        assert!(q.expire_restored(10_000, 600).is_empty());
    }

    #[test]
    fn owned_switch_found_off_is_forgotten_and_state_reports_failures() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let s = p.start(spec("a", "192.0.2.1", 1, &["tcp"]), 0);
        run(&mut p, &mut w, s);
        w.on.clear(); // an operator switched everything off by hand
        let s = p.end("a", 1);
        p.step_failed(&s[0], "HTTP 503".into(), 1);
        assert_eq!(p.status("a").unwrap().state, "failed_retrying");
        run(&mut p, &mut w, s);
        assert!(take(&mut w).iter().all(|x| x.ends_with(":1")));
        assert_eq!(p.owned().count(), 0);
        assert_eq!(p.status("a").unwrap().state, "ended");
    }

    fn switch_states(p: &Planner, id: &str) -> Vec<(String, &'static str, &'static str)> {
        p.status(id)
            .unwrap()
            .switches
            .iter()
            .map(|s| (s.name.clone(), s.wanted, s.state))
            .collect()
    }

    /// Each switch of an attack carries its own acknowledged state and error: one on,
    /// one rejected for good (its error kept), one retrying; a success clears the error.
    #[test]
    fn each_switch_shows_its_own_acknowledged_state_and_error() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let steps = p.start(spec("a", "192.0.2.1", 1, &["tcp", "sorb"]), 0);
        let own = |n: &str| (n.to_string(), "on", "pending");
        assert_eq!(
            switch_states(&p, "a"),
            [own("toggle"), own("tcp"), own("sorb")]
        );
        // toggle and tcp go through; sorb is rejected (as a 4xx would be).
        run(&mut p, &mut w, steps[..2].to_vec());
        p.before_put(&key(1, "sorb"), true);
        p.step_rejected(&steps[2], "HTTP 403: injected fault".into(), 1);
        let st = p.status("a").unwrap();
        assert_eq!(st.state, "failed");
        let by = |n: &str| st.switches.iter().find(|s| s.name == n).unwrap().clone();
        assert_eq!((by("toggle").state, by("toggle").error), ("on", None));
        assert_eq!((by("tcp").state, by("tcp").error), ("on", None));
        assert_eq!(by("sorb").state, "failed");
        assert_eq!(
            by("sorb").error.as_deref(),
            Some("HTTP 403: injected fault")
        );
        // A second attack on the policy needs acl, and MITIGATOR is down: retrying, with
        // that error; the shared sorb is not retried (its step was dropped) and stays failed.
        let s2 = p.start(spec("b", "192.0.2.2", 1, &["acl", "sorb"]), 2);
        assert_eq!(s2.len(), 1, "only acl is new: {s2:?}");
        p.step_failed(&s2[0], "request failed: timeout".into(), 2);
        let of = |p: &Planner, id: &str, n: &str| {
            p.status(id)
                .unwrap()
                .switches
                .into_iter()
                .find(|s| s.name == n)
                .unwrap()
        };
        assert_eq!(of(&p, "b", "acl").state, "failed_retrying");
        assert_eq!(
            of(&p, "b", "acl").error.as_deref(),
            Some("request failed: timeout")
        );
        assert_eq!(of(&p, "b", "sorb").state, "failed", "one switch, one state");
        assert_eq!(of(&p, "b", "toggle").state, "on");
        // The retry succeeds; sorb is put back on (a reconcile): no error left anywhere.
        run(&mut p, &mut w, s2);
        run(&mut p, &mut w, vec![steps[2].clone()]);
        assert_eq!(
            (of(&p, "b", "acl").state, of(&p, "b", "acl").error),
            ("on", None)
        );
        assert_eq!(
            (of(&p, "a", "sorb").state, of(&p, "a", "sorb").error),
            ("on", None)
        );
        // a ends: toggle and sorb stay on for b (noted), tcp goes off.
        let s = p.end("a", 3);
        assert_eq!(
            switch_states(&p, "a"),
            [
                ("toggle".to_string(), "off", "on"),
                ("tcp".to_string(), "off", "switching_off"),
                ("sorb".to_string(), "off", "on")
            ]
        );
        assert_eq!(
            of(&p, "a", "sorb").note.as_deref(),
            Some("still wanted by another attack")
        );
        run(&mut p, &mut w, s);
        assert_eq!(switch_states(&p, "a")[1], ("tcp".to_string(), "off", "off"));
    }

    /// A switch an operator had on is shown on, not flowguard's; dry run says so.
    #[test]
    fn operator_switches_and_dry_runs_are_shown_as_such() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        w.on.insert(key(1, "acl"));
        let s = p.start(spec("a", "192.0.2.1", 1, &["acl"]), 0);
        run(&mut p, &mut w, s);
        assert_eq!(
            switch_states(&p, "a"),
            [
                ("toggle".to_string(), "on", "on"),
                ("acl".to_string(), "on", "not_ours")
            ]
        );
        let mut d = Planner::new(true, 10);
        let _ = d.start(spec("a", "192.0.2.1", 1, &["acl"]), 0);
        assert!(switch_states(&d, "a").iter().all(|s| s.2 == "dry_run"));
    }

    #[test]
    fn blacklist_steps_follow_the_switches_and_updates() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let mut a = spec("a", "192.0.2.1", 1, &["tcp"]);
        a.tbl = vec!["198.51.100.7/32".into()];
        let s = p.start(a.clone(), 0);
        run(&mut p, &mut w, s);
        assert_eq!(
            take(&mut w),
            ["1:toggle:1", "1:tcp:1", "1:tbl:198.51.100.7/32"]
        );
        assert_eq!(p.status("a").unwrap().state, "active");
        a.tbl = vec!["198.51.100.8/32".into()];
        let s = p.update(a.clone(), 1);
        assert_eq!(p.status("a").unwrap().state, "active");
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:tbl:198.51.100.8/32"]);
        let s = p.end("a", 2);
        run(&mut p, &mut w, s);
        assert_eq!(p.status("a").unwrap().state, "ended");
        assert!(p.update(a, 3).is_empty());
    }

    #[test]
    fn a_new_vector_engages_its_countermeasure_and_nothing_flaps_until_the_end() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        // Seen as UDP first.
        let s = p.start(spec("a", "192.0.2.1", 1, &["sorb"]), 0);
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:toggle:1", "1:sorb:1"]);
        // SYN appears: tcp goes on, once.
        let s = p.update(spec("a", "192.0.2.1", 1, &["tcp", "sorb"]), 1);
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:tcp:1"]);
        assert_eq!(p.status("a").unwrap().countermeasures, ["sorb", "tcp"]);
        assert_eq!(p.status("a").unwrap().state, "active");
        // The same vectors again, or fewer (UDP faded from the event): no call at all.
        let s = p.update(spec("a", "192.0.2.1", 1, &["tcp", "sorb"]), 2);
        assert!(s.is_empty(), "{s:?}");
        let s = p.update(spec("a", "192.0.2.1", 1, &["tcp"]), 3);
        assert!(s.is_empty(), "{s:?}");
        // A repeated Start naming a third countermeasure grows it too.
        let s = p.start(spec("a", "192.0.2.1", 1, &["tcp", "sorb", "acl"]), 4);
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:acl:1"]);
        // The state file remembers all of them.
        assert_eq!(
            p.snapshot().attacks[0].countermeasures,
            ["sorb", "tcp", "acl"]
        );
        // End: every countermeasure off, then the policy, each once.
        let s = p.end("a", 5);
        run(&mut p, &mut w, s);
        assert_eq!(
            take(&mut w),
            ["1:acl:0", "1:sorb:0", "1:tcp:0", "1:toggle:0"]
        );
        assert_eq!(p.owned().count(), 0);
    }

    #[test]
    fn a_new_vector_shared_with_another_attack_or_the_operator_is_not_touched() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        w.on.insert(key(1, "acl")); // the operator's
        let s = p.start(spec("b", "192.0.2.2", 1, &["tcp"]), 0);
        run(&mut p, &mut w, s);
        let s = p.start(spec("a", "192.0.2.1", 1, &["sorb"]), 0);
        run(&mut p, &mut w, s);
        take(&mut w);
        // a's new vectors need tcp (b's already) and acl (the operator's): no write.
        let s = p.update(spec("a", "192.0.2.1", 1, &["sorb", "tcp", "acl"]), 1);
        run(&mut p, &mut w, s);
        assert!(take(&mut w).is_empty());
        assert_eq!(p.refcount(&key(1, "tcp")), 2);
        // b ends: tcp is still a's.
        let s = p.end("b", 2);
        run(&mut p, &mut w, s);
        assert!(take(&mut w).is_empty());
        let s = p.end("a", 3);
        run(&mut p, &mut w, s);
        assert_eq!(take(&mut w), ["1:sorb:0", "1:tcp:0", "1:toggle:0"]);
        assert!(w.on.contains(&key(1, "acl")), "the operator's acl stays on");
    }

    #[test]
    fn ended_attacks_are_forgotten_past_the_cap() {
        let mut p = Planner::new(false, 2);
        let mut w = World::default();
        for i in 0..4 {
            let id = format!("a{i}");
            let s = p.start(spec(&id, "192.0.2.1", 1, &["tcp"]), 0);
            run(&mut p, &mut w, s);
            let s = p.end(&id, 0);
            run(&mut p, &mut w, s);
        }
        assert!(p.status("a0").is_none());
        assert!(p.status("a1").is_none());
        assert_eq!(p.status("a3").unwrap().state, "ended");
    }

    fn blackhole(ip: &str) -> RoutePlan {
        RoutePlan {
            route: Route::Blackhole {
                prefix: format!("{ip}/32").parse().unwrap(),
                next_hop: "192.0.2.1".parse().unwrap(),
                communities: vec!["65535:666".into()],
            },
            when: Escalation::default(),
            refused: None,
        }
    }

    fn with_routes(mut s: AttackSpec, routes: Vec<RoutePlan>, bps: u64) -> AttackSpec {
        s.routes = routes;
        s.bps = bps;
        s
    }

    fn route_states(p: &Planner, id: &str) -> Vec<&'static str> {
        p.status(id)
            .unwrap()
            .routes
            .iter()
            .map(|r| r.state)
            .collect()
    }

    #[test]
    fn routes_are_reference_counted_like_switches() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let bh = blackhole("192.0.2.1");
        // Two attacks on one host (two directions, say) want the same route.
        let s = p.start(
            with_routes(spec("a", "192.0.2.1", 1, &[]), vec![bh.clone()], 0),
            0,
        );
        run(&mut p, &mut w, s);
        let s = p.start(
            with_routes(spec("b", "192.0.2.1", 1, &[]), vec![bh.clone()], 0),
            0,
        );
        run(&mut p, &mut w, s);
        let r = Resource::Route(bh.route.clone());
        assert_eq!(p.refcount(&r), 2);
        assert_eq!(route_states(&p, "a"), ["announced"]);
        let s = p.end("a", 1);
        run(&mut p, &mut w, s);
        assert!(w.on.contains(&r), "still wanted by b");
        let s = p.end("b", 2);
        run(&mut p, &mut w, s);
        assert!(!w.on.contains(&r));
        assert_eq!(route_states(&p, "b"), ["withdrawn"]);
        let bh_puts: Vec<String> = take(&mut w)
            .into_iter()
            .filter(|x| x.starts_with("blackhole"))
            .collect();
        assert_eq!(
            bh_puts,
            [
                "blackhole 192.0.2.1/32 next-hop 192.0.2.1 communities 65535:666:1",
                "blackhole 192.0.2.1/32 next-hop 192.0.2.1 communities 65535:666:0"
            ]
        );
    }

    #[test]
    fn escalation_by_rate_follows_updates_and_by_time_follows_escalate() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let mut by_rate = blackhole("192.0.2.1");
        by_rate.when.above_bps = Some(1_000);
        let mut by_time = blackhole("192.0.2.2");
        by_time.when.after_ms = Some(10_000);
        let a = with_routes(spec("a", "192.0.2.1", 1, &[]), vec![by_rate.clone()], 10);
        let s = p.start(a.clone(), 0);
        run(&mut p, &mut w, s);
        assert_eq!(route_states(&p, "a"), ["waiting"]);
        let s = p.update(
            AttackSpec {
                bps: 5_000,
                ..a.clone()
            },
            1,
        );
        run(&mut p, &mut w, s);
        assert_eq!(route_states(&p, "a"), ["announced"]);
        let s = p.update(
            AttackSpec {
                bps: 999,
                ..a.clone()
            },
            2,
        );
        run(&mut p, &mut w, s);
        assert_eq!(route_states(&p, "a"), ["waiting"]);
        assert!(!w.on.contains(&Resource::Route(by_rate.route.clone())));

        let b = with_routes(spec("b", "192.0.2.2", 1, &[]), vec![by_time.clone()], 0);
        let s = p.start(b, 1_000);
        run(&mut p, &mut w, s);
        assert!(p.escalate(10_999).is_empty());
        let s = p.escalate(11_000);
        assert_eq!(s.len(), 1, "{s:?}");
        run(&mut p, &mut w, s);
        assert_eq!(route_states(&p, "b"), ["announced"]);
        let s = p.end("b", 12_000);
        run(&mut p, &mut w, s);
        assert!(!w.on.contains(&Resource::Route(by_time.route)));
    }

    #[test]
    fn the_route_cap_refuses_counts_once_and_takes_back_up_when_room_frees() {
        let mut p = Planner::new(false, 10);
        p.set_max_routes(1);
        let mut w = World::default();
        let s = p.start(
            with_routes(
                spec("a", "192.0.2.1", 1, &[]),
                vec![blackhole("192.0.2.1")],
                0,
            ),
            0,
        );
        run(&mut p, &mut w, s);
        let s = p.start(
            with_routes(
                spec("b", "192.0.2.2", 1, &[]),
                vec![blackhole("192.0.2.2")],
                0,
            ),
            0,
        );
        run(&mut p, &mut w, s);
        assert_eq!(route_states(&p, "b"), ["refused"]);
        assert!(p.escalate(1).is_empty());
        assert_eq!(p.take_refusals(), [Refusal::RouteCap]);
        let s = p.end("a", 2);
        run(&mut p, &mut w, s);
        assert_eq!(route_states(&p, "b"), ["announced"]);
        assert_eq!(p.routes_wanted(), 1);
        assert!(p.take_refusals().is_empty());
    }

    #[test]
    fn refused_plans_are_never_announced() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let mut r = blackhole("203.0.113.1");
        r.refused = Some(Refusal::OutsideProtected);
        let s = p.start(with_routes(spec("a", "203.0.113.1", 1, &[]), vec![r], 0), 0);
        run(&mut p, &mut w, s);
        assert!(w.on.iter().all(|k| matches!(k, Resource::Switch(_))));
        let st = p.status("a").unwrap();
        assert_eq!(st.routes[0].state, "refused");
        assert_eq!(st.routes[0].reason.as_deref(), Some("outside_protected"));
    }

    #[test]
    fn restart_reasserts_routes_withdraws_orphans_and_leaves_foreign_ones() {
        let mut p = Planner::new(false, 10);
        let mut w = World::default();
        let keep = blackhole("192.0.2.1");
        let orphan = blackhole("192.0.2.2");
        let foreign = blackhole("192.0.2.3");
        // Someone else's route for .3 is there before the attack on it.
        w.on.insert(Resource::Route(foreign.route.clone()));
        for (id, ip, r) in [
            ("a", "192.0.2.1", &keep),
            ("b", "192.0.2.2", &orphan),
            ("c", "192.0.2.3", &foreign),
        ] {
            let s = p.start(with_routes(spec(id, ip, 1, &[]), vec![r.clone()], 0), 0);
            run(&mut p, &mut w, s);
        }
        assert!(!p.owns(&Resource::Route(foreign.route.clone())));
        // b ends, but the process dies before the withdrawal runs; the BGP daemon is
        // restarted too and loses a's route.
        let _lost = p.end("b", 1);
        let saved = p.snapshot();
        assert_eq!(saved.owned_routes.len(), 2);
        w.on.remove(&Resource::Route(keep.route.clone()));
        take(&mut w);
        let mut q = Planner::new(false, 10);
        let s = q.restore(saved, 100);
        run(&mut q, &mut w, s);
        let puts = take(&mut w);
        assert!(
            puts.contains(&format!("{}:1", keep.route.describe())),
            "{puts:?}"
        );
        assert!(
            puts.contains(&format!("{}:0", orphan.route.describe())),
            "{puts:?}"
        );
        assert!(!puts
            .iter()
            .any(|x| x.starts_with(&foreign.route.describe())));
        // The periodic re-assertion covers a's route only (c's is not flowguard's).
        let re = q.reassert_routes();
        assert_eq!(re.len(), 1);
        // Nobody renews them: the end withdraws a's, leaves c's foreign route.
        let s = q.expire_restored(100 + 600, 600);
        run(&mut q, &mut w, s);
        assert!(w.on.contains(&Resource::Route(foreign.route)));
        assert!(!w.on.contains(&Resource::Route(keep.route)));
    }

    #[test]
    fn a_dry_backend_keeps_its_resources_out_of_the_state_file() {
        let mut p = Planner::new(false, 10);
        p.set_dry(BackendKind::Mitigator, true);
        let mut w = World::default();
        let s = p.start(
            with_routes(
                spec("a", "192.0.2.1", 1, &["tcp"]),
                vec![blackhole("192.0.2.1")],
                0,
            ),
            0,
        );
        run(&mut p, &mut w, s);
        let snap = p.snapshot();
        assert!(snap.owned.is_empty(), "dry-run switches are not claimed");
        assert_eq!(snap.owned_routes.len(), 1);
        // And a switch owned by an earlier real run is carried through untouched.
        let mut saved = snap.clone();
        saved.owned.push(SwitchKey {
            policy: 9,
            name: "tcp".into(),
        });
        let mut q = Planner::new(false, 10);
        q.set_dry(BackendKind::Mitigator, true);
        let s = q.restore(saved, 0);
        assert!(!s.iter().any(|x| x.op == Op::Release(key(9, "tcp"))));
        assert_eq!(
            q.snapshot().owned,
            [SwitchKey {
                policy: 9,
                name: "tcp".into()
            }]
        );
    }
}
