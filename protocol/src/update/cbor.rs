//! Strict CBOR reading and deterministic CBOR writing (RFC 8949 §4.2.1) for update envelopes.
//! Readers refuse indefinite lengths; callers re-encode what they read and compare bytes.

use minicbor::Decoder;
use minicbor::data::Type;

use super::UpdateError;

/// A cursor over untrusted CBOR that maps every failure to an [`UpdateError`].
pub(super) struct Reader<'b> {
    d: Decoder<'b>,
}

fn map_err(e: &minicbor::decode::Error, what: &'static str) -> UpdateError {
    if e.is_end_of_input() { UpdateError::TruncatedEnvelope } else { UpdateError::Malformed(what) }
}

impl<'b> Reader<'b> {
    pub(super) fn new(bytes: &'b [u8]) -> Self {
        Reader { d: Decoder::new(bytes) }
    }

    pub(super) fn peek(&self, what: &'static str) -> Result<Type, UpdateError> {
        self.d.datatype().map_err(|e| map_err(&e, what))
    }

    /// Reads a definite array header and returns its length.
    pub(super) fn array(&mut self, what: &'static str) -> Result<u64, UpdateError> {
        match self.peek(what)? {
            Type::Array => match self.d.array() {
                Ok(Some(n)) => Ok(n),
                Ok(None) => Err(UpdateError::NonCanonical),
                Err(e) => Err(map_err(&e, what)),
            },
            Type::ArrayIndef => Err(UpdateError::NonCanonical),
            _ => Err(UpdateError::Malformed(what)),
        }
    }

    /// Reads a definite map header and returns its number of entries.
    pub(super) fn map(&mut self, what: &'static str) -> Result<u64, UpdateError> {
        match self.peek(what)? {
            Type::Map => match self.d.map() {
                Ok(Some(n)) => Ok(n),
                Ok(None) => Err(UpdateError::NonCanonical),
                Err(e) => Err(map_err(&e, what)),
            },
            Type::MapIndef => Err(UpdateError::NonCanonical),
            _ => Err(UpdateError::Malformed(what)),
        }
    }

    /// Reads an unsigned integer.
    pub(super) fn uint(&mut self, what: &'static str) -> Result<u64, UpdateError> {
        match self.peek(what)? {
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
                self.d.u64().map_err(|e| map_err(&e, what))
            }
            _ => Err(UpdateError::Malformed(what)),
        }
    }

    /// Reads an unsigned integer that must fit a `u32`.
    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, UpdateError> {
        u32::try_from(self.uint(what)?).map_err(|_| UpdateError::Malformed(what))
    }

    /// Reads a signed or unsigned integer that fits an `i64`.
    pub(super) fn int(&mut self, what: &'static str) -> Result<i64, UpdateError> {
        match self.peek(what)? {
            Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64 => self.d.i64().map_err(|e| map_err(&e, what)),
            _ => Err(UpdateError::Malformed(what)),
        }
    }

    /// Reads a definite-length byte string, borrowed from the input.
    pub(super) fn bytes(&mut self, what: &'static str) -> Result<&'b [u8], UpdateError> {
        match self.peek(what)? {
            Type::Bytes => self.d.bytes().map_err(|e| map_err(&e, what)),
            Type::BytesIndef => Err(UpdateError::NonCanonical),
            _ => Err(UpdateError::Malformed(what)),
        }
    }

    /// Reads a definite-length UTF-8 text string, borrowed from the input.
    pub(super) fn text(&mut self, what: &'static str) -> Result<&'b str, UpdateError> {
        match self.peek(what)? {
            Type::String => self.d.str().map_err(|e| map_err(&e, what)),
            Type::StringIndef => Err(UpdateError::NonCanonical),
            _ => Err(UpdateError::Malformed(what)),
        }
    }

    /// Reads a boolean.
    pub(super) fn bool(&mut self, what: &'static str) -> Result<bool, UpdateError> {
        match self.peek(what)? {
            Type::Bool => self.d.bool().map_err(|e| map_err(&e, what)),
            _ => Err(UpdateError::Malformed(what)),
        }
    }

    /// Succeeds only if the whole input has been consumed.
    pub(super) fn finish(&self) -> Result<(), UpdateError> {
        if self.d.position() == self.d.input().len() {
            Ok(())
        } else {
            Err(UpdateError::TrailingBytes)
        }
    }
}

/// Sets `slot` once; a second occurrence of the same key is not canonical.
pub(super) fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), UpdateError> {
    if slot.is_some() {
        return Err(UpdateError::NonCanonical);
    }
    *slot = Some(value);
    Ok(())
}

