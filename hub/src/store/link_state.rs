//! A device's durable link state (RFC 8613 B.1.1/B.1.2): the sender-sequence lease, the replay
//! window, the key-usage ceilings and the endpoint. Changes arrive as records in the readings
//! log (durable with what they accepted) and are snapshotted into the catalog; [`LinkState::apply`]
//! is the one merge rule both use, so replaying a record twice is harmless.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use protocol::link::PeerState;
use protocol::oscore::{KeyUsage, WindowState};

/// One change to a device's link state, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// A checkpoint: replay window, usage ceilings, endpoint.
    Checkpoint(PeerState<SocketAddr>),
    /// A sequence lease.
    Lease(u64),
}

/// The merged state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LinkState {
    pub(super) lease: u64,
    pub(super) window: Option<WindowState>,
    pub(super) usage: KeyUsage,
    pub(super) endpoint: Option<SocketAddr>,
}

/// Snapshot record: lease, window (flag, highest, seen), usage ceilings (encryptions,
/// failures), then optionally the endpoint (family, 16-byte address, port).
const STATE_LEN: usize = 37;
const ENDPOINT_LEN: usize = 19;

impl LinkState {
    /// Merges a change: the window is replaced, leases and usage ceilings only grow (a restart
    /// resumes at them: never lower), the endpoint is replaced when known.
    pub(super) fn apply(&mut self, change: &Change) {
        match change {
            Change::Lease(lease) => self.lease = self.lease.max(*lease),
            Change::Checkpoint(c) => {
                self.window = c.window;
                self.usage.encryptions = self.usage.encryptions.max(c.usage.encryptions);
                self.usage.failed_decryptions =
                    self.usage.failed_decryptions.max(c.usage.failed_decryptions);
                self.endpoint = c.endpoint.or(self.endpoint);
            }
        }
    }

    /// The snapshot encoding (unchanged from the store's first format).
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
        let endpoint = match rest.len() {
            0 => None,
            ENDPOINT_LEN => {
                let ip: [u8; 16] = rest[1..17].try_into().ok()?;
                let port = u16::from_be_bytes(rest[17..19].try_into().ok()?);
                let ip = match rest[0] {
                    4 => IpAddr::V4(Ipv6Addr::from(ip).to_ipv4_mapped()?),
                    6 => IpAddr::V6(Ipv6Addr::from(ip)),
                    _ => return None,
                };
                Some(SocketAddr::new(ip, port))
            }
            _ => return None,
        };
        Some(Self {
            lease: u64_at(0)?,
            window,
            usage: KeyUsage { encryptions: u64_at(21)?, failed_decryptions: u64_at(29)? },
            endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_ceilings_and_leases_growing_and_round_trips() {
        let mut s = LinkState::default();
        let at: SocketAddr = "192.0.2.1:5683".parse().expect("addr");
        let cp = |highest, enc, endpoint| {
            Change::Checkpoint(PeerState {
                window: Some(WindowState { highest, seen: 1 }),
                usage: KeyUsage { encryptions: enc, failed_decryptions: 2 },
                endpoint,
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
        assert_eq!(LinkState::decode(&s.encode()), Some(s));
    }
}
