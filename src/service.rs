//! `flowguard run`: wiring of collectors, pipeline, detection ticker, mitigation and API.
pub fn run_blocking(_cfg: crate::config::Config) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
