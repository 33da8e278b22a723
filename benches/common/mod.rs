//! Shared by the benches.

use std::sync::Arc;

use flowguard::config::Config;
use flowguard::metrics::Metrics;
use flowguard::pipeline::Pipeline;

/// A pipeline protecting `protected` with a host cap of `max_hosts`, a 5 s window, no idle
/// eviction within a run, and thresholds no bench traffic reaches (no attacks, no
/// mitigation work in the figures).
pub fn pipeline(protected: &str, max_hosts: usize) -> Pipeline {
    let cfg: Config = toml::from_str(&format!(
        r#"
        [networks]
        protected = ["{protected}"]
        [aggregate]
        window_seconds = 5
        max_tracked_hosts = {max_hosts}
        idle_timeout_seconds = 3600
        [[hostgroup]]
        name = "default"
        threshold_pps = 1000000
        threshold_mbps = 100000
        "#
    ))
    .expect("bench config");
    Pipeline::new(&cfg, Arc::new(Metrics::new())).expect("bench pipeline")
}
