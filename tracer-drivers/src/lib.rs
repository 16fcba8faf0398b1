//! Drivers for `cargo xtask bench` and `cargo xtask fuzz`, on the tracer library:
//! what the benchmark and the fuzzer need to run inside the agent's code, not shipped
//! in `rstrace`.
pub mod bench;
pub mod fuzz;
