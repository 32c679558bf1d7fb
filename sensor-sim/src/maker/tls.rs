//! The feed's TLS identity: a self-signed certificate (the hub pins it) and its private key,
//! created 0600 at first use and reused afterwards.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::keys::read_secret_text;
use super::{MakerError, io_err, write_atomic};

/// Feed TLS certificate (PEM) in a TLS directory.
pub const TLS_CERT_FILE: &str = "feed.crt";
/// Feed TLS private key (PEM, mode 0600) in a TLS directory.
pub const TLS_KEY_FILE: &str = "feed.key";

/// The feed server's self-signed certificate and key, in PEM. The hub pins `cert_pem`.
#[derive(Clone)]
pub struct FeedTls {
    pub cert_pem: String,
    /// **Secret.**
    pub key_pem: String,
}

impl fmt::Debug for FeedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedTls").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// Loads `dir/feed.crt` and `dir/feed.key`, or creates a self-signed certificate for `hostnames`
/// (DNS names or IP addresses, which become IP SANs) when neither exists. The key is 0600.
pub fn feed_tls(dir: &Path, hostnames: &[&str]) -> Result<FeedTls, MakerError> {
    let cert_path = dir.join(TLS_CERT_FILE);
    let key_path = dir.join(TLS_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
            let key_bytes = read_secret_text(&key_path)?;
            let key_pem =
                String::from_utf8(key_bytes).map_err(|_| MakerError::NotPem(key_path.clone()))?;
            let tls = FeedTls { cert_pem, key_pem };
            parse_tls(&tls)?;
            Ok(tls)
        }
        (true, false) => Err(MakerError::TlsIncomplete(key_path)),
        (false, true) => Err(MakerError::TlsIncomplete(cert_path)),
        (false, false) => {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            let names: Vec<String> = hostnames.iter().map(|h| (*h).to_owned()).collect();
            let mut params = rcgen::CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Hearth simulated manufacturer update feed");
            let key = rcgen::KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            let tls = FeedTls { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .map_err(io_err(&key_path))?;
            file.write_all(tls.key_pem.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err(&key_path))?;
            write_atomic(&cert_path, tls.cert_pem.as_bytes())?;
            tracing::info!(path = %cert_path.display(), "generated feed TLS certificate");
            Ok(tls)
        }
    }
}

pub(super) fn parse_tls(
    tls: &FeedTls,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), MakerError> {
    let certs =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(MakerError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())?;
    Ok((certs, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maker::mode;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn feed_tls_is_created_0600_reused_and_debug_hides_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = feed_tls(dir.path(), &["localhost", "127.0.0.1"]).expect("tls");
        assert_eq!(mode(&dir.path().join(TLS_KEY_FILE)), 0o600);
        assert!(tls.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.key_pem.contains("PRIVATE KEY"));
        let debug = format!("{tls:?}");
        assert!(!debug.contains(&tls.key_pem) && !debug.contains("PRIVATE KEY"));
        let again = feed_tls(dir.path(), &["localhost"]).expect("reuse");
        assert_eq!(again.cert_pem, tls.cert_pem);
        assert_eq!(again.key_pem, tls.key_pem);
        fs::set_permissions(dir.path().join(TLS_KEY_FILE), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(feed_tls(dir.path(), &[]), Err(MakerError::KeyPermissions { .. })));
        fs::remove_file(dir.path().join(TLS_KEY_FILE)).expect("rm");
        assert!(matches!(feed_tls(dir.path(), &[]), Err(MakerError::TlsIncomplete(_))));
    }
}
