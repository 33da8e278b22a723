//! flowguard binary: the library does the work (see `flowguard::cli`); `flowguard demo`
//! lives here, above the library, since it drives the whole service and a simulator.
mod demo;

fn main() -> std::process::ExitCode {
    flowguard::cli::main_with(demo::run)
}
