//! The kernel's socket diagnostics over netlink (`NETLINK_SOCK_DIAG`): listing a namespace's TCP
//! sockets with their mark and cgroup id, and destroying one (`SOCK_DESTROY`, what `ss -K` does).
//! The answers are read by pure functions of bytes ([`parse_dump`], [`parse_ack`]), tested on
//! well-formed, truncated and hostile buffers: a malformed answer ends a read, never panics.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_MARK: u16 = 15;
const INET_DIAG_CGROUP_ID: u16 = 21;
pub(crate) const TCP_LISTEN: u8 = 10;
pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;
/// TCP states worth severing: everything but LISTEN, CLOSE and `TIME_WAIT`.
const SEVERABLE_STATES: u32 =
    (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// One TCP socket as the kernel reported it.
#[derive(Clone, Copy, Debug)]
pub struct SocketInfo {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub state: u8,
    pub mark: u32,
    pub cgroup_id: u64,
    family: u8,
    /// The kernel's identity of the socket (addresses, ports, cookie), echoed to destroy it.
    id: InetDiagSockId,
}

/// A `NETLINK_SOCK_DIAG` socket.
pub(crate) struct DiagSocket {
    fd: OwnedFd,
}

fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a #[repr(C)] plain-data struct; viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
}

fn read_struct<T: Copy + Default>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    let mut value = T::default();
    // SAFETY: length checked; T is plain data, any bytes are a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            std::ptr::from_mut(&mut value).cast::<u8>(),
            size_of::<T>(),
        );
    };
    Some(value)
}

impl DiagSocket {
    pub(crate) fn open() -> Result<DiagSocket> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("cannot open a NETLINK_SOCK_DIAG socket");
        }
        // SAFETY: fd was just created and is owned by nothing else.
        Ok(DiagSocket { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn send(&self, kind: u16, flags: u16, request: &InetDiagReqV2) -> io::Result<()> {
        let header = NlMsgHdr {
            len: u32::try_from(size_of::<NlMsgHdr>() + size_of::<InetDiagReqV2>()).unwrap_or(u32::MAX),
            kind,
            flags,
            seq: 1,
            pid: 0,
        };
        let mut message = Vec::with_capacity(header.len as usize);
        message.extend_from_slice(as_bytes(&header));
        message.extend_from_slice(as_bytes(request));
        // SAFETY: sending a buffer we own.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into a buffer we own.
        let received =
            unsafe { libc::recv(self.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        usize::try_from(received).map_err(|_| io::Error::last_os_error())
    }

    /// Every TCP socket of this network namespace in `family` (listening ones too).
    pub(crate) fn dump_tcp(&self, family: u8) -> Result<Vec<SocketInfo>> {
        let request = InetDiagReqV2 {
            family,
            protocol: u8::try_from(libc::IPPROTO_TCP).unwrap_or(6),
            states: SEVERABLE_STATES | (1 << TCP_LISTEN),
            ..InetDiagReqV2::default()
        };
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).unwrap_or(0);
        self.send(SOCK_DIAG_BY_FAMILY, flags, &request)
            .context("cannot ask the kernel for its TCP sockets")?;
        let mut sockets = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let received = self.receive(&mut buffer).context("cannot read the kernel's socket list")?;
            if received == 0 {
                anyhow::bail!("the kernel's socket list ended without its end marker");
            }
            match parse_dump(family, &buffer[..received], &mut sockets) {
                DumpPart::More => {}
                DumpPart::Done => return Ok(sockets),
                DumpPart::Refused(errno) => {
                    return Err(io::Error::from_raw_os_error(errno)).context("the kernel refused to list sockets")
                }
            }
        }
    }

    pub(crate) fn destroy(&self, info: &SocketInfo) -> io::Result<()> {
        let request = InetDiagReqV2 {
            family: info.family,
            protocol: u8::try_from(libc::IPPROTO_TCP).unwrap_or(6),
            ext: 0,
            pad: 0,
            states: u32::MAX,
            id: info.id,
        };
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_ACK).unwrap_or(0);
        self.send(SOCK_DESTROY, flags, &request)?;
        let mut buffer = [0u8; 512];
        let received = self.receive(&mut buffer)?;
        parse_ack(&buffer[..received])
    }
}

