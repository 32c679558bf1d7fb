//! The upstream broker's certificate check: rustls's WebPKI verification against the configured
//! CA only — or, for the usual self-signed broker certificate (`openssl req -x509` makes it
//! CA:TRUE, which WebPKI refuses as a server's own certificate), that exact certificate pinned
//! in `ca_cert` — with every refusal counted (`upstream_tls_refused` in `hub ctl security`) and logged
//! at warn in words a person understands, rate-limited — a refused certificate may be a man in
//! the middle (EN 303 645 5.5-1, 5.10-1).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

/// Refusals are logged one by one at most this often (the rest are summed up in the next line).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Counts and logs refused certificates.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    count: AtomicU64,
    /// When a refusal was last logged, and how many were not logged since.
    log: Mutex<(Option<Instant>, u64)>,
}

impl Refusals {
    /// Refused certificates since start.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn refused(&self, url: &str, error: &Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.0.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            log.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.1);
        log.0 = Some(now);
        drop(log);
        tracing::warn!(
            upstream = url,
            reason = %explain(error),
            detail = %error,
            more_since_last_line = unlogged,
            "upstream broker's certificate refused: nothing is sent to it (this can be a man in \
             the middle, or a broker whose certificate changed; check upstream.ca_cert and \
             upstream.url)"
        );
    }
}

/// What a certificate error means, for the owner.
fn explain(e: &Error) -> &'static str {
    let Error::InvalidCertificate(c) = e else {
        return "the broker's certificate could not be checked";
    };
    match c {
        CertificateError::UnknownIssuer => {
            "the certificate is not signed by the configured CA (upstream.ca_cert)"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the certificate does not name the host in upstream.url"
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the certificate has expired"
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the certificate is not valid yet (or this hub's clock is wrong)"
        }
        CertificateError::Revoked => "the certificate was revoked",
        CertificateError::BadSignature => {
            "the certificate names the configured CA (upstream.ca_cert) as its issuer but is not \
             signed by it"
        }
        CertificateError::BadEncoding => "the certificate is malformed",
        other if ca_as_end_entity(other) => {
            "the broker presents a CA certificate (CA:TRUE) that is not the one in \
             upstream.ca_cert (a self-signed broker certificate is accepted only as that exact \
             file)"
        }
        _ => "the certificate is not acceptable",
    }
}

/// WebPKI's refusal of a CA certificate presented as the server's own (rustls passes it on as
/// an `Other` error naming `CaUsedAsEndEntity`).
fn ca_as_end_entity(e: &CertificateError) -> bool {
    matches!(e, CertificateError::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity"))
}

/// rustls's verifier for the configured roots, with refusals counted and logged.
#[derive(Debug)]
pub(crate) struct Watched {
    inner: Arc<WebPkiServerVerifier>,
    /// The configured certificates themselves: a broker presenting exactly one of them is
    /// trusted (a pinned self-signed certificate, CA:TRUE included).
    pinned: Vec<CertificateDer<'static>>,
    refusals: Arc<Refusals>,
    url: String,
}

impl Watched {
    /// A verifier trusting only `pinned` (as CAs, and each as the exact certificate a broker
    /// may present), reporting refusals for `url` to `refusals`.
    pub(crate) fn new(
        pinned: Vec<CertificateDer<'static>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
        refusals: Arc<Refusals>,
        url: String,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &pinned {
            roots.add(c.clone()).map_err(|e| e.to_string())?;
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { inner, pinned, refusals, url })
    }
}

impl ServerCertVerifier for Watched {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match &verdict {
            // The usual self-signed broker certificate (CA:TRUE) is refused by WebPKI as a
            // server's own certificate; it is trusted when it is exactly the configured one (the
            // handshake then proves the broker holds its key).
            Err(Error::InvalidCertificate(c))
                if ca_as_end_entity(c)
                    && self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                return Ok(ServerCertVerified::assertion());
            }
            Err(e) => self.refusals.refused(&self.url, e),
            Ok(_) => {}
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (CertificateDer<'static>, Vec<CertificateDer<'static>>) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let c = rcgen::generate_simple_self_signed(names).expect("cert");
        let der = c.cert.der().clone();
        (der.clone(), vec![der])
    }

    /// A self-signed CA:TRUE certificate, as `openssl req -x509` makes for a broker.
    fn ca_true(name: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    fn verifier(roots: Vec<CertificateDer<'static>>, refusals: &Arc<Refusals>) -> Watched {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Watched::new(roots, provider, refusals.clone(), "mqtts://broker:8883".into())
            .expect("verifier")
    }

    #[test]
    fn a_pinned_self_signed_ca_true_certificate_is_accepted_and_another_refused() {
        let refusals = Arc::new(Refusals::default());
        let ours = ca_true("broker.example");
        let theirs = ca_true("broker.example");
        let v = verifier(vec![ours.clone()], &refusals);
        let name = ServerName::try_from("broker.example").expect("name");
        let now = UnixTime::now();
        assert!(v.verify_server_cert(&ours, &[], &name, &[], now).is_ok());
        assert_eq!(refusals.count(), 0);
        let refused = v.verify_server_cert(&theirs, &[], &name, &[], now).expect_err("refused");
        assert_eq!(refusals.count(), 1);
        assert!(!explain(&refused).contains("not acceptable"), "{refused}: {}", explain(&refused));
    }

    #[test]
    fn refusals_are_counted_and_the_right_certificate_passes() {
        let refusals = Arc::new(Refusals::default());
        let (ours, roots) = cert(&["broker.example"]);
        let (theirs, _) = cert(&["broker.example"]);
        let v = verifier(roots, &refusals);
        let name = ServerName::try_from("broker.example").expect("name");
        let now = UnixTime::now();
        assert!(v.verify_server_cert(&ours, &[], &name, &[], now).is_ok());
        assert_eq!(refusals.count(), 0);
        let unknown = v.verify_server_cert(&theirs, &[], &name, &[], now).expect_err("refused");
        assert_eq!(refusals.count(), 1);
        // Another self-signed certificate with the same subject: a forged issuer, or unknown.
        assert!(explain(&unknown).contains("configured CA"), "{unknown}");
        let other = ServerName::try_from("elsewhere.example").expect("name");
        let wrong = v.verify_server_cert(&ours, &[], &other, &[], now).expect_err("refused");
        assert!(explain(&wrong).contains("does not name"), "{wrong}");
        assert_eq!(refusals.count(), 2);
        // Logging is rate-limited, counting is not.
        for _ in 0..100 {
            let _ = v.verify_server_cert(&theirs, &[], &name, &[], now);
        }
        assert_eq!(refusals.count(), 102);
        assert!(refusals.log.lock().expect("log").1 >= 100);
    }
}
