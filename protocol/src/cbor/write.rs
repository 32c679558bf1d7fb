//! Deterministic CBOR writing (RFC 8949 §4.2.1): definite lengths, shortest argument encodings,
//! floats in the shortest form that represents them exactly.

/// A deterministic CBOR writer into a `Vec`.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer { out: Vec::with_capacity(64) }
    }

    /// Runs `f` on a fresh writer and returns the bytes.
    pub(crate) fn build(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::new();
        f(&mut w);
        w.out
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
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

    pub(crate) fn uint(&mut self, n: u64) -> &mut Self {
        self.head(0, n)
    }

    pub(crate) fn int(&mut self, n: i64) -> &mut Self {
        match u64::try_from(n) {
            Ok(u) => self.head(0, u),
            // For negative n, the CBOR argument is -1 - n, which is the bitwise complement.
            Err(_) => self.head(1, !(n as u64)),
        }
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.head(2, b.len() as u64);
        self.out.extend_from_slice(b);
        self
    }

    pub(crate) fn text(&mut self, s: &str) -> &mut Self {
        self.head(3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    pub(crate) fn array(&mut self, len: u64) -> &mut Self {
        self.head(4, len)
    }

    pub(crate) fn map(&mut self, len: u64) -> &mut Self {
        self.head(5, len)
    }

    pub(crate) fn bool(&mut self, b: bool) -> &mut Self {
        self.out.push(if b { 0xf5 } else { 0xf4 });
        self
    }

    pub(crate) fn null(&mut self) -> &mut Self {
        self.out.push(0xf6);
        self
    }

    /// Appends raw bytes (tests build non-canonical input with it).
    #[cfg(test)]
    pub(crate) fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    /// Writes `x` in the shortest IEEE 754 form that represents it exactly.
    pub(crate) fn float(&mut self, x: f64) -> &mut Self {
        if let Some(h) = f16_bits_exact(x) {
            self.out.push(0xf9);
            self.out.extend_from_slice(&h.to_be_bytes());
        } else if x.is_finite() && f64::from(x as f32) == x {
            self.out.push(0xfa);
            self.out.extend_from_slice(&(x as f32).to_be_bytes());
        } else {
            self.out.push(0xfb);
            self.out.extend_from_slice(&x.to_be_bytes());
        }
        self
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

/// Decodes half-precision bits (RFC 8949 Appendix D).
pub(crate) fn f16_to_f64(bits: u16) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
        Writer::build(f)
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
        assert_eq!(enc(|w| _ = w.bool(true).bool(false).null()), [0xf5, 0xf4, 0xf6]);
    }

    #[test]
    fn shortest_exact_floats() {
        // RFC 8949 Appendix A examples.
        assert_eq!(enc(|w| _ = w.float(0.0)), [0xf9, 0x00, 0x00]);
        assert_eq!(enc(|w| _ = w.float(-0.0)), [0xf9, 0x80, 0x00]);
        assert_eq!(enc(|w| _ = w.float(1.5)), [0xf9, 0x3e, 0x00]);
        assert_eq!(enc(|w| _ = w.float(65504.0)), [0xf9, 0x7b, 0xff]);
        assert_eq!(enc(|w| _ = w.float(5.960464477539063e-8)), [0xf9, 0x00, 0x01]);
        assert_eq!(enc(|w| _ = w.float(100000.0)), [0xfa, 0x47, 0xc3, 0x50, 0x00]);
        assert_eq!(
            enc(|w| _ = w.float(1.1)),
            [0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]
        );
        assert_eq!(f16_to_f64(0x7c00), f64::INFINITY);
        assert_eq!(enc(|w| _ = w.float(65_505.0))[0], 0xfa);
        assert_eq!(enc(|w| _ = w.float(0.1))[0], 0xfb);
        assert_eq!(enc(|w| _ = w.float(f64::NAN))[0], 0xfb);
        for bits in 0..=u16::MAX {
            let x = f16_to_f64(bits);
            if x.is_finite() {
                assert_eq!(f16_bits_exact(x), Some(bits), "bits {bits:#06x}");
            }
        }
    }
}
