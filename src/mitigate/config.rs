//! `[mitigator]` configuration.
//! PLACEHOLDER owned by the mitigation work: extend freely.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MitigatorConfig {
    /// Base URL of the appliance, e.g. `https://mitigator.example.net`; none = dry run.
    pub url: Option<String>,
    pub username: String,
    #[serde(skip_serializing)]
    pub password: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
    pub verify_tls: bool,
    pub ca_file: Option<std::path::PathBuf>,
    pub dry_run: Option<bool>,
    pub default_policy: u32,
}

impl Default for MitigatorConfig {
    fn default() -> Self {
        MitigatorConfig {
            url: None,
            username: String::new(),
            password: None,
            password_file: None,
            verify_tls: true,
            ca_file: None,
            dry_run: None,
            default_policy: 1,
        }
    }
}

/// Semantic checks of `[mitigator]`; every problem names its key.
pub fn validate(_cfg: &MitigatorConfig) -> Vec<String> {
    Vec::new()
}
