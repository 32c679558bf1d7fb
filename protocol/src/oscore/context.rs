//! A security context and message protection, RFC 8613 §3, §4 and §8: splits a CoAP message into
//! outer (Class U) and inner (Class E) parts, seals the inner part with AES-CCM, and reverses it.

use aes::Aes128;
use ccm::{
    Ccm,
    aead::{AeadInOut, KeyInit},
    consts::{U8, U13},
};
use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;

use super::{
    ContextParams, KEY_LEN, KeyUsage, Kid, NONCE_LEN, NeedsRekey, OscoreError, OscoreOption, Piv,
    ReplayWindow, SenderSequence, TAG_LEN,
    aad::aad,
    derive::{DerivedKeys, derive},
    nonce::nonce,
    sequence::Lease,
};

type Aead = Ccm<Aes128, U8, U13>;

/// The Echo option (RFC 9175 §2.2), carried inside OSCORE (Class E).
const ECHO: u16 = 252;
/// Length of the Echo values this crate issues.
const ECHO_LEN: usize = 8;
/// Options that stay outside the ciphertext (Class U, RFC 8613 §4.1): Uri-Host, Uri-Port —
/// and the OSCORE option itself (9). Hearth uses no proxies: Proxy-Uri would have to be split
/// (§4.1.3.3) or its path would travel in clear, so proxy options are refused.
const CLASS_U: [u16; 3] = [3, 7, 9];
const PROXY: [u16; 2] = [35, 39];
const OSCORE: u16 = 9;

/// Identifies a request for its response: the response's AAD (and, without its own Partial IV,
/// its nonce) are those of the request (§5.4, §8.3). The client keeps it until the response comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBinding {
    /// The request's kid (the client's Sender ID).
    pub kid: Kid,
    /// The request's Partial IV.
    pub piv: Piv,
    /// The request's nonce.
    pub nonce: [u8; NONCE_LEN],
}

/// A protected message and the nonce that sealed it (tests record nonces to prove uniqueness).
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The OSCORE message.
    pub packet: Packet,
    /// The AEAD nonce used with this context's sender key.
    pub nonce: [u8; NONCE_LEN],
}

/// The outcome of unprotecting a request that authenticated.
#[derive(Debug)]
pub enum Verified {
    /// A fresh request: its counter is now marked seen.
    Request {
        /// The decrypted CoAP request.
        request: Packet,
        /// Binding for the response.
        binding: RequestBinding,
    },
    /// The replay window is unknown (after a restart, B.1.2) and the request carried no valid
    /// Echo: answer with [`SecurityContext::echo_challenge`]. Nothing was marked seen.
    NeedsEcho {
        /// Binding for the 4.01 response.
        binding: RequestBinding,
    },
}

/// One OSCORE security context: sender and recipient keys, the sender sequence, the replay window
/// and key-usage counters.
pub struct SecurityContext {
    params: ContextParams,
    sender_id: Kid,
    recipient_id: Kid,
    id_context: Option<Vec<u8>>,
    /// The derived keys and Common IV, kept as bytes (zeroized on drop): an AES-CCM instance
    /// is made from its key for each message. Kept expanded, the two would take 704 of this
    /// context's 944 bytes, for every paired sensor; expanding a key costs tens of nanoseconds.
    keys: DerivedKeys,
    sequence: SenderSequence,
    replay: ReplayWindow,
    usage: KeyUsage,
    echo: Option<[u8; ECHO_LEN]>,
}

