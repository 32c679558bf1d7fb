//! Strict CBOR reading over untrusted input: definite lengths only, every failure a
//! [`CborError`]; items are borrowed from the input.

use minicbor::Decoder;
use minicbor::data::Type;

use super::CborError;
use super::write::f16_to_f64;

/// What the next item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Unsigned integer.
    Uint,
    /// Negative integer.
    Nint,
    /// Byte string.
    Bytes,
    /// Text string.
    Text,
    /// Array.
    Array,
    /// Map.
    Map,
    /// Tag.
    Tag,
    /// `true` or `false`.
    Bool,
    /// Floating-point number.
    Float,
    /// Anything else (null, undefined, simple values, indefinite-length items).
    Other,
}

/// A cursor over untrusted CBOR.
pub(crate) struct Reader<'b> {
    d: Decoder<'b>,
}

fn map_err(e: &minicbor::decode::Error, what: &'static str) -> CborError {
    if e.is_end_of_input() { CborError::Truncated } else { CborError::Malformed(what) }
}

/// The error for an item of the wrong type where `what` was expected.
fn unexpected(t: Type, what: &'static str) -> CborError {
    match t {
        Type::ArrayIndef | Type::MapIndef | Type::BytesIndef | Type::StringIndef => {
            CborError::NonCanonical
        }
        Type::Array | Type::Map | Type::Tag => CborError::Nested,
        _ => CborError::Malformed(what),
    }
}

impl<'b> Reader<'b> {
    pub(crate) fn new(bytes: &'b [u8]) -> Self {
        Reader { d: Decoder::new(bytes) }
    }

    fn datatype(&self, what: &'static str) -> Result<Type, CborError> {
        self.d.datatype().map_err(|e| map_err(&e, what))
    }

    /// The kind of the next item (indefinite-length items are refused).
    pub(crate) fn peek(&self, what: &'static str) -> Result<Kind, CborError> {
        Ok(match self.datatype(what)? {
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => Kind::Uint,
            Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => Kind::Nint,
            Type::Bytes => Kind::Bytes,
            Type::String => Kind::Text,
            Type::Array => Kind::Array,
            Type::Map => Kind::Map,
            Type::Tag => Kind::Tag,
            Type::Bool => Kind::Bool,
            Type::F16 | Type::F32 | Type::F64 => Kind::Float,
            Type::ArrayIndef | Type::MapIndef | Type::BytesIndef | Type::StringIndef => {
                return Err(CborError::NonCanonical);
            }
            _ => Kind::Other,
        })
    }

    /// Reads a definite array header and returns its length.
    pub(crate) fn array(&mut self, what: &'static str) -> Result<u64, CborError> {
        match self.datatype(what)? {
            Type::Array => match self.d.array() {
                Ok(Some(n)) => Ok(n),
                Ok(None) => Err(CborError::NonCanonical),
                Err(e) => Err(map_err(&e, what)),
            },
            Type::ArrayIndef => Err(CborError::NonCanonical),
            _ => Err(CborError::Malformed(what)),
        }
    }

    /// Reads a definite map header and returns its number of entries.
    pub(crate) fn map(&mut self, what: &'static str) -> Result<u64, CborError> {
        match self.datatype(what)? {
            Type::Map => match self.d.map() {
                Ok(Some(n)) => Ok(n),
                Ok(None) => Err(CborError::NonCanonical),
                Err(e) => Err(map_err(&e, what)),
            },
            Type::MapIndef => Err(CborError::NonCanonical),
            _ => Err(CborError::Malformed(what)),
        }
    }

