//! Reading a deployment bundle of the Margo HTTP API (`GET .../bundles/{digest}`):
//! a gzip-compressed tar holding one `<deploymentId>.yaml` per deployment at
//! the archive root (see `docs/http-api.md`).
//!
//! [`decode`] trusts nothing in the archive. It reads at most
//! `limits.max_total` unpacked bytes and `limits.max_entry` bytes per entry
//! (sizes are checked against the header before anything is read, and the
//! gzip stream is read through a bounded reader), and refuses: anything but
//! regular files (the root directory entry `./` is skipped); names not at
//! the archive root (no paths, no `..`, no links); entries whose bytes are
//! not a listed document (matched by digest: the specification names no
//! file names; ours are `<id>.yaml`); duplicates; and a missing listed
//! deployment. A listed document that does not parse comes back as
//! unusable (it fails alone), not as a refusal of the bundle.

use std::collections::BTreeMap;
use std::io::Read;

use margo_schemas::deployment::{ApplicationDeployment, VerifiedParseError};
use margo_schemas::digest::Digest;
use margo_schemas::ids::DeploymentId;
use margo_schemas::manifest::MAX_DEPLOYMENTS;

/// Size bounds of one bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    /// Most bytes of one entry.
    pub max_entry: usize,
    /// Most unpacked bytes in total (entries and tar headers).
    pub max_total: usize,
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the archive is not a readable tar.gz: {0}")]
    Unreadable(String),
    #[error("the archive unpacks to more than {limit} bytes")]
    TotalTooLarge { limit: usize },
    #[error("entry {name:?} is {size} bytes, the limit is {limit}")]
    EntryTooLarge {
        name: String,
        size: u64,
        limit: usize,
    },
    #[error("entry {name:?} is not a regular file")]
    NotAFile { name: String },
    #[error("entry {name:?} is not <deploymentId>.yaml at the archive root")]
    BadName { name: String },
    #[error("entry {name:?} is not a deployment the manifest lists")]
    Unexpected { name: String },
    #[error("entry {name:?} appears twice")]
    Duplicate { name: String },
    #[error("the archive has more than {MAX_DEPLOYMENTS} entries")]
    TooManyEntries,
    #[error("deployment {0} is listed in the manifest but missing from the archive")]
    Missing(DeploymentId),
    #[error("entry for {id}: {source}")]
    Document {
        id: DeploymentId,
        source: VerifiedParseError,
    },
    #[error("entry for {id} is a document whose id is {doc_id}")]
    IdMismatch {
        id: DeploymentId,
        doc_id: DeploymentId,
    },
}

impl BundleError {
    /// Whether the archive's content disagrees with the manifest (a digest
    /// or id mismatch, an entry nobody asked for): an integrity event, as
    /// opposed to a size limit or a broken stream.
    pub fn is_integrity_event(&self) -> bool {
        matches!(
            self,
            Self::Document {
                source: VerifiedParseError::Digest(_),
                ..
            } | Self::IdMismatch { .. }
                | Self::Unexpected { .. }
                | Self::BadName { .. }
                | Self::NotAFile { .. }
                | Self::Duplicate { .. }
                | Self::Missing(_)
        )
    }
}

/// A reader that fails once more than `left` bytes were read through it.
struct Bounded<R> {
    inner: R,
    left: usize,
    exceeded: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One more byte tells "exactly at the limit" from "over it".
            let mut probe = [0u8; 1];
            let n = self.inner.read(&mut probe)?;
            if n == 0 {
                return Ok(0);
            }
            self.exceeded = true;
            return Err(std::io::Error::other("unpacked size limit exceeded"));
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n;
        Ok(n)
    }
}

/// What a bundle held: the usable documents and those whose bytes are the
/// listed ones but which the agent cannot use (id, digest, reason).
#[derive(Debug, Default)]
pub struct Decoded {
    pub usable: Vec<ApplicationDeployment>,
    pub unusable: Vec<(DeploymentId, Digest, String)>,
}

