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

/// One D-Bus value, typed enough to be marshalled (an empty array keeps its element type).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `y`
    Byte(u8),
    /// `b`
    Bool(bool),
    /// `n`
    I16(i16),
    /// `q`
    U16(u16),
    /// `i`
    I32(i32),
    /// `u`
    U32(u32),
    /// `x`
    I64(i64),
    /// `t`
    U64(u64),
    /// `d`
    F64(f64),
    /// `s`
    Str(String),
    /// `o`
    ObjectPath(String),
    /// `g`
    Signature(String),
    /// `a`: the element's signature and the elements.
    Array(String, Vec<Value>),
    /// `(...)`
    Struct(Vec<Value>),
    /// `{..}`, only as an array's element.
    DictEntry(Box<Value>, Box<Value>),
    /// `v`
    Variant(Box<Value>),
}

impl Value {
    /// A string.
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// A variant holding `v`.
    pub fn variant(v: Value) -> Value {
        Value::Variant(Box::new(v))
    }

    /// This value's type signature.
    pub fn signature(&self) -> String {
        match self {
            Value::Byte(_) => "y".into(),
            Value::Bool(_) => "b".into(),
            Value::I16(_) => "n".into(),
            Value::U16(_) => "q".into(),
            Value::I32(_) => "i".into(),
            Value::U32(_) => "u".into(),
            Value::I64(_) => "x".into(),
            Value::U64(_) => "t".into(),
            Value::F64(_) => "d".into(),
            Value::Str(_) => "s".into(),
            Value::ObjectPath(_) => "o".into(),
            Value::Signature(_) => "g".into(),
            Value::Array(elem, _) => format!("a{elem}"),
            Value::Struct(fields) => {
                let inner: String = fields.iter().map(Value::signature).collect();
                format!("({inner})")
            }
            Value::DictEntry(k, v) => format!("{{{}{}}}", k.signature(), v.signature()),
            Value::Variant(_) => "v".into(),
        }
    }

    /// The string inside a `s`, `o` or `g` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => Some(s),
            _ => None,
        }
    }
}

/// The alignment of a type, from the first character of its signature.
fn alignment(code: u8) -> usize {
    match code {
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b's' | b'o' | b'a' | b'h' => 4,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 1,
    }
}

/// The end of the single complete type that starts at `sig[start]`.
fn complete_type_end(sig: &[u8], start: usize, depth: usize) -> Result<usize> {
    if depth > MAX_DEPTH {
        return Err(malformed("signature nests too deep"));
    }
    let bad = || malformed(format!("bad signature {:?}", String::from_utf8_lossy(sig)));
    match sig.get(start).copied().ok_or_else(bad)? {
        b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b's' | b'o' | b'g'
        | b'v' | b'h' => Ok(start + 1),
        b'a' => complete_type_end(sig, start + 1, depth + 1),
        b'(' => {
            let mut at = start + 1;
            if sig.get(at) == Some(&b')') {
                return Err(bad());
            }
            while sig.get(at) != Some(&b')') {
                at = complete_type_end(sig, at, depth + 1)?;
            }
            Ok(at + 1)
        }
        b'{' => {
            let key = sig.get(start + 1).copied().ok_or_else(bad)?;
            if !b"ybnqiuxtdsogh".contains(&key) {
                return Err(bad());
            }
            let end = complete_type_end(sig, start + 2, depth + 1)?;
            if sig.get(end) != Some(&b'}') {
                return Err(bad());
            }
            Ok(end + 1)
        }
        _ => Err(bad()),
    }
}

/// Splits a signature into its complete types.
fn split_signature(sig: &str) -> Result<Vec<&str>> {
    let bytes = sig.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let end = complete_type_end(bytes, at, 0)?;
        out.push(&sig[at..end]);
        at = end;
    }
    Ok(out)
}

