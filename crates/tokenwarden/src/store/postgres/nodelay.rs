//! `TCP_NODELAY` on the store's PostgreSQL connections.
//!
//! sqlx 0.9.0 opens its TCP connections without `TCP_NODELAY` (sqlx issue 4335; the fix,
//! sqlx pull request 4336, is not in a release yet) and offers no hook to set socket options.
//! Without it, a message larger than the socket's send buffer (16 KiB on a default Linux
//! loopback: a batch `UPDATE` of a few dozen rows, the outbox's event rows) goes out in two
//! writes, and Nagle's algorithm holds the second until the server acknowledges the first,
//! which the server delays by 40 ms because it waits for the rest of the message. Measured
//! with `bench_webhooks` over TCP: scheduled refreshes that raise an event each went from
//! ~1,400 to ~3,000 per second with the option set.
//!
//! Each pool calls [`set_on_connections_to`] once a connection is open (`after_connect`, on a
//! blocking thread): it looks through the process's open descriptors for TCP sockets connected
//! to the database's port that do not have the option yet, and sets it on each. That is a few
//! system calls per open socket of the process, once per new pooled connection. A descriptor
//! is reached through a duplicate made with `pidfd_getfd` on the process's own pidfd (Linux
//! 5.6), so no unsafe code borrows a raw descriptor. Setting `TCP_NODELAY` on another socket
//! of the process that talks to the same port would only make its small writes go out at
//! once. Where the calls
//! are not available (another system, a sandbox refusing `pidfd_getfd`) nothing changes but
//! the speed, and the reason is logged once at debug level.

use std::sync::atomic::{AtomicBool, Ordering};

/// Sets `TCP_NODELAY` on the process's TCP sockets whose peer port is `port`; returns how
/// many it changed.
///
/// # Errors
/// When the process's descriptors or the sockets' options cannot be read.
#[cfg(target_os = "linux")]
pub fn set_on_connections_to(port: u16) -> std::io::Result<usize> {
    use rustix::net::{SocketAddrAny, SocketType, getpeername, sockopt};
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

    let own = pidfd_open(getpid(), PidfdFlags::empty())?;
    let mut changed = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        // A descriptor closed since the listing was read is simply gone.
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !link.as_os_str().as_encoded_bytes().starts_with(b"socket:") {
            continue;
        }
        let Some(number) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(socket) = pidfd_getfd(&own, number, PidfdGetfdFlags::empty()) else {
            continue;
        };
        if sockopt::socket_type(&socket)? != SocketType::STREAM {
            continue;
        }
        let peer_port = match getpeername(&socket) {
            Ok(Some(peer)) => peer_port(&peer),
            _ => None,
        };
        if peer_port != Some(port) || sockopt::tcp_nodelay(&socket)? {
            continue;
        }
        sockopt::set_tcp_nodelay(&socket, true)?;
        changed += 1;
    }
    return Ok(changed);

    fn peer_port(peer: &SocketAddrAny) -> Option<u16> {
        std::net::SocketAddr::try_from(peer.clone())
            .ok()
            .map(|addr| addr.port())
    }
}

/// Elsewhere than Linux nothing is changed.
///
/// # Errors
/// Never.
#[cfg(not(target_os = "linux"))]
pub fn set_on_connections_to(_port: u16) -> std::io::Result<usize> {
    Ok(0)
}

/// [`set_on_connections_to`] for a pool's `after_connect`: a failure is logged once (debug)
/// and otherwise ignored, since the connection works without the option.
pub(crate) fn after_connect(port: u16) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = set_on_connections_to(port)
        && !LOGGED.swap(true, Ordering::Relaxed)
    {
        tracing::debug!(error = %e,
            "store: TCP_NODELAY could not be set on PostgreSQL connections; large statements may wait for delayed ACKs");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn only_the_sockets_to_the_port_are_changed_once() {
        let database = TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = database.local_addr().expect("addr").port();
        let to_database =
            TcpStream::connect(database.local_addr().expect("addr")).expect("connect");
        let to_other = TcpStream::connect(other.local_addr().expect("addr")).expect("connect");
        assert!(!to_database.nodelay().expect("read"));
        assert!(!to_other.nodelay().expect("read"));

        assert_eq!(set_on_connections_to(port).expect("set"), 1);
        assert!(to_database.nodelay().expect("read"));
        assert!(
            !to_other.nodelay().expect("read"),
            "another port's socket is left alone"
        );
        // The listener's accepted end has the database's port as its local port, not its peer.
        let (accepted, _) = database.accept().expect("accept");
        assert!(!accepted.nodelay().expect("read"));
        assert_eq!(set_on_connections_to(port).expect("set"), 0, "already set");
    }
}