/// Unpacks and verifies `archive` against `wanted` (deployment id → the
/// digest the manifest lists). Entries are matched to deployments by the
/// digest of their bytes: the specification names no file names, only
/// "a gzip-compressed tar whose root contains one or more ApplicationDeployment
/// YAML files" and "exactly the set of YAML files referenced by deployments".
pub fn decode(
    archive: &[u8],
    wanted: &BTreeMap<DeploymentId, Digest>,
    limits: BundleLimits,
) -> Result<Decoded, BundleError> {
    let mut reader = Bounded {
        inner: flate2::read::GzDecoder::new(archive),
        left: limits.max_total,
        exceeded: false,
    };
    let mut found: BTreeMap<DeploymentId, Result<ApplicationDeployment, String>> = BTreeMap::new();
    let result = read_entries(&mut reader, wanted, limits, &mut found);
    if reader.exceeded {
        return Err(BundleError::TotalTooLarge {
            limit: limits.max_total,
        });
    }
    result?;
    for id in wanted.keys() {
        if !found.contains_key(id) {
            return Err(BundleError::Missing(id.clone()));
        }
    }
    let mut decoded = Decoded::default();
    for (id, verdict) in found {
        match verdict {
            Ok(doc) => decoded.usable.push(doc),
            Err(reason) => {
                let digest = wanted[&id];
                decoded.unusable.push((id, digest, reason));
            }
        }
    }
    Ok(decoded)
}

/// The entry's name at the archive root (a leading `./` is allowed), or `None`.
fn root_name(raw: &str) -> Option<&str> {
    let name = raw.strip_prefix("./").unwrap_or(raw);
    (!name.is_empty() && !name.contains('/') && !name.starts_with('.') && !name.contains('\\'))
        .then_some(name)
}

