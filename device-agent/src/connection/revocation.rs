//! Telling a revocation from other connection errors.

use rumqttc::{ConnectReturnCode, ConnectionError, TlsError};
use rustls::AlertDescription;

/// Whether `error` means the gateway refuses this device's identity:
/// CONNACK "not authorized" or "bad user name or password", or a TLS alert
/// "certificate revoked" / "certificate unknown" (TLS 1.3 reports a refused
/// client certificate on the first read, so it can arrive as an I/O error).
pub fn is_revocation(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::ConnectionRefused(code) => matches!(
            code,
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
        ),
        ConnectionError::Tls(TlsError::TLS(e)) => is_revoked_alert(e),
        ConnectionError::Tls(TlsError::Io(e)) | ConnectionError::Io(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(is_revoked_alert),
        _ => false,
    }
}

fn is_revoked_alert(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRevoked | AlertDescription::CertificateUnknown
        )
    )
}
