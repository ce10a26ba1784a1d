//! Deployment bundles: a gzip-compressed tar of a client's deployment YAMLs,
//! built so the same desired state always gives the same bytes (and so the
//! same digest): entries sorted by name (`<deploymentId>.yaml`), mtime 0,
//! uid/gid 0, no user or group names, mode 0644, gzip header mtime 0 and no
//! file name, a fixed compression level.
//!
//! Built archives are cached per client for the manifest version they were
//! built from; a newer version replaces the entry.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use flate2::{Compression, GzBuilder};
use margo_schemas::digest::Digest;
use margo_schemas::ids::ClientId;

use crate::state_manifest::BundleInfo;
use crate::store::DesiredState;

/// Gzip level of every bundle (changing it changes every digest).
const LEVEL: u32 = 6;
/// Most clients whose bundle is kept in memory.
const MAX_CACHED: usize = 256;

/// Why a bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Writing the tar or gzip stream failed (in memory: only on bad input
    /// such as an over-long name).
    #[error("building the bundle archive: {0}")]
    Io(#[from] std::io::Error),
}

/// One built bundle.
#[derive(Debug)]
pub struct Bundle {
    /// The manifest version it was built from.
    pub manifest_version: u64,
    /// Digest of [`bytes`](Self::bytes).
    pub digest: Digest,
    /// The archive.
    pub bytes: Bytes,
}

impl Bundle {
    /// Digest and size, for the manifest.
    pub fn info(&self) -> BundleInfo {
        BundleInfo {
            digest: self.digest,
            size_bytes: self.bytes.len() as u64,
        }
    }
}

/// The archive of `state`'s deployments (deterministic bytes).
pub fn build(state: &DesiredState) -> Result<Bundle, ArchiveError> {
    let mut docs: Vec<(String, &[u8])> = state
        .deployments
        .iter()
        .map(|d| (format!("{}.yaml", d.id), d.yaml.as_slice()))
        .collect();
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    let gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::new(LEVEL));
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (name, yaml) in docs {
        let mut header = tar::Header::new_ustar();
        header.set_size(yaml.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &name, yaml)?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    let bytes = Bytes::from(gz.finish()?);
    Ok(Bundle {
        manifest_version: state.manifest_version,
        digest: Digest::of(&bytes),
        bytes,
    })
}

/// Built bundles by client, for their current manifest version.
#[derive(Debug, Clone, Default)]
pub struct BundleCache {
    entries: Arc<Mutex<HashMap<ClientId, Arc<Bundle>>>>,
}

impl BundleCache {
    /// The bundle of `state` (`None` without deployments: Margo has
    /// `bundle: null` then and never serves an empty archive), from the
    /// cache when it was built for the same manifest version.
    pub fn get(&self, state: &DesiredState) -> Result<Option<Arc<Bundle>>, ArchiveError> {
        if state.deployments.is_empty() {
            return Ok(None);
        }
        if let Some(hit) = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&state.client)
            .filter(|b| b.manifest_version == state.manifest_version)
        {
            return Ok(Some(Arc::clone(hit)));
        }
        let built = Arc::new(build(state)?);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED && !entries.contains_key(&state.client) {
            // Any entry will do: a miss only costs a rebuild of equal bytes.
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        let keep = entries
            .get(&state.client)
            .is_none_or(|b| b.manifest_version <= built.manifest_version);
        if keep {
            entries.insert(state.client.clone(), Arc::clone(&built));
        }
        Ok(Some(built))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DesiredDeployment;
    use flate2::read::GzDecoder;
    use margo_schemas::ids::DeploymentId;
    use margo_schemas::messages::Ack;
    use std::io::Read;

    fn state(ids: &[&str]) -> DesiredState {
        DesiredState {
            client: ClientId::new("c1").unwrap(),
            manifest_version: 7,
            deployments: ids
                .iter()
                .map(|id| {
                    let yaml = format!("id: {id}\n").into_bytes();
                    DesiredDeployment {
                        id: DeploymentId::new(*id).unwrap(),
                        digest: Digest::of(&yaml),
                        yaml,
                    }
                })
                .collect(),
            ack: Ack {
                acked_seq: 0,
                manifest_version: 7,
                instance: None,
            },
        }
    }

    #[test]
    fn same_state_same_bytes_and_exact_contents() {
        let a = build(&state(&["b", "a"])).unwrap();
        let b = build(&state(&["b", "a"])).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.digest, Digest::of(&a.bytes));
        // gzip header: mtime 0.
        assert_eq!(&a.bytes[4..8], &[0, 0, 0, 0]);
        let mut tar_bytes = Vec::new();
        GzDecoder::new(&a.bytes[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!(h.mode().unwrap(), 0o644);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.username().unwrap(), Some(""));
            let name = entry.path().unwrap().display().to_string();
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.push((name, body));
        }
        assert_eq!(
            seen,
            vec![
                ("a.yaml".to_string(), "id: a\n".to_string()),
                ("b.yaml".to_string(), "id: b\n".to_string())
            ]
        );
    }

    #[test]
    fn cache_follows_the_manifest_version() {
        let cache = BundleCache::default();
        assert!(cache.get(&state(&[])).unwrap().is_none());
        let s = state(&["a"]);
        let first = cache.get(&s).unwrap().unwrap();
        let again = cache.get(&s).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let mut newer = state(&["a", "b"]);
        newer.manifest_version = 8;
        let next = cache.get(&newer).unwrap().unwrap();
        assert_ne!(next.digest, first.digest);
    }
}