impl core::fmt::Debug for SecurityContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SecurityContext")
            .field("sender_id", &self.sender_id)
            .field("recipient_id", &self.recipient_id)
            .field("sequence", &self.sequence)
            .field("replay", &self.replay)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl SecurityContext {
    /// Derives the context (§3.2) and attaches the durable state: the sender sequence (resumed
    /// from its last durable lease) and the replay window (restored, or `Unknown` after a loss).
    pub fn new(params: &ContextParams, sequence: SenderSequence, replay: ReplayWindow) -> Self {
        let keys = derive(params);
        Self {
            params: params.clone(),
            sender_id: params.sender_id,
            recipient_id: params.recipient_id,
            id_context: params.id_context.clone(),
            keys,
            sequence,
            replay,
            usage: KeyUsage::default(),
            echo: None,
        }
    }

    /// Restores key-usage counters saved with the context.
    pub fn with_usage(mut self, usage: KeyUsage) -> Self {
        self.usage = usage;
        self
    }

    /// The inputs it was derived from (a renewal derives the next context from them).
    pub fn params(&self) -> &ContextParams {
        &self.params
    }

    /// Its ID Context (none until a renewal gave it one, RFC 8613 B.2).
    pub fn id_context(&self) -> Option<&[u8]> {
        self.id_context.as_deref()
    }

    /// The context derived from `params` that takes this one's place (RFC 8613 B.2): new keys,
    /// and this one's sender sequence, replay window and usage carried on (numbers go on
    /// rising, never restart, so no bookkeeping depends on which key is in use).
    pub fn renewed(&self, params: &ContextParams) -> Self {
        let mut next = Self::new(params, self.sequence.clone(), self.replay.clone());
        next.usage = self.usage;
        next
    }

    /// A request's kid and Partial IV (§8.2 step 1), if the kid is this context's recipient and
    /// its key may still decrypt.
    fn request_ids(&self, message: &Packet) -> Result<(Kid, Piv), OscoreError> {
        let option = oscore_option(message)?;
        let (Some(piv), Some(kid)) = (option.piv, option.kid) else {
            return Err(OscoreError::NotOscore("request without Partial IV or kid"));
        };
        if kid != self.recipient_id {
            return Err(OscoreError::UnknownKid);
        }
        if !self.usage.may_decrypt() {
            return Err(OscoreError::KeyLimitReached);
        }
        Ok((kid, piv))
    }

    /// Checks a request's tag only (§8.2 without the replay window: nothing is marked seen and
    /// nothing may be answered under this context's nonces). For a context that must be
    /// renewed before use: a request that verifies may start the renewal.
    pub fn verify_request(&mut self, message: &Packet) -> Result<RequestBinding, OscoreError> {
        let (kid, piv) = self.request_ids(message)?;
        let nonce = nonce(&self.keys.common_iv, &kid, piv);
        self.open(message, &nonce, &aad(&kid, piv))?;
        Ok(RequestBinding { kid, piv, nonce })
    }

    /// Our Sender ID.
    pub fn sender_id(&self) -> Kid {
        self.sender_id
    }

    /// Our Recipient ID (the kid the peer's requests carry).
    pub fn recipient_id(&self) -> Kid {
        self.recipient_id
    }

    /// The next sender sequence number.
    pub fn sequence_next(&self) -> u64 {
        self.sequence.next_value()
    }

    /// The sender sequence (for leases).
    pub fn sequence_mut(&mut self) -> &mut SenderSequence {
        &mut self.sequence
    }

    /// A lease to persist, if one is due (see [`SenderSequence::poll_lease`]).
    pub fn poll_lease(&mut self) -> Option<Lease> {
        self.sequence.poll_lease()
    }

    /// Reports a lease durable.
    pub fn lease_durable(&mut self, lease: Lease) {
        self.sequence.lease_durable(lease);
    }

    /// The replay window (to persist it).
    pub fn replay_window(&self) -> &ReplayWindow {
        &self.replay
    }

    /// Key-usage counters (to persist and to report).
    pub fn usage(&self) -> KeyUsage {
        self.usage
    }

    /// A re-key signal, before a usage limit is reached.
    pub fn needs_rekey(&self) -> Option<NeedsRekey> {
        self.usage.needs_rekey()
    }

    /// Protects a request (§8.1): a fresh Partial IV from a durable lease, kid = our Sender ID.
    pub fn protect_request(
        &mut self,
        request: &Packet,
    ) -> Result<(Sealed, RequestBinding), OscoreError> {
        if !self.usage.may_encrypt() {
            return Err(OscoreError::KeyLimitReached);
        }
        let piv = self.sequence.take()?;
        let nonce = nonce(&self.keys.common_iv, &self.sender_id, piv);
        let option = OscoreOption {
            piv: Some(piv),
            kid_context: self.id_context.clone(),
            kid: Some(self.sender_id),
        };
        let outer_code = MessageClass::Request(RequestType::Post);
        let packet = seal(
            &self.keys.sender_key,
            request,
            outer_code,
            &option,
            &nonce,
            &aad(&self.sender_id, piv),
        )?;
        self.usage.encryptions += 1;
        let binding = RequestBinding { kid: self.sender_id, piv, nonce };
        Ok((Sealed { packet, nonce }, binding))
    }

    /// Unprotects a request (§8.2): replay check, then decrypt, then commit — a counter is marked
    /// seen only after its tag verified (§7.4).
    pub fn unprotect_request(&mut self, message: &Packet) -> Result<Verified, OscoreError> {
        let (kid, piv) = self.request_ids(message)?;
        let fresh = match self.replay.check(piv.value()) {
            Ok(fresh) => Some(fresh),
            Err(OscoreError::ReplayWindowUnknown) => None,
            Err(e) => return Err(e),
        };
        let nonce = nonce(&self.keys.common_iv, &kid, piv);
        let request = self.open(message, &nonce, &aad(&kid, piv))?;
        let binding = RequestBinding { kid, piv, nonce };
        if let Some(fresh) = fresh {
            self.replay.commit(fresh);
            return Ok(Verified::Request { request, binding });
        }
        // B.1.2 / RFC 9175: a request that echoes our challenge was made after it, so its
        // Partial IV is fresh and becomes the window's floor.
        let echoed = request.get_first_option(CoapOption::Unknown(ECHO));
        let matches = match (self.echo, echoed) {
            (Some(expected), Some(got)) => bool::from(expected.ct_eq(got.as_slice())),
            _ => false,
        };
        if matches {
            self.echo = None;
            self.replay.set_floor(piv.value());
            return Ok(Verified::Request { request, binding });
        }
        Ok(Verified::NeedsEcho { binding })
    }

    /// Draws the Echo value that B.1.2 challenges carry, if none is outstanding.
    pub fn arm_echo<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) {
        self.echo.get_or_insert_with(|| {
            let mut v = [0u8; ECHO_LEN];
            rng.fill_bytes(&mut v);
            v
        });
    }

    /// Builds the protected 4.01 Unauthorized + Echo answer to a request that needs one (B.1.2),
    /// with the value drawn by [`SecurityContext::arm_echo`]. It carries our own Partial IV:
    /// after a restart the request's nonce may not be fresh.
    pub fn echo_challenge(
        &mut self,
        request: &Packet,
        binding: &RequestBinding,
    ) -> Result<Sealed, OscoreError> {
        let echo = self.echo.ok_or(OscoreError::NotOscore("no Echo value drawn"))?;
        let mut response = Packet::new();
        response.header.set_type(coap_lite::MessageType::Acknowledgement);
        response.header.message_id = request.header.message_id;
        response.set_token(request.get_token().to_vec());
        response.header.code = MessageClass::Response(ResponseType::Unauthorized);
        response.add_option(CoapOption::Unknown(ECHO), echo.to_vec());
        self.protect_response(&response, binding, true)
    }

    /// Protects a response (§8.3). Without `own_piv` the request's nonce is reused, which is
    /// safe only because that request passed the replay window; a cached answer to a duplicate
    /// must be resent byte for byte, never re-protected.
    pub fn protect_response(
        &mut self,
        response: &Packet,
        request: &RequestBinding,
        own_piv: bool,
    ) -> Result<Sealed, OscoreError> {
        self.protect_response_in(response, request, own_piv, None)
    }

    /// [`SecurityContext::protect_response`] with our own Partial IV and our ID Context as
    /// 'kid context' (RFC 8613 B.2 Response #1).
    pub(crate) fn protect_response_with_context(
        &mut self,
        response: &Packet,
        request: &RequestBinding,
    ) -> Result<Sealed, OscoreError> {
        let c = self.id_context.clone();
        self.protect_response_in(response, request, true, c)
    }

    fn protect_response_in(
        &mut self,
        response: &Packet,
        request: &RequestBinding,
        own_piv: bool,
        kid_context: Option<Vec<u8>>,
    ) -> Result<Sealed, OscoreError> {
        if !self.usage.may_encrypt() {
            return Err(OscoreError::KeyLimitReached);
        }
        let (nonce, option) = if own_piv {
            let piv = self.sequence.take()?;
            let n = nonce(&self.keys.common_iv, &self.sender_id, piv);
            (n, OscoreOption { piv: Some(piv), kid_context, ..OscoreOption::default() })
        } else {
            (request.nonce, OscoreOption::default())
        };
        let outer_code = MessageClass::Response(ResponseType::Changed);
        let aad = aad(&request.kid, request.piv);
        let packet = seal(&self.keys.sender_key, response, outer_code, &option, &nonce, &aad)?;
        self.usage.encryptions += 1;
        Ok(Sealed { packet, nonce })
    }

    /// Unprotects the response to the request identified by `request` (§8.4).
    pub fn unprotect_response(
        &mut self,
        message: &Packet,
        request: &RequestBinding,
    ) -> Result<Packet, OscoreError> {
        let option = oscore_option(message)?;
        if !self.usage.may_decrypt() {
            return Err(OscoreError::KeyLimitReached);
        }
        let nonce = match option.piv {
            Some(piv) => nonce(&self.keys.common_iv, &self.recipient_id, piv),
            None => request.nonce,
        };
        self.open(message, &nonce, &aad(&request.kid, request.piv))
    }

    fn open(
        &mut self,
        message: &Packet,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
    ) -> Result<Packet, OscoreError> {
        match open(&self.keys.recipient_key, message, nonce, aad) {
            Err(OscoreError::DecryptionFailed) => {
                self.usage.failed_decryptions += 1;
                Err(OscoreError::DecryptionFailed)
            }
            other => other,
        }
    }
}

