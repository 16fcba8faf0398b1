//! The eBPF object is linked by `bpf-linker`; rebuild when that binary changes.
use which::which;

fn main() {
    let bpf_linker =
        which("bpf-linker").expect("bpf-linker is not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
