//! The original destination of a connection redirected by iptables (`SO_ORIGINAL_DST`).

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

/// `SO_ORIGINAL_DST` from `linux/netfilter_ipv4.h`; the IPv6 option (`IP6T_SO_ORIGINAL_DST`) has
/// the same number at `SOL_IPV6`.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// Returns the address the client meant to reach before NAT. Without a redirect the kernel either
/// fails (no conntrack entry) or returns the listener's own address; callers treat both as "no
/// original destination".
#[allow(unsafe_code)] // Two getsockopt calls, each proven sound in its SAFETY comment.
pub fn original_dst(sock: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    let fd = sock.as_raw_fd();
    match sock.local_addr()? {
        SocketAddr::V4(_) => {
            // SAFETY: sockaddr_in is plain old data, so all-zero is a valid value; getsockopt
            // writes at most `len` bytes into it and `fd` is an open socket for the call.
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = unsafe { libc::getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
        }
        SocketAddr::V6(_) => {
            // SAFETY: as above, with sockaddr_in6.
            let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            let rc = unsafe { libc::getsockopt(fd, libc::SOL_IPV6, SO_ORIGINAL_DST, (&mut addr as *mut libc::sockaddr_in6).cast(), &mut len) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), 0, 0)))
        }
    }
}

/// The redirected destination, or `None` when the connection came straight to the listener.
pub fn redirected_dst(sock: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let local = sock.local_addr().ok()?;
    original_dst(sock).ok().filter(|dst| *dst != local)
}
