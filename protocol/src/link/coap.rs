//! CoAP message helpers and reliability parameters shared by both link endpoints (RFC 7252 §4).

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

/// Initial retransmission timeout (RFC 7252 §4.8 ACK_TIMEOUT).
pub const ACK_TIMEOUT_MS: u64 = 2_000;
/// Retransmission intervals double up to this cap; a sensor keeps trying (its data is buffered
/// until the hub answers, EN 303 645 5.9 / TR 103 621 6.53).
pub const MAX_BACKOFF_MS: u64 = 32_000;
/// Largest datagram either side accepts.
pub const MAX_DATAGRAM: usize = 1_280;

/// Pairing: sensor hello.
pub const PATH_HELLO: &str = "p/hello";
/// Pairing: sensor asks for the hub's proof.
pub const PATH_PROOF: &str = "p/proof";
/// Pairing: sensor's confirmation (or refusal of the hub's proof).
pub const PATH_DONE: &str = "p/done";
/// Readings (OSCORE).
pub const PATH_READINGS: &str = "r";

/// The retransmission timeout before attempt `n` (0-based), with RFC 7252's random factor
/// [1, 1.5) drawn from `jitter` ∈ [0, 1).
pub fn retransmit_timeout(n: u32, jitter: f64) -> u64 {
    let base = ACK_TIMEOUT_MS.saturating_mul(1u64 << n.min(10)).min(MAX_BACKOFF_MS);
    base + (base as f64 * 0.5 * jitter.clamp(0.0, 1.0)) as u64
}

/// A confirmable POST to `path` (segments separated by `/`).
pub fn post(mid: u16, token: &[u8], path: &str, payload: Vec<u8>) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    for seg in path.split('/') {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.payload = payload;
    p
}

/// The piggy-backed response to `request` (ACK for a CON, NON for a NON).
pub fn response(request: &Packet, code: ResponseType, payload: Vec<u8>) -> Packet {
    let mut p = Packet::new();
    let t = match request.header.get_type() {
        MessageType::Confirmable => MessageType::Acknowledgement,
        _ => MessageType::NonConfirmable,
    };
    p.header.set_type(t);
    p.header.code = MessageClass::Response(code);
    p.header.message_id = request.header.message_id;
    p.set_token(request.get_token().to_vec());
    p.payload = payload;
    p
}

/// The request's Uri-Path joined with `/`; empty if a segment itself contains `/` (so that a
/// single segment "p/hello" never matches the two-segment path).
pub fn path(p: &Packet) -> String {
    let mut out = String::new();
    for (i, seg) in p.get_option(CoapOption::UriPath).into_iter().flatten().enumerate() {
        if seg.contains(&b'/') {
            return String::new();
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(&String::from_utf8_lossy(seg));
    }
    out
}

/// Encodes a packet within [`MAX_DATAGRAM`].
pub fn encode(p: &Packet) -> Option<Vec<u8>> {
    p.to_bytes_with_limit(MAX_DATAGRAM).ok()
}
