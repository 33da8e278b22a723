//! Mitigate stage: turns attack events into MITIGATOR REST calls.
//! PLACEHOLDER: owned by the mitigation work.

pub mod config;
pub use config::MitigatorConfig;
