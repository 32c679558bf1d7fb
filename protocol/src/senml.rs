//! Sensor readings as SenML packs in CBOR (RFC 8428 §6): strict decoding with base-field
//! resolution (§4.6) into bounded, validated readings, and canonical encoding. Implements input
//! validation for data from sensors (EN 303 645 provision 5.13-1).

use minicbor::Decoder;
use minicbor::data::Type;

use crate::time::UnixTime;

/// SenML labels (RFC 8428 §6, Table 6).
const BVER: i64 = -1;
const BN: i64 = -2;
const BT: i64 = -3;
const BU: i64 = -4;
const BV: i64 = -5;
const BS: i64 = -6;
const N: i64 = 0;
const U: i64 = 1;
const V: i64 = 2;
const VS: i64 = 3;
const VB: i64 = 4;
const S: i64 = 5;
const T: i64 = 6;
const UT: i64 = 7;
const VD: i64 = 8;

/// The only SenML version this decoder understands (RFC 8428 §4.4).
const SENML_VERSION: i64 = 10;
/// Times below 2^28 seconds are relative to "now" (RFC 8428 §4.5.3).
const RELATIVE_TIME_LIMIT: f64 = 268_435_456.0;
/// 2020-01-01T00:00:00Z: no sensor reading is older than Hearth.
pub const NOT_BEFORE: UnixTime = UnixTime(1_577_836_800);

/// Milliseconds since the Unix epoch (UTC). SenML carries seconds as a number; decoding resolves
/// relative times and rounds to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTimeMillis(pub i64);

/// A resolved reading: base fields applied, relative time made absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Full name (base name + name), per RFC 8428 §4.5.1.
    pub name: String,
    /// Unit symbol (RFC 8428 §12.1), if any.
    pub unit: Option<String>,
    pub value: Value,
    /// Absolute time of the measurement.
    pub time: UnixTimeMillis,
}

/// A reading's value. Strings, data and sums are not supported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A finite number (`v`).
    Number(f64),
    /// A boolean (`vb`).
    Bool(bool),
}

/// Bounds applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most records in one pack.
    pub max_records: usize,
    /// Longest resolved name, in bytes.
    pub max_name_len: usize,
    /// Longest unit, in bytes.
    pub max_unit_len: usize,
    /// Earliest acceptable time.
    pub not_before: UnixTime,
    /// How far past `now` a time may lie.
    pub max_future_secs: u64,
}

impl Limits {
    /// Default bounds for decoding at `now`: 64 records, names up to 64 bytes, units up to 16,
    /// times from 2020-01-01 (or from `now` if the caller's clock is earlier, so readings with
    /// relative times are not all refused) up to one day after `now`.
    pub fn with_now(now: UnixTime) -> Limits {
        Limits {
            max_records: 64,
            max_name_len: 64,
            max_unit_len: 16,
            not_before: NOT_BEFORE.min(now),
            max_future_secs: 86_400,
        }
    }
}

