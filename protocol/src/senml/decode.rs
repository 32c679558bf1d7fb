//! SenML decoding: strict CBOR, base-field resolution (RFC 8428 §4.6), limits.

use crate::cbor::{CborError, Kind, Reader};
use crate::time::UnixTime;

use super::{
    BN, BS, BT, BU, BV, BVER, Limits, N, RELATIVE_TIME_LIMIT, Reading, S, SENML_VERSION,
    SenmlError, T, U, UT, UnixTimeMillis, V, VB, VD, VS, Value,
};

impl From<CborError> for SenmlError {
    fn from(e: CborError) -> Self {
        match e {
            CborError::Truncated => Self::Truncated,
            CborError::Malformed(what) => Self::Malformed(what),
            CborError::NonCanonical => Self::IndefiniteLength,
            CborError::Nested => Self::UnexpectedNesting,
            CborError::Trailing => Self::TrailingBytes,
        }
    }
}

/// Decodes and validates a SenML CBOR pack received at `now`, resolving base fields and
/// relative times. Records carrying only base fields yield no reading.
pub fn decode(bytes: &[u8], limits: &Limits, now: UnixTime) -> Result<Vec<Reading>, SenmlError> {
    let mut d = Reader::new(bytes);
    if d.peek("pack")? != Kind::Array {
        return Err(SenmlError::NotAnArray);
    }
    let count = d.array("pack")?;
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
    d.finish()?;
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
    d: &mut Reader<'b>,
    base: &mut Base<'b>,
    limits: &Limits,
    now: UnixTime,
) -> Result<Option<Reading>, SenmlError> {
    if d.peek("record")? != Kind::Map {
        return Err(SenmlError::RecordNotMap);
    }
    let entries = d.map("record")?;
    let mut f = Fields::default();
    let mut seen: u16 = 0;
    for _ in 0..entries {
        let label = match d.peek("label")? {
            Kind::Text => {
                // Extension labels are text; unknown ones are ignored unless must-understand.
                if d.text("label")?.ends_with('_') {
                    return Err(SenmlError::MustUnderstand);
                }
                d.skip_scalar("value")?;
                continue;
            }
            Kind::Uint | Kind::Nint => d.int("label")?,
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
                let version = d.int("expected an integer")?;
                if version != SENML_VERSION {
                    return Err(SenmlError::UnsupportedVersion(version));
                }
                f.has_base = true;
            }
            BN => {
                base.name = Some(d.text("expected text")?);
                f.has_base = true;
            }
            BT => {
                base.time = finite(d.number("expected a number")?)?;
                f.has_base = true;
            }
            BU => {
                base.unit = Some(d.text("expected text")?);
                f.has_base = true;
            }
            BV => {
                base.value = finite(d.number("expected a number")?)?;
                f.has_base = true;
            }
            BS | S => return Err(SenmlError::UnsupportedSum),
            N => f.name = Some(d.text("expected text")?),
            U => f.unit = Some(d.text("expected text")?),
            V => f.number = Some(finite(d.number("expected a number")?)?),
            VS | VD => return Err(SenmlError::UnsupportedValue(label)),
            VB => f.boolean = Some(d.bool("expected a boolean")?),
            T => f.time = Some(finite(d.number("expected a number")?)?),
            UT => {
                finite(d.number("expected a number")?)?;
            }
            // Unknown integer labels are not must-understand: skip their (scalar) value.
            _ => d.skip_scalar("value")?,
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
