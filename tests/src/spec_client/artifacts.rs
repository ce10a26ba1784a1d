//! The desired-state artifacts as `desired-state.md` defines them.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

/// "A digest has the form `algorithm:encoded`, where both parts are
/// lowercase ... The required algorithm is `sha256`, and the encoded portion
/// is a 64-character lowercase hexadecimal string" ("Protocol - Digest").
pub fn digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
    )
}

/// Media type of the state manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.margo.manifest.v1+json";
/// Media type of the bundle.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.margo.bundle.v1+tar+gzip";

/// The regular files of a bundle ("a gzip-compressed tar archive ... whose
/// root contains one or more `ApplicationDeployment` YAML files"), by
/// path; at most 16 MiB unpacked.
pub fn unpack_bundle(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut archive = tar::Archive::new(gz.take(16 << 20));
    let mut files = BTreeMap::new();
    for entry in archive.entries().context("bundle is not a tar.gz")? {
        let mut entry = entry.context("bundle entry")?;
        if !entry.header().entry_type().is_file() {
            bail!("bundle holds a non-file entry {:?}", entry.path()?);
        }
        let name = entry.path().context("entry path")?.display().to_string();
        let mut body = Vec::new();
        entry.read_to_end(&mut body).context("read entry")?;
        if files.insert(name.clone(), body).is_some() {
            bail!("bundle holds {name} twice");
        }
    }
    Ok(files)
}
