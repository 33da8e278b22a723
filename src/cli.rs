//! The command line: parse, load config, start logging, hand over to a subcommand.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, Sources};

#[derive(Parser, Debug)]
#[command(
    name = "flowguard",
    version,
    about = "DDoS detection from NetFlow/IPFIX/sFlow with MITIGATOR mitigation",
    long_about = "flowguard collects NetFlow v5/v9/IPFIX and sFlow v5 from routers, keeps \
per-host moving-average rates for the protected networks, detects floods against per-hostgroup \
thresholds, and drives MITIGATOR to mitigate them. Without a subcommand it runs the service.\n\n\
Configuration: --config FILE (repeatable, later files win), or the bundled layout \
(collectors/*.toml, thresholds/*.toml, flowguard.toml) under --config-dir (default: the current \
directory if it has that layout, else /etc/flowguard). FLOWGUARD__SECTION__KEY environment \
variables and --set section.key=value override files."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Configuration file (TOML); repeat to merge several, later ones win.
    #[arg(long = "config", short = 'c', global = true, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Directory with the bundled layout (collectors/, thresholds/, flowguard.toml).
    #[arg(long, global = true, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Override one key, e.g. --set api.listen=127.0.0.1:9909 (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. info or flowguard=debug.
    #[arg(long, global = true, env = "FLOWGUARD_LOG", default_value = "info")]
    pub log_level: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service: collectors, detection, mitigation and the HTTP API.
    Run,
    /// Replay pcap/pcapng captures of exported datagrams through the pipeline and print
    /// attack events (and, with --totals, per-host totals) as JSON lines.
    Replay(ReplayArgs),
    /// Load and validate the configuration; print every problem at once.
    CheckConfig(CheckConfigArgs),
    /// Hooks for other detectors: `flowguard hook fastnetmon <IP> <direction> <pps> <action>`
    /// is a drop-in FastNetMon notify_script_path.
    #[command(subcommand)]
    Hook(HookCommand),
    /// Print the flowguard configuration matching a FastNetMon fastnetmon.conf.
    ImportFastnetmon(crate::hooks::cli::ImportArgs),
    /// See the whole mission on loopback: starts mitigator-sim and flowguard, replays a
    /// bundled capture of real NetFlow exports of three floods at its real pace, and prints
    /// each attack and MITIGATOR call as it happens.
    Demo(DemoArgs),
    /// Watch a running service in the terminal: active attacks and their mitigation, top
    /// hosts, exporters, health; refreshes every second; `q` quits.
    Top(crate::top::TopArgs),
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Replay speed (1 = the capture's real pace).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
}

#[derive(Subcommand, Debug)]
pub enum HookCommand {
    /// FastNetMon notify script: reads the report on stdin, sends ban/unban to the running
    /// service (POST /api/v1/events/fastnetmon with [api] token), or spools it under
    /// [state] dir/spool when the service is unreachable. Exit 0: delivered, spooled or
    /// ignored; 2: usage; 3: rejected by the service; 4: cannot spool; 5: no configuration.
    Fastnetmon(crate::hooks::cli::HookArgs),
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// After the run, print one line per host and direction with sampling-scaled totals.
    #[arg(long)]
    pub totals: bool,
    /// Stop at the last datagram instead of letting attacks in progress run out.
    #[arg(long)]
    pub no_drain: bool,
    /// Show a progress bar (default: when stderr is a terminal).
    #[arg(long)]
    pub progress: Option<bool>,
    /// Capture files (pcap or pcapng).
    #[arg(required = true, value_name = "CAPTURE")]
    pub captures: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CheckConfigArgs {
    /// Print the effective configuration (secrets left out) as TOML.
    #[arg(long)]
    pub print: bool,
}

impl GlobalArgs {
    pub fn sources(&self) -> Sources {
        Sources {
            files: self.config.clone(),
            dir: self.config_dir.clone(),
            sets: self.set.clone(),
            env: true,
        }
    }

    pub fn load(&self) -> Result<Config, crate::config::ConfigError> {
        Config::load(&self.sources())
    }
}

pub fn init_tracing(g: &GlobalArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&g.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match g.log_format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}

/// `flowguard demo`'s body, which lives in the binary (it drives the whole service).
pub type Demo = fn(f64) -> anyhow::Result<()>;

pub fn main_with(demo: Demo) -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.global);
    match dispatch(cli, demo) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flowguard: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli, demo: Demo) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let cfg = cli.global.load()?;
            crate::service::run_blocking(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(a) => {
            let cfg = cli.global.load()?;
            let opts = crate::replay::ReplayOptions {
                totals: a.totals,
                no_drain: a.no_drain,
                progress: a
                    .progress
                    .unwrap_or_else(|| std::io::stderr().is_terminal()),
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let s = crate::replay::run(&cfg, &a.captures, &opts, &mut out)?;
            use std::io::Write;
            out.flush()?;
            eprintln!("{}", s.line());
            Ok(ExitCode::SUCCESS)
        }
        Command::Hook(HookCommand::Fastnetmon(a)) => {
            let cfg = match cli.global.load() {
                Ok(c) => c,
                Err(e) => {
                    // The event cannot even be spooled without the config: say so loudly.
                    eprintln!("flowguard hook: cannot load configuration, event for {} {} NOT delivered: {e}", a.ip, a.action);
                    std::io::copy(&mut crate::hooks::cli::stdin_for(&a), &mut std::io::sink()).ok();
                    return Ok(ExitCode::from(5));
                }
            };
            Ok(crate::hooks::cli::run_hook(
                &cfg,
                &a,
                &mut crate::hooks::cli::stdin_for(&a),
            ))
        }
        Command::Demo(a) => {
            demo(a.speed)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(a) => {
            crate::top::run(&a)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportFastnetmon(a) => {
            print!("{}", crate::hooks::cli::run_import(&a)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(a) => match cli.global.load() {
            Ok(cfg) => {
                if a.print {
                    println!("{}", toml::to_string_pretty(&cfg)?);
                }
                eprintln!("configuration is valid");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
    }
}
