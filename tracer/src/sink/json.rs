//! JSON Lines: one record or explanation per line, schema in docs/events.md.
use std::io::{self, Write};

use crate::{
    base::record::{Kind, Record},
    explain::Explanation,
    sink::{Sink, Take},
};

pub struct JsonLines<W: Write> {
    out: io::BufWriter<W>,
    events: bool,
    explanations: bool,
    buf: Vec<u8>,
}

impl<W: Write> JsonLines<W> {
    /// Explanations, and with `events` every record (else only loss records).
    pub fn new(out: W, events: bool) -> Self {
        JsonLines {
            out: io::BufWriter::with_capacity(64 * 1024, out),
            events,
            explanations: true,
            buf: Vec::new(),
        }
    }

    /// Every record and no explanation (`export`).
    pub fn records_only(out: W) -> Self {
        JsonLines {
            explanations: false,
            ..JsonLines::new(out, true)
        }
    }

    fn line(&mut self) -> io::Result<()> {
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn takes(&self, r: &Record) -> Take {
        if self.events || r.kind == Kind::Loss {
            Take::Timed
        } else {
            Take::No
        }
    }

    fn record(&mut self, r: &Record) -> io::Result<()> {
        self.buf.clear();
        record(r, &mut self.buf);
        self.line()
    }

    fn explanation(&mut self, e: &Explanation) -> io::Result<()> {
        if !self.explanations {
            return Ok(());
        }
        self.buf.clear();
        explanation(e, &mut self.buf);
        self.line()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

// Serializing plain structs of strings and numbers cannot fail.
pub fn record(r: &Record, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, r).expect("record serializes");
}

pub fn explanation(e: &Explanation, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, e).expect("explanation serializes");
}
