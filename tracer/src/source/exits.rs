//! Exits of processes that owned listeners, checked in /proc shortly after their
//! listener closed and turned into `process_exit` records (the kernel hooks see no
//! exit; a replay reads these records from the capture).
use crate::{
    base::{
        clock::Clock,
        record::{Kind, Proc, Record, TcpState},
    },
    source::context,
};

/// How long after its listener closed a process is checked for having exited.
const EXIT_CHECK_NS: u64 = 200_000_000;

#[derive(Default)]
pub struct Exits {
    /// Listener owners to check, and when.
    due: Vec<(Proc, u64)>,
}

impl Exits {
    /// Notes a listener's close in `r`, an enriched record, to check its owner later.
    pub fn saw(&mut self, r: &Record) {
        if r.kind == Kind::State
            && r.old_state == Some(TcpState::Listen)
            && r.new_state == Some(TcpState::Close)
        {
            // A listener from before the agent has no owner from the kernel; its
            // close runs in the closing process, which is the one to check.
            if let Some(p) = r.owner.as_ref().or(r.task.as_ref()) {
                self.due.push((p.clone(), r.mono_ns + EXIT_CHECK_NS));
            }
        }
    }

    pub fn waiting(&self) -> bool {
        !self.due.is_empty()
    }

    /// The exits of the owners due for a check by `now`, as records.
    pub fn check(&mut self, now: u64, clock: &Clock) -> Vec<Record> {
        let due: Vec<Proc> = self
            .due
            .iter()
            .filter(|(_, t)| *t <= now)
            .map(|(p, _)| p.clone())
            .collect();
        self.due.retain(|(_, t)| *t > now);
        due.into_iter()
            .filter_map(|p| {
                let how = exited(p.pid)?;
                Some(context::process_exit(now, clock.format(now), p, how))
            })
            .collect()
    }
}

/// Whether the process is gone or a zombie (dead, not yet reaped by its parent), and
/// then how it ended when the zombie still tells.
fn exited(pid: u32) -> Option<Option<String>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => zombie_status(&stat),
        Err(_) => Some(None),
    }
}

/// For a zombie's /proc/PID/stat: `Some(how it ended)` (`SIGKILL`, `exit 1`, from its
/// exit_code, field 52, 3.5+); None for a live process.
fn zombie_status(stat: &str) -> Option<Option<String>> {
    // The fields after the command name, which may hold anything but ends with ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    if !matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    // exit_code is field 52; `fields` starts at field 3 (the state).
    let code: Option<i32> = fields.nth(52 - 4).and_then(|v| v.parse().ok());
    Some(code.map(|c| match c & 0x7f {
        0 => format!("exit {}", (c >> 8) & 0xff),
        sig => signal_name(sig),
    }))
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc/PID/stat line in state `state` with exit_code (field 52) `code`.
    fn stat(state: &str, code: i32) -> String {
        let middle = vec!["0"; 52 - 4].join(" ");
        format!("4242 (a) b) {state} {middle} {code}\n")
    }

    #[test]
    fn a_zombie_tells_how_it_ended() {
        assert_eq!(zombie_status(&stat("Z", 9)), Some(Some("SIGKILL".into())));
        assert_eq!(zombie_status(&stat("Z", 15)), Some(Some("SIGTERM".into())));
        assert_eq!(
            zombie_status(&stat("Z", 1 << 8)),
            Some(Some("exit 1".into()))
        );
        assert_eq!(zombie_status(&stat("S", 0)), None, "alive");
        assert_eq!(
            zombie_status("4242 (a) Z"),
            Some(None),
            "no exit_code field"
        );
    }
}
