//! The mitigation planner: the pure core of the mitigate stage. No I/O, no clock.
//!
//! It holds the desired state (live attacks → policy and countermeasures), derives the
//! reference count of every switch from it, and remembers which switches flowguard itself
//! switched on ("owned"). Events become ordered [`Step`]s; the worker executes a step by
//! reading the switch (GET) and asking [`Planner::decide`] whether to write it, so every
//! decision is taken against the *current* desired state and the *observed* switch:
//!
//! - a switch is switched on only when it is off; if it was already on, flowguard does not
//!   own it and will never switch it off (an operator's countermeasure survives);
//! - a switch is switched off only when flowguard owns it and no live attack needs it any
//!   more (two attacks on one policy: the policy stays on until the second ends);
//! - countermeasures go on after the policy and off before it;
//! - an attack's countermeasures only grow while it lasts: a Start or Update that names a
//!   countermeasure more (a new vector of the attack) engages it, and none is released
//!   before the attack ends (a vector that fades and returns does not flap its switch).
//!
//! Restart: [`Planner::restore`] takes the state file's attacks as live ("restored") and
//! emits steps that re-assert them and release owned switches nothing needs. Detection
//! starts empty after a restart, so a restored attack that is not renewed by a Start (same
//! id, or same address) or ended by an End within the grace period is ended by
//! [`Planner::expire_restored`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use serde::Serialize;

pub use super::state::SwitchKey;
use super::state::{PersistedAttack, PersistedState};

/// The policy protection switch's name.
pub const TOGGLE: &str = "toggle";

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Make sure the switch is on: GET, then PUT 1 if it is off.
    Engage(SwitchKey),
    /// Switch off what flowguard switched on and nothing needs: GET, then PUT 0.
    Release(SwitchKey),
    /// Add prefixes to a policy's temporary blacklist.
    TblAdd {
        policy: u32,
        prefixes: Vec<String>,
        ttl: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The attack the step is for (None: reconciliation of an orphan switch).
    pub attack: Option<String>,
    pub op: Op,
}

/// The answer to "the switch was observed in this state: write it?".
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
    /// A step that MITIGATOR rejected for good (4xx).
    rejected: Option<String>,
    /// Top sources of the latest blacklist selection left out, and why.
    tbl_skipped: Option<(usize, String)>,
}

impl Record {
    fn live(&self) -> bool {
        matches!(self.phase, Phase::Pending | Phase::Active)
    }

    /// Policy protection first, then countermeasures in configured order.
    fn keys(&self) -> Vec<SwitchKey> {
        let mut v = vec![SwitchKey {
            policy: self.spec.policy,
            name: TOGGLE.into(),
        }];
        for c in &self.spec.countermeasures {
            let k = SwitchKey {
                policy: self.spec.policy,
                name: c.clone(),
            };
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    }
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
    /// Top sources the latest blacklist selection left out (0 when none or off).
    pub tbl_skipped_sources: usize,
    /// Why they were left out.
    pub tbl_skip_reason: Option<String>,
}

pub struct Planner {
    records: BTreeMap<String, Record>,
    owned: BTreeSet<SwitchKey>,
    /// Ended attacks in the order they ended; the oldest are forgotten past `max_ended`.
    ended: VecDeque<String>,
    max_ended: usize,
    dry_run: bool,
}

impl Planner {
    pub fn new(dry_run: bool, max_ended: usize) -> Planner {
        Planner {
            records: BTreeMap::new(),
            owned: BTreeSet::new(),
            ended: VecDeque::new(),
            max_ended,
            dry_run,
        }
    }

    /// Live attacks that need `key`.
    pub fn refcount(&self, key: &SwitchKey) -> usize {
        self.records
            .values()
            .filter(|r| r.live() && r.keys().contains(key))
            .count()
    }

    pub fn owns(&self, key: &SwitchKey) -> bool {
        self.owned.contains(key)
    }

    pub fn owned(&self) -> impl Iterator<Item = &SwitchKey> {
        self.owned.iter()
    }

    /// Attacks whose mitigation is wanted (pending or active).
    pub fn live_count(&self) -> usize {
        self.records.values().filter(|r| r.live()).count()
    }

    fn needed(&self) -> BTreeSet<SwitchKey> {
        self.records
            .values()
            .filter(|r| r.live())
            .flat_map(|r| r.keys())
            .collect()
    }