/// Marshals values little-endian, aligned from the start of `buf`.
#[derive(Default)]
struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn pad(&mut self, align: usize) {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
    }

    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, s: &str) -> Result<()> {
        if s.contains('\0') {
            return Err(BusError::Marshal(format!("string {s:?} holds a NUL")));
        }
        let len =
            u32::try_from(s.len()).map_err(|_| BusError::Marshal("string too long".into()))?;
        self.u32(len);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn signature(&mut self, s: &str) -> Result<()> {
        let len = u8::try_from(s.len())
            .map_err(|_| BusError::Marshal(format!("signature {s:?} is too long")))?;
        split_signature(s)?;
        self.buf.push(len);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn put(&mut self, v: &Value) -> Result<()> {
        match v {
            Value::Byte(b) => self.buf.push(*b),
            Value::Bool(b) => self.u32(u32::from(*b)),
            Value::I16(n) => {
                self.pad(2);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::U16(n) => {
                self.pad(2);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::I32(n) => {
                self.pad(4);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::U32(n) => self.u32(*n),
            Value::I64(n) => {
                self.pad(8);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::U64(n) => {
                self.pad(8);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::F64(n) => {
                self.pad(8);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::Str(s) => self.string(s)?,
            Value::ObjectPath(p) => {
                if !valid_object_path(p) {
                    return Err(BusError::Marshal(format!("invalid object path {p:?}")));
                }
                self.string(p)?;
            }
            Value::Signature(s) => self.signature(s)?,
            Value::Array(elem, items) => {
                let elem_bytes = elem.as_bytes();
                if complete_type_end(elem_bytes, 0, 1)? != elem_bytes.len() {
                    return Err(BusError::Marshal(format!(
                        "bad array element type {elem:?}"
                    )));
                }
                self.u32(0);
                let len_at = self.buf.len() - 4;
                // The padding before the first element is not part of the length.
                self.pad(alignment(elem_bytes[0]));
                let start = self.buf.len();
                for item in items {
                    if item.signature() != *elem {
                        return Err(BusError::Marshal(format!(
                            "{} element in an array of {elem}",
                            item.signature()
                        )));
                    }
                    self.put(item)?;
                }
                let len = self.buf.len() - start;
                if len > MAX_ARRAY {
                    return Err(BusError::Marshal("array longer than 64 MiB".into()));
                }
                self.buf[len_at..len_at + 4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            Value::Struct(fields) => {
                if fields.is_empty() {
                    return Err(BusError::Marshal("empty struct".into()));
                }
                self.pad(8);
                for f in fields {
                    self.put(f)?;
                }
            }
            Value::DictEntry(k, v) => {
                self.pad(8);
                self.put(k)?;
                self.put(v)?;
            }
            Value::Variant(inner) => {
                self.signature(&inner.signature())?;
                self.put(inner)?;
            }
        }
        Ok(())
    }
}

/// An object path: `/`, or `/`-separated non-empty elements of `[A-Za-z0-9_]`.
fn valid_object_path(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && p[1..].split('/').all(|e| {
                !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            }))
}

/// Reads values in the message's byte order, aligned from the start of `buf`.
struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    big_endian: bool,
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| malformed("value runs past the end of the message"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn align(&mut self, align: usize) -> Result<()> {
        let pad = (align - self.pos % align) % align;
        self.take(pad)?;
        Ok(())
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.align(N)?;
        let mut b: [u8; N] = self.take(N)?.try_into().expect("took N bytes");
        if self.big_endian {
            b.reverse();
        }
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    fn text(&mut self, len: usize) -> Result<String> {
        let bytes = self.take(len + 1)?;
        if bytes[len] != 0 {
            return Err(malformed("string without its NUL"));
        }
        String::from_utf8(bytes[..len].to_vec()).map_err(|_| malformed("string is not UTF-8"))
    }

    fn signature(&mut self) -> Result<String> {
        let len = self.take(1)?[0] as usize;
        self.text(len)
    }

    /// One value of the complete type `sig`.
    fn get(&mut self, sig: &str, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(malformed("values nest too deep"));
        }
        let bytes = sig.as_bytes();
        Ok(match bytes.first().copied().unwrap_or(0) {
            b'y' => Value::Byte(self.take(1)?[0]),
            b'b' => match self.u32()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                n => return Err(malformed(format!("boolean {n}"))),
            },
            b'n' => Value::I16(i16::from_le_bytes(self.fixed()?)),
            b'q' => Value::U16(u16::from_le_bytes(self.fixed()?)),
            b'i' => Value::I32(i32::from_le_bytes(self.fixed()?)),
            b'u' => Value::U32(self.u32()?),
            b'x' => Value::I64(i64::from_le_bytes(self.fixed()?)),
            b't' => Value::U64(u64::from_le_bytes(self.fixed()?)),
            b'd' => Value::F64(f64::from_le_bytes(self.fixed()?)),
            b's' => {
                let len = self.u32()? as usize;
                Value::Str(self.text(len)?)
            }
            b'o' => {
                let len = self.u32()? as usize;
                Value::ObjectPath(self.text(len)?)
            }
            b'g' => Value::Signature(self.signature()?),
            b'a' => {
                let elem = &sig[1..];
                let len = self.u32()? as usize;
                if len > MAX_ARRAY {
                    return Err(malformed("array longer than 64 MiB"));
                }
                self.align(alignment(elem.as_bytes()[0]))?;
                let end = self.pos + len;
                if end > self.buf.len() {
                    return Err(malformed("array runs past the end of the message"));
                }
                let mut items = Vec::new();
                while self.pos < end {
                    items.push(self.get(elem, depth + 1)?);
                }
                if self.pos != end {
                    return Err(malformed("array elements overrun its length"));
                }
                Value::Array(elem.to_owned(), items)
            }
            b'(' => {
                self.align(8)?;
                let fields = split_signature(&sig[1..sig.len() - 1])?
                    .into_iter()
                    .map(|t| self.get(t, depth + 1))
                    .collect::<Result<_>>()?;
                Value::Struct(fields)
            }
            b'{' => {
                self.align(8)?;
                let inner = &sig[1..sig.len() - 1];
                let key = self.get(&inner[..1], depth + 1)?;
                let value = self.get(&inner[1..], depth + 1)?;
                Value::DictEntry(Box::new(key), Box::new(value))
            }
            b'v' => {
                let inner = self.signature()?;
                if complete_type_end(inner.as_bytes(), 0, depth + 1)? != inner.len() {
                    return Err(malformed(format!("variant of {inner:?}")));
                }
                Value::Variant(Box::new(self.get(&inner, depth + 1)?))
            }
            _ => return Err(malformed(format!("unsupported type {sig:?}"))),
        })
    }
}

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
mod tests {
    use super::*;

    #[test]
    fn a_call_with_su_is_the_bytes_the_specification_gives() {
        let mut msg = Message::call("", "/a", "", "M", vec![Value::str("x"), Value::U32(7)]);
        msg.interface = None;
        // Worked by hand from the specification: header fields PATH, MEMBER, SIGNATURE,
        // each a struct (8-aligned) of a code and a variant; the body 8-aligned.
        #[rustfmt::skip]
        let want: &[u8] = &[
            b'l', 1, 0, 1,          // little-endian, METHOD_CALL, no flags, version 1
            12, 0, 0, 0,            // body length
            1, 0, 0, 0,             // serial
            40, 0, 0, 0,            // header fields array: 40 bytes, from offset 16
            1, 1, b'o', 0,          // PATH, variant signature "o"
            2, 0, 0, 0, b'/', b'a', 0, // "/a"
            0, 0, 0, 0, 0,          // pad to 32
            3, 1, b's', 0,          // MEMBER, variant signature "s"
            1, 0, 0, 0, b'M', 0,    // "M"
            0, 0, 0, 0, 0, 0,       // pad to 48
            8, 1, b'g', 0,          // SIGNATURE, variant signature "g"
            2, b's', b'u', 0,       // "su"; the header ends at 56, 8-aligned
            1, 0, 0, 0, b'x', 0,    // body: "x"
            0, 0,                   // pad to 4
            7, 0, 0, 0,             // 7
        ];
        let bytes = msg.encode().unwrap();
        assert_eq!(bytes, want);
        assert_eq!(Message::decode(&bytes).unwrap(), msg);
    }

    /// StartTransientUnit's arguments, `ssa(sv)a(sa(sv))`.
    fn transient_args() -> Vec<Value> {
        let prop = |k: &str, v: Value| Value::Struct(vec![Value::str(k), Value::variant(v)]);
        vec![
            Value::str("berth-p1.scope"),
            Value::str("fail"),
            Value::Array(
                "(sv)".into(),
                vec![
                    prop("Slice", Value::str("berth.slice")),
                    prop("PIDs", Value::Array("u".into(), vec![Value::U32(42)])),
                    prop("Delegate", Value::Bool(true)),
                    prop("MemoryMax", Value::U64(1 << 30)),
                ],
            ),
            Value::Array("(sa(sv))".into(), Vec::new()),
        ]
    }

    #[test]
    fn values_round_trip() {
        let mut msg = Message::call(
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "StartTransientUnit",
            transient_args(),
        );
        msg.serial = 9;
        assert_eq!(msg.signature(), "ssa(sv)a(sa(sv))");
        let bytes = msg.encode().unwrap();
        assert_eq!(Message::decode(&bytes).unwrap(), msg);

        let mut every = Message::call("", "/", "i.f", "M", Vec::new());
        every.kind = Kind::MethodReturn;
        every.reply_serial = Some(3);
        every.body = vec![
            Value::Byte(1),
            Value::I16(-2),
            Value::U64(3),
            Value::U16(4),
            Value::F64(0.5),
            Value::I64(-6),
            Value::Signature("a{sv}".into()),
            Value::Array(
                "{sv}".into(),
                vec![Value::DictEntry(
                    Box::new(Value::str("k")),
                    Box::new(Value::variant(Value::Struct(vec![
                        Value::Byte(7),
                        Value::I32(-8),
                    ]))),
                )],
            ),
            Value::Array("t".into(), Vec::new()),
            Value::Array("y".into(), vec![Value::Byte(9)]),
        ];
        assert_eq!(Message::decode(&every.encode().unwrap()).unwrap(), every);
    }

    #[test]
    fn empty_arrays_still_pad_to_their_element() {
        let mut enc = Encoder::default();
        enc.put(&Value::Array("(sv)".into(), Vec::new())).unwrap();
        // Length 0, then padding to 8 that the length does not count.
        assert_eq!(enc.buf, [0, 0, 0, 0, 0, 0, 0, 0]);
        let mut enc = Encoder::default();
        enc.put(&Value::Array("u".into(), vec![Value::U32(42)]))
            .unwrap();
        assert_eq!(enc.buf, [4, 0, 0, 0, 42, 0, 0, 0]);
    }

    #[test]
    fn big_endian_replies_are_read() {
        #[rustfmt::skip]
        let reply: &[u8] = &[
            b'B', 2, 1, 1,          // big-endian METHOD_RETURN, NO_REPLY_EXPECTED
            0, 0, 0, 7,             // body length
            0, 0, 0, 5,             // serial
            0, 0, 0, 15,            // header fields: 15 bytes
            5, 1, b'u', 0, 0, 0, 0, 9, // REPLY_SERIAL 9
            8, 1, b'g', 0, 1, b'o', 0, // SIGNATURE "o"
            0,                      // pad to 32
            0, 0, 0, 2, b'/', b'x', 0, // "/x"
        ];
        let m = Message::decode(reply).unwrap();
        assert_eq!(m.kind, Kind::MethodReturn);
        assert_eq!(m.reply_serial, Some(9));
        assert_eq!(m.body, vec![Value::ObjectPath("/x".into())]);
    }

    #[test]
    fn calls_are_answered_and_refusals_named() {
        let t = tempfile::tempdir().unwrap();
        let calls = fake::serve(&t.path().join("bus"), |call| match call.member.as_deref() {
            Some("GetUnit") => Ok(vec![Value::ObjectPath("/u".into())]),
            _ => Err(("org.example.Nope".into(), "not this one".into())),
        });
        let mut conn =
            Connection::open(&t.path().join("bus"), true, Duration::from_secs(5)).unwrap();
        let body = conn
            .call("d.e", "/o", "i.f", "GetUnit", vec![Value::str("x.scope")])
            .unwrap();
        assert_eq!(body, vec![Value::ObjectPath("/u".into())]);
        let e = conn
            .call("d.e", "/o", "i.f", "Other", Vec::new())
            .unwrap_err();
        assert!(e.is_remote("org.example.Nope"), "{e}");
        assert_eq!(e.to_string(), "org.example.Nope: not this one");
        let calls = calls.lock().unwrap();
        let members: Vec<_> = calls.iter().map(|c| c.member.clone().unwrap()).collect();
        assert_eq!(members, ["Hello", "GetUnit", "Other"]);
        // Serials grow, so each reply is matched to its call.
        assert!(calls[1].serial < calls[2].serial);

        // A peer that refuses our credentials.
        let listener = std::os::unix::net::UnixListener::bind(t.path().join("strict")).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
            s.write_all(b"REJECTED EXTERNAL\r\n").unwrap();
        });
        let e = Connection::open(&t.path().join("strict"), false, Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(matches!(e, BusError::Auth(_)), "{e}");
        assert!(e.to_string().contains("REJECTED"), "{e}");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let bytes = Message::call("", "/a", "i.f", "M", transient_args())
            .encode()
            .unwrap();
        for len in 0..bytes.len() {
            assert!(Message::decode(&bytes[..len]).is_err(), "prefix {len}");
        }
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0xff;
            let _ = Message::decode(&b);
        }
        assert!(split_signature("a").is_err());
        assert!(split_signature("(").is_err());
        assert!(split_signature("{sv}").is_ok());
        assert!(split_signature("a{vs}").is_err());
        assert!(split_signature(&"a".repeat(100)).is_err());
        let e = Encoder::default()
            .put(&Value::Array("u".into(), vec![Value::str("x")]))
            .unwrap_err();
        assert!(e.to_string().contains("array of u"), "{e}");
        assert!(
            Encoder::default()
                .put(&Value::ObjectPath("a/b".into()))
                .is_err()
        );
    }
}

/// A fake bus for tests: a thread on a unix socket that authenticates its clients as a bus
/// does, records every method call and answers each with what the test's closure says.
#[cfg(test)]
pub(crate) mod fake {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::{Kind, Message, Value, read_message};

    /// What the fake answers a call with: a return's body, or an error's name and message.
    pub(crate) type Answer = Result<Vec<Value>, (String, String)>;

    /// Serves `path` until the test ends; returns the calls received so far (`Hello`
    /// included). Before every reply the fake sends a signal, which clients must skip.
    pub(crate) fn serve(
        path: &Path,
        answer: impl Fn(&Message) -> Answer + Send + Sync + 'static,
    ) -> Arc<Mutex<Vec<Message>>> {
        let listener = UnixListener::bind(path).unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (calls, answer) = (recorded.clone(), answer.clone());
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    if handshake(&mut reader, &mut writer).is_some() {
                        converse(&mut reader, &mut writer, &calls, &*answer);
                    }
                });
            }
        });
        calls
    }

    /// The server's side of SASL EXTERNAL; refuses a client that claims another uid.
    fn handshake(reader: &mut BufReader<impl Read>, writer: &mut impl Write) -> Option<()> {
        let mut nul = [0u8; 1];
        reader.read_exact(&mut nul).ok()?;
        assert_eq!(nul, [0], "the client starts with a NUL byte");
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let uid: String = nix::unistd::geteuid()
            .as_raw()
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        if line != format!("AUTH EXTERNAL {uid}\r\n") {
            writer.write_all(b"REJECTED EXTERNAL\r\n").ok()?;
            return None;
        }
        writer
            .write_all(b"OK 0123456789abcdef0123456789abcdef\r\n")
            .ok()?;
        line.clear();
        reader.read_line(&mut line).ok()?;
        (line == "BEGIN\r\n").then_some(())
    }

    fn converse(
        reader: &mut impl Read,
        writer: &mut impl Write,
        calls: &Mutex<Vec<Message>>,
        answer: &(dyn Fn(&Message) -> Answer + Send + Sync),
    ) {
        let mut serial = 1000;
        while let Ok(buf) = read_message(reader) {
            let call = Message::decode(&buf).expect("the client sends valid messages");
            calls.lock().unwrap().push(call.clone());
            let result = if call.member.as_deref() == Some("Hello") {
                Ok(vec![Value::str(":1.42")])
            } else {
                answer(&call)
            };
            serial += 1;
            let mut signal = Message::call("", "/org/freedesktop/systemd1", "i.f", "Noise", vec![]);
            signal.kind = Kind::Signal;
            signal.serial = serial;
            signal.body = vec![Value::Array("h".into(), Vec::new())];
            serial += 1;
            let mut reply = Message::call(":1.42", "/", "", "", Vec::new());
            (reply.path, reply.interface, reply.member) = (None, None, None);
            reply.serial = serial;
            reply.reply_serial = Some(call.serial);
            match result {
                Ok(body) => {
                    reply.kind = Kind::MethodReturn;
                    reply.body = body;
                }
                Err((name, message)) => {
                    reply.kind = Kind::Error;
                    reply.error_name = Some(name);
                    reply.body = vec![Value::str(message)];
                }
            }
            // `ah`: a body the client cannot decode, so it must skip the signal unread.
            let mut out = signal.encode().unwrap();
            out.extend(reply.encode().unwrap());
            if writer.write_all(&out).is_err() {
                return;
            }
        }
    }
}
