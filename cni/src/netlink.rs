//! The netlink transport: a synchronous socket that sends `netlink-packet-core` messages
//! and collects the kernel's acknowledgements, dumps and nf_tables batch answers.
//!
//! Messages are typed (`netlink-packet-route` for links, addresses and routes, the nft
//! module's own for nf_tables); this module only frames them, numbers them and reads the
//! answers back. The socket is a `netlink-sys` socket used synchronously rather than
//! `rtnetlink`'s async handle: a socket is bound to the network namespace of the thread
//! that opens it, and Berth configures a pod's namespace from a short-lived thread that
//! has entered it (setns is per thread). A blocking socket on that thread costs one send
//! and one receive per request; an async handle would need a runtime and a connection
//! task per namespace thread (a tokio worker cannot safely change namespace), more memory
//! and latency for the same few messages, and it cannot send nf_tables batches.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    ErrorBuffer, ErrorMessage, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_DUMP, NLM_F_MULTIPART,
    NLM_F_REQUEST, NLMSG_ERROR, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_utils::Parseable;
use netlink_packet_utils::nla::NlasIterator;

pub(crate) use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};

/// Extended acknowledgement attribute carrying the kernel's error text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Length of the request header the kernel echoes in an error (NETLINK_CAP_ACK).
const ECHOED_HEADER_LEN: usize = 16;

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
    Malformed(String),
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

/// Netlink protocol for links, addresses and routes.
pub(crate) const NETLINK_ROUTE: isize = netlink_sys::protocols::NETLINK_ROUTE;
/// Netlink protocol for netfilter (nf_tables).
pub(crate) const NETLINK_NETFILTER: isize = netlink_sys::protocols::NETLINK_NETFILTER;

