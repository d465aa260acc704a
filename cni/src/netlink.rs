//! A small synchronous netlink client: message building, attribute parsing, requests with
//! acknowledgements, dumps and nf_tables batches.
//!
//! One socket is bound to the network namespace it was created in, so a socket opened by a
//! thread inside a pod's namespace configures that namespace and nothing else. Requests
//! are synchronous: each costs one send and one receive, a few microseconds of kernel work,
//! and callers run them off the async executor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_MULTI: u16 = 0x2;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_ACK_TLVS: u16 = 0x200;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Attribute type flag marking a nested attribute.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const HEADER_LEN: usize = 16;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// What a netlink exchange can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request.
    #[error("{}{}", io::Error::from_raw_os_error(*.errno), .message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        /// The positive errno the kernel returned.
        errno: i32,
        /// The kernel's extended acknowledgement text, when it gave one.
        message: Option<String>,
    },
    /// The socket itself failed (including a receive timeout).
    #[error("netlink socket")]
    Io(#[source] io::Error),
    /// The kernel's answer could not be parsed.
    #[error("malformed netlink answer: {0}")]
    Malformed(&'static str),
}

impl NetlinkError {
    /// The errno of a kernel refusal, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Io(e) => e.raw_os_error(),
            NetlinkError::Malformed(_) => None,
        }
    }
}

/// A netlink message under construction.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Message {
    /// A message of type `ty` with header flags `flags` (sequence number set on sending).
    pub fn new(ty: u16, flags: u16) -> Message {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0u8; HEADER_LEN]);
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    /// The message type.
    #[cfg(test)]
    pub fn msg_type(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    /// The header flags.
    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }

    fn set_flags(&mut self, flags: u16) {
        self.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    }

    /// Appends a fixed family header (ifinfomsg, rtmsg, nfgenmsg...), padded to 4 bytes.
    pub fn push_header(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len());
        self.buf.resize(n, 0);
    }

    /// Appends an attribute with a raw payload.
    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).expect("netlink attribute larger than 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    /// Appends a NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// Appends a one-byte attribute.
    pub fn attr_u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.attr(ty, &[v])
    }

    /// Appends a u32 attribute in host byte order (rtnetlink's convention).
    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Appends a u32 attribute in network byte order (nf_tables' convention).
    pub fn attr_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Appends a u64 attribute in network byte order.
    pub fn attr_be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Appends a nested attribute whose content `f` writes.
    pub fn nested(&mut self, ty: u16, f: impl FnOnce(&mut Message)) -> &mut Self {
        self.begin_nest(ty);
        f(self);
        self.end_nest();
        self
    }

    fn begin_nest(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn end_nest(&mut self) {
        let start = self.nests.pop().expect("end_nest without begin_nest");
        let len =
            u16::try_from(self.buf.len() - start).expect("nested attribute larger than 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The finished bytes with length and sequence number filled in.
    fn finish(&mut self, seq: u32) -> &[u8] {
        debug_assert!(self.nests.is_empty(), "unterminated nested attribute");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }

    /// The payload after the netlink header (for tests and debugging).
    #[cfg(test)]
    pub fn payload(&self) -> &[u8] {
        &self.buf[HEADER_LEN..]
    }
}

/// One message received from the kernel.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// Everything after the netlink header.
    pub payload: Vec<u8>,
}

/// Iterates over the attributes in `buf` as `(type without flags, payload)`.
pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let data = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((ty, data))
    })
}

/// The first attribute of type `ty` in `buf`.
pub(crate) fn find_attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, d)| d)
}

