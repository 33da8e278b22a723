//! The GoBGP backend: adds, looks up and withdraws routes in a gobgpd through its `gobgp`
//! client (Debian package `gobgpd`). flowguard never speaks BGP itself: gobgpd holds the
//! sessions to the routers.
//!
//! The argument lists and the reading of gobgp's JSON are pure functions (unit-tested);
//! [`Gobgp`] only runs the client, each call bounded by `command_timeout_seconds` and
//! killed when it runs over.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use super::backend::{Backend, StepError};
use super::bgp_config::BgpConfig;
use super::plan::{BackendKind, Op, Resource, Seen};
use super::route::{FlowAction, Route};
use crate::metrics::Metrics;

/// Longest gobgp output read (a flowspec table of thousands of rules fits).
const MAX_OUTPUT: usize = 64 << 20;

fn family(prefix: &IpNet, flowspec: bool) -> &'static str {
    match (prefix, flowspec) {
        (IpNet::V4(_), false) => "ipv4",
        (IpNet::V6(_), false) => "ipv6",
        (IpNet::V4(_), true) => "ipv4-flowspec",
        (IpNet::V6(_), true) => "ipv6-flowspec",
    }
}

fn flowspec_match(
    destination: &IpNet,
    protocol: Option<u8>,
    source_port: Option<u16>,
    destination_port: Option<u16>,
) -> Vec<String> {
    let mut a = vec![
        "match".into(),
        "destination".into(),
        destination.to_string(),
    ];
    if let Some(p) = protocol {
        a.extend(["protocol".into(), p.to_string()]);
    }
    if let Some(p) = source_port {
        a.extend(["source-port".into(), format!("=={p}")]);
    }
    if let Some(p) = destination_port {
        a.extend(["destination-port".into(), format!("=={p}")]);
    }
    a
}

/// `gobgp` arguments (after the connection flags) that announce (`on`) or withdraw `r`.
pub fn write_args(r: &Route, on: bool) -> Vec<String> {
    match r {
        Route::Blackhole {
            prefix,
            next_hop,
            communities,
        } => {
            let mut a: Vec<String> = vec![
                "global".into(),
                "rib".into(),
                if on { "add" } else { "del" }.into(),
                "-a".into(),
                family(prefix, false).into(),
                prefix.to_string(),
            ];
            if on {
                a.extend(["nexthop".into(), next_hop.to_string()]);
                if !communities.is_empty() {
                    a.extend(["community".into(), communities.join(",")]);
                }
            }
            a
        }
        Route::Flowspec {
            destination,
            protocol,
            source_port,
            destination_port,
            action,
            communities,
        } => {
            let mut a: Vec<String> = vec![
                "global".into(),
                "rib".into(),
                "-a".into(),
                family(destination, true).into(),
                if on { "add" } else { "del" }.into(),
            ];
            a.extend(flowspec_match(
                destination,
                *protocol,
                *source_port,
                *destination_port,
            ));
            if on {
                a.push("then".into());
                match action {
                    FlowAction::Discard => a.push("discard".into()),
                    FlowAction::RateLimit(b) => a.extend(["rate-limit".into(), b.to_string()]),
                }
                if !communities.is_empty() {
                    a.extend(["community".into(), communities.join(",")]);
                }
            }
            a
        }
    }
}

/// `gobgp` arguments that list what gobgpd holds for `r` (JSON).
pub fn lookup_args(r: &Route) -> Vec<String> {
    match r {
        Route::Blackhole { prefix, .. } => vec![
            "-j".into(),
            "global".into(),
            "rib".into(),
            "-a".into(),
            family(prefix, false).into(),
            prefix.to_string(),
        ],
        Route::Flowspec { destination, .. } => vec![
            "-j".into(),
            "global".into(),
            "rib".into(),
            "-a".into(),
            family(destination, true).into(),
        ],
    }
}

fn community_value(s: &str) -> Option<u64> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse::<u16>().ok()? as u64) << 16 | b.parse::<u16>().ok()? as u64)
}

/// Paths gobgpd originated itself (added through its API), not learned from a peer.
fn local_paths(v: &Value) -> Vec<&Value> {
    let Some(m) = v.as_object() else {
        return Vec::new();
    };
    m.values()
        .filter_map(Value::as_array)
        .flatten()
        .filter(|p| {
            p.get("neighbor-ip")
                .and_then(Value::as_str)
                .map_or(true, |n| n.is_empty() || n == "<nil>")
        })
        .collect()
}

