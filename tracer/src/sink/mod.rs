//! Stage 6, sinks (use `base` and `explain`).
//!
//! Output sinks: text for people, JSON Lines for machines. Both print explanations
//! and, when asked, the raw evidence records.
pub mod json;
pub mod text;

use std::io::{self, Write};

use crate::{base::record::Record, explain::Explanation};

pub struct Output<W: Write> {
    out: io::BufWriter<W>,
    json: bool,
    verbose: bool,
    buf: Vec<u8>,
}

impl<W: Write> Output<W> {
    pub fn new(out: W, json: bool, verbose: bool) -> Self {
        Output {
            out: io::BufWriter::with_capacity(64 * 1024, out),
            json,
            verbose,
            buf: Vec::new(),
        }
    }

    pub fn record(&mut self, r: &Record) -> io::Result<()> {
        self.buf.clear();
        if self.json {
            json::record(r, &mut self.buf);
        } else {
            text::record(r, &mut self.buf);
        }
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)
    }

    pub fn explanation(&mut self, e: &Explanation) -> io::Result<()> {
        self.buf.clear();
        if self.json {
            json::explanation(e, &mut self.buf);
        } else {
            text::explanation(e, self.verbose, &mut self.buf);
        }
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
