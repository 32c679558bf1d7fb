//! The OSCORE option value, RFC 8613 §6.1: flag byte, Partial IV, kid context, kid.

use super::{Kid, OscoreError, Piv};

/// A parsed OSCORE option value. All parts are optional on the wire; which ones must be present
/// depends on the message (a request needs `piv` and `kid`, §8.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OscoreOption {
    /// The Partial IV, if present.
    pub piv: Option<Piv>,
    /// The kid context, if present (at most 255 bytes).
    pub kid_context: Option<Vec<u8>>,
    /// The kid, if present.
    pub kid: Option<Kid>,
}

const FLAG_K: u8 = 0x08;
const FLAG_H: u8 = 0x10;
const FLAG_N: u8 = 0x07;
const FLAGS_RESERVED: u8 = 0xe0;

impl OscoreOption {
    /// Encodes the option value; all-absent encodes as the empty value (§6.1).
    pub fn encode(&self) -> Vec<u8> {
        let piv = self.piv.map(Piv::to_bytes);
        let piv = piv.as_ref().map(|(b, n)| &b[b.len() - n..]).unwrap_or(&[]);
        let mut flags = piv.len() as u8;
        if self.kid.is_some() {
            flags |= FLAG_K;
        }
        if self.kid_context.is_some() {
            flags |= FLAG_H;
        }
        if flags == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(16);
        out.push(flags);
        out.extend_from_slice(piv);
        if let Some(ctx) = &self.kid_context {
            out.push(ctx.len() as u8);
            out.extend_from_slice(ctx);
        }
        if let Some(kid) = &self.kid {
            out.extend_from_slice(kid.as_bytes());
        }
        out
    }

    /// Parses an option value, refusing reserved bits, reserved PIV lengths, and truncation.
    pub fn parse(value: &[u8]) -> Result<Self, OscoreError> {
        let Some((&flags, mut rest)) = value.split_first() else {
            return Ok(Self::default());
        };
        if flags & FLAGS_RESERVED != 0 {
            return Err(OscoreError::BadOption("reserved flag bits set"));
        }
        if flags == 0 {
            return Err(OscoreError::BadOption("non-empty value with no flags"));
        }
        let n = usize::from(flags & FLAG_N);
        if n > 5 {
            return Err(OscoreError::BadOption("reserved Partial IV length"));
        }
        let piv = if n == 0 {
            None
        } else {
            let (p, r) = rest.split_at_checked(n).ok_or(OscoreError::BadOption("truncated"))?;
            if n > 1 && p[0] == 0 {
                // §6.1: leading zero bytes SHALL be removed.
                return Err(OscoreError::BadOption("Partial IV with leading zeros"));
            }
            rest = r;
            Some(Piv::from_bytes(p)?)
        };
        let kid_context = if flags & FLAG_H != 0 {
            let (&s, r) = rest.split_first().ok_or(OscoreError::BadOption("truncated"))?;
            let (c, r) =
                r.split_at_checked(usize::from(s)).ok_or(OscoreError::BadOption("truncated"))?;
            rest = r;
            Some(c.to_vec())
        } else {
            None
        };
        let kid = if flags & FLAG_K != 0 {
            Some(Kid::new(rest)?)
        } else if !rest.is_empty() {
            return Err(OscoreError::BadOption("trailing bytes"));
        } else {
            None
        };
        Ok(Self { piv, kid_context, kid })
    }
}
