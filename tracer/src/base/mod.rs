//! Stage 0, the shared basics every stage uses: the record (what one piece of
//! evidence or context says), the clock, bounded joins, private files. It uses
//! nothing else in this crate.
pub mod clock;
pub mod generations;
pub mod private_file;
pub mod reasons;
pub mod record;
pub mod workload;

/// Hash map for the per-event paths: ahash is several times faster than SipHash and
/// still keyed per process, so remote peers cannot aim collisions at it.
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
