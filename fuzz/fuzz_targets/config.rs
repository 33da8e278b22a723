//! The config loader: any text through `Config::from_toml_str`. A config that loads must
//! print (`check-config --print`) and must never print the MITIGATOR password or the API
//! token.
#![no_main]

use flowguard::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = Config::from_toml_str(&text) else {
        return;
    };
    let printed = toml::to_string_pretty(&cfg).expect("a loaded config prints");
    // Secrets are left out of the printed form and redacted in Debug.
    let table: toml::Table = printed.parse().expect("printed config is TOML");
    if let Some(m) = table.get("mitigator").and_then(|m| m.as_table()) {
        assert!(!m.contains_key("password"), "password printed");
    }
    if let Some(api) = table.get("api").and_then(|m| m.as_table()) {
        assert!(!api.contains_key("token"), "token printed");
    }
    if cfg.mitigator.password.is_some() {
        let debug = format!("{:?}", cfg.mitigator);
        assert!(debug.contains("<redacted>"), "password in Debug");
    }
    let _ = cfg.protected_prefixes();
    let _ = cfg.whitelist_prefixes();
    let _ = cfg.validate();
});
