//! The records inside one readings-log frame: a device's readings (a *block*, what the index
//! points at), a link checkpoint (with its failure budgets), a sequence lease, and a named
//! document logged with the commit (the security counters, durable with the checkpoints whose
//! failures they count). The encoding is compact (varints, names
//! sharing a prefix with the previous one, centi-unit values) and decoding checks every length:
//! a malformed record is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use protocol::link::{BucketState, GuardState, PeerState};
use protocol::oscore::{KeyUsage, Kid, WindowState};
use protocol::senml::{Reading, Value};

use super::StoredReading;

const TAG_READINGS: u8 = 1;
const TAG_CHECKPOINT: u8 = 2;
const TAG_LEASE: u8 = 3;
const TAG_META: u8 = 4;

/// One change to a device's link state, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// A checkpoint: replay window, usage ceilings, endpoint.
    Checkpoint(PeerState<SocketAddr>),
    /// A sequence lease.
    Lease(u64),
}

/// Value encodings.
const V_F64: u8 = 0;
const V_FALSE: u8 = 1;
const V_TRUE: u8 = 2;
const V_CENTI: u8 = 3;
/// Unit encodings.
const U_NONE: u8 = 0;
const U_SAME: u8 = 1;
const U_LITERAL: u8 = 2;

/// Checkpoint flags.
const F_WINDOW: u8 = 1;
const F_V4: u8 = 2;
const F_V6: u8 = 4;
const F_BUDGET: u8 = 8;

/// A record that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed log record: {0}")]
pub(super) struct RecordError(pub(super) &'static str);

/// Where a block of readings lies in a payload, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockInfo {
    pub(super) kid: Kid,
    /// Offset of the block in the payload.
    pub(super) at: usize,
    pub(super) count: u32,
    pub(super) min_t: i64,
    pub(super) max_t: i64,
}

/// A frame's payload being built.
#[derive(Debug, Default)]
pub(super) struct Payload {
    pub(super) bytes: Vec<u8>,
    pub(super) blocks: Vec<BlockInfo>,
    pub(super) changes: Vec<(Kid, Change)>,
    /// Named documents logged in this frame.
    pub(super) metas: Vec<(String, Vec<u8>)>,
}

impl Payload {
    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends a block with `readings` of `kid` (at least one).
    pub(super) fn readings(&mut self, kid: &Kid, readings: &[Reading]) {
        let (Some(min_t), Some(max_t)) =
            (readings.iter().map(|r| r.time.0).min(), readings.iter().map(|r| r.time.0).max())
        else {
            return;
        };
        let mut body = Vec::with_capacity(readings.len() * 24);
        let (mut prev_t, mut prev_name, mut prev_unit): (i64, &str, Option<&str>) =
            (min_t, "", None);
        for r in readings {
            put_varint(&mut body, zigzag(r.time.0.wrapping_sub(prev_t)));
            let shared = common_prefix(prev_name, &r.name);
            put_varint(&mut body, shared as u64);
            put_bytes(&mut body, &r.name.as_bytes()[shared..]);
            match r.unit.as_deref() {
                None => body.push(U_NONE),
                Some(u) if prev_unit == Some(u) => body.push(U_SAME),
                Some(u) => {
                    body.push(U_LITERAL);
                    put_bytes(&mut body, u.as_bytes());
                }
            }
            put_value(&mut body, &r.value);
            (prev_t, prev_name, prev_unit) = (r.time.0, &r.name, r.unit.as_deref());
        }
        let at = self.bytes.len();
        self.bytes.push(TAG_READINGS);
        put_kid(&mut self.bytes, kid);
        put_varint(&mut self.bytes, body.len() as u64);
        put_varint(&mut self.bytes, readings.len() as u64);
        put_varint(&mut self.bytes, zigzag(min_t));
        put_varint(&mut self.bytes, max_t.wrapping_sub(min_t) as u64);
        self.bytes.extend_from_slice(&body);
        self.blocks.push(BlockInfo { kid: *kid, at, count: readings.len() as u32, min_t, max_t });
    }

