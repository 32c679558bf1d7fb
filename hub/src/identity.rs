//! The hub's TLS identity: a per-hub self-signed certificate generated at first start (no shared
//! or default key, EN 303 645 5.1-1) whose private key is sealed under the key-encryption key
//! (5.4-1). One rustls server configuration serves HTTPS and MQTT over TLS; the owner checks the
//! SHA-256 fingerprint printed at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use sha2::{Digest, Sha256};

use crate::store::{Kek, SealError};

const CERT_FILE: &str = "hub-cert.pem";
const KEY_FILE: &str = "hub-key.sealed";
/// Associated data binding the sealed key to its purpose.
const KEY_ID: &[u8] = b"hearth hub tls key";

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// File system.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The key could not be sealed or opened.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Certificate generation.
    #[error("cannot generate the hub certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The stored certificate or key does not parse, or one of them is missing.
    #[error("hub certificate files are unusable: {0}")]
    Invalid(&'static str),
    /// rustls refused the pair.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The hub's certificate and key.
pub(crate) struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// PEM of the certificate (public; clients pin it).
    pub cert_pem: String,
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Identity").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the identity from `data_dir`, generating it at first start for `names` (host names
    /// and IP addresses the certificate is valid for).
    pub(crate) fn load_or_create(data_dir: &Path, names: &[String]) -> Result<Self, IdentityError> {
        let kek = Kek::load_or_create(&data_dir.join("kek"))?;
        let (cert_path, key_path) = (data_dir.join(CERT_FILE), data_dir.join(KEY_FILE));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| IdentityError::Io(p, e)
        };
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
                let sealed = std::fs::read(&key_path).map_err(io(&key_path))?;
                let key = kek.open(KEY_ID, &sealed)?;
                let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                    .map_err(|_| IdentityError::Invalid("certificate is not PEM"))?;
                let key = PrivatePkcs8KeyDer::from(key.to_vec());
                Ok(Self { cert, key, cert_pem })
            }
            (false, false) => {
                let mut params = rcgen::CertificateParams::new(names.to_vec())?;
                params.distinguished_name.push(rcgen::DnType::CommonName, "Hearth hub");
                let key = rcgen::KeyPair::generate()?;
                let cert = params.self_signed(&key)?;
                let der = zeroize::Zeroizing::new(key.serialize_der());
                crate::private_fs::write(&key_path, &kek.seal(KEY_ID, &der)?)
                    .map_err(io(&key_path))?;
                crate::private_fs::write(&cert_path, cert.pem().as_bytes())
                    .map_err(io(&cert_path))?;
                Ok(Self {
                    cert: cert.der().clone(),
                    key: PrivatePkcs8KeyDer::from(der.to_vec()),
                    cert_pem: cert.pem(),
                })
            }
            _ => Err(IdentityError::Invalid("one of hub-cert.pem and hub-key.sealed is missing")),
        }
    }

    /// SHA-256 of the certificate (DER), as colon-separated hex.
    pub(crate) fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.cert.as_ref());
        digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }

    /// A rustls server configuration (TLS 1.3 and 1.2, ring) for `alpn` protocols.
    pub(crate) fn server_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// The names a new certificate covers: loopback, `localhost`, this machine's host name and the
/// configured extra names.
pub(crate) fn default_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_owned());
        }
    }
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_key_sealed_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = default_names(&["hub.example".into()]);
        let a = Identity::load_or_create(dir.path(), &names).expect("create");
        let sealed = std::fs::read(dir.path().join(KEY_FILE)).expect("key file");
        let der = a.key.secret_pkcs8_der();
        assert!(!sealed.windows(der.len()).any(|w| w == der), "key stored in clear");
        let b = Identity::load_or_create(dir.path(), &names).expect("reload");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32 * 3 - 1);
        a.server_config(&[b"http/1.1"]).expect("rustls accepts it");
        // Another hub (another data directory) gets another key.
        let other = tempfile::tempdir().expect("tempdir");
        let c = Identity::load_or_create(other.path(), &names).expect("create");
        assert_ne!(a.fingerprint(), c.fingerprint());
        // A half-present identity is refused, not silently replaced.
        std::fs::remove_file(dir.path().join(CERT_FILE)).expect("rm");
        assert!(matches!(
            Identity::load_or_create(dir.path(), &names),
            Err(IdentityError::Invalid(_))
        ));
    }
}
