//! The accept step every listener shares (the gateway, the read-only MQTT
//! listener, the manager's HTTPS API): stop on shutdown, and survive a
//! failed `accept` (out of file descriptors, say) with a short pause
//! instead of a busy loop or an ended listener.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Pause after a failed `accept`.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// The next accepted connection on `listener`; `None` once `shutdown` is
/// cancelled. A failed accept is logged (naming `listener_name`) and
/// retried after [`ACCEPT_ERROR_BACKOFF`].
pub async fn next(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    listener_name: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(error) => {
                    warn!(%error, listener = listener_name, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
}
