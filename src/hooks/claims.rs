//! Which external detector instances claim which host: one victim reported by several
//! FastNetMon instances (Community, Advanced, or both) is one attack that ends when the last
//! of them sends its unban.
//!
//! The detect stage knows one external claim per host and direction (and merges it with
//! flowguard's own detection); this book sits in front of it and turns several sources'
//! bans and unbans into that one claim: every ban and update goes through (the detector
//! joins a running attack, and may learn its type from it), an unban only once no other
//! source still claims the host. Sources are the events' `source` names.
//!
//! Bounded: at most [`MAX_CLAIMED_HOSTS`] hosts and [`MAX_SOURCES_PER_HOST`] sources per
//! host are remembered. Past that an event goes through untracked (as if it were the only
//! source, which is what flowguard did before there was a book) and is counted as
//! `flowguard_hook_events_total{outcome="claims_full"}`.
//!
//! Pure: events in, verdicts out; in memory only. After a restart the book is empty, like
//! the detector's attacks: the first unban of a host then ends it.

use std::collections::HashMap;
use std::net::IpAddr;

use super::event::{ExternalEvent, HookAction};
use crate::metrics::Metrics;
use crate::model::Direction;

pub const MAX_CLAIMED_HOSTS: usize = 100_000;
pub const MAX_SOURCES_PER_HOST: usize = 16;

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the detector.
    Forward,
    /// Hand it to the detector; the book had no room to remember its source.
    Untracked,
    /// An unban while these other sources still claim the host: keep the attack.
    Held(Vec<String>),
}

#[derive(Debug)]
pub struct ClaimBook {
    claims: HashMap<(IpAddr, Direction), Vec<String>>,
    max_hosts: usize,
    max_sources: usize,
}

impl Default for ClaimBook {
    fn default() -> Self {
        ClaimBook::new(MAX_CLAIMED_HOSTS, MAX_SOURCES_PER_HOST)
    }
}

impl ClaimBook {
    pub fn new(max_hosts: usize, max_sources: usize) -> ClaimBook {
        ClaimBook {
            claims: HashMap::new(),
            max_hosts,
            max_sources,
        }
    }

    /// Hosts currently claimed by at least one source.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Sources claiming `ip` in `dir`, in the order they first claimed it.
    pub fn holders(&self, ip: IpAddr, dir: Direction) -> &[String] {
        self.claims.get(&(ip, dir)).map_or(&[], Vec::as_slice)
    }

    /// Records `ev` and says whether the detector should see it.
    pub fn admit(&mut self, ev: &ExternalEvent) -> Verdict {
        let key = (ev.ip, ev.direction);
        let source = ev.source();
        match ev.action {
            HookAction::Ban | HookAction::AttackDetails => {
                let full = self.claims.len() >= self.max_hosts;
                match self.claims.get_mut(&key) {
                    Some(v) if v.iter().any(|s| s == source) => Verdict::Forward,
                    Some(v) if v.len() < self.max_sources => {
                        v.push(source.to_string());
                        Verdict::Forward
                    }
                    Some(_) => Verdict::Untracked,
                    None if full => Verdict::Untracked,
                    None => {
                        self.claims.insert(key, vec![source.to_string()]);
                        Verdict::Forward
                    }
                }
            }
            HookAction::Unban => {
                let Some(v) = self.claims.get_mut(&key) else {
                    // Nobody we know of claims it (or the book was full): let the detector
                    // decide, as it would without the book.
                    return Verdict::Forward;
                };
                v.retain(|s| s != source);
                if v.is_empty() {
                    self.claims.remove(&key);
                    Verdict::Forward
                } else {
                    Verdict::Held(v.clone())
                }
            }
        }
    }