/// A NUL-terminated string attribute's text.
pub(crate) fn attr_string(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// A received message: type, flags, sequence number and payload.
type Header = (u16, u16, u32, Vec<u8>);

/// A netlink socket of one protocol, bound in the namespace of the thread that opened it.
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// Netlink protocol for links, addresses and routes.
pub(crate) const NETLINK_ROUTE: libc::c_int = libc::NETLINK_ROUTE;
/// Netlink protocol for netfilter (nf_tables).
pub(crate) const NETLINK_NETFILTER: libc::c_int = libc::NETLINK_NETFILTER;

impl Socket {
    /// Opens a socket of `protocol` in the calling thread's network namespace.
    pub fn open(protocol: libc::c_int) -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the returned descriptor is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            // SAFETY: `one` outlives the call and its size is passed; failure only loses
            // error texts, so it is ignored (old kernels).
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        // A kernel that never answers must not hang a pod start forever.
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket {
            fd,
            seq: 1,
            buf: vec![0; 256 * 1024],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        // SAFETY: sockaddr_nl is plain data; all-zero (pid 0 = the kernel) is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `bytes` and `addr` are valid for the given lengths during the call.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io(e));
            }
            if n as usize != bytes.len() {
                return Err(NetlinkError::Malformed("short send"));
            }
            return Ok(());
        }
    }

    /// Receives one datagram and splits it into messages (with their header fields).
    fn recv(&mut self) -> Result<Vec<Header>, NetlinkError> {
        let n = loop {
            // SAFETY: `self.buf` is valid for writes of its length during the call.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io(e));
            }
            break n as usize;
        };
        if n > self.buf.len() {
            return Err(NetlinkError::Malformed(
                "datagram larger than the receive buffer",
            ));
        }
        let mut out = Vec::new();
        let mut rest = &self.buf[..n];
        while rest.len() >= HEADER_LEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            if len < HEADER_LEN || len > rest.len() {
                return Err(NetlinkError::Malformed("bad message length"));
            }
            let ty = u16::from_ne_bytes([rest[4], rest[5]]);
            let flags = u16::from_ne_bytes([rest[6], rest[7]]);
            let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
            out.push((ty, flags, seq, rest[HEADER_LEN..len].to_vec()));
            rest = &rest[align4(len).min(rest.len())..];
        }
        Ok(out)
    }

    /// Sends `msg` and waits for the kernel's acknowledgement.
    pub fn request(&mut self, mut msg: Message) -> Result<(), NetlinkError> {
        msg.set_flags(msg.flags() | NLM_F_REQUEST | NLM_F_ACK);
        let seq = self.next_seq();
        self.send(msg.finish(seq))?;
        loop {
            for (ty, flags, s, payload) in self.recv()? {
                if s != seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    return parse_error(flags, &payload);
                }
            }
        }
    }

    /// Sends a get or dump request and collects the data messages of the answer.
    pub fn dump(&mut self, mut msg: Message) -> Result<Vec<Received>, NetlinkError> {
        let dumping = msg.flags() & NLM_F_DUMP == NLM_F_DUMP;
        msg.set_flags(msg.flags() | NLM_F_REQUEST);
        let seq = self.next_seq();
        self.send(msg.finish(seq))?;
        let mut out = Vec::new();
        loop {
            for (ty, flags, s, payload) in self.recv()? {
                if s != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        parse_error(flags, &payload)?;
                        return Ok(out);
                    }
                    NLMSG_NOOP => {}
                    _ => {
                        out.push(Received { payload });
                        if !dumping && flags & NLM_F_MULTI == 0 {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// Sends `msgs` as one nfnetlink batch, applied atomically by the kernel, and waits for
    /// every message's acknowledgement; the first refusal is the result.
    pub fn batch(&mut self, msgs: Vec<Message>) -> Result<(), NetlinkError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        let mut pending = Vec::new();
        let mut begin = batch_marker(NFNL_MSG_BATCH_BEGIN);
        bytes.extend_from_slice(begin.finish(self.next_seq()));
        for mut m in msgs {
            m.set_flags(m.flags() | NLM_F_REQUEST | NLM_F_ACK);
            let seq = self.next_seq();
            pending.push(seq);
            bytes.extend_from_slice(m.finish(seq));
        }
        let mut end = batch_marker(NFNL_MSG_BATCH_END);
        bytes.extend_from_slice(end.finish(self.next_seq()));
        self.send(&bytes)?;
        let mut first_error = None;
        while !pending.is_empty() {
            let received = match self.recv() {
                Ok(r) => r,
                // Once a refusal is known, a missing acknowledgement changes nothing.
                Err(e) => return Err(first_error.unwrap_or(e)),
            };
            for (ty, flags, s, payload) in received {
                let Some(pos) = pending.iter().position(|p| *p == s) else {
                    continue;
                };
                if ty == NLMSG_ERROR {
                    pending.swap_remove(pos);
                    if let Err(e) = parse_error(flags, &payload) {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

fn batch_marker(ty: u16) -> Message {
    let mut m = Message::new(ty, NLM_F_REQUEST);
    // nfgenmsg: family AF_UNSPEC, version 0, res_id = the nf_tables subsystem (big endian).
    let res = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    m.push_header(&[0, 0, res[0], res[1]]);
    m
}

/// Interprets an NLMSG_ERROR payload: errno 0 is an acknowledgement.
fn parse_error(flags: u16, payload: &[u8]) -> Result<(), NetlinkError> {
    if payload.len() < 4 {
        return Err(NetlinkError::Malformed("short error message"));
    }
    let err = i32::from_ne_bytes(payload[0..4].try_into().expect("4 bytes"));
    if err == 0 {
        return Ok(());
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 && payload.len() >= 4 + HEADER_LEN {
        // With NETLINK_CAP_ACK the echoed request is only its header; TLVs follow it.
        let tlvs = &payload[4 + HEADER_LEN..];
        message = find_attr(tlvs, NLMSGERR_ATTR_MSG).map(attr_string);
    }
    Err(NetlinkError::Kernel {
        errno: -err,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_aligned_nested_attributes() {
        let mut m = Message::new(16, NLM_F_CREATE);
        m.push_header(&[1, 2, 3]);
        m.attr_str(3, "eth0").nested(18, |m| {
            m.attr_str(1, "veth");
        });
        let bytes = m.finish(7).to_vec();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 7);
        let payload = &bytes[HEADER_LEN + 4..];
        let got: Vec<_> = attrs(payload).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(got[0], (3, b"eth0\0".to_vec()));
        assert_eq!(got[1].0, 18);
        assert_eq!(
            find_attr(&got[1].1, 1).map(attr_string).as_deref(),
            Some("veth")
        );
        // The nested flag is set on the wire but masked when parsing.
        let raw_ty = u16::from_ne_bytes([payload[12 + 2], payload[12 + 3]]);
        assert_eq!(raw_ty, 18 | NLA_F_NESTED);
    }

    #[test]
    fn attribute_parser_stops_on_garbage() {
        assert_eq!(attrs(&[1, 0]).count(), 0);
        assert_eq!(attrs(&[200, 0, 1, 0, 0, 0, 0, 0]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }

    #[test]
    fn error_payload_carries_errno_and_extack_text() {
        let mut p = (-17i32).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; HEADER_LEN]);
        let mut m = Message::new(0, 0);
        m.attr_str(NLMSGERR_ATTR_MSG, "File exists");
        p.extend_from_slice(&m.buf[HEADER_LEN..]);
        match parse_error(NLM_F_ACK_TLVS, &p) {
            Err(NetlinkError::Kernel {
                errno: 17,
                message: Some(s),
            }) => assert_eq!(s, "File exists"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_error(0, &0i32.to_ne_bytes()).is_ok());
        assert!(matches!(
            parse_error(0, &[1]),
            Err(NetlinkError::Malformed(_))
        ));
    }
}
