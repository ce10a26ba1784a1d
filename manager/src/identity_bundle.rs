//! Writes an identity bundle (`margo_schemas::identity` layout) to a directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use margo_schemas::identity::{
    IdentityIndex, CA_FILE, CERT_FILE, IDENTITY_VERSION, INDEX_FILE, KEY_FILE,
    MANAGER_SIGNING_CERT_FILE,
};

use crate::admin::ProvisionedBundle;

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A bundle file already exists; nothing was written.
    #[error("{0} already exists; refusing to overwrite an identity bundle")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `identity.toml` could not be encoded.
    #[error("identity.toml: {0}")]
    Encode(#[from] toml::ser::Error),
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BundleError::Exists(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
    file.write_all(data).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io)
}

/// Writes `bundle` into `dir` (created if missing): `identity.toml`,
/// `client.key` (0600), `client.crt`, `ca.crt`, `manager-signing.crt`.
/// Refuses if any of these files exists already.
pub fn write_bundle(dir: &Path, bundle: &ProvisionedBundle) -> Result<(), BundleError> {
    let names = [
        INDEX_FILE,
        KEY_FILE,
        CERT_FILE,
        CA_FILE,
        MANAGER_SIGNING_CERT_FILE,
    ];
    if let Some(existing) = names.iter().map(|n| dir.join(n)).find(|p| p.exists()) {
        return Err(BundleError::Exists(existing));
    }
    // 0700, and every parent created with it: nobody else may swap a
    // certificate in (an existing directory keeps its mode).
    margo_schemas::private_fs::create_dir_all(dir).map_err(|source| BundleError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let index = toml::to_string(&IdentityIndex {
        version: IDENTITY_VERSION,
        client_id: bundle.client_id.clone(),
        name: bundle.name.clone(),
        broker_url: bundle.broker_url.clone(),
    })?;
    // The key first: if anything fails later the bundle is visibly incomplete
    // (no identity.toml), never an index pointing at missing files.
    write_new(&dir.join(KEY_FILE), bundle.key_pem.as_bytes(), 0o600)?;
    write_new(&dir.join(CERT_FILE), bundle.cert_pem.as_bytes(), 0o644)?;
    write_new(&dir.join(CA_FILE), bundle.ca_pem.as_bytes(), 0o644)?;
    write_new(
        &dir.join(MANAGER_SIGNING_CERT_FILE),
        bundle.signing_cert_pem.as_bytes(),
        0o644,
    )?;
    write_new(&dir.join(INDEX_FILE), index.as_bytes(), 0o644)?;
    Ok(())
}
