//! flowguard: DDoS detection from router flow exports, with MITIGATOR mitigation.
//!
//! # Layout
//!
//! Data flows one way, and the folders are the stages in that order:
//!
//! - [`collectors`]: UDP sockets (batched receive), exporter allow-list, and the receive
//!   threads that run the [`decode`] stage's decoders (one set per thread). They hand
//!   records to any [`aggregate::RecordSink`] (the service gives them the aggregate
//!   stage); of the stages after decode they import only that trait.
//! - [`decode`]: NetFlow v5/v9/IPFIX and sFlow v5 datagrams → [`decode::FlowRecord`]s, with
//!   per-exporter template and sampling state. No I/O: a datagram and its exporter's
//!   address in, records out (the only clock read is the idle-scope bookkeeping of the
//!   NetFlow decoder).
//! - [`aggregate`]: protected networks, per-host per-direction moving-average rates, the sharded
//!   host table with its cap and eviction; the busiest hosts as of the last pass. Takes
//!   records through [`aggregate::RecordSink`], hands detection one
//!   [`aggregate::HostChange`] per host written each second that detection wants (over a
//!   threshold or under attack: [`aggregate::SecondSink::wants`]) and applies its
//!   [`aggregate::Command`]s (watch, unwatch, keep).
//! - [`detect`]: hostgroups and thresholds, classification, attack lifecycle, attack
//!   metrics and reports; reads aggregate's values, emits [`model::AttackEvent`]s and
//!   commands, never touches the table.
//! - [`mitigate`]: turns attack events into MITIGATOR calls and BGP routes (client,
//!   planner, GoBGP backend, state file).
//! - [`hooks`]: FastNetMon notify-script sidecar (hook CLI, event endpoint, config
//!   import).
//! - [`fnm_report`]: FastNetMon's attack report format (parser and writer), beside the
//!   stages: detect writes reports with it and hooks read them, neither imports the
//!   other.
//! - [`cluster`]: cluster mode on NATS JetStream (collector, detector and controller
//!   roles); absent without a `[cluster]` section.
//! - [`api`]: HTTP server: `/metrics`, `/healthz`, `/api/v1/...`.
//! - [`top`]: `flowguard top`, the operator console's picture in a terminal, read from a
//!   running service's API (`/api/v1/summary`, the JSON the web console at `/` reads).
//!
//! Shared by all: [`config`] (loading and validation), [`metrics`] (every metric name),
//! [`model`] (the vocabulary stages exchange), [`clock`] (the one "now" every shell reads: the
//! wall clock live, tokio's paused time in tests; replay passes capture times instead). [`pipeline`] only wires: it builds the aggregate and
//! detect stages from the config and runs the per-second pass by handing one stage's
//! values to the other, for both [`service`] (`flowguard run`: collectors → aggregate,
//! detect → mitigate, hooks, api, cluster) and [`replay`] (`flowguard replay`); [`cli`] is
//! the command line. The collectors' decode tally is [`collectors::tally`].

pub mod aggregate;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod collectors;
pub mod config;
pub mod decode;
pub mod detect;
pub mod fnm_report;
pub mod hooks;
pub mod metrics;
pub mod mitigate;
pub mod model;
pub mod pipeline;
pub mod replay;
pub mod service;
pub mod top;
