//! UDP sockets with large kernel buffers, so bursts from thousands of sensors are queued rather
//! than dropped (CoAP would recover a drop, but only after a 2 s retransmission timeout).

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Kernel buffer size asked for (the kernel caps it at `net.core.rmem_max`/`wmem_max`).
pub const BUFFER_BYTES: usize = 4 << 20;

/// A non-blocking UDP socket bound to `addr` with large send and receive buffers.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer only means earlier drops under bursts.
    let _ = socket.set_recv_buffer_size(BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
