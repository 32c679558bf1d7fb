//! The hub's randomness: a ChaCha20 generator seeded from the operating system (EN 303 645
//! 5.4: keys, nonces and setup codes come from a CSPRNG).

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// A CSPRNG seeded from the OS.
pub(crate) fn os_seeded() -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        // Without OS randomness the hub cannot make keys; refusing to run is the only safe answer.
        eprintln!("hub: the operating system's random number generator failed");
        std::process::exit(70);
    }
    ChaCha20Rng::from_seed(seed)
}

/// Fills `buf` from the OS generator.
pub(crate) fn fill(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}
