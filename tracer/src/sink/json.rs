//! JSON Lines: one record or explanation per line, schema in docs/events.md.
use crate::{base::record::Record, explain::Explanation};

// Serializing plain structs of strings and numbers cannot fail.
pub fn record(r: &Record, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, r).expect("record serializes");
}

pub fn explanation(e: &Explanation, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, e).expect("explanation serializes");
}