/// Deterministic CBOR writer: definite lengths and shortest argument encodings only.
#[derive(Debug, Default)]
pub(super) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(super) fn new() -> Self {
        Writer::default()
    }

    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    fn head(&mut self, major: u8, arg: u64) -> &mut Self {
        let major = major << 5;
        if arg < 24 {
            self.out.push(major | arg as u8);
        } else if let Ok(a) = u8::try_from(arg) {
            self.out.extend_from_slice(&[major | 24, a]);
        } else if let Ok(a) = u16::try_from(arg) {
            self.out.push(major | 25);
            self.out.extend_from_slice(&a.to_be_bytes());
        } else if let Ok(a) = u32::try_from(arg) {
            self.out.push(major | 26);
            self.out.extend_from_slice(&a.to_be_bytes());
        } else {
            self.out.push(major | 27);
            self.out.extend_from_slice(&arg.to_be_bytes());
        }
        self
    }

    pub(super) fn uint(&mut self, n: u64) -> &mut Self {
        self.head(0, n)
    }

    pub(super) fn int(&mut self, n: i64) -> &mut Self {
        match u64::try_from(n) {
            Ok(u) => self.head(0, u),
            // For negative n, the CBOR argument is -1 - n, which is the bitwise complement.
            Err(_) => self.head(1, !(n as u64)),
        }
    }

    pub(super) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.head(2, b.len() as u64);
        self.out.extend_from_slice(b);
        self
    }

    pub(super) fn text(&mut self, s: &str) -> &mut Self {
        self.head(3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    pub(super) fn array(&mut self, len: u64) -> &mut Self {
        self.head(4, len)
    }

    pub(super) fn map(&mut self, len: u64) -> &mut Self {
        self.head(5, len)
    }

    pub(super) fn bool(&mut self, b: bool) -> &mut Self {
        self.out.push(if b { 0xf5 } else { 0xf4 });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::new();
        f(&mut w);
        w.into_bytes()
    }

    #[test]
    fn shortest_heads() {
        assert_eq!(enc(|w| _ = w.uint(0)), [0x00]);
        assert_eq!(enc(|w| _ = w.uint(23)), [0x17]);
        assert_eq!(enc(|w| _ = w.uint(24)), [0x18, 24]);
        assert_eq!(enc(|w| _ = w.uint(256)), [0x19, 1, 0]);
        assert_eq!(enc(|w| _ = w.uint(65_536)), [0x1a, 0, 1, 0, 0]);
        assert_eq!(enc(|w| _ = w.uint(1 << 32)), [0x1b, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(enc(|w| _ = w.int(-1)), [0x20]);
        assert_eq!(enc(|w| _ = w.int(-7)), [0x26]);
        assert_eq!(enc(|w| _ = w.int(-25)), [0x38, 24]);
        assert_eq!(
            enc(|w| _ = w.int(i64::MIN)),
            [0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(enc(|w| _ = w.text("a")), [0x61, b'a']);
        assert_eq!(enc(|w| _ = w.bytes(&[])), [0x40]);
        assert_eq!(enc(|w| _ = w.bool(true).bool(false)), [0xf5, 0xf4]);
    }

    #[test]
    fn reader_round_trips_and_refuses() {
        let bytes = enc(|w| _ = w.array(2).int(-7).text("x"));
        let mut r = Reader::new(&bytes);
        assert_eq!(r.array("a"), Ok(2));
        assert_eq!(r.int("i"), Ok(-7));
        assert_eq!(r.text("t"), Ok("x"));
        assert_eq!(r.finish(), Ok(()));

        assert_eq!(Reader::new(&[0x9f, 0xff]).array("a"), Err(UpdateError::NonCanonical));
        assert_eq!(Reader::new(&[0xbf, 0xff]).map("m"), Err(UpdateError::NonCanonical));
        assert_eq!(Reader::new(&[0x5f, 0xff]).bytes("b"), Err(UpdateError::NonCanonical));
        assert_eq!(Reader::new(&[0x7f, 0xff]).text("t"), Err(UpdateError::NonCanonical));
        assert_eq!(Reader::new(&[0x62, b'a']).text("t"), Err(UpdateError::TruncatedEnvelope));
        assert_eq!(Reader::new(&[]).uint("u"), Err(UpdateError::TruncatedEnvelope));
        assert_eq!(Reader::new(&[0x62, 0xff, 0xfe]).text("t"), Err(UpdateError::Malformed("t")));
        assert_eq!(Reader::new(&[0x20]).uint("u"), Err(UpdateError::Malformed("u")));
        assert_eq!(
            Reader::new(&[0x1b, 0, 0, 0, 1, 0, 0, 0, 0]).u32("u"),
            Err(UpdateError::Malformed("u"))
        );
        let mut r = Reader::new(&[0x01, 0x02]);
        assert_eq!(r.uint("u"), Ok(1));
        assert_eq!(r.finish(), Err(UpdateError::TrailingBytes));
    }
}
