//! The listening socket: bound with a backlog deep enough for connection storms.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may hold completed but not yet accepted (capped by `net.core.somaxconn`). tokio's
/// `TcpListener::bind` asks for 1024; a reconnect storm of thousands of clients overflows that, and every
/// dropped SYN costs its client a 1 s, then 3 s retransmission.
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` with address reuse (a restarted herald binds while old connections sit in TIME_WAIT) and a
/// [`LISTEN_BACKLOG`]-deep accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
