//! The kernel's listening TCP sockets, asked over netlink (`sock_diag`, what `ss -ltn`
//! uses): whether a user's socket listens on a port in this network namespace. A dump of
//! LISTEN sockets only walks the kernel's listening table, so it costs the same on a node
//! with a hundred thousand connections; `/proc/net/tcp` walks every socket (4 ms for 1,200
//! here).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` in the kernel's TCP states.
const TCP_LISTEN: u32 = 10;
/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// Offsets in `struct inet_diag_msg` (after the netlink header): the source port (network
/// order) and the owner's uid.
const MSG_SPORT: usize = 4;
const MSG_UID: usize = 64;
const MSG_LEN: usize = 72;

/// Whether a TCP socket of `uid` listens on `port` (IPv4 or IPv6, any address).
pub fn listens(port: u16, uid: u32) -> io::Result<bool> {
    let sock = diag_socket()?;
    for family in [libc::AF_INET, libc::AF_INET6] {
        send(&sock, &request(family as u8))?;
        if answers(&sock, port, uid)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A dump request for the TCP sockets of `family` in state LISTEN.
fn request(family: u8) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    m.extend(((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    m.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend(((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // sequence
    m.extend(0u32.to_ne_bytes()); // port id: the kernel's
    m.extend([family, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend((1u32 << TCP_LISTEN).to_ne_bytes());
    m.resize(NLMSG_HDR + REQ_LEN, 0); // inet_diag_sockid: zero, no filter
    m
}

fn send(sock: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the dump's answers until its end; whether one was `uid`'s socket on `port`.
fn answers(sock: &OwnedFd, port: u16, uid: u32) -> io::Result<bool> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut found = false;
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        match scan(&buf[..n as usize], port, uid) {
            Scan::More(hit) => found |= hit,
            Scan::Done(hit) => return Ok(found || hit),
            Scan::Failed(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// What one datagram of a dump said.
#[derive(Debug, PartialEq)]
enum Scan {
    /// Sockets (one of them the wanted one, or not); more datagrams follow.
    More(bool),
    /// The dump's end (after these sockets).
    Done(bool),
    /// The kernel refused the request.
    Failed(i32),
}

/// The netlink messages of one datagram.
fn scan(mut data: &[u8], port: u16, uid: u32) -> Scan {
    let mut hit = false;
    while data.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        if len < NLMSG_HDR || len > data.len() {
            break;
        }
        let body = &data[NLMSG_HDR..len];
        match kind {
            k if k == libc::NLMSG_DONE as u16 => return Scan::Done(hit),
            k if k == libc::NLMSG_ERROR as u16 => {
                let errno = body
                    .get(0..4)
                    .map_or(0, |e| i32::from_ne_bytes(e.try_into().unwrap()));
                return Scan::Failed(-errno);
            }
            _ if body.len() >= MSG_LEN => {
                let sport = u16::from_be_bytes([body[MSG_SPORT], body[MSG_SPORT + 1]]);
                let owner = u32::from_ne_bytes(body[MSG_UID..MSG_UID + 4].try_into().unwrap());
                hit |= sport == port && owner == uid;
            }
            _ => {}
        }
        let next = ((len + 3) & !3).min(data.len());
        data = &data[next..];
    }
    Scan::More(hit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_by_port_and_owner() {
        // On 127.0.0.2: never a port another test expects nobody on at 127.0.0.1.
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let uid = nix::unistd::getuid().as_raw();
        assert!(listens(port, uid).unwrap());
        assert!(!listens(port, uid + 1).unwrap(), "another user's");
        drop(l);
        assert!(!listens(port, uid).unwrap(), "closed");
    }

    #[test]
    fn a_connected_socket_is_not_listening() {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let local = c.local_addr().unwrap().port();
        assert!(!listens(local, uid).unwrap());
    }
}
