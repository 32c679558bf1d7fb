//! The sensor link's sending side: what goes out next (pairing steps, firmware requests,
//! readings, with readings never starved by a download), sealed with OSCORE and carrying the
//! hub's Echo and return-routability values (RFC 8613 B.1.2, RFC 9175).

use coap_lite::{CoapOption, MessageClass, Packet};
use rand_core::CryptoRng;

use super::{
    CONTROL_BURST, Control, Phase, Purpose, ROUTABILITY_REUSE_MS, SensorEvent, SensorLink, What,
};
use crate::link::coap::{self, PATH_DONE, PATH_PROOF, PATH_READINGS};
use crate::link::fw::{BLOCK2, PATH_IMAGE, PATH_MANIFEST, PATH_REPORT};
use crate::link::hub::encode_done;
use crate::oscore::OscoreError;
use crate::time::Millis;

impl SensorLink {
    /// Sends whatever is next, if nothing is in flight.
    pub(super) fn pump<R: CryptoRng + ?Sized>(&mut self, now: Millis, rng: &mut R) {
        if self.out.is_some() || now < self.not_before {
            return;
        }
        match &mut self.phase {
            Phase::Unpaired | Phase::Hello(..) => {}
            Phase::Proof { kid, .. } => {
                let kid = *kid;
                let token = self.token();
                let request = coap::post(self.mid(), &token, PATH_PROOF, kid.as_bytes().to_vec());
                self.send(now, rng, request, token, Purpose::Proof);
            }
            Phase::Done { kid, reply, .. } => {
                let body = encode_done(kid, reply.as_ref());
                let token = self.token();
                let request = coap::post(self.mid(), &token, PATH_DONE, body);
                self.send(now, rng, request, token, Purpose::Done);
            }
            // Firmware requests go first, but a waiting reading still goes out after every few
            // of them: a long download must not starve the sensor's data.
            Phase::Linked(_) => {
                let reading_due = !self.readings.is_empty() && self.control_streak >= CONTROL_BURST;
                match self.control.pop_front() {
                    Some(c) if !reading_due => {
                        self.control_streak += 1;
                        self.send_control(now, rng, c);
                    }
                    Some(c) => {
                        self.control.push_front(c);
                        self.control_streak = 0;
                        self.send_reading(now, rng);
                    }
                    None => {
                        self.control_streak = 0;
                        self.send_reading(now, rng);
                    }
                }
            }
        }
    }

    fn send_reading<R: CryptoRng + ?Sized>(&mut self, now: Millis, rng: &mut R) {
        let Some((id, payload)) = self.readings.front().cloned() else { return };
        let token = self.token();
        let mut request = coap::post(self.mid(), &token, PATH_READINGS, payload);
        request.set_content_format(coap_lite::ContentFormat::ApplicationSenmlCBOR);
        self.protect_and_send(now, rng, request, token, What::Reading(id));
    }

    fn send_control<R: CryptoRng + ?Sized>(&mut self, now: Millis, rng: &mut R, c: Control) {
        let token = self.token();
        let mid = self.mid();
        let request = match &c {
            Control::Manifest { version } => get(mid, &token, PATH_MANIFEST, *version),
            Control::Block { version, block } => {
                let mut r = get(mid, &token, PATH_IMAGE, *version);
                r.add_option(CoapOption::Unknown(BLOCK2), block.encode());
                r
            }
            Control::Report(report) => coap::post(mid, &token, PATH_REPORT, report.encode()),
        };
        self.protect_and_send(now, rng, request, token, What::Control(c));
    }

    /// Seals `request` (adding an outstanding Echo) and sends it; without a durable lease it asks
    /// for one and puts a control request back to wait.
    fn protect_and_send<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        rng: &mut R,
        mut request: Packet,
        token: Vec<u8>,
        what: What,
    ) {
        if let Some(echo) = &self.echo {
            request.add_option(CoapOption::Unknown(252), echo.clone());
        }
        let routability = self
            .routability
            .as_ref()
            .filter(|(_, at)| now < at.plus(ROUTABILITY_REUSE_MS))
            .map(|(v, _)| v.clone());
        let Phase::Linked(ctx) = &mut self.phase else { return };
        match ctx.protect_request(&request) {
            Ok((mut sealed, binding)) => {
                if let Some(lease) = ctx.poll_lease() {
                    self.events.push_back(SensorEvent::LeaseNeeded(lease));
                }
                if let Some(v) = routability {
                    sealed.packet.add_option(CoapOption::Unknown(crate::link::hub::ECHO_OPTION), v);
                }
                self.send(now, rng, sealed.packet, token, Purpose::Protected { binding, what });
            }
            Err(e) => {
                if let Some(lease) = ctx.poll_lease() {
                    self.events.push_back(SensorEvent::LeaseNeeded(lease));
                }
                if let What::Control(c) = what {
                    self.control.push_front(c);
                }
                if e != OscoreError::LeaseNotDurable {
                    self.events.push_back(SensorEvent::LinkError("cannot protect request"));
                }
            }
        }
    }
}

/// A confirmable GET of `path?v=<version>`.
fn get(mid: u16, token: &[u8], path: &str, version: u32) -> Packet {
    let mut p = coap::post(mid, token, path, Vec::new());
    p.header.code = MessageClass::Request(coap_lite::RequestType::Get);
    p.add_option(CoapOption::UriQuery, format!("v={version}").into_bytes());
    p
}