    /// Releases for keys needed before and not after, countermeasures before policies.
    fn releases(before: &BTreeSet<SwitchKey>, after: &BTreeSet<SwitchKey>) -> Vec<SwitchKey> {
        let mut v: Vec<SwitchKey> = before.difference(after).cloned().collect();
        v.sort_by_key(|k| (k.policy, k.name == TOGGLE, k.name.clone()));
        v
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
                // A repeated Start renews a restored attack; its switches are already
                // wanted, so only countermeasures it names more and new blacklist entries
                // can come of it.
                r.restored_at = None;
                r.updated_ms = now;
                let mut steps = self.grow(&spec);
                steps.extend(self.tbl_steps(&spec));
                self.bump(&id, steps.len() as u32, now);
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
        let rec = Record {
            spec: spec.clone(),
            phase: Phase::Pending,
            started_ms: now,
            updated_ms: now,
            restored_at: None,
            outstanding: 0,
            retrying: None,
            rejected: None,
            tbl_skipped: None,
        };
        let keys = rec.keys();
        self.records.insert(id.clone(), rec);
        let after = self.needed();
        let mut steps: Vec<Step> = keys
            .into_iter()
            .filter(|k| !before.contains(k))
            .map(|k| Step {
                attack: Some(id.clone()),
                op: Op::Engage(k),
            })
            .collect();
        steps.extend(Self::releases(&before, &after).into_iter().map(|k| Step {
            attack: None,
            op: Op::Release(k),
        }));
        steps.extend(self.tbl_steps(&spec));
        let mine = steps
            .iter()
            .filter(|s| s.attack.as_deref() == Some(id.as_str()))
            .count() as u32;
        self.bump(&id, mine, now);
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
        }]
    }

    /// An Update of a live attack: countermeasures it names more (a new vector) are
    /// engaged, new top sources blacklisted; nothing is released.
    pub fn update(&mut self, spec: AttackSpec, now: i64) -> Vec<Step> {
        match self.records.get(&spec.id) {
            Some(r) if r.live() => {
                let mut steps = self.grow(&spec);
                steps.extend(self.tbl_steps(&spec));
                self.bump(&spec.id, steps.len() as u32, now);
                steps
            }
            _ => Vec::new(),
        }
    }

    /// Adds the countermeasures of `spec` that the live record of the same id lacks, in
    /// `spec`'s order, and returns the engage steps for the switches nothing needed before.
    /// The caller counts them as outstanding.
    fn grow(&mut self, spec: &AttackSpec) -> Vec<Step> {
        let before = self.needed();
        let Some(r) = self.records.get_mut(&spec.id) else {
            return Vec::new();
        };
        let mut added = false;
        for c in &spec.countermeasures {
            if !r.spec.countermeasures.contains(c) {
                r.spec.countermeasures.push(c.clone());
                added = true;
            }
        }
        if !added {
            return Vec::new();
        }
        r.keys()
            .into_iter()
            .filter(|k| !before.contains(k))
            .map(|k| Step {
                attack: Some(spec.id.clone()),
                op: Op::Engage(k),
            })
            .collect()
    }

    /// Records how many top sources the latest blacklist selection of attack `id` left out
    /// and why (shown in its status).
    pub fn note_tbl_skipped(&mut self, id: &str, skipped: usize, reason: String) {
        if let Some(r) = self.records.get_mut(id) {
            r.tbl_skipped = (skipped > 0).then_some((skipped, reason));
        }
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
        }
        let after = self.needed();
        let steps: Vec<Step> = Self::releases(&before, &after)
            .into_iter()
            .map(|k| Step {
                attack: Some(id.to_string()),
                op: Op::Release(k),
            })
            .collect();
        self.bump(id, steps.len() as u32, now);
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
    /// re-assert every restored attack's switches, release owned switches nothing needs.
    pub fn restore(&mut self, st: PersistedState, now: i64) -> Vec<Step> {
        for a in st.attacks {
            let id = a.id.clone();
            self.records.insert(
                id,
                Record {
                    spec: AttackSpec {
                        id: a.id,
                        ip: a.ip,
                        policy: a.policy,
                        countermeasures: a.countermeasures,
                        tbl: Vec::new(),
                        tbl_ttl: 0,
                    },
                    phase: Phase::Pending,
                    started_ms: a.started_ms,
                    updated_ms: now,
                    restored_at: Some(now),
                    outstanding: 0,
                    retrying: None,
                    rejected: None,
                    tbl_skipped: None,
                },
            );
        }
        self.owned.extend(st.owned);
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
                        op: Op::Engage(k),
                    });
                    n += 1;
                }
            }
            self.bump(&id, n, now);
        }
        let needed = self.needed();
        let orphans: BTreeSet<SwitchKey> = self.owned.difference(&needed).cloned().collect();
        steps.extend(
            Self::releases(&orphans, &BTreeSet::new())
                .into_iter()
                .map(|k| Step {
                    attack: None,
                    op: Op::Release(k),
                }),
        );
        steps
    }

    /// What to write to the state file.
    pub fn snapshot(&self) -> PersistedState {
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
                })
                .collect(),
            owned: self.owned.iter().cloned().collect(),
        }
    }

    /// Does the step still need any call? An engage for a switch nothing needs any more
    /// (the attack ended before the step ran) and a release of a switch that is needed
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

    /// Given the observed state of the step's switch, write it or leave it.
    pub fn decide(&self, op: &Op, observed_on: bool) -> Decision {
        match op {
            Op::Engage(k) => {
                if self.refcount(k) == 0 {
                    Decision::Keep("no longer needed")
                } else if observed_on {
                    Decision::Keep(if self.owned.contains(k) {
                        "already on (flowguard's)"
                    } else {
                        "already on (not flowguard's: will be left on)"
                    })
                } else {
                    Decision::Put(true)
                }
            }
            Op::Release(k) => {
                if self.refcount(k) > 0 {
                    Decision::Keep("still needed by another attack")
                } else if !self.owned.contains(k) {
                    Decision::Keep("not switched on by flowguard: left as it is")
                } else if observed_on {
                    Decision::Put(false)
                } else {
                    Decision::Keep("already off")
                }
            }
            Op::TblAdd { .. } => Decision::Keep("not a switch"),
        }
    }

    /// Record the outcome of a read (and of the write `decide` asked for, if any).
    /// A switch flowguard is about to switch on is owned *before* the write, so that a
    /// crash between the write and the next state-file save cannot leave it on forever.
    pub fn before_put(&mut self, key: &SwitchKey, on: bool) {
        if on {
            self.owned.insert(key.clone());
        }
    }

    pub fn after_put(&mut self, key: &SwitchKey, on: bool) {
        if !on {
            self.owned.remove(key);
        }
    }

    /// A release found the owned switch already off (someone else switched it off):
    /// flowguard no longer owns it.
    pub fn observed_off(&mut self, op: &Op) {
        if let Op::Release(k) = op {
            if self.refcount(k) == 0 {
                self.owned.remove(k);
            }
        }
    }

    /// The step finished (written, left alone or skipped).
    pub fn step_done(&mut self, step: &Step, now: i64) {
        self.finish(step, now, None);
    }

    /// MITIGATOR rejected the step for good; it is dropped.
    pub fn step_rejected(&mut self, step: &Step, err: String, now: i64) {
        self.finish(step, now, Some(err));
    }

    fn finish(&mut self, step: &Step, now: i64, rejected: Option<String>) {
        let Some(id) = &step.attack else { return };
        let Some(r) = self.records.get_mut(id) else {
            return;
        };
        r.outstanding = r.outstanding.saturating_sub(1);
        r.retrying = None;
        r.updated_ms = now;
        if rejected.is_some() {
            r.rejected = rejected;
        }
        if r.outstanding == 0 {
            Self::settle_phase(r);
            if r.phase == Phase::Ended {
                let id = id.clone();
                self.mark_ended(&id);
            }
        }
    }

    /// The step failed and will be retried.
    pub fn step_failed(&mut self, step: &Step, err: String, now: i64) {
        if let Some(r) = step.attack.as_ref().and_then(|id| self.records.get_mut(id)) {
            r.retrying = Some(err);
            r.updated_ms = now;
        }
    }

    pub fn status(&self, id: &str) -> Option<MitigationStatus> {
        self.records.get(id).map(|r| self.status_of(r))
    }

    pub fn all(&self) -> Vec<MitigationStatus> {
        self.records.values().map(|r| self.status_of(r)).collect()
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
            tbl_skipped_sources: r.tbl_skipped.as_ref().map_or(0, |t| t.0),
            tbl_skip_reason: r.tbl_skipped.as_ref().map(|t| t.1.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake appliance: switch states, and the writes made, in order.
    #[derive(Default)]
    struct World {
        on: BTreeSet<SwitchKey>,
        puts: Vec<String>,
    }

    fn key(policy: u32, name: &str) -> SwitchKey {
        SwitchKey {
            policy,
            name: name.into(),
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
                    let observed = w.on.contains(k);
                    match p.decide(&s.op, observed) {
                        Decision::Put(on) => {
                            p.before_put(k, on);
                            if on {
                                w.on.insert(k.clone());
                            } else {
                                w.on.remove(k);
                            }
                            w.puts
                                .push(format!("{}:{}:{}", k.policy, k.name, u8::from(on)));
                            p.after_put(k, on);
                        }
                        Decision::Keep(_) => {
                            if !observed {
                                p.observed_off(&s.op);
                            }
                        }
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
}
