//! Firmware resources on the protected link (TR 103 621 6.18): the signed manifest and the
//! image, block by block (CoAP Block2, RFC 7959), for the version the hub offers this sensor.

use std::sync::Arc;

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};

use crate::oscore::Kid;

use super::super::coap;
use super::super::fw::{BLOCK2, Block, PATH_IMAGE, PATH_MANIFEST, PATH_REPORT};
use super::{AckTicket, Endpoint, FirmwareOffer, HubEvent, HubLink};

/// An answer: code, payload, and the Block2 option value if any.
type Answer = (ResponseType, Vec<u8>, Option<Vec<u8>>);

impl<A: Endpoint> HubLink<A> {
    /// The answer to an accepted request other than a reading or a well-formed report.
    pub(super) fn resource(&mut self, ticket: &AckTicket<A>) -> Answer {
        let request = &ticket.request;
        let get = request.header.code == MessageClass::Request(RequestType::Get);
        match (get, coap::path(request).as_str()) {
            (true, PATH_MANIFEST) => match self.offer_for(&ticket.kid, request) {
                Some(o) => (ResponseType::Content, o.manifest().to_vec(), None),
                None => (ResponseType::NotFound, Vec::new(), None),
            },
            (true, PATH_IMAGE) => self.block(ticket.kid, request),
            (false, PATH_REPORT) => {
                self.counters.bad_request += 1;
                (ResponseType::BadRequest, b"bad report".to_vec(), None)
            }
            _ => {
                self.counters.bad_request += 1;
                (ResponseType::NotFound, Vec::new(), None)
            }
        }
    }

    /// The offer for `kid` if the request names its version (`?v=N`).
    fn offer_for(&self, kid: &Kid, request: &Packet) -> Option<Arc<FirmwareOffer>> {
        let offer = self.peers.get(kid)?.offer.clone()?;
        let asked = request
            .get_option(CoapOption::UriQuery)
            .into_iter()
            .flatten()
            .find_map(|q| std::str::from_utf8(q).ok()?.strip_prefix("v=")?.parse::<u32>().ok());
        (asked == Some(offer.offer().version)).then_some(offer)
    }

    fn block(&mut self, kid: Kid, request: &Packet) -> Answer {
        let asked = request.get_first_option(CoapOption::Unknown(BLOCK2)).map(|v| Block::decode(v));
        let (Some(offer), Some(Ok(block))) = (self.offer_for(&kid, request), asked) else {
            return (ResponseType::NotFound, Vec::new(), None);
        };
        let size = offer.image().len() as u64;
        let start = block.offset();
        if start >= size {
            return (ResponseType::BadOption, Vec::new(), None);
        }
        let end = (start + (16u64 << block.szx)).min(size);
        let data = offer.image()[start as usize..end as usize].to_vec();
        let reply = Block { num: block.num, more: end < size, szx: block.szx };
        let total = size.div_ceil(16u64 << block.szx) as u32;
        let version = offer.offer().version;
        self.events.push_back(HubEvent::BlockServed { kid, version, num: block.num, total });
        (ResponseType::Content, data, Some(reply.encode()))
    }
}