fn communities_of(path: &Value) -> Vec<u64> {
    path["attrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == 8)
        .flat_map(|a| a["communities"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c.as_u64())
        .collect()
}

/// (destination, protocol, source port, destination port) of a FlowSpec rule.
type Components = (IpNet, Option<u8>, Option<u16>, Option<u16>);

/// The FlowSpec components of a path's NLRI as (destination, protocol, source port,
/// destination port), when it holds only components flowguard writes with `==` values.
fn flowspec_components(path: &Value) -> Option<Components> {
    let items = path["nlri"]["value"].as_array()?;
    let (mut dst, mut proto, mut sport, mut dport) = (None, None, None, None);
    let single = |v: &Value| -> Option<u64> {
        let vals = v["value"].as_array()?;
        match vals.as_slice() {
            // op 0x81: end-of-list + equals.
            [x] if x["op"].as_u64()? & 0x07 == 0x01 => x["value"].as_u64(),
            _ => None,
        }
    };
    for it in items {
        match it["type"].as_u64()? {
            1 => dst = Some(it["value"]["prefix"].as_str()?.parse::<IpNet>().ok()?),
            3 => proto = Some(u8::try_from(single(it)?).ok()?),
            5 => dport = Some(u16::try_from(single(it)?).ok()?),
            6 => sport = Some(u16::try_from(single(it)?).ok()?),
            _ => return None,
        }
    }
    Some((dst?, proto, sport, dport))
}

/// What gobgpd's JSON answer to [`lookup_args`] says about `r`. With a marker community
/// configured, a matching local path without it is someone else's.
pub fn seen_in(r: &Route, rib: &Value, marker: Option<&str>) -> Seen {
    let matching: Vec<&Value> = match r {
        Route::Blackhole { prefix, .. } => local_paths(rib)
            .into_iter()
            .filter(|p| {
                p["nlri"]["prefix"]
                    .as_str()
                    .and_then(|s| s.parse::<IpNet>().ok())
                    == Some(*prefix)
            })
            .collect(),
        Route::Flowspec {
            destination,
            protocol,
            source_port,
            destination_port,
            ..
        } => local_paths(rib)
            .into_iter()
            .filter(|p| {
                flowspec_components(p)
                    == Some((*destination, *protocol, *source_port, *destination_port))
            })
            .collect(),
    };
    if matching.is_empty() {
        return Seen::Absent;
    }
    match marker.and_then(community_value) {
        Some(m) if !matching.iter().any(|p| communities_of(p).contains(&m)) => Seen::Foreign,
        _ => Seen::Present,
    }
}

/// Drives one gobgpd through its client.
pub struct Gobgp {
    cfg: BgpConfig,
    host: String,
    port: String,
    metrics: Arc<Metrics>,
}

impl Gobgp {
    pub fn new(cfg: BgpConfig, metrics: Arc<Metrics>) -> Gobgp {
        let (host, port) = cfg
            .gobgp_api
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .map(|(h, p)| (h.trim_matches(['[', ']']).to_string(), p.to_string()))
            .unwrap_or_else(|| ("127.0.0.1".into(), "50051".into()));
        Gobgp {
            cfg,
            host,
            port,
            metrics,
        }
    }

    /// Runs `gobgp -u HOST -p PORT args...`; its stdout, or an error that is always
    /// retried (a bad argument list would be a bug here, not the operator's input).
    async fn run(&self, args: &[String]) -> Result<String, StepError> {
        let mut cmd = tokio::process::Command::new(&self.cfg.gobgp_cli);
        cmd.args(["-u", &self.host, "-p", &self.port])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| StepError::retry(format!("{}: {e}", self.cfg.gobgp_cli.display())))?;
        let out = match tokio::time::timeout(self.cfg.command_timeout(), child.wait_with_output())
            .await
        {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(StepError::retry(format!("gobgp: {e}"))),
            // Dropping the future kills the child (kill_on_drop).
            Err(_) => {
                return Err(StepError::retry(format!(
                    "gobgp {}: no answer within {:?}",
                    args.join(" "),
                    self.cfg.command_timeout()
                )))
            }
        };
        let text = |b: &[u8]| {
            String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)])
                .trim()
                .to_string()
        };
        if !out.status.success() {
            let mut msg = text(&out.stderr);
            if msg.is_empty() {
                msg = text(&out.stdout);
            }
            msg.truncate(300);
            return Err(StepError::retry(format!(
                "gobgp {} failed ({}): {msg}",
                args.first().map(String::as_str).unwrap_or(""),
                out.status
            )));
        }
        Ok(text(&out.stdout))
    }
}

fn route_of(r: &Resource) -> Result<&Route, StepError> {
    match r {
        Resource::Route(r) => Ok(r),
        Resource::Switch(_) => Err(StepError::reject("not a BGP route".into())),
    }
}

impl Backend for Gobgp {
    fn kind(&self) -> BackendKind {
        BackendKind::Bgp
    }

    fn dry_run(&self) -> bool {
        self.cfg.is_dry_run()
    }

    fn backoff(&self, attempt: u32) -> Duration {
        super::client::backoff(self.cfg.retry_base_ms, self.cfg.retry_max_ms, attempt)
    }

    fn describe(&self, r: &Resource, on: bool) -> String {
        match r {
            Resource::Route(rt) => format!(
                "{} {}",
                if on { "announce" } else { "withdraw" },
                rt.describe()
            ),
            Resource::Switch(_) => String::new(),
        }
    }

