//! The cgroup v2 hierarchy on this host: where it is mounted, and which directory a
//! cgroup id names. A cgroup's id (what `bpf_get_current_cgroup_id()` returns) is its
//! kernfs node id, which is the inode number of its directory (64-bit on 64-bit
//! hosts) and also the kernfs file handle, so `open_by_handle_at` finds the
//! directory in one call (it needs CAP_DAC_READ_SEARCH); without that, a walk of the
//! hierarchy maps inodes to paths.
use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    os::{fd::AsRawFd, unix::ffi::OsStrExt, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// At most this many cgroups are read by one walk (a busy Kubernetes node has a few
/// thousand).
pub const WALK_LIMIT: usize = 200_000;

/// The mount point of the cgroup v2 hierarchy in /proc/self/mountinfo's text:
/// `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones. None
/// when only v1 is mounted.
pub fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        if tail.split(' ').next()? != "cgroup2" {
            return None;
        }
        head.split(' ').nth(4).map(|p| PathBuf::from(unescape(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 4).unwrap_or(""), 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup path of a process (relative to the v2 mount), from /proc/PID/cgroup's
/// `0::` line.
pub fn path_of_pid(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    v2_line(&text)
}

pub fn v2_line(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The id of the cgroup whose directory this is.
pub fn id_of_dir(dir: &Path) -> Option<u64> {
    fs::metadata(dir).ok().map(|m| m.ino())
}

pub struct CgroupFs {
    pub mount: PathBuf,
    dir: Option<fs::File>,
}

/// The kernfs file handle type (FILEID_KERNFS): 8 bytes, the node id.
const FILEID_KERNFS: i32 = 0xfe;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    id: [u8; 8],
}

impl CgroupFs {
    pub fn new(mount: PathBuf) -> Self {
        let dir = fs::File::open(&mount).ok();
        CgroupFs { mount, dir }
    }

    /// The path of a cgroup by its id, from its file handle. None when the cgroup is
    /// gone, or this process may not open handles.
    pub fn path_by_handle(&self, id: u64) -> Option<String> {
        let dir = self.dir.as_ref()?;
        let mut h = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id: id.to_ne_bytes(),
        };
        // SAFETY: `h` is a file_handle header followed by its 8 bytes of handle, as
        // handle_bytes says; the kernel reads no further.
        let fd = unsafe {
            libc::open_by_handle_at(
                dir.as_raw_fd(),
                (&raw mut h).cast::<libc::file_handle>(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        let link = fs::read_link(format!("/proc/self/fd/{fd}"));
        // SAFETY: fd was just opened here and is closed once.
        unsafe { libc::close(fd) };
        self.relative(&link.ok()?)
    }

    /// The id of a cgroup directory from its file handle (the same number as its
    /// inode on 64-bit hosts; tests compare them).
    pub fn handle_id(path: &Path) -> Option<u64> {
        let c = CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut h = KernfsHandle {
            handle_bytes: 8,
            handle_type: 0,
            id: [0; 8],
        };
        let mut mount_id = 0;
        // SAFETY: as in path_by_handle; the kernel writes at most handle_bytes.
        let r = unsafe {
            libc::name_to_handle_at(
                libc::AT_FDCWD,
                c.as_ptr(),
                (&raw mut h).cast::<libc::file_handle>(),
                &mut mount_id,
                0,
            )
        };
        (r == 0 && h.handle_type == FILEID_KERNFS).then(|| u64::from_ne_bytes(h.id))
    }

    /// Every cgroup's path by id, reading at most `limit` directories.
    pub fn walk(&self, limit: usize) -> HashMap<u64, String> {
        let mut out = HashMap::new();
        let mut stack = vec![self.mount.clone()];
        while let Some(dir) = stack.pop() {
            if out.len() >= limit {
                break;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            if let Some(rel) = self.relative(&dir) {
                out.insert(meta.ino(), rel);
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out
    }

    /// `/sys/fs/cgroup/unified/system.slice/x.service` -> `/system.slice/x.service`.
    fn relative(&self, p: &Path) -> Option<String> {
        let rest = p.strip_prefix(&self.mount).ok()?;
        Some(format!("/{}", rest.to_string_lossy()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount() {
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            v2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "\
24 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        assert_eq!(v2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let v1 = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        assert_eq!(v2_mount(v1), None);
        let spaced = "41 31 0:38 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(v2_mount(spaced), Some(PathBuf::from("/mnt/cg two")));
    }

    #[test]
    fn reads_the_v2_line() {
        let text = "9:name=systemd:/\n4:memory:/process_api/cd97\n0::/system.slice/nginx.service\n";
        assert_eq!(
            v2_line(text).as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(v2_line("4:memory:/x\n"), None);
    }
}