    /// [`ClaimBook::admit`], logged and counted; true when the detector should see `ev`.
    pub fn admit_counted(&mut self, ev: &ExternalEvent, metrics: &Metrics) -> bool {
        let count = |outcome: &str| {
            metrics
                .hook_events
                .with_label_values(&[ev.action.as_str(), outcome])
                .inc();
        };
        match self.admit(ev) {
            Verdict::Forward => true,
            Verdict::Untracked => {
                count("claims_full");
                tracing::warn!(event = %ev.summary(), hosts = self.claims.len(),
                    "external claim book full: event applied without remembering its source");
                true
            }
            Verdict::Held(others) => {
                count("held");
                tracing::info!(event = %ev.summary(), still_claimed_by = ?others,
                    "unban held: other detectors still report this attack");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: HookAction, ip: &str, source: Option<&str>) -> ExternalEvent {
        ExternalEvent {
            action,
            ip: ip.parse().unwrap(),
            direction: Direction::Incoming,
            pps: 1,
            attack_type: None,
            protocol: None,
            report: None,
            source: source.map(String::from),
        }
    }

    #[test]
    fn last_unban_ends_it() {
        let mut b = ClaimBook::default();
        let ip = "192.0.2.1";
        assert_eq!(
            b.admit(&ev(HookAction::Ban, ip, Some("a"))),
            Verdict::Forward
        );
        assert_eq!(
            b.admit(&ev(HookAction::Ban, ip, Some("b"))),
            Verdict::Forward
        );
        // A repeated ban or an update from a known source changes nothing.
        assert_eq!(
            b.admit(&ev(HookAction::AttackDetails, ip, Some("a"))),
            Verdict::Forward
        );
        assert_eq!(
            b.holders(ip.parse().unwrap(), Direction::Incoming),
            ["a", "b"]
        );
        assert_eq!(
            b.admit(&ev(HookAction::Unban, ip, Some("a"))),
            Verdict::Held(vec!["b".into()])
        );
        // The same source's unban twice does not end someone else's claim.
        assert_eq!(
            b.admit(&ev(HookAction::Unban, ip, Some("a"))),
            Verdict::Held(vec!["b".into()])
        );
        assert_eq!(
            b.admit(&ev(HookAction::Unban, ip, Some("b"))),
            Verdict::Forward
        );
        assert!(b.is_empty());
        // Unknown host: forwarded, the detector ignores or ends it.
        assert_eq!(b.admit(&ev(HookAction::Unban, ip, None)), Verdict::Forward);
    }

    #[test]
    fn directions_and_unnamed_sources_are_separate_claims() {
        let mut b = ClaimBook::default();
        b.admit(&ev(HookAction::Ban, "192.0.2.1", None));
        let mut out = ev(HookAction::Unban, "192.0.2.1", None);
        out.direction = Direction::Outgoing;
        assert_eq!(b.admit(&out), Verdict::Forward);
        assert_eq!(b.len(), 1, "the incoming claim stays");
        assert_eq!(
            b.admit(&ev(HookAction::Unban, "192.0.2.1", None)),
            Verdict::Forward
        );
    }

    #[test]
    fn bounded_in_hosts_and_sources() {
        let mut b = ClaimBook::new(2, 2);
        assert_eq!(
            b.admit(&ev(HookAction::Ban, "192.0.2.1", Some("a"))),
            Verdict::Forward
        );
        assert_eq!(
            b.admit(&ev(HookAction::Ban, "192.0.2.2", Some("a"))),
            Verdict::Forward
        );
        assert_eq!(
            b.admit(&ev(HookAction::Ban, "192.0.2.3", Some("a"))),
            Verdict::Untracked
        );
        assert_eq!(b.len(), 2);
        assert_eq!(
            b.admit(&ev(HookAction::Ban, "192.0.2.1", Some("b"))),
            Verdict::Forward
        );
        assert_eq!(
            b.admit(&ev(HookAction::Ban, "192.0.2.1", Some("c"))),
            Verdict::Untracked
        );
        let m = Metrics::new();
        assert!(b.admit_counted(&ev(HookAction::Ban, "192.0.2.4", Some("a")), &m));
        assert!(!b.admit_counted(&ev(HookAction::Unban, "192.0.2.1", Some("a")), &m));
        assert_eq!(
            m.hook_events
                .with_label_values(&["ban", "claims_full"])
                .get(),
            1
        );
        assert_eq!(m.hook_events.with_label_values(&["unban", "held"]).get(), 1);
    }
}
