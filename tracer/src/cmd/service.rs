//! Running as a service: readiness for systemd (`Type=notify`), told over the datagram
//! socket systemd names in $NOTIFY_SOCKET (the sd_notify protocol; a path, or an
//! abstract name after `@`). Without the variable nothing is sent.
use std::os::unix::net::{SocketAddr, UnixDatagram};

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        log::warn!("telling the service manager {state:?} (NOTIFY_SOCKET): {e}");
    }
}

/// The programs are attached and the start-up context read: failures are explained
/// from now on.
pub fn notify_ready() {
    send("READY=1\nSTATUS=watching");
}

pub fn notify_stopping() {
    send("STOPPING=1");
}
