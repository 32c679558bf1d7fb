//! The simulated firmware image format the sensor boots: a 16-byte header (`HEARTHFW`, version,
//! flags) then deterministic filler. The manufacturer builds images in this format; the sensor's
//! post-boot health check reads its flags.

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// Length of the firmware header written by [`build_image`].
pub const IMAGE_HEADER_LEN: usize = 16;
/// Magic bytes that start every simulated firmware image.
pub const IMAGE_MAGIC: &[u8; 8] = b"HEARTHFW";
/// Header flag bit: the image fails its post-boot health check.
pub const FLAG_FAILS_HEALTH_CHECK: u32 = 1;

/// Builds a deterministic pseudo-random firmware image of `size` bytes (at least the 16-byte
/// header) for `model` at `version`: `HEARTHFW`, version (u32 BE), flags (u32 BE; bit 0 set when
/// `!healthy`: the sensor's post-boot health check fails), then bytes seeded from (model, version).
pub fn build_image(model: &str, version: u32, size: usize, healthy: bool) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(b"hearth simulated firmware\0");
    hasher.update((model.len() as u64).to_be_bytes());
    hasher.update(model.as_bytes());
    hasher.update(version.to_be_bytes());
    let seed: [u8; 32] = hasher.finalize().into();
    let mut image = vec![0u8; size.max(IMAGE_HEADER_LEN)];
    ChaCha20Rng::from_seed(seed).fill_bytes(&mut image);
    let flags = if healthy { 0 } else { FLAG_FAILS_HEALTH_CHECK };
    let mut header = [0u8; IMAGE_HEADER_LEN];
    header[..8].copy_from_slice(IMAGE_MAGIC);
    header[8..12].copy_from_slice(&version.to_be_bytes());
    header[12..].copy_from_slice(&flags.to_be_bytes());
    image[..IMAGE_HEADER_LEN].copy_from_slice(&header);
    image
}

/// Whether a simulated sensor booting `image` fails its health check: the flag is set, or the
/// image has no valid header.
pub fn fails_health_check(image: &[u8]) -> bool {
    let Some(header) = image.get(..IMAGE_HEADER_LEN) else { return true };
    if &header[..8] != IMAGE_MAGIC {
        return true;
    }
    let flags = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    flags & FLAG_FAILS_HEALTH_CHECK != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_image_is_deterministic_and_health_flag_round_trips() {
        let a = build_image("hearth-thermo-1", 2, 4096, true);
        assert_eq!(a, build_image("hearth-thermo-1", 2, 4096, true));
        assert_eq!(a.len(), 4096);
        assert_eq!(&a[..8], IMAGE_MAGIC);
        assert_eq!(a[8..12], 2u32.to_be_bytes());
        assert!(!fails_health_check(&a));
        assert_ne!(a[16..], build_image("hearth-thermo-1", 3, 4096, true)[16..]);
        assert_ne!(a[16..], build_image("hearth-door-1", 2, 4096, true)[16..]);

        let sick = build_image("hearth-thermo-1", 2, 4096, false);
        assert!(fails_health_check(&sick));
        assert_eq!(sick[16..], a[16..], "only the flag differs");

        assert!(fails_health_check(&a[..15]));
        assert!(fails_health_check(&[0u8; 64]));
        assert_eq!(build_image("m", 1, 0, true).len(), IMAGE_HEADER_LEN);
    }
}
