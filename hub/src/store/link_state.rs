//! A device's durable link state (RFC 8613 B.1.1/B.1.2): the sender-sequence lease, the replay
//! window, the key usage (encryption ceiling, failed decryptions), the endpoint and the failure
//! budgets. Changes arrive as records in the readings
//! log (durable with what they accepted) and are snapshotted into the catalog; [`LinkState::apply`]
//! is the one merge rule both use, so replaying a record twice is harmless.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use protocol::link::GuardState;
use protocol::oscore::{KeyUsage, WindowState};

use super::records::{Change, decode_budget, encode_budget};

/// The merged state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LinkState {
    pub(super) lease: u64,
    pub(super) window: Option<WindowState>,
    pub(super) usage: KeyUsage,
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) budget: Option<GuardState<IpAddr>>,
}

/// Snapshot record: lease, window (flag, highest, seen), usage (encryption ceiling, failures),
/// then optionally the endpoint (family 4 or 6, 16-byte address, port), then optionally the
/// failure budgets ([`BUDGET_MARK`], then the log's budget encoding).
const STATE_LEN: usize = 37;
const ENDPOINT_LEN: usize = 19;
const BUDGET_MARK: u8 = 0xb1;

impl LinkState {
    /// Merges a change: the window is replaced, leases and usage counts only grow (a restart
    /// resumes at them: never lower), the endpoint and the budgets are replaced when known.
    pub(super) fn apply(&mut self, change: &Change) {
        match change {
            Change::Lease(lease) => self.lease = self.lease.max(*lease),
            Change::Checkpoint(c) => {
                self.window = c.window;
                self.usage.encryptions = self.usage.encryptions.max(c.usage.encryptions);
                self.usage.failed_decryptions =
                    self.usage.failed_decryptions.max(c.usage.failed_decryptions);
                self.endpoint = c.endpoint.or(self.endpoint);
                if c.budget.is_some() {
                    self.budget.clone_from(&c.budget);
                }
            }
        }
    }

    /// The snapshot encoding (the store's first format, with the budget section appended).
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; STATE_LEN];
        b[..8].copy_from_slice(&self.lease.to_be_bytes());
        if let Some(w) = self.window {
            b[8] = 1;
            b[9..17].copy_from_slice(&w.highest.to_be_bytes());
            b[17..21].copy_from_slice(&w.seen.to_be_bytes());
        }
        b[21..29].copy_from_slice(&self.usage.encryptions.to_be_bytes());
        b[29..37].copy_from_slice(&self.usage.failed_decryptions.to_be_bytes());
        if let Some(e) = self.endpoint {
            let (family, ip) = match e.ip() {
                IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped().octets()),
                IpAddr::V6(v6) => (6u8, v6.octets()),
            };
            b.push(family);
            b.extend_from_slice(&ip);
            b.extend_from_slice(&e.port().to_be_bytes());
        }
        if let Some(g) = &self.budget {
            b.push(BUDGET_MARK);
            b.extend_from_slice(&encode_budget(g));
        }
        b
    }

    pub(super) fn decode(b: &[u8]) -> Option<Self> {
        let (fixed, rest) = b.split_at_checked(STATE_LEN)?;
        let u64_at = |i: usize| fixed[i..i + 8].try_into().ok().map(u64::from_be_bytes);
        let window = match fixed[8] {
            0 => None,
            1 => Some(WindowState {
                highest: u64_at(9)?,
                seen: u32::from_be_bytes(fixed[17..21].try_into().ok()?),
            }),
            _ => return None,
        };
        let (endpoint, rest) = match rest.first() {
            Some(4 | 6) => {
                let (e, rest) = rest.split_at_checked(ENDPOINT_LEN)?;
                let ip: [u8; 16] = e[1..17].try_into().ok()?;
                let port = u16::from_be_bytes(e[17..19].try_into().ok()?);
                let ip = match e[0] {
                    4 => IpAddr::V4(Ipv6Addr::from(ip).to_ipv4_mapped()?),
                    _ => IpAddr::V6(Ipv6Addr::from(ip)),
                };
                (Some(SocketAddr::new(ip, port)), rest)
            }
            _ => (None, rest),
        };
        let budget = match rest.split_first() {
            None => None,
            Some((&BUDGET_MARK, b)) => Some(decode_budget(b).ok()?),
            Some(_) => return None,
        };
        Some(Self {
            lease: u64_at(0)?,
            window,
            usage: KeyUsage { encryptions: u64_at(21)?, failed_decryptions: u64_at(29)? },
            endpoint,
            budget,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::link::BucketState;
    use protocol::link::PeerState;

    #[test]
    fn merge_keeps_ceilings_and_leases_growing_and_round_trips() {
        let mut s = LinkState::default();
        let at: SocketAddr = "192.0.2.1:5683".parse().expect("addr");
        let cp = |highest, enc, endpoint| {
            Change::Checkpoint(PeerState {
                window: Some(WindowState { highest, seen: 1 }),
                usage: KeyUsage { encryptions: enc, failed_decryptions: 2 },
                endpoint,
                budget: None,
            })
        };
        s.apply(&Change::Lease(2000));
        s.apply(&cp(7, 50, Some(at)));
        s.apply(&Change::Lease(1000));
        s.apply(&cp(9, 40, None));
        assert_eq!(s.lease, 2000);
        assert_eq!(s.usage.encryptions, 50);
        assert_eq!(s.window.map(|w| w.highest), Some(9));
        assert_eq!(s.endpoint, Some(at));
        assert_eq!(LinkState::decode(&s.encode()), Some(s.clone()));
        s.endpoint = Some("[2001:db8::1]:9".parse().expect("addr"));
        assert_eq!(LinkState::decode(&s.encode()), Some(s.clone()));
        // Budgets: replaced by a checkpoint that has them, kept by one that does not, and
        // encoded after the endpoint, or without one.
        let g = GuardState {
            known: BucketState { tokens: 3, at: 1_700_000_000_000 },
            others: BucketState { tokens: 0, at: 1_700_000_000_001 },
            routable: vec![
                ("10.0.0.7".parse().expect("ip"), BucketState { tokens: 1, at: 5 }),
                ("2001:db8::7".parse().expect("ip"), BucketState { tokens: 0, at: 6 }),
            ],
        };
        s.apply(&Change::Checkpoint(PeerState {
            window: None,
            usage: KeyUsage::default(),
            endpoint: None,
            budget: Some(g.clone()),
        }));
        s.apply(&cp(10, 60, None));
        assert_eq!(s.budget, Some(g));
        assert_eq!(LinkState::decode(&s.encode()), Some(s.clone()));
        s.endpoint = None;
        assert_eq!(LinkState::decode(&s.encode()), Some(s.clone()));
        // Snapshots of the first format (no budget) still load; damaged ones do not.
        let old = LinkState { budget: None, ..s.clone() };
        assert_eq!(LinkState::decode(&old.encode()), Some(old));
        let mut bad = s.encode();
        bad.push(0);
        assert_eq!(LinkState::decode(&bad), None);
        let mut bad = s.encode();
        bad[STATE_LEN] = 0x42;
        assert_eq!(LinkState::decode(&bad), None);
    }
}
