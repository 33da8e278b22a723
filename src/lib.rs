//! flowguard: DDoS detection from router flow exports, with MITIGATOR mitigation.
//!
//! # Layout
//!
//! Data flows one way, and the folders are the stages in that order:
//!
//! - [`collectors`]: UDP sockets (batched receive), exporter allow-list; I/O only. They
//!   hand records to any [`aggregate::RecordSink`] (the service gives them the aggregate
//!   stage); they import nothing else of a later stage.
//! - [`decode`]: NetFlow v5/v9/IPFIX and sFlow v5 datagrams → [`decode::FlowRecord`]s, with
//!   per-exporter template and sampling state. No I/O: bytes and `now` in, records out
//!   (the only clock read is the idle-scope bookkeeping of the NetFlow decoder).
//! - [`aggregate`]: protected networks, per-host per-direction moving-average rates, the sharded
//!   host table with its cap and eviction; the busiest hosts as of the last pass. Takes
//!   records through [`aggregate::RecordSink`], hands detection one
//!   [`aggregate::HostChange`] per host written each second and applies its
//!   [`aggregate::Command`]s (watch, unwatch, keep).
//! - [`detect`]: hostgroups and thresholds, classification, attack lifecycle, attack
//!   metrics and reports; reads aggregate's values, emits [`model::AttackEvent`]s and
//!   commands, never touches the table.
//! - [`mitigate`]: turns attack events into MITIGATOR calls (client, planner, state file).
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
//! [`model`] (the vocabulary stages exchange), [`clock`] (one notion of "now" for the live
//! service and the offline replay). [`pipeline`] only wires: it builds the aggregate and
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
