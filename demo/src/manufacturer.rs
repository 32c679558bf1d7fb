//! The demo's simulated manufacturer: a signing key, a feed served over HTTPS (TLS 1.3) whose
//! certificate the hub pins, and the releases the demo publishes — two the hub must refuse (an
//! image altered after signing, an old version offered again) and one it must deliver.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use protocol::time::UnixTime;
use protocol::update::PublicKey;
use sensor_sim::firmware::image::build_image;
use sensor_sim::maker::{self, FeedServer, MakerError, Release};
use tokio_util::sync::CancellationToken;

/// Size of the demo's firmware images.
pub const IMAGE_SIZE: usize = 256 * 1024;

/// The manufacturer's files and its running feed server.
#[derive(Debug)]
pub struct Manufacturer {
    keys: PathBuf,
    feed: PathBuf,
    /// The feed certificate the hub pins.
    pub cert: PathBuf,
    /// The signing key's public half, which the hub and the sensors trust.
    pub public: PublicKey,
    /// The feed server.
    pub server: FeedServer,
}

impl Manufacturer {
    /// Generates a signing key and a feed certificate under `dir` and serves an empty feed on
    /// loopback until `shutdown`.
    pub async fn start(dir: &Path, shutdown: CancellationToken) -> Result<Self, MakerError> {
        let keys = dir.join("keys");
        let public = maker::keygen(&keys)?;
        let feed = dir.join("feed");
        std::fs::create_dir_all(&feed)
            .map_err(|source| MakerError::Io { path: feed.clone(), source })?;
        let tls_dir = dir.join("tls");
        let tls = maker::feed_tls(&tls_dir, &["localhost", "127.0.0.1"])?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = maker::serve_feed(feed.clone(), &tls, loopback, shutdown).await?;
        let cert = tls_dir.join(maker::TLS_CERT_FILE);
        Ok(Manufacturer { keys, feed, cert, public, server })
    }

    /// The feed's base URL.
    pub fn url(&self) -> String {
        format!("https://{}/", self.server.addr)
    }

    /// Publishes two releases the hub must refuse: `tampered_model` v2 with its image altered
    /// after signing (a compromised feed), and `old_model` v1 again (a rollback).
    pub fn publish_bad_releases(
        &self,
        tampered_model: &str,
        old_model: &str,
    ) -> Result<(), MakerError> {
        let key = maker::load_key(&self.keys)?;
        let claimed = release(tampered_model, 2, "Fixes a timing leak in the calibration command.");
        let mut signed = maker::sign_release(&key, &claimed, &image(tampered_model, 2))?;
        signed.image[IMAGE_SIZE / 2] ^= 0x01;
        maker::publish_signed(&self.feed, &signed)?;
        println!(
            "[attacker] altered one byte of the {tampered_model} v2 image on the feed; the \
             manufacturer's signature is unchanged"
        );
        let old = release(old_model, 1, "The original factory firmware.");
        maker::publish(&self.feed, &key, &old, &image(old_model, 1))?;
        println!("[attacker] re-offered the old signed {old_model} v1 (a rollback)");
        Ok(())
    }

    /// Signs and publishes `model` v2.
    pub fn publish_update(&self, model: &str, risks: &str) -> Result<(), MakerError> {
        let key = maker::load_key(&self.keys)?;
        maker::publish(&self.feed, &key, &release(model, 2, risks), &image(model, 2))?;
        println!(
            "[manufacturer] signed and published {model} v2 ({} KiB) on its HTTPS feed",
            IMAGE_SIZE / 1024
        );
        Ok(())
    }
}

fn image(model: &str, version: u32) -> Vec<u8> {
    build_image(model, version, IMAGE_SIZE, true)
}

fn release(model: &str, version: u32, risks: &str) -> Release {
    let now = sensor_sim::clock::unix_now();
    Release {
        model: model.into(),
        version,
        min_version: 1,
        expires: UnixTime(now.0 + 90 * 86_400),
        disruptive: false,
        risks: risks.into(),
        released: now,
    }
}
