//! Files rstrace writes for the user (captures, statistics). rstrace runs as root and
//! is often pointed at directories every user can write to, so a name there may be a
//! symlink or a hard link another user planted. Every file is therefore created here:
//! relative to a directory opened once, with O_CREAT|O_EXCL|O_NOFOLLOW (never an
//! existing file, never through a link), mode 0600 whatever the umask, owned by the
//! user who ran sudo; replacing a file means renaming a new one over its name.
use std::{
    ffi::{CString, OsStr, OsString},
    fs::{File, OpenOptions},
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// A directory rstrace writes files in, opened once: names are resolved against this
/// descriptor, so swapping a path component afterwards changes nothing.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    /// Who the files are given to (root through sudo: the user who ran sudo).
    owner: Option<(libc::uid_t, libc::gid_t)>,
}

/// Identity of a file (device, inode): whether a name still refers to it.
pub type FileId = (u64, u64);

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::other("file name contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

pub fn id(st: &libc::stat) -> FileId {
    (st.st_dev, st.st_ino)
}

/// The user a file created as root is given to: the one who ran sudo, so that the
/// README's `rstrace explain` without sudo can read a capture `sudo rstrace record`
/// wrote, while it stays 0600.
fn sudo_owner() -> Option<(libc::uid_t, libc::gid_t)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let var = |k: &str| std::env::var(k).ok()?.parse::<u32>().ok();
    Some((var("SUDO_UID")?, var("SUDO_GID")?))
}

/// Whether files written at `path` need more than the privileges of their own
/// directory's owner: given to the user who ran sudo (chown), or in a directory of
/// another user (its permissions, a sticky bit). Rotation then needs the capabilities
/// that override those checks for as long as it records.
pub fn written_for_another_user(path: &Path) -> bool {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    sudo_owner().is_some_and(|(uid, _)| uid != euid)
        || std::fs::metadata(dir)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) != euid)
            .unwrap_or(true)
}

impl Dir {
    /// Opens the directory that is to hold `path`; returns it with the file's name.
    pub fn of(path: &Path) -> io::Result<(Dir, OsString)> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} does not name a file", path.display()),
            )
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok((Dir::open(&dir)?, name.to_os_string()))
    }

    /// Opens the directory `dir` itself.
    pub fn open(dir: &Path) -> io::Result<Dir> {
        let dir = dir.to_path_buf();
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", dir.display())))?;
        let d = Dir {
            fd: f.into(),
            path: dir,
            owner: sudo_owner(),
        };
        let st = fstat(&d.fd)?;
        if st.st_mode & libc::S_IWOTH != 0 && st.st_mode & libc::S_ISVTX == 0 {
            log::warn!(
                "{} is writable by every user and has no sticky bit: any user can rename \
                 or replace files in it; prefer a directory only you can write to",
                d.path.display()
            );
        }
        Ok(d)
    }

    /// A path that names this very directory (the descriptor's /proc link), to list it.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The path of `name` in this directory, for messages.
    pub fn display(&self, name: &OsStr) -> String {
        self.path.join(name).display().to_string()
    }

    /// The uid rstrace's files here belong to.
    fn owner_uid(&self) -> libc::uid_t {
        // SAFETY: geteuid has no preconditions.
        self.owner
            .map_or_else(|| unsafe { libc::geteuid() }, |o| o.0)
    }

    /// What `name` is, without following a symlink; None if nothing is there.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<libc::stat>> {
        let c = cstr(name)?;
        // SAFETY: stat is plain integers; all zeros is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open, `c` is a NUL-terminated string that outlives the
        // call, and `st` is writable.
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match check(r) {
            Ok(_) => Ok(Some(st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates `name`, which must not exist, starting with `head`. With `replace`, an
    /// existing regular file is replaced by renaming a new file (`head` written) over
    /// it: the old one is never opened, so a hard link to another file keeps that file
    /// intact. A symlink or anything but a regular file is refused either way.
    pub fn create(&self, name: &OsStr, replace: bool, head: &[u8]) -> io::Result<File> {
        if let Some(st) = self.stat(name)? {
            if file_type(&st) != libc::S_IFREG {
                return Err(self.not_regular(name, &st));
            }
            if !replace {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} already exists: rstrace does not write over a file it did not \
                         create (remove it, choose another name, or pass --force to replace it)",
                        self.display(name)
                    ),
                ));
            }
        }
        if !replace {
            let mut f = self.create_new(name).map_err(|e| match e.kind() {
                // Planted since the check.
                io::ErrorKind::AlreadyExists => io::Error::new(
                    e.kind(),
                    format!("{} appeared while being created", self.display(name)),
                ),
                _ => e,
            })?;
            f.write_all(head)?;
            return Ok(f);
        }
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".rstrace-new-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = self.create_new(&tmp)?;
        if let Err(e) = f.write_all(head).and_then(|_| self.rename(&tmp, name)) {
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        Ok(f)
    }

    fn not_regular(&self, name: &OsStr, st: &libc::stat) -> io::Error {
        let what = if file_type(st) == libc::S_IFLNK {
            "a symbolic link, which rstrace never follows or replaces"
        } else {
            "not a regular file"
        };
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is {what}", self.display(name)),
        )
    }

    /// A new file: O_EXCL makes it one this call created, O_NOFOLLOW refuses a link
    /// even where O_EXCL alone would be enough, as a second guard.
    fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let c = cstr(name)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `c` is a valid C string; the fd returned is owned by the File below.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, 0o600) })?;
        // SAFETY: openat succeeded, so `fd` is open and nothing else owns it.
        let f = unsafe { File::from_raw_fd(fd) };
        let set = || -> io::Result<()> {
            // The umask may have removed bits from 0600: set it exactly.
            // SAFETY: `fd` stays open while `f` lives, which outlives this closure.
            check(unsafe { libc::fchmod(fd, 0o600) })?;
            if let Some((uid, gid)) = self.owner {
                // SAFETY: as for fchmod.
                check(unsafe { libc::fchown(fd, uid, gid) })?;
            }
            Ok(())
        };
        if let Err(e) = set() {
            let _ = self.unlink(name);
            return Err(e);
        }
        Ok(f)
    }

    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid C strings; renameat replaces the entry `to`, never following it.
        check(unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) }).map(drop)
    }

    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid C string; unlinkat removes the entry, never following it.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// Whether `name` exists, when it may be renamed or removed: only a regular file
    /// owned by whoever this directory's files are given to, i.e. one of rstrace's own.
    pub fn own_file(&self, name: &OsStr) -> io::Result<bool> {
        Ok(self.own_stat(name)?.is_some())
    }

    /// `own_file`, with what it found.
    pub fn own_stat(&self, name: &OsStr) -> io::Result<Option<libc::stat>> {
        let Some(st) = self.stat(name)? else {
            return Ok(None);
        };
        if file_type(&st) != libc::S_IFREG {
            return Err(self.not_regular(name, &st));
        }
        let uid = self.owner_uid();
        if st.st_uid != uid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}, not to uid {uid} that rstrace's files here belong to",
                    self.display(name),
                    st.st_uid
                ),
            ));
        }
        Ok(Some(st))
    }
}