/// Why a pack was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SenmlError {
    #[error("pack is truncated")]
    Truncated,
    #[error("malformed pack: {0}")]
    Malformed(&'static str),
    #[error("pack is not a CBOR array")]
    NotAnArray,
    #[error("indefinite-length items are not accepted")]
    IndefiniteLength,
    #[error("pack has no readings")]
    EmptyPack,
    #[error("pack has {count} records, more than {max}")]
    TooManyRecords { count: u64, max: usize },
    #[error("record is not a map")]
    RecordNotMap,
    #[error("array, map or tag where a single value belongs")]
    UnexpectedNesting,
    #[error("label {0} appears twice in a record")]
    DuplicateLabel(i64),
    /// An unknown label ending in `_` (RFC 8428 §4.4, must-understand).
    #[error("record has a must-understand label this decoder does not know")]
    MustUnderstand,
    /// String (`vs`) or data (`vd`) values.
    #[error("value kind with label {0} is not supported")]
    UnsupportedValue(i64),
    #[error("sums (s, bs) are not supported")]
    UnsupportedSum,
    #[error("SenML version {0} is not supported (only 10)")]
    UnsupportedVersion(i64),
    #[error("record has a name, unit or time but no value")]
    MissingValue,
    #[error("record has both v and vb")]
    MultipleValues,
    #[error("record has no name")]
    NameMissing,
    #[error("name is empty")]
    NameEmpty,
    #[error("name is {len} bytes, more than {max}")]
    NameTooLong { len: usize, max: usize },
    #[error("name has characters outside RFC 8428 §4.5.1")]
    InvalidName,
    #[error("unit is {len} bytes, more than {max}")]
    UnitTooLong { len: usize, max: usize },
    #[error("value or time is NaN or infinite")]
    NonFinite,
    #[error("time is outside the accepted window")]
    TimeOutOfRange,
    #[error("trailing bytes after the pack")]
    TrailingBytes,
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Encodes readings as a SenML pack: one map per reading with `n`, optional `u`, `v` or `vb`,
/// and `t` (integer seconds when whole, else the shortest exact float), keys in canonical order,
/// no base fields. Non-finite numbers are written as-is; [`decode`] refuses them.
pub fn encode(readings: &[Reading]) -> Vec<u8> {
    let mut out = Vec::new();
    head(&mut out, 4, readings.len() as u64);
    for r in readings {
        let fields = 3 + u64::from(r.unit.is_some());
        head(&mut out, 5, fields);
        head(&mut out, 0, N as u64);
        text(&mut out, &r.name);
        if let Some(unit) = &r.unit {
            head(&mut out, 0, U as u64);
            text(&mut out, unit);
        }
        match r.value {
            Value::Number(x) => {
                head(&mut out, 0, V as u64);
                float(&mut out, x);
            }
            Value::Bool(b) => {
                head(&mut out, 0, VB as u64);
                out.push(if b { 0xf5 } else { 0xf4 });
            }
        }
        head(&mut out, 0, T as u64);
        let ms = r.time.0;
        if ms % 1000 == 0 {
            int(&mut out, ms / 1000);
        } else {
            float(&mut out, ms as f64 / 1000.0);
        }
    }
    out
}

fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let major = major << 5;
    if arg < 24 {
        out.push(major | arg as u8);
    } else if let Ok(a) = u8::try_from(arg) {
        out.extend_from_slice(&[major | 24, a]);
    } else if let Ok(a) = u16::try_from(arg) {
        out.push(major | 25);
        out.extend_from_slice(&a.to_be_bytes());
    } else if let Ok(a) = u32::try_from(arg) {
        out.push(major | 26);
        out.extend_from_slice(&a.to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

fn int(out: &mut Vec<u8>, n: i64) {
    match u64::try_from(n) {
        Ok(u) => head(out, 0, u),
        Err(_) => head(out, 1, !(n as u64)),
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Writes `x` in the shortest IEEE 754 form that represents it exactly (RFC 8949 §4.2.1).
fn float(out: &mut Vec<u8>, x: f64) {
    if let Some(h) = f16_bits_exact(x) {
        out.push(0xf9);
        out.extend_from_slice(&h.to_be_bytes());
    } else if x.is_finite() && f64::from(x as f32) == x {
        out.push(0xfa);
        out.extend_from_slice(&(x as f32).to_be_bytes());
    } else {
        out.push(0xfb);
        out.extend_from_slice(&x.to_be_bytes());
    }
}

/// The half-precision bits of `x` if `x` is finite and exactly representable, else `None`.
fn f16_bits_exact(x: f64) -> Option<u16> {
    if !x.is_finite() {
        return None;
    }
    let sign: u16 = if x.is_sign_negative() { 0x8000 } else { 0 };
    let a = x.abs();
    let bits = if a == 0.0 {
        sign
    } else if a < 6.103_515_625e-5 {
        // Subnormal: a multiple of 2^-24 below 2^-14.
        let m = a * 16_777_216.0;
        if m.fract() != 0.0 {
            return None;
        }
        sign | m as u16
    } else if a <= 65_504.0 {
        let raw = a.to_bits();
        let exp = ((raw >> 52) & 0x7ff) as i64 - 1023;
        let mantissa = raw & ((1 << 52) - 1);
        if mantissa & ((1 << 42) - 1) != 0 {
            return None;
        }
        sign | (((exp + 15) as u16) << 10) | (mantissa >> 42) as u16
    } else {
        return None;
    };
    (f16_to_f64(bits) == x).then_some(bits)
}

fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    let magnitude = match exp {
        0 => fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    };
    sign * magnitude
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes and validates a SenML CBOR pack received at `now`, resolving base fields and
/// relative times. Records carrying only base fields yield no reading.
pub fn decode(bytes: &[u8], limits: &Limits, now: UnixTime) -> Result<Vec<Reading>, SenmlError> {
    let mut d = Decoder::new(bytes);
    let count = match peek(&d)? {
        Type::Array => d.array().map_err(map_err("pack"))?,
        Type::ArrayIndef => return Err(SenmlError::IndefiniteLength),
        _ => return Err(SenmlError::NotAnArray),
    }
    .ok_or(SenmlError::IndefiniteLength)?;
    if count == 0 {
        return Err(SenmlError::EmptyPack);
    }
    if count > limits.max_records as u64 {
        return Err(SenmlError::TooManyRecords { count, max: limits.max_records });
    }
    // Each record takes at least one byte, so the input length also bounds the allocation.
    let capacity = usize::try_from(count).unwrap_or(0).min(bytes.len());
    let mut readings = Vec::with_capacity(capacity);
    let mut base = Base::default();
    for _ in 0..count {
        if let Some(reading) = decode_record(&mut d, &mut base, limits, now)? {
            readings.push(reading);
        }
    }
    if d.position() != bytes.len() {
        return Err(SenmlError::TrailingBytes);
    }
    if readings.is_empty() {
        return Err(SenmlError::EmptyPack);
    }
    Ok(readings)
}

/// Base fields in effect (RFC 8428 §4.1: they apply until overridden).
#[derive(Default)]
struct Base<'b> {
    name: Option<&'b str>,
    time: f64,
    unit: Option<&'b str>,
    value: f64,
}

/// Fields of one record before resolution.
#[derive(Default)]
struct Fields<'b> {
    name: Option<&'b str>,
    unit: Option<&'b str>,
    number: Option<f64>,
    boolean: Option<bool>,
    time: Option<f64>,
    has_base: bool,
}

fn decode_record<'b>(
    d: &mut Decoder<'b>,
    base: &mut Base<'b>,
    limits: &Limits,
    now: UnixTime,
) -> Result<Option<Reading>, SenmlError> {
    let entries = match peek(d)? {
        Type::Map => d.map().map_err(map_err("record"))?,
        Type::MapIndef => return Err(SenmlError::IndefiniteLength),
        _ => return Err(SenmlError::RecordNotMap),
    }
    .ok_or(SenmlError::IndefiniteLength)?;
    let mut f = Fields::default();
    let mut seen: u16 = 0;
    for _ in 0..entries {
        let label = match peek(d)? {
            Type::String => {
                // Extension labels are text; unknown ones are ignored unless must-understand.
                let name = d.str().map_err(map_err("label"))?;
                if name.ends_with('_') {
                    return Err(SenmlError::MustUnderstand);
                }
                skip_scalar(d)?;
                continue;
            }
            Type::StringIndef => return Err(SenmlError::IndefiniteLength),
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => d.i64().map_err(map_err("label"))?,
            Type::I8 | Type::I16 | Type::I32 | Type::I64 => d.i64().map_err(map_err("label"))?,
            _ => return Err(SenmlError::Malformed("label must be an integer or text")),
        };
        if (BS..=VD).contains(&label) {
            let bit = 1u16 << (label - BS);
            if seen & bit != 0 {
                return Err(SenmlError::DuplicateLabel(label));
            }
            seen |= bit;
        }
        match label {
            BVER => {
                let version = integer(d)?;
                if version != SENML_VERSION {
                    return Err(SenmlError::UnsupportedVersion(version));
                }
                f.has_base = true;
            }
            BN => {
                base.name = Some(text_value(d)?);
                f.has_base = true;
            }
            BT => {
                base.time = finite(number(d)?)?;
                f.has_base = true;
            }
            BU => {
                base.unit = Some(text_value(d)?);
                f.has_base = true;
            }
            BV => {
                base.value = finite(number(d)?)?;
                f.has_base = true;
            }
            BS | S => return Err(SenmlError::UnsupportedSum),
            N => f.name = Some(text_value(d)?),
            U => f.unit = Some(text_value(d)?),
            V => f.number = Some(finite(number(d)?)?),
            VS | VD => return Err(SenmlError::UnsupportedValue(label)),
            VB => f.boolean = Some(boolean(d)?),
            T => f.time = Some(finite(number(d)?)?),
            UT => {
                finite(number(d)?)?;
            }
            // Unknown integer labels are not must-understand: skip their (scalar) value.
            _ => skip_scalar(d)?,
        }
    }
    resolve(f, base, limits, now)
}

fn resolve(
    f: Fields<'_>,
    base: &Base<'_>,
    limits: &Limits,
    now: UnixTime,
) -> Result<Option<Reading>, SenmlError> {
    let value = match (f.number, f.boolean) {
        (Some(_), Some(_)) => return Err(SenmlError::MultipleValues),
        (Some(v), None) => Value::Number(finite(base.value + v)?),
        (None, Some(b)) => Value::Bool(b),
        (None, None) => {
            let only_base = f.has_base && f.name.is_none() && f.unit.is_none() && f.time.is_none();
            return if only_base { Ok(None) } else { Err(SenmlError::MissingValue) };
        }
    };
    let name = resolve_name(base.name, f.name, limits.max_name_len)?;
    let unit = match f.unit.or(base.unit) {
        Some(u) if u.len() > limits.max_unit_len => {
            return Err(SenmlError::UnitTooLong { len: u.len(), max: limits.max_unit_len });
        }
        u => u.map(str::to_owned),
    };
    let time = resolve_time(base.time + f.time.unwrap_or(0.0), limits, now)?;
    Ok(Some(Reading { name, unit, value, time }))
}

fn resolve_name(base: Option<&str>, name: Option<&str>, max: usize) -> Result<String, SenmlError> {
    if base.is_none() && name.is_none() {
        return Err(SenmlError::NameMissing);
    }
    let (prefix, suffix) = (base.unwrap_or(""), name.unwrap_or(""));
    let len = prefix.len().saturating_add(suffix.len());
    if len == 0 {
        return Err(SenmlError::NameEmpty);
    }
    if len > max {
        return Err(SenmlError::NameTooLong { len, max });
    }
    let full = [prefix, suffix].concat();
    let mut chars = full.bytes();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || b"-:./_".contains(&c));
    if first_ok && rest_ok { Ok(full) } else { Err(SenmlError::InvalidName) }
}

fn resolve_time(
    seconds: f64,
    limits: &Limits,
    now: UnixTime,
) -> Result<UnixTimeMillis, SenmlError> {
    let seconds = finite(seconds)?;
    let absolute = if seconds < RELATIVE_TIME_LIMIT { now.0 as f64 + seconds } else { seconds };
    let latest = now.0.saturating_add(limits.max_future_secs) as f64;
    if !(absolute >= limits.not_before.0 as f64 && absolute <= latest) {
        return Err(SenmlError::TimeOutOfRange);
    }
    // Bounded by the window above, so the conversion cannot saturate for sane limits.
    Ok(UnixTimeMillis((absolute * 1000.0).round() as i64))
}

fn finite(x: f64) -> Result<f64, SenmlError> {
    if x.is_finite() { Ok(x) } else { Err(SenmlError::NonFinite) }
}

fn map_err(what: &'static str) -> impl Fn(minicbor::decode::Error) -> SenmlError {
    move |e| {
        if e.is_end_of_input() { SenmlError::Truncated } else { SenmlError::Malformed(what) }
    }
}

fn peek(d: &Decoder<'_>) -> Result<Type, SenmlError> {
    d.datatype().map_err(map_err("item"))
}

fn nested(t: Type) -> Option<SenmlError> {
    match t {
        Type::Array | Type::Map | Type::Tag => Some(SenmlError::UnexpectedNesting),
        Type::ArrayIndef | Type::MapIndef | Type::BytesIndef | Type::StringIndef => {
            Some(SenmlError::IndefiniteLength)
        }
        _ => None,
    }
}

fn text_value<'b>(d: &mut Decoder<'b>) -> Result<&'b str, SenmlError> {
    match peek(d)? {
        Type::String => d.str().map_err(map_err("text")),
        t => Err(nested(t).unwrap_or(SenmlError::Malformed("expected text"))),
    }
}