    async fn observe(&self, r: &Resource) -> Result<Seen, StepError> {
        let rt = route_of(r)?;
        let out = self.run(&lookup_args(rt)).await.inspect_err(|_| {
            self.metrics.bgp_errors.with_label_values(&["lookup"]).inc();
        })?;
        // gobgp prints nothing (or `{}`, or `null`) for an empty table.
        let v: Value = if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out).map_err(|e| {
                self.metrics.bgp_errors.with_label_values(&["lookup"]).inc();
                StepError::retry(format!("gobgp lookup: not JSON: {e}"))
            })?
        };
        Ok(seen_in(rt, &v, self.cfg.marker_community.as_deref()))
    }

    async fn write(&self, r: &Resource, on: bool) -> Result<(), StepError> {
        let rt = route_of(r)?;
        let op = if on { "announce" } else { "withdraw" };
        self.run(&write_args(rt, on)).await.inspect_err(|_| {
            self.metrics.bgp_errors.with_label_values(&[op]).inc();
        })?;
        if on {
            self.metrics
                .bgp_announcements
                .with_label_values(&[rt.kind()])
                .inc();
        } else {
            self.metrics
                .bgp_withdrawals
                .with_label_values(&[rt.kind()])
                .inc();
        }
        Ok(())
    }

    async fn act(&self, _op: &Op, _attack: &str) -> Result<(), StepError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bh() -> Route {
        Route::Blackhole {
            prefix: "127.0.0.22/32".parse().unwrap(),
            next_hop: "192.0.2.1".parse().unwrap(),
            communities: vec!["65535:666".into(), "65001:999".into()],
        }
    }

    fn fs() -> Route {
        Route::Flowspec {
            destination: "127.0.0.22/32".parse().unwrap(),
            protocol: Some(17),
            source_port: Some(53),
            destination_port: None,
            action: FlowAction::RateLimit(125000),
            communities: vec!["65001:999".into()],
        }
    }

    #[test]
    fn argument_lists() {
        assert_eq!(
            write_args(&bh(), true).join(" "),
            "global rib add -a ipv4 127.0.0.22/32 nexthop 192.0.2.1 community 65535:666,65001:999"
        );
        assert_eq!(
            write_args(&bh(), false).join(" "),
            "global rib del -a ipv4 127.0.0.22/32"
        );
        assert_eq!(
            write_args(&fs(), true).join(" "),
            "global rib -a ipv4-flowspec add match destination 127.0.0.22/32 protocol 17 source-port ==53 then rate-limit 125000 community 65001:999"
        );
        assert_eq!(
            write_args(&fs(), false).join(" "),
            "global rib -a ipv4-flowspec del match destination 127.0.0.22/32 protocol 17 source-port ==53"
        );
        assert_eq!(
            lookup_args(&bh()).join(" "),
            "-j global rib -a ipv4 127.0.0.22/32"
        );
    }

    // Answers captured from gobgp 3.10 (`gobgp -j global rib ...`).
    const BH: &str = r#"{"127.0.0.22/32":[{"nlri":{"prefix":"127.0.0.22/32"},"age":1796131353,"best":true,"attrs":[{"type":1,"value":2},{"type":8,"communities":[4294902426,4259906535]},{"type":3,"nexthop":"192.0.2.1"}],"stale":false}]}"#;
    const FS: &str = r#"{"[destination: 127.0.0.22/32][protocol: ==udp][source-port: ==53]":[{"nlri":{"value":[{"type":1,"value":{"prefix":"127.0.0.22/32"}},{"type":3,"value":[{"op":129,"value":17}]},{"type":6,"value":[{"op":129,"value":53}]}]},"age":1796131354,"best":true,"attrs":[{"type":1,"value":2},{"type":16,"value":[{"type":128,"subtype":6,"as":0,"rate":0}]}],"stale":false}]}"#;
    const LEARNED: &str = r#"{"127.0.0.22/32":[{"nlri":{"prefix":"127.0.0.22/32"},"attrs":[],"source-id":"127.0.0.2","neighbor-ip":"127.0.0.2"}]}"#;

    #[test]
    fn reading_the_rib() {
        let bh_rib: Value = serde_json::from_str(BH).unwrap();
        assert_eq!(seen_in(&bh(), &bh_rib, None), Seen::Present);
        assert_eq!(seen_in(&bh(), &bh_rib, Some("65001:999")), Seen::Present);
        assert_eq!(seen_in(&bh(), &bh_rib, Some("65001:1")), Seen::Foreign);
        assert_eq!(seen_in(&bh(), &Value::Null, None), Seen::Absent);
        // A path learned from a peer is not in our global table's local paths.
        let learned: Value = serde_json::from_str(LEARNED).unwrap();
        assert_eq!(seen_in(&bh(), &learned, None), Seen::Absent);
        let fs_rib: Value = serde_json::from_str(FS).unwrap();
        assert_eq!(seen_in(&fs(), &fs_rib, None), Seen::Present);
        let Route::Flowspec {
            destination,
            protocol,
            action,
            communities,
            ..
        } = fs()
        else {
            unreachable!()
        };
        let other_port = Route::Flowspec {
            destination,
            protocol,
            source_port: Some(123),
            destination_port: None,
            action,
            communities,
        };
        assert_eq!(seen_in(&other_port, &fs_rib, None), Seen::Absent);
    }
}