    /// Appends a link-state change of `kid`.
    pub(super) fn change(&mut self, kid: &Kid, change: Change) {
        let b = &mut self.bytes;
        match &change {
            Change::Lease(lease) => {
                b.push(TAG_LEASE);
                put_kid(b, kid);
                put_varint(b, *lease);
            }
            Change::Checkpoint(c) => {
                b.push(TAG_CHECKPOINT);
                put_kid(b, kid);
                let mut flags = if c.window.is_some() { F_WINDOW } else { 0 };
                match c.endpoint.map(|e| e.ip()) {
                    Some(IpAddr::V4(_)) => flags |= F_V4,
                    Some(IpAddr::V6(_)) => flags |= F_V6,
                    None => {}
                }
                if c.budget.is_some() {
                    flags |= F_BUDGET;
                }
                b.push(flags);
                if let Some(w) = c.window {
                    put_varint(b, w.highest);
                    b.extend_from_slice(&w.seen.to_le_bytes());
                }
                put_varint(b, c.usage.encryptions);
                put_varint(b, c.usage.failed_decryptions);
                if let Some(e) = c.endpoint {
                    match e.ip() {
                        IpAddr::V4(v4) => b.extend_from_slice(&v4.octets()),
                        IpAddr::V6(v6) => b.extend_from_slice(&v6.octets()),
                    }
                    b.extend_from_slice(&e.port().to_le_bytes());
                }
                if let Some(budget) = &c.budget {
                    put_budget(b, budget);
                }
            }
        }
        self.changes.push((*kid, change));
    }

    /// Appends the named document `key` (replacing, once durable, any earlier value).
    pub(super) fn meta(&mut self, key: &str, value: &[u8]) {
        self.bytes.push(TAG_META);
        put_bytes(&mut self.bytes, key.as_bytes());
        put_bytes(&mut self.bytes, value);
        self.metas.push((key.to_string(), value.to_vec()));
    }
}

/// One record found while scanning a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Item {
    /// A block of readings (not decoded: its header only).
    Block(BlockInfo),
    /// A link-state change.
    Change(Kid, Change),
    /// A named document.
    Meta(String, Vec<u8>),
}

/// What replaying a frame after the snapshot yields, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Replayed {
    /// A device's link-state change.
    Change(Kid, Change),
    /// A named document's newer value.
    Meta(String, Vec<u8>),
}

/// Every record of a payload, in order.
pub(super) fn scan(payload: &[u8]) -> Result<Vec<Item>, RecordError> {
    let mut r = Reader { b: payload, at: 0 };
    let mut out = Vec::new();
    while r.at < payload.len() {
        let at = r.at;
        match r.u8()? {
            TAG_READINGS => {
                let (kid, body_len, count, min_t, max_t) = r.block_header()?;
                r.take(body_len)?;
                out.push(Item::Block(BlockInfo { kid, at, count, min_t, max_t }));
            }
            TAG_CHECKPOINT => {
                let kid = r.kid()?;
                let flags = r.u8()?;
                let window = if flags & F_WINDOW != 0 {
                    let highest = r.varint()?;
                    let seen = u32::from_le_bytes(r.array()?);
                    Some(WindowState { highest, seen })
                } else {
                    None
                };
                let usage = KeyUsage { encryptions: r.varint()?, failed_decryptions: r.varint()? };
                let ip = match flags & (F_V4 | F_V6) {
                    0 => None,
                    F_V4 => Some(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
                    F_V6 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
                    _ => return Err(RecordError("endpoint family")),
                };
                let endpoint = match ip {
                    Some(ip) => Some(SocketAddr::new(ip, u16::from_le_bytes(r.array()?))),
                    None => None,
                };
                let budget = if flags & F_BUDGET != 0 { Some(r.budget()?) } else { None };
                out.push(Item::Change(
                    kid,
                    Change::Checkpoint(PeerState { window, usage, endpoint, budget }),
                ));
            }
            TAG_LEASE => {
                let kid = r.kid()?;
                out.push(Item::Change(kid, Change::Lease(r.varint()?)));
            }
            TAG_META => {
                let key = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| RecordError("key"))?;
                out.push(Item::Meta(key, r.bytes()?.to_vec()));
            }
            _ => return Err(RecordError("unknown record")),
        }
    }
    Ok(out)
}