fn address(family: u8, words: [u32; 4]) -> IpAddr {
    if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::from(u32::from_be(words[0])))
    } else {
        let mut bytes = [0u8; 16];
        for (i, word) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// One `inet_diag_msg` and its attributes (the socket's mark and cgroup id).
fn parse_socket(family: u8, payload: &[u8]) -> Option<SocketInfo> {
    let message = read_struct::<InetDiagMsg>(payload)?;
    let mut info = SocketInfo {
        local: address(family, message.id.src),
        local_port: u16::from_be(message.id.sport),
        remote: address(family, message.id.dst),
        remote_port: u16::from_be(message.id.dport),
        state: message.state,
        mark: 0,
        cgroup_id: 0,
        family,
        id: message.id,
    };
    let mut offset = (size_of::<InetDiagMsg>() + 3) & !3;
    while offset + 4 <= payload.len() {
        let length = usize::from(u16::from_ne_bytes([payload[offset], payload[offset + 1]]));
        let kind = u16::from_ne_bytes([payload[offset + 2], payload[offset + 3]]);
        if length < 4 || offset + length > payload.len() {
            break;
        }
        let value = &payload[offset + 4..offset + length];
        match kind {
            INET_DIAG_MARK => info.mark = read_struct::<u32>(value).unwrap_or(0),
            INET_DIAG_CGROUP_ID => info.cgroup_id = read_struct::<u64>(value).unwrap_or(0),
            _ => {}
        }
        offset += (length + 3) & !3;
    }
    Some(info)
}

/// What one read of a socket dump said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DumpPart {
    /// More messages follow in the next read.
    More,
    /// The dump is complete.
    Done,
    /// The kernel refused the dump with this errno.
    Refused(i32),
}

/// Reads one answer to a `SOCK_DIAG_BY_FAMILY` dump: appends the sockets in it to `sockets` and
/// says whether the dump is done or refused. A message whose length is shorter than its header
/// or runs past the end of the read ends the read; a socket message too short to hold an
/// `inet_diag_msg` is skipped.
pub(crate) fn parse_dump(family: u8, bytes: &[u8], sockets: &mut Vec<SocketInfo>) -> DumpPart {
    let mut offset = 0;
    while offset + size_of::<NlMsgHdr>() <= bytes.len() {
        let Some(header) = read_struct::<NlMsgHdr>(&bytes[offset..]) else { break };
        let length = header.len as usize;
        if length < size_of::<NlMsgHdr>() || length > bytes.len() - offset {
            break;
        }
        let payload = &bytes[offset + size_of::<NlMsgHdr>()..offset + length];
        match header.kind {
            NLMSG_DONE => return DumpPart::Done,
            NLMSG_ERROR => return DumpPart::Refused(read_struct::<i32>(payload).unwrap_or(0).saturating_neg()),
            _ => sockets.extend(parse_socket(family, payload)),
        }
        offset += (length + 3) & !3;
    }
    DumpPart::More
}

