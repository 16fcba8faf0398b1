//! Output sinks: peers that each print a record in their own form.
pub mod json;
pub mod text;

use std::io::{self, Write};

use crate::record::Record;

pub trait Sink {
    fn write(&mut self, r: &Record) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// Writes records through `format` to a buffered writer.
pub struct LineSink<W: Write> {
    out: io::BufWriter<W>,
    format: fn(&Record, &mut Vec<u8>),
    buf: Vec<u8>,
}

impl<W: Write> LineSink<W> {
    pub fn new(out: W, format: fn(&Record, &mut Vec<u8>)) -> Self {
        LineSink {
            out: io::BufWriter::with_capacity(64 * 1024, out),
            format,
            buf: Vec::new(),
        }
    }
}

impl<W: Write> Sink for LineSink<W> {
    fn write(&mut self, r: &Record) -> io::Result<()> {
        self.buf.clear();
        (self.format)(r, &mut self.buf);
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
