//! Firmware image checks against a verified manifest: whole-image verification for the hub and
//! resumable block-wise reassembly (RFC 7959 Block2 transfers) for sensors; integrity per
//! EN 303 645 5.3-9 (TR 103 621 6.17: digest checked before the image is used).

use std::fmt;

use sha2::{Digest, Sha256};

use super::UpdateError;
use super::manifest::VerifiedManifest;

/// An image whose size and SHA-256 match a [`VerifiedManifest`]. Only [`verify_image`] and
/// [`ImageAssembler::finish`] make one.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    model: String,
    version: u32,
    sha256: [u8; 32],
    bytes: Vec<u8>,
}

impl VerifiedImage {
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl fmt::Debug for VerifiedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedImage")
            .field("model", &self.model)
            .field("version", &self.version)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// Checks a whole image (owner upload or feed download) against its manifest.
pub fn verify_image(
    manifest: &VerifiedManifest,
    image: &[u8],
) -> Result<VerifiedImage, UpdateError> {
    let expected = u64::from(manifest.image_size());
    let received = image.len() as u64;
    if received < expected {
        return Err(UpdateError::Truncated { received, expected });
    }
    if received > expected {
        return Err(UpdateError::TooLong { limit: expected, attempted: received });
    }
    let digest: [u8; 32] = Sha256::digest(image).into();
    if &digest != manifest.image_sha256() {
        return Err(UpdateError::DigestMismatch);
    }
    Ok(VerifiedImage {
        model: manifest.model().to_owned(),
        version: manifest.version(),
        sha256: digest,
        bytes: image.to_vec(),
    })
}

/// What a block did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// New bytes were appended; `done` of `total` bytes are now held.
    Accepted { done: u64, total: u64 },
    /// The block repeats bytes already held (a retransmission); nothing changed.
    Duplicate,
}

/// Reassembles an image received block by block, hashing as it goes. Keeps the bytes
/// (preallocated to the verified manifest's size, at most 16 MiB).
#[derive(Clone)]
pub struct ImageAssembler {
    model: String,
    version: u32,
    expected_sha256: [u8; 32],
    total: u64,
    hasher: Sha256,
    bytes: Vec<u8>,
}

