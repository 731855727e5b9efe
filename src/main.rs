//! The `baton` binary: parses flags and hands over to the library.
fn main() -> std::process::ExitCode {
    baton::cli::main()
}