/// The Echo value a 4.01 challenge carries (the client copies it into its retry).
pub fn echo_value(response: &Packet) -> Option<&[u8]> {
    response.get_first_option(CoapOption::Unknown(ECHO)).map(Vec::as_slice)
}

fn oscore_option(message: &Packet) -> Result<OscoreOption, OscoreError> {
    let mut values = message.get_option(CoapOption::Oscore).into_iter().flatten();
    let value = values.next().ok_or(OscoreError::NotOscore("no OSCORE option"))?;
    if values.next().is_some() {
        return Err(OscoreError::BadOption("repeated"));
    }
    OscoreOption::parse(value)
}

/// Encrypts the inner part of `message` and returns the outer message (§4, §5.3).
fn seal(
    key: &[u8; KEY_LEN],
    message: &Packet,
    outer_code: MessageClass,
    option: &OscoreOption,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
) -> Result<Packet, OscoreError> {
    let mut outer = Packet::new();
    outer.header = message.header.clone();
    outer.header.code = outer_code;
    outer.set_token(message.get_token().to_vec());
    let mut inner = Packet::new();
    inner.header.code = message.header.code;
    for (&number, values) in message.options() {
        if number == OSCORE || PROXY.contains(&number) {
            return Err(OscoreError::BadInnerMessage);
        }
        let target = if CLASS_U.contains(&number) { &mut outer } else { &mut inner };
        target.set_option(CoapOption::from(number), values.clone());
    }
    inner.payload = message.payload.clone();
    // Plaintext = Code ‖ inner options ‖ 0xFF ‖ payload (§5.3): the inner packet's encoding
    // without its 4-byte header (its token is empty).
    let encoded = inner.to_bytes_unlimited().map_err(|_| OscoreError::Encode)?;
    let mut buf = Vec::with_capacity(encoded.len() - 3 + TAG_LEN);
    buf.push(u8::from(message.header.code));
    buf.extend_from_slice(&encoded[4..]);
    let tag = Aead::new(&(*key).into())
        .encrypt_inout_detached(&(*nonce).into(), aad, buf.as_mut_slice().into())
        .map_err(|_| OscoreError::Encode)?;
    buf.extend_from_slice(&tag);
    outer.add_option(CoapOption::Oscore, option.encode());
    outer.payload = buf;
    Ok(outer)
}

