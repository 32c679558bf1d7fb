//! Sensor readings as SenML packs in CBOR (RFC 8428 §6): strict decoding with base-field
//! resolution (§4.6) into bounded, validated readings, and canonical encoding. Implements input
//! validation for data from sensors (EN 303 645 provision 5.13-1). `decode` and `encode` use the
//! crate's one CBOR reader and writer.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::decode;
pub use encode::encode;

use crate::time::UnixTime;

/// SenML labels (RFC 8428 §6, Table 6).
pub(super) const BVER: i64 = -1;
pub(super) const BN: i64 = -2;
pub(super) const BT: i64 = -3;
pub(super) const BU: i64 = -4;
pub(super) const BV: i64 = -5;
pub(super) const BS: i64 = -6;
pub(super) const N: i64 = 0;
pub(super) const U: i64 = 1;
pub(super) const V: i64 = 2;
pub(super) const VS: i64 = 3;
pub(super) const VB: i64 = 4;
pub(super) const S: i64 = 5;
pub(super) const T: i64 = 6;
pub(super) const UT: i64 = 7;
pub(super) const VD: i64 = 8;

/// The only SenML version this decoder understands (RFC 8428 §4.4).
pub(super) const SENML_VERSION: i64 = 10;
/// Times below 2^28 seconds are relative to "now" (RFC 8428 §4.5.3).
pub(super) const RELATIVE_TIME_LIMIT: f64 = 268_435_456.0;
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
