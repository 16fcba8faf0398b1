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
}
