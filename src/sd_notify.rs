//! Telling systemd the gateway is serving (`Type=notify`): units ordered after
//! `bucketgate.service` (the AMI's smbd) then start only once the listeners are bound
//! and the FUSE mounts exist, not when the process was merely started.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;

/// Sends `state` ("READY=1", "STOPPING=1") to the service manager when it asked for
/// notifications; a gateway started any other way does nothing.
pub fn notify(state: &str) {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET")
        && let Err(e) = notify_to(&socket, state)
    {
        tracing::warn!(socket = ?socket, error = %e, "could not notify systemd");
    }
}

/// `socket` as systemd passes it: a path, or `@name` in the abstract namespace.
fn notify_to(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let bytes = socket.as_encoded_bytes();
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), socket)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("bucketgate-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(notify_to(dir.path().join("none").as_os_str(), "READY=1").is_err());
    }
}