impl Dir {
    /// Opens `name` to append to it: an existing file only if it is a regular file of
    /// rstrace's owner here with no other link (checked on the open descriptor, so a
    /// swap after the check changes nothing), else a new private file.
    pub fn append(&self, name: &OsStr) -> io::Result<File> {
        let c = cstr(name)?;
        for _ in 0..8 {
            let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: `c` is a valid C string; the fd returned is owned by the File below.
            let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ELOOP) {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "{} is a symbolic link, which rstrace never follows",
                            self.display(name)
                        ),
                    ));
                }
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
                match self.create_new(name) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    r => return r,
                }
            }
            // SAFETY: openat succeeded, so `fd` is open and nothing else owns it.
            let f = unsafe { File::from_raw_fd(fd) };
            let st = fstat(&f)?;
            let uid = self.owner_uid();
            if file_type(&st) != libc::S_IFREG || st.st_uid != uid || st.st_nlink != 1 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is not a file rstrace wrote (a regular file of uid {uid} with one \
                         link); it is not appended to",
                        self.display(name)
                    ),
                ));
            }
            return Ok(f);
        }
        Err(io::Error::other(format!(
            "{} keeps appearing and disappearing",
            self.display(name)
        )))
    }
}

/// A file written by appending, reopened by name on request (after logrotate renamed
/// it, on SIGHUP): what was written before goes on in the renamed file, what comes
/// after in a new one.
pub struct AppendFile {
    dir: Dir,
    name: OsString,
    file: File,
    reopen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AppendFile {
    pub fn open(path: &Path) -> io::Result<AppendFile> {
        let (dir, name) = Dir::of(path)?;
        let file = dir
            .append(&name)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        Ok(AppendFile {
            dir,
            name,
            file,
            reopen: Default::default(),
        })
    }

    /// Set it to have the file reopened at the next write or flush.
    pub fn reopen_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.reopen.clone()
    }

    fn maybe_reopen(&mut self) {
        if !self.reopen.swap(false, Ordering::Relaxed) {
            return;
        }
        match self.dir.append(&self.name) {
            Ok(f) => self.file = f,
            // The old file still takes the lines: better than losing them.
            Err(e) => log::warn!("reopening {}: {e}", self.dir.display(&self.name)),
        }
    }
}

impl Write for AppendFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.maybe_reopen();
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.maybe_reopen();
        self.file.flush()
    }
}

fn fstat(f: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: stat is plain integers; all zeros is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is open for the call and `st` is writable.
    check(unsafe { libc::fstat(f.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Fstat of an open file, for its identity.
pub fn file_id(f: &File) -> io::Result<FileId> {
    Ok(id(&fstat(f)?))
}

/// Writes `data` to `path` as a new private file, replacing a regular file there.
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    let (dir, name) = Dir::of(path)?;
    dir.create(&name, true, data).map(drop)
}