/// Decrypts an OSCORE message and rebuilds the original CoAP message (§8.2, §8.4).
fn open(
    key: &[u8; KEY_LEN],
    message: &Packet,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
) -> Result<Packet, OscoreError> {
    let ciphertext = &message.payload;
    let Some(split) = ciphertext.len().checked_sub(TAG_LEN) else {
        return Err(OscoreError::DecryptionFailed);
    };
    let mut buf = ciphertext[..split].to_vec();
    let tag = ccm::aead::Tag::<Aead>::try_from(&ciphertext[split..])
        .map_err(|_| OscoreError::DecryptionFailed)?;
    Aead::new(&(*key).into())
        .decrypt_inout_detached(&(*nonce).into(), aad, buf.as_mut_slice().into(), &tag)
        .map_err(|_| OscoreError::DecryptionFailed)?;
    let Some((&code, rest)) = buf.split_first() else {
        return Err(OscoreError::BadInnerMessage);
    };
    if code == 0 {
        return Err(OscoreError::BadInnerMessage);
    }
    let mut raw = Vec::with_capacity(buf.len() + 3);
    raw.extend_from_slice(&[0x40, code, 0, 0]);
    raw.extend_from_slice(rest);
    let mut inner = Packet::from_bytes(&raw).map_err(|_| OscoreError::BadInnerMessage)?;
    if inner.get_option(CoapOption::Oscore).is_some() {
        return Err(OscoreError::BadInnerMessage);
    }
    inner.header.set_type(message.header.get_type());
    inner.header.message_id = message.header.message_id;
    inner.set_token(message.get_token().to_vec());
    for (&number, values) in message.options() {
        if number != OSCORE && CLASS_U.contains(&number) {
            inner.set_option(CoapOption::from(number), values.clone());
        }
    }
    Ok(inner)
}
