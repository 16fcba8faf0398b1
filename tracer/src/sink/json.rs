//! JSON Lines: one [`Record`] per line, schema in docs/events.md.
use crate::record::Record;

pub fn format(r: &Record, out: &mut Vec<u8>) {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_writer(&mut *out, r).expect("record serializes");
}