/// A block's header is never longer than this.
pub(super) const MAX_BLOCK_HEADER: usize = 64;

/// The length of the block at the start of `bytes` (which holds at least its header: at least
/// [`MAX_BLOCK_HEADER`] bytes, or all there is).
pub(super) fn block_len(bytes: &[u8]) -> Result<usize, RecordError> {
    let mut r = Reader { b: bytes, at: 0 };
    if r.u8()? != TAG_READINGS {
        return Err(RecordError("not a block"));
    }
    let (_, body_len, ..) = r.block_header()?;
    r.at.checked_add(body_len).ok_or(RecordError("length"))
}

/// Decodes the block at the start of `bytes`, which must belong to `kid`.
pub(super) fn decode_block(bytes: &[u8], kid: &Kid) -> Result<Vec<StoredReading>, RecordError> {
    let mut r = Reader { b: bytes, at: 0 };
    if r.u8()? != TAG_READINGS {
        return Err(RecordError("not a block"));
    }
    let (owner, body_len, count, min_t, _) = r.block_header()?;
    if owner != *kid {
        return Err(RecordError("block of another device"));
    }
    let mut r = Reader { b: r.take(body_len)?, at: 0 };
    let mut out: Vec<StoredReading> = Vec::with_capacity(count as usize);
    let (mut t, mut name, mut unit) = (min_t, String::new(), None::<String>);
    for _ in 0..count {
        t = t.wrapping_add(unzigzag(r.varint()?));
        let shared = usize::try_from(r.varint()?).map_err(|_| RecordError("name"))?;
        let suffix = r.bytes()?;
        let prefix = name.as_bytes().get(..shared).ok_or(RecordError("name prefix"))?;
        let full = [prefix, suffix].concat();
        name = String::from_utf8(full).map_err(|_| RecordError("name"))?;
        unit = match r.u8()? {
            U_NONE => None,
            U_SAME => unit,
            U_LITERAL => {
                Some(String::from_utf8(r.bytes()?.to_vec()).map_err(|_| RecordError("unit"))?)
            }
            _ => return Err(RecordError("unit")),
        };
        let value = match r.u8()? {
            V_F64 => serde_json::json!(f64::from_le_bytes(r.array()?)),
            V_FALSE => serde_json::json!(false),
            V_TRUE => serde_json::json!(true),
            V_CENTI => serde_json::json!(unzigzag(r.varint()?) as f64 / 100.0),
            _ => return Err(RecordError("value")),
        };
        out.push(StoredReading { time_ms: t, name: name.clone(), unit: unit.clone(), value });
    }
    Ok(out)
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(b, bytes.len() as u64);
    b.extend_from_slice(bytes);
}

/// A sensor's failure budgets: `Known` and `Others` (tokens, refill reference), then the
/// routable hosts (count, then family 4 or 6, address, tokens, reference each).
fn put_budget(b: &mut Vec<u8>, g: &GuardState<IpAddr>) {
    for s in [g.known, g.others] {
        put_varint(b, u64::from(s.tokens));
        put_varint(b, s.at);
    }
    put_varint(b, g.routable.len() as u64);
    for (ip, s) in &g.routable {
        match ip {
            IpAddr::V4(v4) => {
                b.push(4);
                b.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                b.push(6);
                b.extend_from_slice(&v6.octets());
            }
        }
        put_varint(b, u64::from(s.tokens));
        put_varint(b, s.at);
    }
}

