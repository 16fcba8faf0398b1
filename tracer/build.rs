//! Builds the eBPF programs (tracer-ebpf) for the bpf target and places the object in
//! OUT_DIR, where `probes.rs` includes it. With AYA_BUILD_SKIP=1 (lint runs) an empty
//! placeholder is written instead; such a binary refuses to start.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1") {
        std::fs::write(out.join("tracer"), [])?;
    }
    // bpf-linker as installed by `cargo xtask setup`, so that plain `cargo build` works.
    if let Some(home) = std::env::var_os("HOME") {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(&home).join(".cache"));
        let tools = cache.join("rstrace/tools/bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<_> = std::env::split_paths(&path).collect();
        paths.insert(0, tools);
        std::env::set_var("PATH", std::env::join_paths(paths)?);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("tracer-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