    /// Reads an unsigned integer.
    pub(crate) fn uint(&mut self, what: &'static str) -> Result<u64, CborError> {
        match self.datatype(what)? {
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
                self.d.u64().map_err(|e| map_err(&e, what))
            }
            t => Err(unexpected(t, what)),
        }
    }

    /// Reads an unsigned integer that must fit a `u32`.
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, CborError> {
        u32::try_from(self.uint(what)?).map_err(|_| CborError::Malformed(what))
    }

    /// Reads an unsigned integer that must fit a `u8`.
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, CborError> {
        u8::try_from(self.uint(what)?).map_err(|_| CborError::Malformed(what))
    }

    /// Reads a signed or unsigned integer that fits an `i64`.
    pub(crate) fn int(&mut self, what: &'static str) -> Result<i64, CborError> {
        match self.datatype(what)? {
            Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64 => self.d.i64().map_err(|e| map_err(&e, what)),
            t => Err(unexpected(t, what)),
        }
    }

    /// Reads an integer or a float of any width as `f64`.
    pub(crate) fn number(&mut self, what: &'static str) -> Result<f64, CborError> {
        match self.datatype(what)? {
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
                self.d.u64().map(|n| n as f64).map_err(|e| map_err(&e, what))
            }
            Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
                self.d.int().map(|n| i128::from(n) as f64).map_err(|e| map_err(&e, what))
            }
            Type::F16 => {
                // minicbor decodes half floats only with its `half` feature; read them here.
                let at = self.d.position();
                let raw = self.d.input().get(at + 1..at + 3).ok_or(CborError::Truncated)?;
                let raw = <[u8; 2]>::try_from(raw).map_err(|_| CborError::Truncated)?;
                self.d.set_position(at + 3);
                Ok(f16_to_f64(u16::from_be_bytes(raw)))
            }
            Type::F32 => self.d.f32().map(f64::from).map_err(|e| map_err(&e, what)),
            Type::F64 => self.d.f64().map_err(|e| map_err(&e, what)),
            t => Err(unexpected(t, what)),
        }
    }

    /// Reads a definite-length byte string, borrowed from the input.
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<&'b [u8], CborError> {
        match self.datatype(what)? {
            Type::Bytes => self.d.bytes().map_err(|e| map_err(&e, what)),
            t => Err(unexpected(t, what)),
        }
    }

    /// Reads a definite-length UTF-8 text string, borrowed from the input.
    pub(crate) fn text(&mut self, what: &'static str) -> Result<&'b str, CborError> {
        match self.datatype(what)? {
            Type::String => self.d.str().map_err(|e| map_err(&e, what)),
            t => Err(unexpected(t, what)),
        }
    }

    /// Reads a boolean.
    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, CborError> {
        match self.datatype(what)? {
            Type::Bool => self.d.bool().map_err(|e| map_err(&e, what)),
            t => Err(unexpected(t, what)),
        }
    }

    /// Skips one scalar item (containers and tags are refused as nesting).
    pub(crate) fn skip_scalar(&mut self, what: &'static str) -> Result<(), CborError> {
        match self.datatype(what)? {
            Type::F16 => self.number(what).map(drop),
            t @ (Type::Array
            | Type::Map
            | Type::Tag
            | Type::ArrayIndef
            | Type::MapIndef
            | Type::BytesIndef
            | Type::StringIndef) => Err(unexpected(t, what)),
            _ => self.d.skip().map_err(|e| map_err(&e, what)),
        }
    }

    /// Succeeds only if the whole input has been consumed.
    pub(crate) fn finish(&self) -> Result<(), CborError> {
        if self.d.position() == self.d.input().len() { Ok(()) } else { Err(CborError::Trailing) }
    }
}

/// Sets `slot` once; a second occurrence of the same key is not canonical.
pub(crate) fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), CborError> {
    if slot.is_some() {
        return Err(CborError::NonCanonical);
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Writer;
    use super::*;

    #[test]
    fn reader_round_trips_and_refuses() {
        let bytes = Writer::build(|w| _ = w.array(3).int(-7).text("x").float(1.5));
        let mut r = Reader::new(&bytes);
        assert_eq!(r.array("a"), Ok(3));
        assert_eq!(r.int("i"), Ok(-7));
        assert_eq!(r.text("t"), Ok("x"));
        assert_eq!(r.number("n"), Ok(1.5));
        assert_eq!(r.finish(), Ok(()));

        assert_eq!(Reader::new(&[0x9f, 0xff]).array("a"), Err(CborError::NonCanonical));
        assert_eq!(Reader::new(&[0xbf, 0xff]).map("m"), Err(CborError::NonCanonical));
        assert_eq!(Reader::new(&[0x5f, 0xff]).bytes("b"), Err(CborError::NonCanonical));
        assert_eq!(Reader::new(&[0x7f, 0xff]).text("t"), Err(CborError::NonCanonical));
        assert_eq!(Reader::new(&[0x62, b'a']).text("t"), Err(CborError::Truncated));
        assert_eq!(Reader::new(&[]).uint("u"), Err(CborError::Truncated));
        assert_eq!(Reader::new(&[0x62, 0xff, 0xfe]).text("t"), Err(CborError::Malformed("t")));
        assert_eq!(Reader::new(&[0x20]).uint("u"), Err(CborError::Malformed("u")));
        assert_eq!(Reader::new(&[0x80]).bool("b"), Err(CborError::Nested));
        assert_eq!(Reader::new(&[0x80]).skip_scalar("s"), Err(CborError::Nested));
        assert_eq!(Reader::new(&[0xf9, 0x3c]).number("n"), Err(CborError::Truncated));
        assert_eq!(
            Reader::new(&[0x1b, 0, 0, 0, 1, 0, 0, 0, 0]).u32("u"),
            Err(CborError::Malformed("u"))
        );
        let mut r = Reader::new(&[0x01, 0x02]);
        assert_eq!(r.uint("u"), Ok(1));
        assert_eq!(r.finish(), Err(CborError::Trailing));
        let mut slot = None;
        assert_eq!(set_once(&mut slot, 1), Ok(()));
        assert_eq!(set_once(&mut slot, 2), Err(CborError::NonCanonical));
    }
}