impl fmt::Debug for ImageAssembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageAssembler")
            .field("model", &self.model)
            .field("version", &self.version)
            .field("offset", &self.offset())
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl ImageAssembler {
    /// Starts an empty transfer for `manifest`'s image.
    pub fn new(manifest: &VerifiedManifest) -> Self {
        let size = manifest.image_size();
        ImageAssembler {
            model: manifest.model().to_owned(),
            version: manifest.version(),
            expected_sha256: *manifest.image_sha256(),
            total: u64::from(size),
            hasher: Sha256::new(),
            // The manifest is verified and its size bounded to 16 MiB.
            bytes: Vec::with_capacity(usize::try_from(size).unwrap_or(0)),
        }
    }

    /// Starts a transfer for a sensor that trusts the hub's authenticated link instead of
    /// verifying signatures itself (TR 103 621 6.18 example 4): size and digest come from an
    /// offer that arrived inside OSCORE, which only the sensor link can vouch for.
    pub fn for_link_offer(offer: &crate::link::fw::LinkOffer, model: &str) -> Self {
        let o = offer.offer();
        let size = o.size.min(super::MAX_IMAGE_SIZE);
        ImageAssembler {
            model: model.to_owned(),
            version: o.version,
            expected_sha256: o.sha256,
            total: u64::from(size),
            hasher: Sha256::new(),
            bytes: Vec::with_capacity(usize::try_from(size).unwrap_or(0)),
        }
    }

    /// Continues after a restart from the bytes already in the slot (re-hashed here).
    pub fn resume(
        manifest: &VerifiedManifest,
        already_written: &[u8],
    ) -> Result<Self, UpdateError> {
        let mut assembler = Self::new(manifest);
        assembler.push(0, already_written)?;
        Ok(assembler)
    }

    /// Bytes accepted so far: the offset the next block must start at.
    pub fn offset(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Image size from the manifest.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Accepts `data` at `offset`. A block starting at [`offset`](Self::offset) is appended; a
    /// block lying entirely below it is a retransmission (`Duplicate`, nothing changes) if its
    /// bytes equal those held, else `ConflictingData`; a block straddling it has its new tail
    /// appended after the same comparison. A block past the offset is `OutOfOrder`; one that
    /// would exceed the manifest's size is `TooLong`. Errors change nothing.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Result<Progress, UpdateError> {
        let current = self.offset();
        if offset > current {
            return Err(UpdateError::OutOfOrder { expected: current, got: offset });
        }
        let end = offset.checked_add(data.len() as u64).filter(|&end| end <= self.total).ok_or(
            UpdateError::TooLong {
                limit: self.total,
                attempted: offset.saturating_add(data.len() as u64),
            },
        )?;
        // `offset <= current <= total`, and all three fit in usize since total <= 16 MiB.
        let start = usize::try_from(offset)
            .map_err(|_| UpdateError::OutOfOrder { expected: current, got: offset })?;
        let overlap = usize::try_from(current - offset).unwrap_or(usize::MAX).min(data.len());
        let (old, new) = data.split_at(overlap);
        if self.bytes.get(start..start + overlap) != Some(old) {
            return Err(UpdateError::ConflictingData { offset });
        }
        if new.is_empty() && !data.is_empty() {
            return Ok(Progress::Duplicate);
        }
        self.hasher.update(new);
        self.bytes.extend_from_slice(new);
        Ok(Progress::Accepted { done: end.max(current), total: self.total })
    }

    /// Completes the transfer: `Truncated` if bytes are missing, `DigestMismatch` if the SHA-256
    /// differs from the manifest's.
    pub fn finish(self) -> Result<VerifiedImage, UpdateError> {
        let received = self.offset();
        if received < self.total {
            return Err(UpdateError::Truncated { received, expected: self.total });
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        if digest != self.expected_sha256 {
            return Err(UpdateError::DigestMismatch);
        }
        Ok(VerifiedImage {
            model: self.model,
            version: self.version,
            sha256: digest,
            bytes: self.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn whole_image_verifies() {
        let img = image(5000);
        let m = verified(&img);
        let v = verify_image(&m, &img).expect("matches");
        assert_eq!(v.bytes(), img.as_slice());
        assert_eq!(v.version(), 5);
        assert_eq!(v.model(), "hearth-thermo-1");
        assert_eq!(v.sha256(), m.image_sha256());
        assert_eq!(v.clone().into_bytes(), img);
        assert!(!format!("{v:?}").contains("bytes"));
    }

    #[test]
    fn tampered_image_is_digest_mismatch() {
        let img = image(5000);
        let m = verified(&img);
        let mut bad = img.clone();
        bad[4321] ^= 0x10;
        assert_eq!(verify_image(&m, &bad), Err(UpdateError::DigestMismatch));
        let mut a = ImageAssembler::new(&m);
        assert!(a.push(0, &bad).is_ok());
        assert_eq!(a.finish(), Err(UpdateError::DigestMismatch));
    }

    #[test]
    fn truncated_and_long_images() {
        let img = image(5000);
        let m = verified(&img);
        assert_eq!(
            verify_image(&m, &img[..4999]),
            Err(UpdateError::Truncated { received: 4999, expected: 5000 })
        );
        assert_eq!(
            verify_image(&m, &[]),
            Err(UpdateError::Truncated { received: 0, expected: 5000 })
        );
        let mut long = img.clone();
        long.push(0);
        assert_eq!(
            verify_image(&m, &long),
            Err(UpdateError::TooLong { limit: 5000, attempted: 5001 })
        );
        let mut a = ImageAssembler::new(&m);
        assert!(a.push(0, &img[..1024]).is_ok());
        assert_eq!(a.finish(), Err(UpdateError::Truncated { received: 1024, expected: 5000 }));
    }

    #[test]
    fn blocks_in_order_complete() {
        let img = image(5000);
        let m = verified(&img);
        let mut a = ImageAssembler::new(&m);
        assert_eq!(a.total(), 5000);
        for (i, block) in img.chunks(1024).enumerate() {
            let offset = (i * 1024) as u64;
            assert_eq!(a.offset(), offset);
            let done = offset + block.len() as u64;
            assert_eq!(a.push(offset, block), Ok(Progress::Accepted { done, total: 5000 }));
        }
        assert_eq!(a.offset(), 5000);
        assert_eq!(a.finish().expect("verifies").bytes(), img.as_slice());
    }

    #[test]
    fn duplicates_gaps_and_overflow() {
        let img = image(3000);
        let m = verified(&img);
        let mut a = ImageAssembler::new(&m);
        assert!(a.push(0, &img[..1024]).is_ok());
        assert!(a.push(1024, &img[1024..2048]).is_ok());
        // Retransmission of an earlier block changes nothing.
        assert_eq!(a.push(0, &img[..1024]), Ok(Progress::Duplicate));
        assert_eq!(a.push(1024, &img[1024..2048]), Ok(Progress::Duplicate));
        assert_eq!(a.offset(), 2048);
        // A differing "duplicate" is refused.
        let mut other = img[..1024].to_vec();
        other[3] ^= 1;
        assert_eq!(a.push(0, &other), Err(UpdateError::ConflictingData { offset: 0 }));
        // Gap.
        assert_eq!(
            a.push(2049, &img[2049..]),
            Err(UpdateError::OutOfOrder { expected: 2048, got: 2049 })
        );
        assert_eq!(
            a.push(u64::MAX, &[1]),
            Err(UpdateError::OutOfOrder { expected: 2048, got: u64::MAX })
        );
        // Overflow past the image size.
        let mut too_much = img[2048..].to_vec();
        too_much.push(0);
        assert_eq!(
            a.push(2048, &too_much),
            Err(UpdateError::TooLong { limit: 3000, attempted: 3001 })
        );
        assert_eq!(a.offset(), 2048);
        // A straddling block appends only its new tail.
        assert_eq!(
            a.push(2000, &img[2000..2500]),
            Ok(Progress::Accepted { done: 2500, total: 3000 })
        );
        assert_eq!(a.push(2500, &[]), Ok(Progress::Accepted { done: 2500, total: 3000 }));
        assert!(a.push(2500, &img[2500..]).is_ok());
        assert_eq!(
            a.push(2999, &[img[2999], 0]),
            Err(UpdateError::TooLong { limit: 3000, attempted: 3001 })
        );
        assert_eq!(a.finish().expect("verifies").bytes(), img.as_slice());
    }

    #[test]
    fn resume_after_partial_write() {
        let img = image(4096 + 17);
        let m = verified(&img);
        let mut a = ImageAssembler::new(&m);
        assert!(a.push(0, &img[..2048]).is_ok());
        drop(a); // the sensor restarts; the slot holds 2048 bytes
        let mut b = ImageAssembler::resume(&m, &img[..2048]).expect("resumes");
        assert_eq!(b.offset(), 2048);
        assert!(b.push(2048, &img[2048..]).is_ok());
        assert_eq!(b.finish().expect("verifies").bytes(), img.as_slice());
        // Resuming from a corrupted slot is caught at the end.
        let mut corrupt = img[..2048].to_vec();
        corrupt[0] ^= 0xff;
        let mut c = ImageAssembler::resume(&m, &corrupt).expect("resumes");
        assert!(c.push(2048, &img[2048..]).is_ok());
        assert_eq!(c.finish(), Err(UpdateError::DigestMismatch));
        // A slot holding more than the image is refused.
        let mut long = img.clone();
        long.push(0);
        assert!(matches!(ImageAssembler::resume(&m, &long), Err(UpdateError::TooLong { .. })));
        // Resume with everything already written.
        let d = ImageAssembler::resume(&m, &img).expect("resumes");
        assert!(d.finish().is_ok());
    }

    proptest! {
        #[test]
        fn random_block_sizes_reassemble(
            len in 1usize..6000,
            sizes in proptest::collection::vec(1usize..700, 1..40),
            dup_every in 1usize..5,
        ) {
            let img = image(len);
            let m = verified(&img);
            let mut a = ImageAssembler::new(&m);
            let mut offset = 0usize;
            let mut prev: Option<(usize, usize)> = None;
            for (i, size) in sizes.iter().cycle().enumerate() {
                if offset == len {
                    break;
                }
                if i % dup_every == 0
                    && let Some((s, e)) = prev
                {
                    prop_assert_eq!(a.push(s as u64, &img[s..e]), Ok(Progress::Duplicate));
                }
                let end = (offset + size).min(len);
                let progress = a.push(offset as u64, &img[offset..end]);
                prop_assert_eq!(progress, Ok(Progress::Accepted { done: end as u64, total: len as u64 }));
                prev = Some((offset, end));
                offset = end;
            }
            let v = a.finish();
            prop_assert!(v.is_ok());
            prop_assert_eq!(v.map(VerifiedImage::into_bytes).unwrap_or_default(), img);
        }
    }
}
