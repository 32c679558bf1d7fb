//! The sensor's side of pairing: `SensorPairing::start` → [`AwaitingHubHello`] →
//! [`AwaitingHubProof`] → [`Paired`]. Nothing PIN-dependent leaves the sensor before the hub's
//! proof verified, and a failed proof ends the attempt (the key is discarded).

use p256::ecdh::EphemeralSecret;
use p256::elliptic_curve::Generate;
use rand_core::CryptoRng;

use super::keys::{
    SessionKeys, check_not_reflected, compress, mask, parse_compressed, transcript_hash,
};
use super::{
    COMPRESSED_KEY_LEN, Confirm, Descriptor, HubHello, MaskWidth, NONCE_LEN, Paired, PairingError,
    Pin, SensorHello,
};

/// Entry point of the sensor's side.
#[derive(Debug)]
pub struct SensorPairing;

impl SensorPairing {
    /// Starts an attempt with a fresh ephemeral key: returns the state, the hello to send, and
    /// the PIN to show on the display (never sent).
    pub fn start<R: CryptoRng + ?Sized>(
        rng: &mut R,
        descriptor: Descriptor,
        width: MaskWidth,
    ) -> (AwaitingHubHello, SensorHello, Pin) {
        let secret = EphemeralSecret::generate_from_rng(rng);
        let full_key = compress(&secret.public_key());
        let (masked_key, pin) = mask(&full_key, width);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let hello = SensorHello { width, masked_key, nonce, descriptor };
        (AwaitingHubHello { secret, full_key, hello: hello.clone() }, hello, pin)
    }
}

/// The hello is sent; waiting for the hub's key.
pub struct AwaitingHubHello {
    secret: EphemeralSecret,
    full_key: [u8; COMPRESSED_KEY_LEN],
    hello: SensorHello,
}

impl core::fmt::Debug for AwaitingHubHello {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwaitingHubHello").finish_non_exhaustive()
    }
}

impl AwaitingHubHello {
    /// The hello (for retransmission).
    pub fn hello(&self) -> &SensorHello {
        &self.hello
    }

    /// Takes the hub's key and IDs. Derives the session keys but emits nothing.
    pub fn on_hub_hello(self, hub: HubHello) -> Result<AwaitingHubProof, PairingError> {
        let hub_key = parse_compressed(&hub.key)?;
        check_not_reflected(&self.full_key, &hub.key)?;
        if hub.sensor_kid == hub.hub_kid {
            return Err(PairingError::BadIds);
        }
        let shared = self.secret.diffie_hellman(&hub_key);
        let th = transcript_hash(&self.hello, &self.full_key, &hub);
        let keys = SessionKeys::derive(shared.raw_secret_bytes(), th);
        Ok(AwaitingHubProof { keys, hub, descriptor: self.hello.descriptor })
    }
}

/// Waiting for the hub to prove it knows the PIN.
pub struct AwaitingHubProof {
    keys: SessionKeys,
    hub: HubHello,
    descriptor: Descriptor,
}

impl core::fmt::Debug for AwaitingHubProof {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwaitingHubProof").field("hub", &self.hub).finish_non_exhaustive()
    }
}

impl AwaitingHubProof {
    /// Verifies the hub's proof; only then sends the sensor's own. Consumes the attempt either way.
    pub fn on_hub_confirm(self, confirm: &Confirm) -> Result<(Paired, Confirm), PairingError> {
        if !self.keys.verify_hub(&confirm.mac) {
            return Err(PairingError::HubProofInvalid);
        }
        let reply = Confirm { mac: self.keys.sensor_mac() };
        let paired = Paired {
            context: self.keys.context(self.hub.sensor_kid, self.hub.hub_kid),
            descriptor: self.descriptor,
        };
        Ok((paired, reply))
    }
}
