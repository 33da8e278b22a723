//! flowguard binary: everything lives in the library; see `flowguard::cli`.
fn main() -> std::process::ExitCode {
    flowguard::cli::main()
}
