//! The last applied fleet document, kept in `fleet.cache_dir` so that an edge that restarts
//! while etcd is down starts from it instead of from its file's defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    pub revision: i64,
    pub text: String,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("document.json")
}

/// The cached document, if there is a readable one (a corrupt cache is ignored: the edge then
/// starts from its file, as on a first start).
pub fn load(dir: &Path) -> Option<Cached> {
    let text = std::fs::read_to_string(path(dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the cache atomically (a temporary file renamed over the old one).
pub fn store(dir: &Path, cached: &Cached) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("document.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(cached).expect("serializes"))?;
    std::fs::rename(tmp, path(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_round_trips_and_a_corrupt_one_is_ignored() {
        let dir = std::env::temp_dir().join(format!("anycast-fleet-cache-{}", std::process::id()));
        assert_eq!(load(&dir), None);
        let c = Cached {
            revision: 7,
            text: "hash_seed = 1".into(),
        };
        store(&dir, &c).unwrap();
        assert_eq!(load(&dir), Some(c));
        std::fs::write(path(&dir), "{").unwrap();
        assert_eq!(load(&dir), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
