//! A small blocking D-Bus client: SASL `EXTERNAL` authentication, method calls and their
//! replies, enough for the systemd cgroup driver to start and stop scopes. Calls are rare
//! (one per pod start and removal), so a connection serves one caller and reads replies in
//! line; a full D-Bus library would cost the daemon more memory than all of this saves.
//!
//! Wire format (D-Bus specification, "Message Protocol"): messages are sent little-endian;
//! replies are read in either byte order. Each value is aligned to its type's alignment
//! counted from the start of the message (the body starts 8-aligned, so counting from the
//! body's start is the same).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest message the specification allows.
const MAX_MESSAGE: usize = 128 << 20;
/// The longest array the specification allows, in bytes.
const MAX_ARRAY: usize = 64 << 20;
/// How deep containers (arrays, structs, variants) may nest; the specification allows 64.
const MAX_DEPTH: usize = 64;

/// Why a D-Bus exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus socket could not be reached.
    #[error("connect to d-bus socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the connection failed (timeouts included).
    #[error("d-bus connection")]
    Io(#[source] std::io::Error),
    /// The bus refused to authenticate us.
    #[error("d-bus authentication failed: {0}")]
    Auth(String),
    /// The peer sent something that is not D-Bus.
    #[error("malformed d-bus message: {0}")]
    Malformed(String),
    /// A value we were asked to send cannot be marshalled.
    #[error("cannot marshal d-bus value: {0}")]
    Marshal(String),
    /// The called method answered with an error.
    #[error("{name}: {message}")]
    Remote {
        /// The D-Bus error name, such as `org.freedesktop.systemd1.NoSuchUnit`.
        name: String,
        /// Its message (first string of the error's body), possibly empty.
        message: String,
    },
}

impl BusError {
    /// The called method answered with the error `name`.
    pub fn is_remote(&self, name: &str) -> bool {
        matches!(self, BusError::Remote { name: n, .. } if n == name)
    }
}

type Result<T, E = BusError> = std::result::Result<T, E>;

fn malformed(what: impl Into<String>) -> BusError {
    BusError::Malformed(what.into())
}

mod marshal;

pub use marshal::Value;
use marshal::{Decoder, Encoder, split_signature};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A call that wants a reply.
    MethodCall = 1,
    /// A successful reply.
    MethodReturn = 2,
    /// An error reply.
    Error = 3,
    /// A broadcast.
    Signal = 4,
}

/// A D-Bus message: its header fields and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// What it is.
    pub kind: Kind,
    /// Header flags (`NO_REPLY_EXPECTED` = 1, `NO_AUTO_START` = 2, ...).
    pub flags: u8,
    /// The sender's serial of this message (non-zero).
    pub serial: u32,
    /// `PATH`: the object called or emitting.
    pub path: Option<String>,
    /// `INTERFACE`.
    pub interface: Option<String>,
    /// `MEMBER`: the method or signal.
    pub member: Option<String>,
    /// `ERROR_NAME` of an error reply.
    pub error_name: Option<String>,
    /// `REPLY_SERIAL`: the call a reply answers.
    pub reply_serial: Option<u32>,
    /// `DESTINATION`.
    pub destination: Option<String>,
    /// `SENDER`.
    pub sender: Option<String>,
    /// The body.
    pub body: Vec<Value>,
}

impl Message {
    /// A method call of `interface.member` on `path` at `destination`.
    pub fn call(
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        body: Vec<Value>,
    ) -> Message {
        Message {
            kind: Kind::MethodCall,
            flags: 0,
            serial: 1,
            path: Some(path.to_owned()),
            interface: Some(interface.to_owned()),
            member: Some(member.to_owned()),
            error_name: None,
            reply_serial: None,
            destination: (!destination.is_empty()).then(|| destination.to_owned()),
            sender: None,
            body,
        }
    }

    /// The body's signature.
    pub fn signature(&self) -> String {
        self.body.iter().map(Value::signature).collect()
    }

