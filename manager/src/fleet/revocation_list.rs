//! The fleet CA's certificate revocation list, for brokers the manager does
//! not run (issue 12, finding 6). The embedded gateway learns of a
//! revocation directly ([`margo_broker::Revocations`]); an external broker
//! checks client certificates against this file instead (Mosquitto:
//! `crlfile`, reloaded on `SIGHUP`; docs/external-broker.md).
//!
//! Written at every manager start and after every revocation: the whole
//! list from the store (every revoked client's certificate), signed by the
//! fleet CA, replaced atomically so a broker reloading at any moment reads
//! either the old list or the new one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::ca::{CaError, FleetPki};
use crate::store::Store;

use super::{Fleet, FleetError, FleetResult};

/// The file name in the PKI directory.
pub const CRL_FILE: &str = "revoked.crl";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The serial numbers and revocation times of every revoked client's
/// certificate.
fn revoked_serials(store: &Store) -> FleetResult<Vec<(Vec<u8>, u64)>> {
    let mut out = Vec::new();
    for client in store.clients()? {
        if !client.record.revoked {
            continue;
        }
        let (_, cert) =
            x509_parser::parse_x509_certificate(&client.record.cert_der).map_err(|e| {
                FleetError::Pki(CaError::Device(format!(
                    "client {}: its stored certificate does not parse: {e}",
                    client.id
                )))
            })?;
        let when = client.record.revoked_ms.unwrap_or(client.record.created_ms);
        out.push((cert.tbs_certificate.raw_serial().to_vec(), when));
    }
    Ok(out)
}

/// Writes `pem` to `path` through a temporary file and a rename; mode 0644
/// (a CRL is public, and the broker may run as another user).
fn replace(path: &Path, pem: &str) -> Result<(), CaError> {
    let tmp = path.with_extension("crl.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(pem.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Builds and writes the list for `store` to `path`; how many entries it has.
pub fn write(store: &Store, pki: &FleetPki, path: &Path) -> FleetResult<usize> {
    let revoked = revoked_serials(store)?;
    let now = store.clock().now_ms();
    let pem = pki.revocation_list_pem(&revoked, now, now)?;
    replace(path, &pem)?;
    Ok(revoked.len())
}

impl Fleet {
    /// Writes the revocation list ([`CRL_FILE`] in the PKI directory) from
    /// the store; how many certificates it names.
    pub async fn write_revocation_list(&self) -> FleetResult<usize> {
        let fleet = self.clone();
        tokio::task::spawn_blocking(move || {
            write(
                &fleet.inner.store,
                &fleet.inner.pki,
                &fleet.inner.pki.paths().dir.join(CRL_FILE),
            )
        })
        .await
        .map_err(|e| FleetError::Task(e.to_string()))?
    }
}
