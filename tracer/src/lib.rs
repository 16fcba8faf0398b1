//! rstrace: explains why TCP connections are refused, reset or time out.
//!
//! The modules follow the pipeline, in stage order; a stage uses only the stages
//! before it (`cargo xtask lint` checks it):
//!
//! 0. [`base`]: records, clock, bounded joins, private files;
//! 1. [`kernel`]: load: kernel facts and the eBPF programs;
//! 2. [`source`] and [`capture`]: read: host context; capture files, both ways;
//! 3. [`decode`]: raw ring-buffer bytes to records;
//! 4. [`enrich`]: the host model, socket owners added to records;
//! 5. [`explain`]: stories, rules, explanations;
//! 6. [`sink`]: where records and explanations go;
//! 7. [`pipeline`]: decode, enrich, explain and the sinks joined;
//! 8. [`cmd`]: the commands, which may use everything.
pub mod base;
pub mod capture;
pub mod cmd;
pub mod decode;
pub mod enrich;
pub mod explain;
pub mod kernel;
pub mod pipeline;
pub mod sink;
pub mod source;
