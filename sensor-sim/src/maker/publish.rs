//! Publishing to the feed directory: manifests signed over the image's size and digest,
//! advisories, and the `feed.json` index, each file written atomically and the index last so it
//! never lists a file that is not there (TR 103 621 6.17/6.18: signed updates).

use std::fs;
use std::io;
use std::path::Path;

use protocol::time::UnixTime;
use protocol::update::feed::{FeedEntry, FeedIndex, INDEX_FILE, is_safe_segment};
use protocol::update::{Advisory, Manifest, SigningKeyPair};
use sha2::{Digest, Sha256};

use super::{MakerError, io_err, write_atomic};

/// What the manufacturer states about a release; the image size and digest come from the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub model: String,
    pub version: u32,
    /// Lowest installed version the update applies to.
    pub min_version: u32,
    /// Freeze protection: the manifest is refused after this time.
    pub expires: UnixTime,
    /// Installing interrupts the device (5.3-12).
    pub disruptive: bool,
    /// Risks mitigated, shown to the owner (5.3-11).
    pub risks: String,
    pub released: UnixTime,
}

/// A release signed by the manufacturer: the manifest envelope and the image it describes.
/// Publishing it as is gives the genuine release; the fields are public so that tests and the
/// demo can publish a tampered image under a genuine signature.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedRelease {
    pub model: String,
    pub version: u32,
    /// COSE_Sign1 manifest envelope.
    pub manifest: Vec<u8>,
    pub image: Vec<u8>,
}

impl std::fmt::Debug for SignedRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedRelease")
            .field("model", &self.model)
            .field("version", &self.version)
            .field("manifest_len", &self.manifest.len())
            .field("image_len", &self.image.len())
            .finish()
    }
}

/// Signs a manifest for `release` over `image` (its size and SHA-256), refusing what receivers
/// would refuse (field limits, version range, expiry before release).
pub fn sign_release(
    key: &SigningKeyPair,
    release: &Release,
    image: &[u8],
) -> Result<SignedRelease, MakerError> {
    let image_size =
        u32::try_from(image.len()).map_err(|_| MakerError::ImageTooLarge(image.len()))?;
    let manifest = Manifest {
        model: release.model.clone(),
        version: release.version,
        min_version: release.min_version,
        image_size,
        image_sha256: Sha256::digest(image).into(),
        expires: release.expires,
        disruptive: release.disruptive,
        risks_mitigated: release.risks.clone(),
        released: release.released,
    };
    manifest.validate().map_err(MakerError::Invalid)?;
    Ok(SignedRelease {
        model: release.model.clone(),
        version: release.version,
        manifest: manifest.sign(key),
        image: image.to_vec(),
    })
}

/// Signs and publishes a release (see [`sign_release`] and [`publish_signed`]).
pub fn publish(
    feed_dir: &Path,
    key: &SigningKeyPair,
    release: &Release,
    image: &[u8],
) -> Result<FeedEntry, MakerError> {
    if !is_safe_segment(&release.model) {
        return Err(MakerError::UnsafeModel(release.model.clone()));
    }
    publish_signed(feed_dir, &sign_release(key, release, image)?)
}

/// Publishes a signed release: writes `images/<model>-<version>.bin` and
/// `manifests/<model>-<version>.cose` under `feed_dir`, then atomically rewrites `feed.json`.
/// Republishing the same model and version replaces the earlier entry.
pub fn publish_signed(feed_dir: &Path, signed: &SignedRelease) -> Result<FeedEntry, MakerError> {
    if !is_safe_segment(&signed.model) {
        return Err(MakerError::UnsafeModel(signed.model.clone()));
    }
    let stem = format!("{}-{}", signed.model, signed.version);
    let entry = FeedEntry {
        model: signed.model.clone(),
        version: signed.version,
        manifest: format!("manifests/{stem}.cose"),
        image: format!("images/{stem}.bin"),
        size: signed.image.len() as u64,
    };
    // Image before manifest before index: the index never lists a file that is not there.
    write_feed_file(feed_dir, &entry.image, &signed.image)?;
    write_feed_file(feed_dir, &entry.manifest, &signed.manifest)?;
    let mut index = read_index(feed_dir)?;
    index.releases.retain(|e| !(e.model == entry.model && e.version == entry.version));
    index.releases.push(entry.clone());
    index.releases.sort_by(|a, b| (&a.model, a.version).cmp(&(&b.model, b.version)));
    write_index(feed_dir, &index)?;
    tracing::info!(model = %entry.model, version = entry.version, "published release");
    Ok(entry)
}

/// Signs and publishes an advisory as `advisories/<n>.cose` (next free number) and lists it in
/// `feed.json`. Returns its path relative to the feed root.
pub fn publish_advisory(
    feed_dir: &Path,
    key: &SigningKeyPair,
    advisory: &Advisory,
) -> Result<String, MakerError> {
    advisory.validate().map_err(MakerError::Invalid)?;
    let mut index = read_index(feed_dir)?;
    let mut n = index.advisories.len() + 1;
    let rel = loop {
        let rel = format!("advisories/{n}.cose");
        if !index.advisories.contains(&rel) && !feed_dir.join(&rel).exists() {
            break rel;
        }
        n += 1;
    };
    write_feed_file(feed_dir, &rel, &advisory.sign(key))?;
    index.advisories.push(rel.clone());
    write_index(feed_dir, &index)?;
    tracing::info!(model = %advisory.model, path = %rel, "published advisory");
    Ok(rel)
}

/// Reads `feed.json`, or an empty index when there is none yet.
pub fn read_index(feed_dir: &Path) -> Result<FeedIndex, MakerError> {
    let path = feed_dir.join(INDEX_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| MakerError::FeedIndex { path, source })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FeedIndex::default()),
        Err(source) => Err(MakerError::Io { path, source }),
    }
}