fn boolean(d: &mut Decoder<'_>) -> Result<bool, SenmlError> {
    match peek(d)? {
        Type::Bool => d.bool().map_err(map_err("boolean")),
        t => Err(nested(t).unwrap_or(SenmlError::Malformed("expected a boolean"))),
    }
}

fn integer(d: &mut Decoder<'_>) -> Result<i64, SenmlError> {
    match peek(d)? {
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::I8
        | Type::I16
        | Type::I32
        | Type::I64 => d.i64().map_err(map_err("integer")),
        t => Err(nested(t).unwrap_or(SenmlError::Malformed("expected an integer"))),
    }
}

/// Reads an integer or float of any width as `f64`.
fn number(d: &mut Decoder<'_>) -> Result<f64, SenmlError> {
    match peek(d)? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
            d.u64().map(|n| n as f64).map_err(map_err("number"))
        }
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            d.int().map(|n| i128::from(n) as f64).map_err(map_err("number"))
        }
        Type::F16 => {
            // minicbor decodes half floats only with its `half` feature; read them here.
            let at = d.position();
            let raw = d.input().get(at + 1..at + 3).ok_or(SenmlError::Truncated)?;
            let raw = <[u8; 2]>::try_from(raw).map_err(|_| SenmlError::Truncated)?;
            let bits = u16::from_be_bytes(raw);
            d.set_position(at + 3);
            Ok(f16_to_f64(bits))
        }
        Type::F32 => d.f32().map(f64::from).map_err(map_err("number")),
        Type::F64 => d.f64().map_err(map_err("number")),
        t => Err(nested(t).unwrap_or(SenmlError::Malformed("expected a number"))),
    }
}

