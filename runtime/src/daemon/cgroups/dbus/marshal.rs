//! D-Bus values and their marshalling: the type system's signatures, alignment, and the
//! encoder and decoder the messages of [`super`] are built from.

use super::{BusError, MAX_ARRAY, MAX_DEPTH, Result, malformed};

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
pub(super) fn split_signature(sig: &str) -> Result<Vec<&str>> {
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
pub(super) struct Encoder {
    pub(super) buf: Vec<u8>,
}

impl Encoder {
    pub(super) fn pad(&mut self, align: usize) {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
    }

    /// A fixed-size value: D-Bus aligns each to its own size.
    fn fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        self.pad(N);
        self.buf.extend_from_slice(&bytes);
    }

    pub(super) fn u32(&mut self, v: u32) {
        self.fixed(v.to_le_bytes());
    }

    pub(super) fn string(&mut self, s: &str) -> Result<()> {
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

    pub(super) fn signature(&mut self, s: &str) -> Result<()> {
        let len = u8::try_from(s.len())
            .map_err(|_| BusError::Marshal(format!("signature {s:?} is too long")))?;
        split_signature(s)?;
        self.buf.push(len);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    pub(super) fn put(&mut self, v: &Value) -> Result<()> {
        match v {
            Value::Byte(b) => self.buf.push(*b),
            Value::Bool(b) => self.u32(u32::from(*b)),
            Value::I16(n) => self.fixed(n.to_le_bytes()),
            Value::U16(n) => self.fixed(n.to_le_bytes()),
            Value::I32(n) => self.fixed(n.to_le_bytes()),
            Value::U32(n) => self.u32(*n),
            Value::I64(n) => self.fixed(n.to_le_bytes()),
            Value::U64(n) => self.fixed(n.to_le_bytes()),
            Value::F64(n) => self.fixed(n.to_le_bytes()),
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
pub(super) struct Decoder<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) big_endian: bool,
}

impl<'a> Decoder<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| malformed("value runs past the end of the message"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(super) fn align(&mut self, align: usize) -> Result<()> {
        let pad = (align - self.pos % align) % align;
        self.take(pad)?;
        Ok(())
    }

    pub(super) fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.align(N)?;
        let mut b: [u8; N] = self.take(N)?.try_into().expect("took N bytes");
        if self.big_endian {
            b.reverse();
        }
        Ok(b)
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    pub(super) fn text(&mut self, len: usize) -> Result<String> {
        let bytes = self.take(len + 1)?;
        if bytes[len] != 0 {
            return Err(malformed("string without its NUL"));
        }
        String::from_utf8(bytes[..len].to_vec()).map_err(|_| malformed("string is not UTF-8"))
    }

    pub(super) fn signature(&mut self) -> Result<String> {
        let len = self.take(1)?[0] as usize;
        self.text(len)
    }

    /// One value of the complete type `sig`.
    pub(super) fn get(&mut self, sig: &str, depth: usize) -> Result<Value> {
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
