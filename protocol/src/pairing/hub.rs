//! The hub's side of pairing: `HubPairing::start` → [`AwaitingPin`] → [`AwaitingSensorConfirm`]
//! → [`Paired`]. The hub proves knowledge of the PIN-completed key first.

use p256::ecdh::EphemeralSecret;
use p256::elliptic_curve::Generate;
use rand_core::CryptoRng;

use crate::oscore::Kid;

use super::keys::{SessionKeys, check_not_reflected, compress, transcript_hash, unmask};
use super::{Confirm, Descriptor, HubHello, MaskWidth, Paired, PairingError, Pin, SensorHello};

/// Entry point of the hub's side.
#[derive(Debug)]
pub struct HubPairing;

impl HubPairing {
    /// Answers a sensor's hello with a fresh ephemeral key and the OSCORE IDs the hub assigns
    /// (`sensor_kid` must be unique among the hub's sensors).
    pub fn start<R: CryptoRng + ?Sized>(
        rng: &mut R,
        hello: SensorHello,
        sensor_kid: Kid,
        hub_kid: Kid,
    ) -> Result<(AwaitingPin, HubHello), PairingError> {
        if sensor_kid == hub_kid {
            return Err(PairingError::BadIds);
        }
        let secret = EphemeralSecret::generate_from_rng(rng);
        let mut nonce = [0u8; super::NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let hub = HubHello { key: compress(&secret.public_key()), nonce, sensor_kid, hub_kid };
        Ok((AwaitingPin { secret, sensor: hello, hub: hub.clone() }, hub))
    }
}

/// Waiting for the owner to type the PIN shown on the sensor.
pub struct AwaitingPin {
    secret: EphemeralSecret,
    sensor: SensorHello,
    hub: HubHello,
}

impl core::fmt::Debug for AwaitingPin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwaitingPin").field("sensor", &self.sensor).finish_non_exhaustive()
    }
}

impl AwaitingPin {
    /// What the sensor says it is (shown to the owner next to the PIN prompt).
    pub fn descriptor(&self) -> &Descriptor {
        &self.sensor.descriptor
    }

    /// The PIN width the sensor uses.
    pub fn width(&self) -> MaskWidth {
        self.sensor.width
    }

    /// The hello the hub sent (for retransmission).
    pub fn hub_hello(&self) -> &HubHello {
        &self.hub
    }

    /// Completes the sensor's key with `pin`, validates it, and produces the hub's proof. An
    /// off-curve completion (a mistyped PIN, about half of them) is caught here without sending
    /// anything; every call must still be counted by the caller's [`super::PairingWindow`].
    pub fn enter_pin(&self, pin: &Pin) -> Result<(AwaitingSensorConfirm, Confirm), PairingError> {
        if pin.width() != self.sensor.width {
            return Err(PairingError::BadPin(self.sensor.width.digits()));
        }
        let (full, key) = unmask(&self.sensor.masked_key, pin)?;
        check_not_reflected(&self.hub.key, &full)?;
        let shared = self.secret.diffie_hellman(&key);
        let th = transcript_hash(&self.sensor, &full, &self.hub);
        let keys = SessionKeys::derive(shared.raw_secret_bytes(), th);
        let confirm = Confirm { mac: keys.hub_mac() };
        let next = AwaitingSensorConfirm {
            keys,
            sensor_kid: self.hub.sensor_kid,
            hub_kid: self.hub.hub_kid,
            descriptor: self.sensor.descriptor.clone(),
        };
        Ok((next, confirm))
    }
}

/// The hub's proof is sent; waiting for the sensor's.
pub struct AwaitingSensorConfirm {
    keys: SessionKeys,
    sensor_kid: Kid,
    hub_kid: Kid,
    descriptor: Descriptor,
}

impl core::fmt::Debug for AwaitingSensorConfirm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwaitingSensorConfirm")
            .field("sensor_kid", &self.sensor_kid)
            .finish_non_exhaustive()
    }
}

impl AwaitingSensorConfirm {
    /// Checks the sensor's proof; on success both sides hold the same OSCORE context.
    pub fn finish(self, confirm: &Confirm) -> Result<Paired, PairingError> {
        if !self.keys.verify_sensor(&confirm.mac) {
            return Err(PairingError::SensorProofInvalid);
        }
        Ok(Paired {
            context: self.keys.context(self.hub_kid, self.sensor_kid),
            descriptor: self.descriptor,
        })
    }
}