fn write_index(feed_dir: &Path, index: &FeedIndex) -> Result<(), MakerError> {
    let path = feed_dir.join(INDEX_FILE);
    let mut json = serde_json::to_vec_pretty(index)
        .map_err(|source| MakerError::FeedIndex { path: path.clone(), source })?;
    json.push(b'\n');
    write_atomic(&path, &json)
}

fn write_feed_file(feed_dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), MakerError> {
    let path = feed_dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    write_atomic(&path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::image::build_image;
    use crate::maker::{keygen, load_key};
    use protocol::update::{
        Severity, TrustAnchors, UpdateError, verify_advisory, verify_image, verify_manifest,
    };

    const NOW: UnixTime = UnixTime(1_750_000_000);

    fn release(version: u32) -> Release {
        Release {
            model: "hearth-thermo-1".into(),
            version,
            min_version: 1,
            expires: UnixTime(NOW.0 + 86_400 * 30),
            disruptive: false,
            risks: "Fixes CVE-2099-0001.".into(),
            released: UnixTime(NOW.0 - 60),
        }
    }

    #[test]
    fn published_manifest_verifies_and_matches_image() {
        let keys = tempfile::tempdir().expect("tempdir");
        let feed = tempfile::tempdir().expect("tempdir");
        keygen(keys.path()).expect("keygen");
        let key = load_key(keys.path()).expect("key");
        let image = build_image("hearth-thermo-1", 2, 10_000, true);
        let entry = publish(feed.path(), &key, &release(2), &image).expect("publish");
        assert_eq!(entry.manifest, "manifests/hearth-thermo-1-2.cose");
        assert_eq!(entry.image, "images/hearth-thermo-1-2.bin");
        assert_eq!(entry.size, 10_000);

        let mut anchors = TrustAnchors::new();
        anchors.add("hearth-thermo-1", key.public());
        let env = fs::read(feed.path().join(&entry.manifest)).expect("manifest");
        let manifest = verify_manifest(&env, &anchors, NOW).expect("manifest verifies");
        assert_eq!(manifest.version(), 2);
        assert_eq!(manifest.risks_mitigated(), "Fixes CVE-2099-0001.");
        let served = fs::read(feed.path().join(&entry.image)).expect("image");
        assert_eq!(verify_image(&manifest, &served).expect("digest matches").bytes(), &image[..]);
        let mut tampered = served.clone();
        tampered[100] ^= 1;
        assert_eq!(verify_image(&manifest, &tampered), Err(UpdateError::DigestMismatch));

        let stranger = SigningKeyPair::from_bytes(&[7u8; 32]).expect("key");
        let mut other = TrustAnchors::new();
        other.add("hearth-thermo-1", stranger.public());
        assert_eq!(verify_manifest(&env, &other, NOW), Err(UpdateError::UnknownKey));

        // A second release is added; republishing version 2 replaces its entry.
        let e3 =
            publish(feed.path(), &key, &release(3), &build_image("hearth-thermo-1", 3, 64, true))
                .expect("publish 3");
        publish(feed.path(), &key, &release(2), &image).expect("republish");
        let index = read_index(feed.path()).expect("index");
        assert_eq!(index.releases, vec![entry, e3]);
        let leftovers: Vec<_> = fs::read_dir(feed.path().join("manifests"))
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left: {leftovers:?}");
    }

    #[test]
    fn publish_refuses_unsafe_names_and_invalid_manifests() {
        let feed = tempfile::tempdir().expect("tempdir");
        let key = SigningKeyPair::from_bytes(&[7u8; 32]).expect("key");
        let image = build_image("x", 1, 64, true);
        for model in ["../evil", "a/b", ".hidden", "with space", ""] {
            let r = Release { model: model.into(), ..release(1) };
            assert!(matches!(
                publish(feed.path(), &key, &r, &image),
                Err(MakerError::UnsafeModel(_))
            ));
        }
        let bad = Release { min_version: 5, ..release(2) };
        assert!(matches!(
            publish(feed.path(), &key, &bad, &image),
            Err(MakerError::Invalid(UpdateError::InvalidVersionRange))
        ));
        assert!(matches!(
            publish(feed.path(), &key, &release(2), &[]),
            Err(MakerError::Invalid(UpdateError::ImageSizeOutOfRange(0)))
        ));
        assert!(!feed.path().join(INDEX_FILE).exists());
    }

    #[test]
    fn advisories_are_signed_and_listed() {
        let feed = tempfile::tempdir().expect("tempdir");
        let key = SigningKeyPair::from_bytes(&[7u8; 32]).expect("key");
        let adv = Advisory {
            model: "hearth-thermo-1".into(),
            affected_low: 1,
            affected_high: 2,
            severity: Severity::High,
            fixed_in: Some(3),
            text: "CoAP parser overflow".into(),
            issued: NOW,
        };
        assert_eq!(publish_advisory(feed.path(), &key, &adv).expect("a1"), "advisories/1.cose");
        assert_eq!(publish_advisory(feed.path(), &key, &adv).expect("a2"), "advisories/2.cose");
        let index = read_index(feed.path()).expect("index");
        assert_eq!(index.advisories, vec!["advisories/1.cose", "advisories/2.cose"]);
        let mut anchors = TrustAnchors::new();
        anchors.add("hearth-thermo-1", key.public());
        let env = fs::read(feed.path().join("advisories/1.cose")).expect("file");
        assert!(verify_advisory(&env, &anchors, NOW).is_ok());
        let bad = Advisory { fixed_in: Some(2), ..adv };
        assert!(matches!(publish_advisory(feed.path(), &key, &bad), Err(MakerError::Invalid(_))));
    }
}
