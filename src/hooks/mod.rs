//! FastNetMon sidecar: flowguard as FastNetMon's `notify_script_path`, and the event
//! endpoint other detectors use.
//!
//! What this module owns:
//! - [`fastnetmon`] (re-exported from [`crate::fnm_report`], which detect writes reports
//!   with): the attack report FastNetMon writes on the notify script's stdin
//!   (parser tolerant of 1.1.x to 1.2.6+ forms, and the 1.2.4 text form for our own reports);
//! - [`advanced`]: FastNetMon Advanced's JSON (notify script on stdin, and web callbacks);
//! - [`claims`]: which detector instances claim which host, so that one victim reported by
//!   several ends only when the last of them says so;
//! - [`event`]: [`event::ExternalEvent`], the one event shape that the hook CLI, the spool
//!   and `POST /api/v1/events/fastnetmon` share;
//! - [`endpoint`]: the HTTP handler that authenticates, bounds and queues those events;
//! - [`spool`]: the on-disk queue the hook falls back to when the service is unreachable,
//!   and the service-side drainer;
//! - [`cli`]: `flowguard hook fastnetmon ...` and `flowguard import-fastnetmon ...`;
//! - [`import`]: the FastNetMon configuration → flowguard TOML converter.
//!
//! What it must not do: decide about attacks. Events leave this module through a bounded
//! channel; merging them with flowguard's own detection belongs to the detect stage.

pub mod advanced;
pub mod claims;
pub mod cli;
pub mod endpoint;
pub mod event;
/// The report format lives beside the stages ([`crate::fnm_report`]): detect writes it
/// too. The old path stays for the hook's own modules and tests.
pub use crate::fnm_report as fastnetmon;
pub mod import;
pub mod spool;

use std::path::PathBuf;

pub use event::{ExternalEvent, HookAction};

/// Everything that can go wrong on the hook side.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Arguments FastNetMon (or a person) passed that are not a notify call.
    #[error("usage: {0}")]
    Usage(String),
    /// Input that is not a notify call flowguard can apply (bad JSON, unknown action or
    /// hostgroup, wrong field types); nothing of it was applied.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Well-formed input naming something flowguard does not have (an unknown hostgroup);
    /// nothing of it was applied.
    #[error("cannot apply: {0}")]
    NotApplicable(String),
    /// A well-formed call flowguard deliberately does nothing with (for example FastNetMon's
    /// `internal`/`other`/`unknown` directions, which name no protected host side).
    #[error("ignored: {0}")]
    Ignored(String),
    #[error("spool {path}: {source}")]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spool holds as many events as allowed: the service has not drained it for a
    /// while, and silently growing it would hide that.
    #[error("spool {path} is full ({count} events waiting); is the flowguard service running?")]
    SpoolFull { path: PathBuf, count: usize },
    #[error("encoding event: {0}")]
    Encode(#[from] serde_json::Error),
}