    /// The message on the wire, little-endian.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut fields = Vec::new();
        let mut field = |code: u8, v: Value| {
            fields.push(Value::Struct(vec![Value::Byte(code), Value::variant(v)]));
        };
        if let Some(p) = &self.path {
            field(1, Value::ObjectPath(p.clone()));
        }
        if let Some(i) = &self.interface {
            field(2, Value::str(i));
        }
        if let Some(m) = &self.member {
            field(3, Value::str(m));
        }
        if let Some(e) = &self.error_name {
            field(4, Value::str(e));
        }
        if let Some(r) = self.reply_serial {
            field(5, Value::U32(r));
        }
        if let Some(d) = &self.destination {
            field(6, Value::str(d));
        }
        if let Some(s) = &self.sender {
            field(7, Value::str(s));
        }
        let signature = self.signature();
        if !signature.is_empty() {
            field(8, Value::Signature(signature));
        }
        let mut enc = Encoder::default();
        enc.buf
            .extend_from_slice(&[b'l', self.kind as u8, self.flags, 1]);
        enc.u32(0); // body length, patched below
        enc.u32(self.serial);
        enc.put(&Value::Array("(yv)".into(), fields))?;
        enc.pad(8);
        let body_start = enc.buf.len();
        for v in &self.body {
            enc.put(v)?;
        }
        let body_len = enc.buf.len() - body_start;
        enc.buf[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
        if enc.buf.len() > MAX_MESSAGE {
            return Err(BusError::Marshal("message longer than 128 MiB".into()));
        }
        Ok(enc.buf)
    }

    /// Parses one whole message (as [`read_message`] returns it).
    pub fn decode(buf: &[u8]) -> Result<Message> {
        let (mut msg, signature, body_start) = Message::decode_header(buf)?;
        let mut dec = Decoder {
            buf: &buf[body_start..],
            pos: 0,
            big_endian: buf[0] == b'B',
        };
        for t in split_signature(&signature)? {
            msg.body.push(dec.get(t, 0)?);
        }
        if dec.pos != dec.buf.len() {
            return Err(malformed("body longer than its signature"));
        }
        Ok(msg)
    }

    /// The header, the body's signature and where the body starts; the body is not read,
    /// so messages that are not ours are skipped whatever they hold.
    fn decode_header(buf: &[u8]) -> Result<(Message, String, usize)> {
        let big_endian = match buf.first() {
            Some(b'l') => false,
            Some(b'B') => true,
            _ => return Err(malformed("bad byte-order mark")),
        };
        if buf.len() < 16 {
            return Err(malformed("message shorter than its header"));
        }
        let kind = match buf[1] {
            1 => Kind::MethodCall,
            2 => Kind::MethodReturn,
            3 => Kind::Error,
            4 => Kind::Signal,
            t => return Err(malformed(format!("message type {t}"))),
        };
        if buf[3] != 1 {
            return Err(malformed(format!("protocol version {}", buf[3])));
        }
        let mut dec = Decoder {
            buf,
            pos: 4,
            big_endian,
        };
        let body_len = dec.u32()? as usize;
        let serial = dec.u32()?;
        let Value::Array(_, fields) = dec.get("a(yv)", 0)? else {
            unreachable!("an array signature decodes to an array")
        };
        dec.align(8)?;
        let body_start = dec.pos;
        if body_start + body_len != buf.len() {
            return Err(malformed("body length does not match the message"));
        }
        let mut msg = Message {
            kind,
            flags: buf[2],
            serial,
            path: None,
            interface: None,
            member: None,
            error_name: None,
            reply_serial: None,
            destination: None,
            sender: None,
            body: Vec::new(),
        };
        let mut signature = String::new();
        for f in fields {
            let Value::Struct(f) = f else { continue };
            let (Some(Value::Byte(code)), Some(Value::Variant(v))) = (f.first(), f.get(1)) else {
                continue;
            };
            let text = v.as_str().map(str::to_owned);
            match code {
                1 => msg.path = text,
                2 => msg.interface = text,
                3 => msg.member = text,
                4 => msg.error_name = text,
                5 => {
                    if let Value::U32(r) = **v {
                        msg.reply_serial = Some(r);
                    }
                }
                6 => msg.destination = text,
                7 => msg.sender = text,
                8 => signature = text.unwrap_or_default(),
                // UNIX_FDS and fields of later versions: we pass no descriptors.
                _ => {}
            }
        }
        Ok((msg, signature, body_start))
    }
}

