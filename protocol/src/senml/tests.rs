//! SenML decoding and encoding tests: limits, base fields, canonical form, fuzz-like inputs.

use super::*;
use crate::cbor::Writer;
use crate::time::UnixTime;
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
struct B(Writer);

impl B {
    fn arr(mut self, n: u64) -> Self {
        self.0.array(n);
        self
    }
    fn map(mut self, n: u64) -> Self {
        self.0.map(n);
        self
    }
    fn i(mut self, n: i64) -> Self {
        self.0.int(n);
        self
    }
    fn s(mut self, t: &str) -> Self {
        self.0.text(t);
        self
    }
    fn f64(mut self, x: f64) -> Self {
        self.0.raw(&[0xfb]).raw(&x.to_be_bytes());
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.raw(b);
        self
    }
    fn done(self) -> Vec<u8> {
        self.0.into_bytes()
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
    assert_eq!(dec(&one("temp", 21.5, t)), Ok(vec![reading("temp", None, Value::Number(21.5), t)]));
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
            reading("urn:dev:ow:10e2073a01080063:temp", Some("Cel"), Value::Number(21.5), bt + 10),
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
    assert_eq!(dec(&unit(&"u".repeat(16))).expect("ok")[0].unit.as_deref(), Some(&*"u".repeat(16)));
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
    let pack = B::default().arr(1).map(3).i(BV).f64(f64::MAX).i(N).s("x").i(V).f64(f64::MAX).done();
    assert_eq!(dec(&pack), Err(SenmlError::NonFinite));
}

#[test]
fn must_understand_and_unknown_labels() {
    let with = |label: &str| B::default().arr(1).map(3).i(N).s("x").i(V).i(1).s(label).i(0).done();
    assert_eq!(dec(&with("foo_")), Err(SenmlError::MustUnderstand));
    assert!(dec(&with("foo")).is_ok());
    let unknown_int = B::default().arr(1).map(3).i(N).s("x").i(V).i(1).i(42).s("ignored").done();
    assert!(dec(&unknown_int).is_ok());
    let nested_unknown = B::default().arr(1).map(3).i(N).s("x").i(V).i(1).i(42).map(0).done();
    assert_eq!(dec(&nested_unknown), Err(SenmlError::UnexpectedNesting));
    let nested_text_label = B::default().arr(1).map(3).i(N).s("x").i(V).i(1).s("ext").arr(0).done();
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
    let indef_record = B::default().arr(1).raw(&[0xbf]).i(N).s("x").i(V).i(1).raw(&[0xff]).done();
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
        any::<f32>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| Value::Number(x.into())),
        (-1000i32..1000).prop_map(|x| Value::Number(f64::from(x) / 4.0)),
        any::<bool>().prop_map(Value::Bool),
    ];
    let min_ms = NOT_BEFORE.0 as i64 * 1000;
    let max_ms = (NOW.0 + 86_400) as i64 * 1000;
    (
        name_strategy(),
        proptest::option::of("[ -~]{0,16}"),
        value,
        prop_oneof![min_ms..=max_ms, (NOT_BEFORE.0 as i64..=NOW.0 as i64).prop_map(|s| s * 1000)],
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
