//! Stage 2, read and store (uses `base` and `kernel`).
//!
//! Capture files: `rstrace record` writes the evidence and its context, `rstrace
//! explain` replays them through the same pipeline as `watch`. The format is in
//! docs/capture-format.md.
pub mod codec;
pub mod dir;
pub mod file;

pub use file::{CaptureWriter, Header, Reader, RotatePolicy};
#[cfg(test)]
mod tests;