/// Reads one whole message from `r`.
pub fn read_message(r: &mut impl Read) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 16];
    r.read_exact(&mut buf).map_err(BusError::Io)?;
    let word = |b: &[u8]| {
        let w: [u8; 4] = b.try_into().expect("four bytes");
        match buf[0] {
            b'B' => u32::from_be_bytes(w),
            _ => u32::from_le_bytes(w),
        }
    };
    if buf[0] != b'l' && buf[0] != b'B' {
        return Err(malformed("bad byte-order mark"));
    }
    let body_len = word(&buf[4..8]) as usize;
    let fields_len = word(&buf[12..16]) as usize;
    let header_len = (16 + fields_len).next_multiple_of(8);
    let total = header_len
        .checked_add(body_len)
        .filter(|t| *t <= MAX_MESSAGE)
        .ok_or_else(|| malformed("message longer than 128 MiB"))?;
    buf.resize(total, 0);
    r.read_exact(&mut buf[16..]).map_err(BusError::Io)?;
    Ok(buf)
}

/// An authenticated connection to a bus or to a peer (systemd's private socket).
pub struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    serial: u32,
}

impl Connection {
    /// Connects to the socket at `path` and authenticates as our effective uid; on a bus
    /// (`hello`), registers with `Hello` as the bus requires before any other call. Every
    /// read and write gives up after `timeout`.
    pub fn open(path: &Path, hello: bool, timeout: Duration) -> Result<Connection> {
        let connect = |source| BusError::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(connect)?;
        let writer = stream.try_clone().map_err(connect)?;
        let mut conn = Connection {
            reader: BufReader::new(stream),
            writer,
            serial: 0,
        };
        conn.authenticate(nix::unistd::geteuid().as_raw())?;
        if hello {
            conn.call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "Hello",
                Vec::new(),
            )?;
        }
        Ok(conn)
    }

    /// SASL: a NUL byte, `AUTH EXTERNAL <uid as hex of its decimal digits>`, `OK <guid>`,
    /// `BEGIN`; after that the stream carries messages.
    fn authenticate(&mut self, uid: u32) -> Result<()> {
        let hex: String = uid
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.writer
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())
            .map_err(BusError::Io)?;
        let mut line = String::new();
        (&mut self.reader)
            .take(4096)
            .read_line(&mut line)
            .map_err(BusError::Io)?;
        let line = line.trim_end();
        if !line.starts_with("OK ") {
            return Err(BusError::Auth(if line.is_empty() {
                "the bus closed the connection".into()
            } else {
                format!("the bus answered {line:?}")
            }));
        }
        self.writer.write_all(b"BEGIN\r\n").map_err(BusError::Io)
    }

    /// Calls `interface.member` on `path` at `destination` and waits for its reply: the
    /// reply's body, or [`BusError::Remote`] for an error reply. Signals and other messages
    /// that arrive meanwhile are skipped.
    pub fn call(
        &mut self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>> {
        self.serial = self.serial.wrapping_add(1).max(1);
        let mut msg = Message::call(destination, path, interface, member, args);
        msg.serial = self.serial;
        let bytes = msg.encode()?;
        self.writer.write_all(&bytes).map_err(BusError::Io)?;
        loop {
            let buf = read_message(&mut self.reader)?;
            let (head, _, _) = Message::decode_header(&buf)?;
            if head.reply_serial != Some(self.serial)
                || !matches!(head.kind, Kind::MethodReturn | Kind::Error)
            {
                continue;
            }
            let reply = Message::decode(&buf)?;
            if reply.kind == Kind::MethodReturn {
                return Ok(reply.body);
            }
            return Err(BusError::Remote {
                name: reply.error_name.unwrap_or_default(),
                message: reply
                    .body
                    .first()
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod fake;
