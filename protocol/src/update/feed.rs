//! The manufacturer's update feed: the `feed.json` index both the hub's feed client and the
//! manufacturer's server use, the size limits both enforce, and which relative paths a feed may
//! name (EN 303 645 5.13-1: bounded, validated input).

use serde::{Deserialize, Serialize};

/// The feed's index file, at the feed root.
pub const INDEX_FILE: &str = "feed.json";
/// Largest index accepted or served, in bytes.
pub const MAX_INDEX_LEN: u64 = 1024 * 1024;
/// Largest manifest, advisory or image accepted or served, in bytes.
pub const MAX_FILE_LEN: u64 = 32 * 1024 * 1024;
/// Longest relative path inside a feed, in bytes.
pub const MAX_PATH_LEN: usize = 512;

/// One release in the feed index; paths are relative to the feed root.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FeedEntry {
    pub model: String,
    pub version: u32,
    /// e.g. `manifests/hearth-thermo-1-2.cose`.
    pub manifest: String,
    /// e.g. `images/hearth-thermo-1-2.bin`.
    pub image: String,
    /// Image size in bytes.
    pub size: u64,
}

/// The feed's `feed.json`: every published release and advisory (relative paths).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FeedIndex {
    pub releases: Vec<FeedEntry>,
    pub advisories: Vec<String>,
}

/// One segment of a feed path: `[A-Za-z0-9._-]+`, not starting with a dot and without `..`
/// (so no `.`, `..` or hidden files such as a publisher's temporary files).
pub fn is_safe_segment(segment: &str) -> bool {
    !segment.is_empty()
        && !segment.starts_with('.')
        && !segment.contains("..")
        && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A relative feed path: at most [`MAX_PATH_LEN`] bytes of safe segments separated by single
/// slashes (no leading or trailing slash, no escapes, no query).
pub fn is_safe_path(rel: &str) -> bool {
    rel.len() <= MAX_PATH_LEN && rel.split('/').all(is_safe_segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        for ok in ["feed.json", "manifests/hearth-thermo-1-2.cose", "images/a_b.bin", "a.b/c-d"] {
            assert!(is_safe_path(ok), "{ok}");
        }
        for bad in [
            "", "/x", "x/", "../x", "x/..", ".hidden", "a/./b", "a//b", "a?b", "a%2fb", "é",
            "a..b", "a b", "a\\b",
        ] {
            assert!(!is_safe_path(bad), "{bad}");
        }
        assert!(is_safe_path(&"a".repeat(MAX_PATH_LEN)));
        assert!(!is_safe_path(&"a".repeat(MAX_PATH_LEN + 1)));
        assert!(!is_safe_segment("a/b"));
    }
}