/// A netlink socket of one protocol, bound in the namespace of the thread that opened it.
#[derive(Debug)]
pub(crate) struct Socket {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// One message of the last datagram: its header fields and where it lies in the buffer.
struct Answer {
    flags: u16,
    seq: u32,
    ty: u16,
    start: usize,
    end: usize,
}

impl Socket {
    /// Opens a socket of `protocol` in the calling thread's network namespace.
    pub fn open(protocol: isize) -> io::Result<Socket> {
        let mut sock = netlink_sys::Socket::new(protocol)?;
        // Failure only loses the kernel's error texts (old kernels), so it is ignored.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        set_receive_timeout(&sock)?;
        sock.bind_auto()?;
        Ok(Socket {
            sock,
            seq: 1,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Frames `inner` with `flags` and the next sequence number onto `out`.
    fn frame<S: NetlinkSerializable>(&mut self, out: &mut Vec<u8>, inner: S, flags: u16) -> u32 {
        let seq = self.next_seq();
        Self::frame_into(out, inner, flags, seq);
        seq
    }

    fn frame_into<S: NetlinkSerializable>(out: &mut Vec<u8>, inner: S, flags: u16, seq: u32) {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
        msg.finalize();
        let start = out.len();
        out.resize(start + msg.buffer_len(), 0);
        msg.serialize(&mut out[start..]);
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        let kernel = netlink_sys::SocketAddr::new(0, 0);
        loop {
            match self.sock.send_to(bytes, &kernel, 0) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => return Err(NetlinkError::Malformed("short send".into())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetlinkError::Io(e)),
            }
        }
    }

    /// Receives one datagram into the buffer and lists the messages in it.
    fn recv(&mut self) -> Result<Vec<Answer>, NetlinkError> {
        self.buf.clear();
        let n = loop {
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetlinkError::Io(e)),
            }
        };
        if n > self.buf.len() {
            return Err(NetlinkError::Malformed(
                "datagram larger than the receive buffer".into(),
            ));
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start < n {
            let header = NetlinkBuffer::new_checked(&self.buf[start..n])
                .map_err(|e| NetlinkError::Malformed(e.to_string()))?;
            let end = start + header.length() as usize;
            out.push(Answer {
                flags: header.flags(),
                seq: header.sequence_number(),
                ty: header.message_type(),
                start,
                end,
            });
            start = (end + 3) & !3;
        }
        Ok(out)
    }

    /// Parses the message `a` of the last datagram as an answer of type `R`.
    fn parse<R>(&self, a: &Answer) -> Result<NetlinkPayload<R>, NetlinkError>
    where
        R: NetlinkDeserializable,
    {
        NetlinkMessage::<R>::deserialize(&self.buf[a.start..a.end])
            .map(|m| m.payload)
            .map_err(|e| NetlinkError::Malformed(format!("message type {}: {e}", a.ty)))
    }

    /// The outcome an acknowledgement `a` reports, or `None` if `a` is not one.
    fn ack(&self, a: &Answer) -> Option<Result<(), NetlinkError>> {
        if a.ty != NLMSG_ERROR {
            return None;
        }
        let message = &self.buf[a.start..a.end];
        let parsed = NetlinkBuffer::new_checked(message).and_then(|m| {
            let payload = m.payload();
            ErrorBuffer::new_checked(&payload).and_then(|e| ErrorMessage::parse(&e))
        });
        Some(match parsed {
            Ok(e) => outcome(a.flags, e.code, &e.header),
            Err(e) => Err(NetlinkError::Malformed(format!("acknowledgement: {e}"))),
        })
    }

    /// Sends `msg` with `flags` and waits for the kernel's acknowledgement.
    pub fn request<S>(&mut self, msg: S, flags: u16) -> Result<(), NetlinkError>
    where
        S: NetlinkSerializable,
    {
        let mut bytes = Vec::new();
        let seq = self.frame(&mut bytes, msg, flags | NLM_F_REQUEST | NLM_F_ACK);
        self.send(&bytes)?;
        loop {
            for a in self.recv()? {
                if a.seq != seq {
                    continue;
                }
                if let Some(outcome) = self.ack(&a) {
                    return outcome;
                }
            }
        }
    }

    /// Sends a get (or, with `NLM_F_DUMP` in `flags`, a dump) request and collects the
    /// messages of the answer, read as `R` (which may decode less than the whole message).
    pub fn dump<S, R>(&mut self, msg: S, flags: u16) -> Result<Vec<R>, NetlinkError>
    where
        S: NetlinkSerializable,
        R: NetlinkDeserializable,
    {
        let dumping = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut bytes = Vec::new();
        let seq = self.frame(&mut bytes, msg, flags | NLM_F_REQUEST);
        self.send(&bytes)?;
        let mut out = Vec::new();
        loop {
            for a in self.recv()? {
                if a.seq != seq {
                    continue;
                }
                match self.parse::<R>(&a)? {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        outcome(a.flags, e.code, &e.header)?;
                        return Ok(out);
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dumping && a.flags & NLM_F_MULTIPART == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends `msgs` between the `begin` and `end` markers as one nfnetlink batch, applied
    /// atomically by the kernel, and waits for every message's acknowledgement; the first
    /// refusal is the result.
    pub fn batch<S>(&mut self, begin: S, msgs: Vec<(S, u16)>, end: S) -> Result<(), NetlinkError>
    where
        S: NetlinkSerializable,
    {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        self.frame(&mut bytes, begin, NLM_F_REQUEST);
        let pending: Vec<u32> = msgs
            .into_iter()
            .map(|(m, flags)| self.frame(&mut bytes, m, flags | NLM_F_REQUEST | NLM_F_ACK))
            .collect();
        self.frame(&mut bytes, end, NLM_F_REQUEST);
        self.send(&bytes)?;
        self.collect_acks(pending)
    }

    fn collect_acks(&mut self, mut pending: Vec<u32>) -> Result<(), NetlinkError> {
        let mut first_error = None;
        while !pending.is_empty() {
            let answers = match self.recv() {
                Ok(r) => r,
                // Once a refusal is known, a missing acknowledgement changes nothing.
                Err(e) => return Err(first_error.unwrap_or(e)),
            };
            for a in answers {
                let Some(pos) = pending.iter().position(|p| *p == a.seq) else {
                    continue;
                };
                if let Some(outcome) = self.ack(&a) {
                    pending.swap_remove(pos);
                    if let Err(e) = outcome {
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

/// A kernel that never answers must not hang a pod start forever.
fn set_receive_timeout(sock: &netlink_sys::Socket) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: `tv` outlives the call and its size is passed; the descriptor is open.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Interprets an NLMSG_ERROR answer: no code is an acknowledgement; a refusal carries the
/// kernel's extended acknowledgement text when `flags` say one follows the echoed header.
fn outcome(
    flags: u16,
    code: Option<std::num::NonZeroI32>,
    rest: &[u8],
) -> Result<(), NetlinkError> {
    let Some(code) = code else {
        return Ok(());
    };
    let message = (flags & NLM_F_ACK_TLVS != 0)
        .then(|| rest.get(ECHOED_HEADER_LEN..))
        .flatten()
        .and_then(|tlvs| {
            NlasIterator::new(tlvs)
                .filter_map(Result::ok)
                .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
                .map(|nla| c_string(nla.value()))
        });
    Err(NetlinkError::Kernel {
        errno: -code.get(),
        message,
    })
}

/// The text of a NUL-terminated string attribute.
pub(crate) fn c_string(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// The bytes of `m` as the kernel receives them.
#[cfg(test)]
pub(crate) fn wire_bytes<S: NetlinkSerializable>(m: S) -> Vec<u8> {
    let mut buf = Vec::new();
    Socket::frame_into(&mut buf, m, 0, 1);
    buf
}

/// `m` as the kernel reads it: serialized, then parsed back.
#[cfg(test)]
pub(crate) fn round_trip<T>(m: T) -> T
where
    T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
{
    match NetlinkMessage::<T>::deserialize(&wire_bytes(m)).map(|m| m.payload) {
        Ok(NetlinkPayload::InnerMessage(m)) => m,
        other => panic!("unexpected {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_utils::Emitable;
    use netlink_packet_utils::nla::DefaultNla;

    #[test]
    fn refusal_carries_errno_and_extack_text() {
        let mut rest = vec![0u8; ECHOED_HEADER_LEN];
        let text = DefaultNla::new(NLMSGERR_ATTR_MSG, b"File exists\0".to_vec());
        let mut tlv = vec![0u8; text.buffer_len()];
        text.emit(&mut tlv);
        rest.extend(tlv);
        match outcome(NLM_F_ACK_TLVS, std::num::NonZeroI32::new(-17), &rest) {
            Err(NetlinkError::Kernel {
                errno: 17,
                message: Some(s),
            }) => assert_eq!(s, "File exists"),
            other => panic!("unexpected {other:?}"),
        }
        // Without the TLV flag the bytes after the header are not read as text.
        assert!(matches!(
            outcome(0, std::num::NonZeroI32::new(-17), &rest),
            Err(NetlinkError::Kernel {
                errno: 17,
                message: None
            })
        ));
        assert!(outcome(0, None, &[]).is_ok());
    }

    #[test]
    fn c_strings_stop_at_the_nul() {
        assert_eq!(c_string(b"eth0\0\0"), "eth0");
        assert_eq!(c_string(b"eth0"), "eth0");
    }
}
