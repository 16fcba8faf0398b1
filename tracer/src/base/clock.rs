//! Kernel timestamps (CLOCK_MONOTONIC) and wall-clock time.
use std::time::{Duration, SystemTime};

/// Maps CLOCK_MONOTONIC (the kernel's timestamps) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub mono_ns: u64,
    pub wall: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call's duration.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Clock {
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
            wall: SystemTime::now(),
        }
    }

    /// Wall-clock time of a monotonic timestamp, clamped to the representable range
    /// (a damaged capture header may put it before the epoch or past year 9999).
    pub fn wall_at(&self, mono_ns: u64) -> SystemTime {
        const MAX_WALL: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31
        let t = if mono_ns >= self.mono_ns {
            self.wall
                .checked_add(Duration::from_nanos(mono_ns - self.mono_ns))
        } else {
            self.wall
                .checked_sub(Duration::from_nanos(self.mono_ns - mono_ns))
        };
        let t = t
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .max(SystemTime::UNIX_EPOCH);
        t.min(SystemTime::UNIX_EPOCH + MAX_WALL)
    }

    pub fn format(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.wall_at(mono_ns)).to_string()
    }
}

/// `YYYY-MM-DD HH:MM:SS` in this machine's local time zone, as `journalctl --since`
/// reads it; None when the C library cannot convert it.
pub fn local_text(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    let secs = libc::time_t::try_from(secs).ok()?;
    // SAFETY: localtime_r writes only into the zeroed tm it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_the_calendar_are_clamped_not_panicking() {
        let c = Clock {
            mono_ns: 10_000_000_000,
            wall: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(c.format(0), "1970-01-01T00:00:00.000000Z");
        let c = Clock {
            mono_ns: 0,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_000),
        };
        assert!(c.format(u64::MAX).starts_with("9999-12-31"));
    }

    #[test]
    fn local_time_in_journalctls_format() {
        let t = local_text(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)).unwrap();
        // The zone is the machine's: only the shape is fixed.
        assert_eq!(t.len(), 19, "{t}");
        assert!(t.starts_with("2027-01-1"), "{t}");
        assert_eq!((&t[4..5], &t[10..11], &t[13..14]), ("-", " ", ":"), "{t}");
    }
}