/// [`put_budget`]'s encoding on its own (the catalog snapshot uses it).
pub(super) fn encode_budget(g: &GuardState<IpAddr>) -> Vec<u8> {
    let mut b = Vec::new();
    put_budget(&mut b, g);
    b
}

/// Decodes exactly one [`encode_budget`] value.
pub(super) fn decode_budget(bytes: &[u8]) -> Result<GuardState<IpAddr>, RecordError> {
    let mut r = Reader { b: bytes, at: 0 };
    let g = r.budget()?;
    if r.at != bytes.len() {
        return Err(RecordError("trailing bytes"));
    }
    Ok(g)
}

fn put_kid(b: &mut Vec<u8>, kid: &Kid) {
    b.push(kid.as_bytes().len() as u8);
    b.extend_from_slice(kid.as_bytes());
}

fn put_value(b: &mut Vec<u8>, value: &Value) {
    match *value {
        Value::Bool(false) => b.push(V_FALSE),
        Value::Bool(true) => b.push(V_TRUE),
        Value::Number(n) => {
            // Exactly n = c / 100 for an integer c (what most sensors send): a short varint.
            let c = (n * 100.0).round();
            if c.abs() < (1u64 << 53) as f64 && (c / 100.0).to_bits() == n.to_bits() {
                b.push(V_CENTI);
                put_varint(b, zigzag(c as i64));
            } else {
                b.push(V_F64);
                b.extend_from_slice(&n.to_le_bytes());
            }
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn common_prefix(a: &str, b: &str) -> usize {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    // Never split a character: the suffix must stay valid UTF-8 on its own.
    (0..=n).rev().find(|&i| b.is_char_boundary(i)).unwrap_or(0)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(n).ok_or(RecordError("length"))?;
        let s = self.b.get(self.at..end).ok_or(RecordError("truncated"))?;
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        self.take(N)?.try_into().map_err(|_| RecordError("truncated"))
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RecordError("varint"))
    }

    fn len(&mut self) -> Result<usize, RecordError> {
        usize::try_from(self.varint()?).map_err(|_| RecordError("length"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.len()?;
        self.take(n)
    }

    fn bucket(&mut self) -> Result<BucketState, RecordError> {
        let tokens = u32::try_from(self.varint()?).map_err(|_| RecordError("tokens"))?;
        Ok(BucketState { tokens, at: self.varint()? })
    }

    fn budget(&mut self) -> Result<GuardState<IpAddr>, RecordError> {
        let (known, others) = (self.bucket()?, self.bucket()?);
        let n = self.len()?;
        if n > protocol::link::ROUTABLE_HOSTS + 1 {
            return Err(RecordError("routable hosts"));
        }
        let mut routable = Vec::with_capacity(n);
        for _ in 0..n {
            let ip = match self.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
                _ => return Err(RecordError("address family")),
            };
            routable.push((ip, self.bucket()?));
        }
        Ok(GuardState { known, others, routable })
    }

    fn kid(&mut self) -> Result<Kid, RecordError> {
        let n = usize::from(self.u8()?);
        Kid::new(self.take(n)?).map_err(|_| RecordError("kid"))
    }

    /// After the tag: kid, body length, count, first and last time.
    fn block_header(&mut self) -> Result<(Kid, usize, u32, i64, i64), RecordError> {
        let kid = self.kid()?;
        let body_len = self.len()?;
        let count = u32::try_from(self.varint()?).map_err(|_| RecordError("count"))?;
        let min_t = unzigzag(self.varint()?);
        let max_t = min_t.wrapping_add(self.varint()? as i64);
        Ok((kid, body_len, count, min_t, max_t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::senml::UnixTimeMillis;

    fn reading(name: &str, unit: Option<&str>, value: Value, t: i64) -> Reading {
        Reading { name: name.into(), unit: unit.map(Into::into), value, time: UnixTimeMillis(t) }
    }

    #[test]
    fn blocks_and_changes_round_trip() {
        let kid = Kid::new(&[1, 2, 3, 4]).expect("kid");
        let other = Kid::new(&[9]).expect("kid");
        let readings = vec![
            reading("urn:dev:s1:temp", Some("Cel"), Value::Number(21.37), 1_700_000_000_123),
            reading("urn:dev:s1:hum", Some("%RH"), Value::Number(-0.1), 1_700_000_000_123),
            reading("urn:dev:s1:hum", Some("%RH"), Value::Number(1e300), 1_699_999_999_000),
            reading("urn:dev:s1:é", None, Value::Number(f64::MIN_POSITIVE), 5),
            reading("urn:dev:s1:èx", Some("Cel"), Value::Bool(true), 6),
        ];
        let mut p = Payload::default();
        p.change(&kid, Change::Lease(3000));
        p.readings(&kid, &readings);
        let cp = PeerState {
            window: Some(WindowState { highest: 1 << 40, seen: 0xdead_beef }),
            usage: KeyUsage { encryptions: 17, failed_decryptions: 3 },
            endpoint: Some("[2001:db8::7]:61000".parse().expect("addr")),
            budget: None,
        };
        p.change(&other, Change::Checkpoint(cp.clone()));
        let budget = GuardState {
            known: BucketState { tokens: 32, at: 1_700_000_000_000 },
            others: BucketState { tokens: 0, at: u64::MAX },
            routable: vec![
                ("10.1.2.3".parse().expect("ip"), BucketState { tokens: 2, at: 9 }),
                ("::1".parse().expect("ip"), BucketState { tokens: 0, at: 10 }),
            ],
        };
        let v4 = PeerState {
            window: None,
            endpoint: Some("10.0.0.1:1".parse().expect("a")),
            budget: Some(budget),
            ..cp
        };
        p.change(&other, Change::Checkpoint(v4.clone()));
        p.meta("security_counters", br#"{"bad_tag":7}"#);
        let items = scan(&p.bytes).expect("scan");
        assert_eq!(items.len(), 5);
        assert_eq!(items[0], Item::Change(kid, Change::Lease(3000)));
        let Item::Block(b) = items[1] else { panic!("block expected") };
        assert_eq!(b, p.blocks[0]);
        assert_eq!((b.count, b.min_t, b.max_t), (5, 5, 1_700_000_000_123));
        assert_eq!(items[3], Item::Change(other, Change::Checkpoint(v4)));
        assert_eq!(items[4], Item::Meta("security_counters".into(), br#"{"bad_tag":7}"#.to_vec()));
        let block = &p.bytes[b.at..];
        let len = block_len(block).expect("len");
        assert_eq!(scan(&block[len..]).expect("rest").len(), 3, "the block ends where it says");
        let back = decode_block(block, &kid).expect("decode");
        for (r, s) in readings.iter().zip(&back) {
            assert_eq!(s.time_ms, r.time.0);
            assert_eq!(s.name, r.name);
            assert_eq!(s.unit, r.unit);
            let expect = match r.value {
                Value::Number(n) => serde_json::json!(n),
                Value::Bool(b) => serde_json::json!(b),
            };
            assert_eq!(s.value, expect);
        }
        assert_eq!(decode_block(block, &other), Err(RecordError("block of another device")));
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let kid = Kid::new(&[7]).expect("kid");
        let mut p = Payload::default();
        p.readings(&kid, &[reading("n", Some("u"), Value::Number(1.5), 10)]);
        let boundary = p.bytes.len();
        p.change(&kid, Change::Lease(1));
        for cut in 0..p.bytes.len() {
            let whole_records = cut == 0 || cut == boundary;
            assert_eq!(scan(&p.bytes[..cut]).is_ok(), whole_records, "cut at {cut}");
            let _ = decode_block(&p.bytes[..cut], &kid);
        }
        for i in 0..p.bytes.len() {
            let mut b = p.bytes.clone();
            b[i] ^= 0xff;
            let _ = scan(&b);
            let _ = decode_block(&b, &kid);
        }
    }
}
