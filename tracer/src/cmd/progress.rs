//! The progress line of a long capture read: records, bytes, rate and time left, on
//! stderr when it is a terminal, redrawn at most every 250 ms and erased at the end.
//! Whatever else reaches the terminal meanwhile (stdout, warnings) erases it first
//! through `Shown`, and the next redraw brings it back.
use std::{
    cell::Cell,
    io::{self, IsTerminal as _, Write},
    rc::Rc,
    time::{Duration, Instant},
};

const EVERY: Duration = Duration::from_millis(250);
/// Erases the line the cursor is on.
const ERASE: &str = "\r\x1b[K";

/// Whether the progress line is on the terminal now.
#[derive(Clone, Default)]
pub struct Shown(Rc<Cell<bool>>);

impl Shown {
    /// Erases the progress line if it is shown.
    pub fn erase(&self) {
        if self.0.replace(false) {
            let _ = io::stderr().write_all(ERASE.as_bytes());
        }
    }
}

pub struct Progress {
    started: Instant,
    next: Instant,
    /// Bytes of all the files (0: unknown, e.g. a pipe).
    total: u64,
    shown: Shown,
}

impl Progress {
    /// A progress line for reading `total` bytes, if stderr is a terminal.
    pub fn stderr(total: u64) -> Option<Progress> {
        io::stderr().is_terminal().then(|| {
            let now = Instant::now();
            Progress {
                started: now,
                // A read that ends within the first period shows nothing.
                next: now + EVERY,
                total,
                shown: Shown::default(),
            }
        })
    }

    pub fn shown(&self) -> Shown {
        self.shown.clone()
    }

    /// Redraws the line if the last one is old enough.
    pub fn update(&mut self, records: u64, bytes: u64) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + EVERY;
        let line = line(records, bytes, self.total, now - self.started);
        let _ = write!(io::stderr(), "{ERASE}{line}");
        self.shown.0.set(true);
    }

    pub fn finish(&self) {
        self.shown.erase();
    }
}

/// `12.3 M records, 240 / 750 MB, 3.9 M records/s, 8 s left`.
fn line(records: u64, bytes: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mb = |b: u64| b as f64 / 1e6;
    let mut s = format!("{} records, ", count(records as f64));
    if total > 0 {
        s += &format!("{:.0} / {:.0} MB, ", mb(bytes), mb(total));
    } else {
        s += &format!("{:.0} MB, ", mb(bytes));
    }
    s += &format!("{} records/s", count(records as f64 / secs));
    if total > 0 && bytes > 0 && bytes <= total {
        let left = (total - bytes) as f64 * secs / bytes as f64;
        s += &format!(", {} left", duration(left));
    }
    s
}

fn count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.1} M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn duration(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// A writer to a terminal that also shows the progress line: erases it before writing.
pub struct Clearing<W> {
    pub inner: W,
    pub shown: Option<Shown>,
}

impl<W: Write> Write for Clearing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(s) = &self.shown {
            s.erase();
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_gives_records_bytes_rate_and_time_left() {
        let l = line(12_300_000, 250_000_000, 750_000_000, Duration::from_secs(3));
        assert_eq!(l, "12.3 M records, 250 / 750 MB, 4.1 M records/s, 6 s left");
        let l = line(900, 1_000_000, 0, Duration::from_secs(1));
        assert_eq!(l, "900 records, 1 MB, 900 records/s");
        assert_eq!(duration(4000.0), "1h06m");
        assert_eq!(duration(75.0), "1m15s");
    }
}
