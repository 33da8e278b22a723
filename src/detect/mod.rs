//! Detect stage: hostgroups and thresholds, classification, attack lifecycle, reports.
pub mod config;