/// Skips the value of an ignored label; only scalars are allowed there.
fn skip_scalar(d: &mut Decoder<'_>) -> Result<(), SenmlError> {
    match peek(d)? {
        Type::F16 => number(d).map(drop),
        t => match nested(t) {
            Some(e) => Err(e),
            None => d.skip().map_err(map_err("value")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: UnixTime = UnixTime(1_750_000_000);

    fn limits() -> Limits {
        Limits::with_now(NOW)
    }

    fn dec(bytes: &[u8]) -> Result<Vec<Reading>, SenmlError> {
        decode(bytes, &limits(), NOW)
    }

    /// A tiny CBOR builder for hand-made packs.
    #[derive(Default)]
    struct B(Vec<u8>);

    impl B {
        fn arr(mut self, n: u64) -> Self {
            head(&mut self.0, 4, n);
            self
        }
        fn map(mut self, n: u64) -> Self {
            head(&mut self.0, 5, n);
            self
        }
        fn i(mut self, n: i64) -> Self {
            int(&mut self.0, n);
            self
        }
        fn s(mut self, t: &str) -> Self {
            text(&mut self.0, t);
            self
        }
        fn f64(mut self, x: f64) -> Self {
            self.0.push(0xfb);
            self.0.extend_from_slice(&x.to_be_bytes());
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn done(self) -> Vec<u8> {
            self.0
        }
    }

    /// `[{0: name, 2: value, 6: time}]`
    fn one(name: &str, v: f64, t: i64) -> Vec<u8> {
        B::default().arr(1).map(3).i(N).s(name).i(V).f64(v).i(T).i(t).done()
    }

    fn reading(name: &str, unit: Option<&str>, value: Value, secs: i64) -> Reading {
        Reading {
            name: name.into(),
            unit: unit.map(Into::into),
            value,
            time: UnixTimeMillis(secs * 1000),
        }
    }

    #[test]
    fn decodes_a_simple_pack() {
        let t = NOW.0 as i64 - 10;
        assert_eq!(
            dec(&one("temp", 21.5, t)),
            Ok(vec![reading("temp", None, Value::Number(21.5), t)])
        );
    }

    #[test]
    fn resolves_base_fields() {
        // RFC 8428 §5.1.3-style pack: base name, base time, base unit, base value.
        let bt = NOW.0 as i64 - 100;
        let pack = B::default()
            .arr(3)
            .map(6)
            .i(BVER)
            .i(10)
            .i(BN)
            .s("urn:dev:ow:10e2073a01080063:")
            .i(BT)
            .i(bt)
            .i(BU)
            .s("Cel")
            .i(BV)
            .i(20)
            .i(N)
            .s("temp")
            .map(3)
            .i(N)
            .s("temp")
            .i(V)
            .f64(1.5)
            .i(T)
            .i(10)
            .map(4)
            .i(N)
            .s("door")
            .i(U)
            .s("")
            .i(VB)
            .raw(&[0xf5])
            .i(T)
            .i(20)
            .done();
        // The first record has a name but no value.
        assert_eq!(dec(&pack), Err(SenmlError::MissingValue));
        let pack = B::default()
            .arr(3)
            .map(5)
            .i(BN)
            .s("urn:dev:ow:10e2073a01080063:")
            .i(BT)
            .i(bt)
            .i(BU)
            .s("Cel")
            .i(BV)
            .i(20)
            .i(BVER)
            .i(10)
            .map(3)
            .i(N)
            .s("temp")
            .i(V)
            .f64(1.5)
            .i(T)
            .i(10)
            .map(4)
            .i(N)
            .s("door")
            .i(U)
            .s("")
            .i(VB)
            .raw(&[0xf5])
            .i(T)
            .i(20)
            .done();
        assert_eq!(
            dec(&pack),
            Ok(vec![
                reading(
                    "urn:dev:ow:10e2073a01080063:temp",
                    Some("Cel"),
                    Value::Number(21.5),
                    bt + 10
                ),
                reading("urn:dev:ow:10e2073a01080063:door", Some(""), Value::Bool(true), bt + 20),
            ])
        );
        // Base name alone is a full name; base fields are overridden by later ones.
        let pack = B::default()
            .arr(2)
            .map(2)
            .i(BN)
            .s("a")
            .i(V)
            .i(-3)
            .map(3)
            .i(BN)
            .s("b/")
            .i(N)
            .s("c")
            .i(V)
            .raw(&[0xf9, 0x3c, 0x00]) // 1.0 as a half float
            .done();
        assert_eq!(
            dec(&pack),
            Ok(vec![
                reading("a", None, Value::Number(-3.0), NOW.0 as i64),
                reading("b/c", None, Value::Number(1.0), NOW.0 as i64),
            ])
        );
    }

    #[test]
    fn relative_times_resolve_against_now() {
        let r = dec(&one("x", 1.0, -60)).expect("valid");
        assert_eq!(r[0].time, UnixTimeMillis((NOW.0 as i64 - 60) * 1000));
        let no_time = B::default().arr(1).map(2).i(N).s("x").i(V).i(1).done();
        assert_eq!(dec(&no_time).expect("valid")[0].time, UnixTimeMillis(NOW.0 as i64 * 1000));
        let frac = B::default().arr(1).map(3).i(N).s("x").i(V).i(1).i(T).f64(-0.25).done();
        assert_eq!(dec(&frac).expect("valid")[0].time, UnixTimeMillis(NOW.0 as i64 * 1000 - 250));
        // Relative time that lands before the window.
        let far = -(NOW.0 as i64 - NOT_BEFORE.0 as i64) - 1;
        assert_eq!(dec(&one("x", 1.0, far)), Err(SenmlError::TimeOutOfRange));
    }

    #[test]
    fn time_window() {
        let limit = (NOW.0 + 86_400) as i64;
        assert!(dec(&one("x", 1.0, limit)).is_ok());
        assert_eq!(dec(&one("x", 1.0, limit + 1)), Err(SenmlError::TimeOutOfRange));
        assert!(dec(&one("x", 1.0, NOT_BEFORE.0 as i64)).is_ok());
        assert_eq!(dec(&one("x", 1.0, NOT_BEFORE.0 as i64 - 1)), Err(SenmlError::TimeOutOfRange));
        // 2^28 and above is absolute (1978): refused.
        assert_eq!(dec(&one("x", 1.0, 1 << 28)), Err(SenmlError::TimeOutOfRange));
        let nan_time = B::default().arr(1).map(3).i(N).s("x").i(V).i(1).i(T).f64(f64::NAN).done();
        assert_eq!(dec(&nan_time), Err(SenmlError::NonFinite));
        // With a clock before 2020, relative times still resolve.
        let early = UnixTime(1_000_000_000);
        assert!(decode(&one("x", 1.0, 0), &Limits::with_now(early), early).is_ok());
    }

    #[test]
    fn refuses_non_array_and_empty_and_too_many() {
        assert_eq!(dec(&B::default().map(0).done()), Err(SenmlError::NotAnArray));
        assert_eq!(dec(&B::default().i(1).done()), Err(SenmlError::NotAnArray));
        assert_eq!(dec(&B::default().arr(0).done()), Err(SenmlError::EmptyPack));
        assert_eq!(dec(&[0x9f, 0xff]), Err(SenmlError::IndefiniteLength));
        assert_eq!(dec(&[]), Err(SenmlError::Truncated));
        let base_only = B::default().arr(1).map(1).i(BN).s("x").done();
        assert_eq!(dec(&base_only), Err(SenmlError::EmptyPack));
        assert_eq!(dec(&B::default().arr(1).map(0).done()), Err(SenmlError::MissingValue));
        let mut pack = B::default().arr(65);
        for _ in 0..65 {
            pack = pack.map(2).i(N).s("x").i(V).i(1);
        }
        assert_eq!(dec(&pack.done()), Err(SenmlError::TooManyRecords { count: 65, max: 64 }));
        let mut pack = B::default().arr(64);
        for _ in 0..64 {
            pack = pack.map(2).i(N).s("x").i(V).i(1);
        }
        assert_eq!(dec(&pack.done()).map(|r| r.len()), Ok(64));
        // A huge announced count with no records behind it.
        assert!(matches!(
            decode(
                &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                &Limits { max_records: usize::MAX, ..limits() },
                NOW
            ),
            Err(SenmlError::Truncated)
        ));
    }

    #[test]
    fn name_rules() {
        let named = |n: &str| B::default().arr(1).map(2).i(N).s(n).i(V).i(1).done();
        assert!(dec(&named("a1-:./_")).is_ok());
        assert!(dec(&named("9")).is_ok());
        assert_eq!(dec(&named("")), Err(SenmlError::NameEmpty));
        assert_eq!(dec(&named("-a")), Err(SenmlError::InvalidName));
        assert_eq!(dec(&named("_a")), Err(SenmlError::InvalidName));
        assert_eq!(dec(&named("a b")), Err(SenmlError::InvalidName));
        assert_eq!(dec(&named("tempé")), Err(SenmlError::InvalidName));
        assert_eq!(dec(&named("a<script>")), Err(SenmlError::InvalidName));
        assert!(dec(&named(&"n".repeat(64))).is_ok());
        assert_eq!(dec(&named(&"n".repeat(65))), Err(SenmlError::NameTooLong { len: 65, max: 64 }));
        let no_name = B::default().arr(1).map(1).i(V).i(1).done();
        assert_eq!(dec(&no_name), Err(SenmlError::NameMissing));
        let long_base = B::default()
            .arr(1)
            .map(3)
            .i(BN)
            .s(&"b".repeat(40))
            .i(N)
            .s(&"n".repeat(25))
            .i(V)
            .i(1)
            .done();
        assert_eq!(dec(&long_base), Err(SenmlError::NameTooLong { len: 65, max: 64 }));
        let not_text = B::default().arr(1).map(2).i(N).i(5).i(V).i(1).done();
        assert_eq!(dec(&not_text), Err(SenmlError::Malformed("expected text")));
    }

    #[test]
    fn unit_length() {
        let unit = |u: &str| B::default().arr(1).map(3).i(N).s("x").i(U).s(u).i(V).i(1).done();
        assert_eq!(
            dec(&unit(&"u".repeat(16))).expect("ok")[0].unit.as_deref(),
            Some(&*"u".repeat(16))
        );
        assert_eq!(dec(&unit(&"u".repeat(17))), Err(SenmlError::UnitTooLong { len: 17, max: 16 }));
        let base_unit =
            B::default().arr(1).map(3).i(BU).s(&"u".repeat(17)).i(N).s("x").i(V).i(1).done();
        assert_eq!(dec(&base_unit), Err(SenmlError::UnitTooLong { len: 17, max: 16 }));
    }

    #[test]
    fn non_finite_values() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let pack = B::default().arr(1).map(2).i(N).s("x").i(V).f64(x).done();
            assert_eq!(dec(&pack), Err(SenmlError::NonFinite));
            let pack = B::default().arr(1).map(3).i(BV).f64(x).i(N).s("x").i(V).i(1).done();
            assert_eq!(dec(&pack), Err(SenmlError::NonFinite));
        }
        // Half-float infinity and NaN.
        for raw in [[0xf9, 0x7c, 0x00], [0xf9, 0x7e, 0x00]] {
            let pack = B::default().arr(1).map(2).i(N).s("x").i(V).raw(&raw).done();
            assert_eq!(dec(&pack), Err(SenmlError::NonFinite));
        }
        // Finite value plus finite base value overflowing to infinity.
        let pack =
            B::default().arr(1).map(3).i(BV).f64(f64::MAX).i(N).s("x").i(V).f64(f64::MAX).done();
        assert_eq!(dec(&pack), Err(SenmlError::NonFinite));
    }

    #[test]
    fn must_understand_and_unknown_labels() {
        let with =
            |label: &str| B::default().arr(1).map(3).i(N).s("x").i(V).i(1).s(label).i(0).done();
        assert_eq!(dec(&with("foo_")), Err(SenmlError::MustUnderstand));
        assert!(dec(&with("foo")).is_ok());
        let unknown_int =
            B::default().arr(1).map(3).i(N).s("x").i(V).i(1).i(42).s("ignored").done();
        assert!(dec(&unknown_int).is_ok());
        let nested_unknown = B::default().arr(1).map(3).i(N).s("x").i(V).i(1).i(42).map(0).done();
        assert_eq!(dec(&nested_unknown), Err(SenmlError::UnexpectedNesting));
        let nested_text_label =
            B::default().arr(1).map(3).i(N).s("x").i(V).i(1).s("ext").arr(0).done();
        assert_eq!(dec(&nested_text_label), Err(SenmlError::UnexpectedNesting));
        let bad_label = B::default().arr(1).map(2).raw(&[0xf5]).i(1).i(N).s("x").done();
        assert!(matches!(dec(&bad_label), Err(SenmlError::Malformed(_))));
    }

    #[test]
    fn unsupported_fields() {
        let vs = B::default().arr(1).map(2).i(N).s("x").i(VS).s("on").done();
        assert_eq!(dec(&vs), Err(SenmlError::UnsupportedValue(VS)));
        let vd = B::default().arr(1).map(2).i(N).s("x").i(VD).s("AAE").done();
        assert_eq!(dec(&vd), Err(SenmlError::UnsupportedValue(VD)));
        let sum = B::default().arr(1).map(2).i(N).s("x").i(S).i(5).done();
        assert_eq!(dec(&sum), Err(SenmlError::UnsupportedSum));
        let base_sum = B::default().arr(1).map(3).i(BS).i(5).i(N).s("x").i(V).i(1).done();
        assert_eq!(dec(&base_sum), Err(SenmlError::UnsupportedSum));
        let bver = |v: i64| B::default().arr(1).map(3).i(BVER).i(v).i(N).s("x").i(V).i(1).done();
        assert!(dec(&bver(10)).is_ok());
        assert_eq!(dec(&bver(11)), Err(SenmlError::UnsupportedVersion(11)));
        assert_eq!(dec(&bver(5)), Err(SenmlError::UnsupportedVersion(5)));
        let both = B::default().arr(1).map(3).i(N).s("x").i(V).i(1).i(VB).raw(&[0xf4]).done();
        assert_eq!(dec(&both), Err(SenmlError::MultipleValues));
        let dup = B::default().arr(1).map(3).i(N).s("x").i(V).i(1).i(V).i(2).done();
        assert_eq!(dec(&dup), Err(SenmlError::DuplicateLabel(V)));
        let ut = B::default().arr(1).map(3).i(N).s("x").i(V).i(1).i(UT).i(60).done();
        assert!(dec(&ut).is_ok());
    }

    #[test]
    fn nesting_and_trailing_bytes() {
        let record_array = B::default().arr(1).arr(0).done();
        assert_eq!(dec(&record_array), Err(SenmlError::RecordNotMap));
        let value_array = B::default().arr(1).map(2).i(N).s("x").i(V).arr(1).i(1).done();
        assert_eq!(dec(&value_array), Err(SenmlError::UnexpectedNesting));
        let tagged_value = B::default().arr(1).map(2).i(N).s("x").i(V).raw(&[0xc1, 0x01]).done();
        assert_eq!(dec(&tagged_value), Err(SenmlError::UnexpectedNesting));
        let indef_record =
            B::default().arr(1).raw(&[0xbf]).i(N).s("x").i(V).i(1).raw(&[0xff]).done();
        assert_eq!(dec(&indef_record), Err(SenmlError::IndefiniteLength));
        let mut trailing = one("x", 1.0, NOW.0 as i64);
        trailing.push(0x00);
        assert_eq!(dec(&trailing), Err(SenmlError::TrailingBytes));
        let bool_as_number = B::default().arr(1).map(2).i(N).s("x").i(VB).i(1).done();
        assert_eq!(dec(&bool_as_number), Err(SenmlError::Malformed("expected a boolean")));
    }

    #[test]
    fn encoding_is_canonical() {
        let readings = vec![
            reading("temp", Some("Cel"), Value::Number(21.5), 1_700_000_000),
            Reading {
                time: UnixTimeMillis(1_700_000_000_250),
                ..reading("door", None, Value::Bool(false), 0)
            },
        ];
        let bytes = encode(&readings);
        let expected = B::default()
            .arr(2)
            .map(4)
            .i(N)
            .s("temp")
            .i(U)
            .s("Cel")
            .i(V)
            .raw(&[0xf9, 0x4d, 0x60]) // 21.5 as a half float
            .i(T)
            .i(1_700_000_000)
            .map(3)
            .i(N)
            .s("door")
            .i(VB)
            .raw(&[0xf4])
            .i(T)
            .f64(1_700_000_000.25)
            .done();
        assert_eq!(bytes, expected);
        let now = UnixTime(1_700_000_100);
        assert_eq!(decode(&bytes, &Limits::with_now(now), now), Ok(readings));
    }

    #[test]
    fn shortest_floats() {
        let enc = |x: f64| {
            let mut out = Vec::new();
            float(&mut out, x);
            out
        };
        assert_eq!(enc(0.0), [0xf9, 0x00, 0x00]);
        assert_eq!(enc(-0.0), [0xf9, 0x80, 0x00]);
        assert_eq!(enc(1.0), [0xf9, 0x3c, 0x00]);
        assert_eq!(enc(65_504.0), [0xf9, 0x7b, 0xff]);
        assert_eq!(enc(2f64.powi(-24)), [0xf9, 0x00, 0x01]);
        assert_eq!(enc(65_505.0)[0], 0xfa);
        assert_eq!(enc(100_000.0), [0xfa, 0x47, 0xc3, 0x50, 0x00]);
        assert_eq!(enc(0.1)[0], 0xfb);
        assert_eq!(enc(1e300)[0], 0xfb);
        assert_eq!(enc(f64::NAN)[0], 0xfb);
        for bits in 0..=u16::MAX {
            let x = f16_to_f64(bits);
            if x.is_finite() {
                assert_eq!(f16_bits_exact(x), Some(bits), "bits {bits:#06x}");
            }
        }
    }

    #[test]
    fn every_prefix_is_refused() {
        let readings = vec![
            reading("temp", Some("Cel"), Value::Number(21.25), NOW.0 as i64 - 5),
            reading("door", None, Value::Bool(true), NOW.0 as i64),
            reading("humidity", Some("%RH"), Value::Number(0.1), NOW.0 as i64),
        ];
        let bytes = encode(&readings);
        assert_eq!(dec(&bytes), Ok(readings));
        for len in 0..bytes.len() {
            assert!(dec(&bytes[..len]).is_err(), "prefix {len} accepted");
        }
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9:./_-]{0,63}"
    }

    fn reading_strategy() -> impl Strategy<Value = Reading> {
        let value = prop_oneof![
            any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(Value::Number),
            any::<f32>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| Value::Number(x.into())),
            (-1000i32..1000).prop_map(|x| Value::Number(f64::from(x) / 4.0)),
            any::<bool>().prop_map(Value::Bool),
        ];
        let min_ms = NOT_BEFORE.0 as i64 * 1000;
        let max_ms = (NOW.0 + 86_400) as i64 * 1000;
        (
            name_strategy(),
            proptest::option::of("[ -~]{0,16}"),
            value,
            prop_oneof![
                min_ms..=max_ms,
                (NOT_BEFORE.0 as i64..=NOW.0 as i64).prop_map(|s| s * 1000)
            ],
        )
            .prop_map(|(name, unit, value, ms)| Reading {
                name,
                unit,
                value,
                time: UnixTimeMillis(ms),
            })
    }

    proptest! {
        #[test]
        fn round_trip(readings in proptest::collection::vec(reading_strategy(), 1..64)) {
            let bytes = encode(&readings);
            prop_assert_eq!(dec(&bytes), Ok(readings));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = dec(&bytes);
        }

        #[test]
        fn mutated_packs_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)
        ) {
            let mut bytes = encode(&[
                reading("temp", Some("Cel"), Value::Number(21.25), NOW.0 as i64),
                reading("door", None, Value::Bool(true), NOW.0 as i64),
            ]);
            for (pos, val) in flips {
                let len = bytes.len();
                if let Some(b) = bytes.get_mut(pos % len) {
                    *b = val;
                }
            }
            let _ = dec(&bytes);
        }
    }
}