fn read_entries<R: Read>(
    reader: &mut Bounded<R>,
    wanted: &BTreeMap<DeploymentId, Digest>,
    limits: BundleLimits,
    found: &mut BTreeMap<DeploymentId, Result<ApplicationDeployment, String>>,
) -> Result<(), BundleError> {
    let unreadable = |e: std::io::Error| BundleError::Unreadable(e.to_string());
    let by_digest: BTreeMap<Digest, &DeploymentId> =
        wanted.iter().map(|(id, d)| (*d, id)).collect();
    let mut archive = tar::Archive::new(reader);
    let mut count = 0usize;
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        count += 1;
        if count > MAX_DEPLOYMENTS + 1 {
            return Err(BundleError::TooManyEntries);
        }
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name: String = raw_name.chars().take(200).collect();
        let kind = entry.header().entry_type();
        // `tar -C dir .` puts the root directory itself first.
        if kind == tar::EntryType::Directory && matches!(raw_name.as_str(), "./" | ".") {
            continue;
        }
        if kind != tar::EntryType::Regular {
            return Err(BundleError::NotAFile { name });
        }
        let stem =
            root_name(&raw_name).ok_or_else(|| BundleError::BadName { name: name.clone() })?;
        let size = entry.header().size().map_err(unreadable)?;
        if size > limits.max_entry as u64 {
            return Err(BundleError::EntryTooLarge {
                name,
                size,
                limit: limits.max_entry,
            });
        }
        let mut yaml = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        (&mut entry)
            .take(limits.max_entry as u64 + 1)
            .read_to_end(&mut yaml)
            .map_err(unreadable)?;
        if yaml.len() > limits.max_entry {
            return Err(BundleError::EntryTooLarge {
                name,
                size: yaml.len() as u64,
                limit: limits.max_entry,
            });
        }
        let digest = Digest::of(&yaml);
        let Some(&id) = by_digest.get(&digest) else {
            // Named after a listed deployment but with other bytes: tampering.
            let named = stem
                .strip_suffix(".yaml")
                .or_else(|| stem.strip_suffix(".yml"))
                .and_then(|s| DeploymentId::new(s).ok());
            if let Some((id, listed)) = named.and_then(|id| wanted.get_key_value(&id)) {
                return Err(BundleError::Document {
                    id: id.clone(),
                    source: VerifiedParseError::Digest(
                        margo_schemas::digest::DigestError::Mismatch {
                            expected: *listed,
                            actual: digest,
                        },
                    ),
                });
            }
            return Err(BundleError::Unexpected { name });
        };
        if found.contains_key(id) {
            return Err(BundleError::Duplicate { name });
        }
        let verdict = match ApplicationDeployment::parse(yaml) {
            Ok(doc) if doc.id != *id => {
                return Err(BundleError::IdMismatch {
                    id: id.clone(),
                    doc_id: doc.id,
                })
            }
            Ok(doc) => Ok(doc),
            Err(e) => Err(e.to_string()),
        };
        found.insert(id.clone(), verdict);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn yaml(id: &str, filler: usize) -> Vec<u8> {
        format!(
            "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
             metadata:\n  annotations:\n    id: {id}\n  name: app-{id}\n  labels:\n    pad: \"{pad}\"\n\
             spec:\n  deploymentProfile:\n    type: compose\n    components:\n      - name: web\n        properties: {{}}\n",
            pad = "x".repeat(filler)
        )
        .into_bytes()
    }

    fn id(s: &str) -> DeploymentId {
        DeploymentId::new(s).unwrap()
    }

    /// A tar.gz of `(name, bytes, type)` entries.
    fn archive(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        let mut tar = tar::Builder::new(gz);
        for (name, bytes, kind) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(*kind);
            // Bypass the builder's path checks: a hostile archive can carry any name.
            let raw = &mut header.as_old_mut().name;
            raw.fill(0);
            raw[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            tar.append(&header, *bytes).unwrap();
        }
        let mut gz = tar.into_inner().unwrap();
        gz.flush().unwrap();
        gz.finish().unwrap()
    }

    fn regular<'a>(name: &'a str, bytes: &'a [u8]) -> (&'a str, &'a [u8], tar::EntryType) {
        (name, bytes, tar::EntryType::Regular)
    }

    const LIMITS: BundleLimits = BundleLimits {
        max_entry: 64 * 1024,
        max_total: 256 * 1024,
    };

    #[test]
    fn verified_documents_come_out() {
        let (a, b) = (yaml("a", 0), yaml("b", 0));
        let bytes = archive(&[regular("a.yaml", &a), regular("b.yaml", &b)]);
        let wanted = BTreeMap::from([(id("a"), Digest::of(&a)), (id("b"), Digest::of(&b))]);
        let docs = decode(&bytes, &wanted, LIMITS).unwrap().usable;
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].bytes(), a.as_slice());
        assert_eq!(docs[1].id, id("b"));
    }

    #[test]
    fn entries_are_matched_by_digest_whatever_their_names() {
        // The specification names no file names; `tar -C dir .` adds `./`.
        let (a, b) = (yaml("a", 0), yaml("b", 0));
        let bytes = archive(&[
            ("./", &[], tar::EntryType::Directory),
            regular("./first.yml", &b),
            regular("deployment-2.yaml", &a),
        ]);
        let wanted = BTreeMap::from([(id("a"), Digest::of(&a)), (id("b"), Digest::of(&b))]);
        let docs = decode(&bytes, &wanted, LIMITS).unwrap();
        assert_eq!(docs.usable.len(), 2);
        assert!(docs.unusable.is_empty());
    }

    #[test]
    fn an_unusable_document_comes_back_alone() {
        let a = yaml("a", 0);
        let odd = String::from_utf8(yaml("b", 0))
            .unwrap()
            .replace("application.margo.org/v1alpha1", "example.com/v9")
            .into_bytes();
        let bytes = archive(&[regular("a.yaml", &a), regular("b.yaml", &odd)]);
        let wanted = BTreeMap::from([(id("a"), Digest::of(&a)), (id("b"), Digest::of(&odd))]);
        let docs = decode(&bytes, &wanted, LIMITS).unwrap();
        assert_eq!(docs.usable.len(), 1);
        assert_eq!(docs.unusable.len(), 1);
        assert_eq!(docs.unusable[0].0, id("b"));
        assert!(
            docs.unusable[0].2.contains("apiVersion"),
            "{:?}",
            docs.unusable
        );
    }

    #[test]
    fn digest_mismatch_is_an_integrity_event() {
        let (a, other) = (yaml("a", 0), yaml("a", 3));
        let bytes = archive(&[regular("a.yaml", &other)]);
        let wanted = BTreeMap::from([(id("a"), Digest::of(&a))]);
        let err = decode(&bytes, &wanted, LIMITS).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::Document {
                    source: VerifiedParseError::Digest(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_integrity_event());
    }

    #[test]
    fn names_types_duplicates_and_gaps_are_refused() {
        let a = yaml("a", 0);
        let wanted = BTreeMap::from([(id("a"), Digest::of(&a))]);
        type Entry<'a> = (&'a str, &'a [u8], tar::EntryType);
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (vec![regular("../a.yaml", &a)], "BadName"),
            (vec![regular("dir/a.yaml", &a)], "BadName"),
            (vec![regular("/a.yaml", &a)], "BadName"),
            (vec![regular(".a.yaml", &a)], "BadName"),
            (
                vec![regular("a.yaml", &a), regular("b.yaml", b"other")],
                "Unexpected",
            ),
            (
                vec![regular("a.yaml", &a), regular("b.yaml", &a)],
                "Duplicate",
            ),
            (
                vec![regular("a.yaml", &a), regular("a.yaml", &a)],
                "Duplicate",
            ),
            (vec![("a.yaml", &a, tar::EntryType::Symlink)], "NotAFile"),
            (vec![("a.yaml", &[], tar::EntryType::Directory)], "NotAFile"),
            (vec![], "Missing"),
        ];
        for (entries, want) in cases {
            let err = decode(&archive(&entries), &wanted, LIMITS).unwrap_err();
            let got = format!("{err:?}");
            assert!(
                got.starts_with(want),
                "{entries:?}: expected {want}, got {got}"
            );
            assert!(err.is_integrity_event(), "{got}");
        }
    }

    #[test]
    fn size_limits_hold() {
        let big = yaml("a", 10_000);
        let wanted = BTreeMap::from([(id("a"), Digest::of(&big))]);
        let bytes = archive(&[regular("a.yaml", &big)]);
        let tight_entry = BundleLimits {
            max_entry: 1024,
            max_total: 1 << 20,
        };
        assert!(matches!(
            decode(&bytes, &wanted, tight_entry),
            Err(BundleError::EntryTooLarge { .. })
        ));
        let tight_total = BundleLimits {
            max_entry: 1 << 20,
            max_total: 4096,
        };
        assert!(matches!(
            decode(&bytes, &wanted, tight_total),
            Err(BundleError::TotalTooLarge { .. })
        ));
        // A bomb: an entry declaring 8 MiB of zeros compresses to almost
        // nothing; its header size is refused before anything is read.
        let zeros = vec![0u8; 8 << 20];
        let bomb = archive(&[regular("a.yaml", &zeros)]);
        assert!(bomb.len() < 64 * 1024);
        let err = decode(&bomb, &wanted, LIMITS).unwrap_err();
        assert!(matches!(err, BundleError::EntryTooLarge { .. }), "{err}");
        assert!(!err.is_integrity_event());
        assert!(decode(&bytes, &wanted, LIMITS).is_ok());
    }

    #[test]
    fn garbage_is_unreadable_not_a_panic() {
        let wanted = BTreeMap::from([(id("a"), Digest::of(b"a"))]);
        for garbage in [&b""[..], b"not gzip at all", &[0x1f, 0x8b, 8, 0, 0, 0]] {
            assert!(decode(garbage, &wanted, LIMITS).is_err());
        }
    }
}
