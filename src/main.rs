//! The `drover` binary: parses the command line and hands over to `drover::cli`.

fn main() -> std::process::ExitCode {
    drover::cli::main()
}
