//! Stage 1, load: what this kernel offers (BTF, tracefs formats, kallsyms) and the
//! eBPF programs attached to it. Uses only `base`.
pub mod btf;
pub mod hooks;
pub mod info;
pub mod kallsyms;
pub mod privileges;
pub mod probes;
pub mod tracefs;