/// Reads the kernel's answer to a `SOCK_DESTROY`: an acknowledgement, or the errno it refused with.
pub(crate) fn parse_ack(bytes: &[u8]) -> io::Result<()> {
    let header = read_struct::<NlMsgHdr>(bytes).ok_or_else(|| io::Error::other("short netlink answer"))?;
    if header.kind == NLMSG_ERROR {
        let code = read_struct::<i32>(&bytes[size_of::<NlMsgHdr>()..]).unwrap_or(0);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(code.saturating_neg()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message: header and payload, padded to 4 bytes.
    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let header = NlMsgHdr {
            len: u32::try_from(size_of::<NlMsgHdr>() + payload.len()).unwrap(),
            kind,
            ..NlMsgHdr::default()
        };
        let mut bytes = as_bytes(&header).to_vec();
        bytes.extend_from_slice(payload);
        bytes.resize(bytes.len().div_ceil(4) * 4, 0);
        bytes
    }

    /// An attribute: length, type, value, padded.
    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut bytes = u16::try_from(4 + value.len()).unwrap().to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(value);
        bytes.resize(bytes.len().div_ceil(4) * 4, 0);
        bytes
    }

    fn socket_message(family: u8, id: InetDiagSockId, state: u8, attributes: &[Vec<u8>]) -> Vec<u8> {
        let diag = InetDiagMsg { family, state, id, ..InetDiagMsg::default() };
        let mut payload = as_bytes(&diag).to_vec();
        payload.resize(payload.len().div_ceil(4) * 4, 0);
        for attribute in attributes {
            payload.extend_from_slice(attribute);
        }
        message(SOCK_DIAG_BY_FAMILY, &payload)
    }

    fn ipv4_id() -> InetDiagSockId {
        InetDiagSockId {
            sport: 41_000_u16.to_be(),
            dport: 443_u16.to_be(),
            src: [u32::from(Ipv4Addr::new(198, 18, 1, 2)).to_be(), 0, 0, 0],
            dst: [u32::from(Ipv4Addr::new(203, 0, 113, 7)).to_be(), 0, 0, 0],
            cookie: [7, 0],
            ..InetDiagSockId::default()
        }
    }

    #[test]
    fn a_dump_yields_each_socket_with_its_mark_and_cgroup_then_ends() {
        let v6: Ipv6Addr = "fd00:c0d:1::2".parse().unwrap();
        let mut v6_words = [0_u32; 4];
        for (i, word) in v6_words.iter_mut().enumerate() {
            *word = u32::from_ne_bytes(v6.octets()[i * 4..i * 4 + 4].try_into().unwrap());
        }
        let v6_id = InetDiagSockId {
            sport: 22_u16.to_be(),
            dport: 50_000_u16.to_be(),
            src: v6_words,
            dst: v6_words,
            ..InetDiagSockId::default()
        };
        let mut bytes = socket_message(
            AF_INET,
            ipv4_id(),
            1,
            &[
                attribute(INET_DIAG_MARK, &0xc0d_u32.to_ne_bytes()),
                attribute(INET_DIAG_CGROUP_ID, &4242_u64.to_ne_bytes()),
            ],
        );
        bytes.extend(socket_message(AF_INET6, v6_id, TCP_LISTEN, &[attribute(99, b"unknown attribute")]));
        let mut sockets = Vec::new();
        assert_eq!(parse_dump(AF_INET, &bytes, &mut sockets), DumpPart::More);
        bytes.extend(message(NLMSG_DONE, &0_i32.to_ne_bytes()));
        sockets.clear();
        assert_eq!(parse_dump(AF_INET, &bytes, &mut sockets), DumpPart::Done);
        assert_eq!(sockets.len(), 2);
        let first = sockets[0];
        assert_eq!((first.local, first.local_port), (IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)), 41_000));
        assert_eq!((first.remote, first.remote_port), (IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 443));
        assert_eq!((first.state, first.mark, first.cgroup_id), (1, 0xc0d, 4242));
        assert_eq!(first.id.cookie, [7, 0], "the identity is kept to destroy it");
        let second = sockets[1];
        assert_eq!((second.mark, second.cgroup_id, second.state), (0, 0, TCP_LISTEN));
        // Read with the family the dump was asked for.
        assert_eq!(parse_socket(AF_INET6, &socket_message(AF_INET6, v6_id, 1, &[])[16..]).unwrap().local, IpAddr::V6(v6));
    }

    #[test]
    fn a_refusal_and_an_acknowledgement_are_read_as_such() {
        let refusal = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_dump(AF_INET, &refusal, &mut Vec::new()), DumpPart::Refused(libc::EPERM));
        assert_eq!(parse_ack(&refusal).unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert!(parse_ack(&message(NLMSG_ERROR, &0_i32.to_ne_bytes())).is_ok(), "error 0 is the acknowledgement");
        assert!(parse_ack(&[1, 2, 3]).is_err(), "a short answer is an error, not a panic");
    }

    #[test]
    fn malformed_answers_end_the_read_without_panicking() {
        let good = socket_message(AF_INET, ipv4_id(), 1, &[attribute(INET_DIAG_CGROUP_ID, &1_u64.to_ne_bytes())]);
        // A length shorter than a header, and one past the end: the read ends there.
        for length in [0_u32, 3, 15, u32::MAX, u32::try_from(good.len()).unwrap() + 4] {
            let mut bytes = good.clone();
            bytes[..4].copy_from_slice(&length.to_ne_bytes());
            let mut sockets = Vec::new();
            assert_eq!(parse_dump(AF_INET, &bytes, &mut sockets), DumpPart::More, "length {length}");
            assert!(sockets.is_empty());
        }
        // A socket message too short for an inet_diag_msg is skipped; the next one is read.
        let mut bytes = message(SOCK_DIAG_BY_FAMILY, &[0; 10]);
        bytes.extend_from_slice(&good);
        let mut sockets = Vec::new();
        parse_dump(AF_INET, &bytes, &mut sockets);
        assert_eq!(sockets.len(), 1);
        assert_eq!(sockets[0].cgroup_id, 1);
        // Attributes with lengths under 4 or past the end are ignored.
        for bad in [[2_u8, 0, 21, 0], [200, 0, 21, 0]] {
            let mut payload = as_bytes(&InetDiagMsg::default()).to_vec();
            payload.extend_from_slice(&bad);
            let mut sockets = Vec::new();
            parse_dump(AF_INET, &message(SOCK_DIAG_BY_FAMILY, &payload), &mut sockets);
            assert_eq!(sockets[0].cgroup_id, 0);
        }
        // Arbitrary bytes, any length: never a panic.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..20_000 {
            let mut bytes = vec![0_u8; round % 300];
            for byte in &mut bytes {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state.to_le_bytes()[0];
            }
            if bytes.len() >= 4 && round % 2 == 0 {
                // Often a plausible length, so that the parser goes past the first header.
                let length = u32::try_from(bytes.len() / 2).unwrap();
                bytes[..4].copy_from_slice(&length.to_ne_bytes());
            }
            let _ = parse_dump(AF_INET6, &bytes, &mut Vec::new());
            let _ = parse_ack(&bytes);
        }
    }
}
