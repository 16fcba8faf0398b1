//! The `rstrace` binary; everything lives in the library (`tracer::cmd`).
fn main() -> std::process::ExitCode {
    tracer::cmd::main()
}
