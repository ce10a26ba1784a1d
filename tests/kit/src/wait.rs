//! Waits that fail with a clear message instead of hanging. Every wait takes
//! its limit from the caller; each test crate names its default (`WAIT`).

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};

/// How often [`eventually`] and [`eventually_async`] look again.
const POLL: Duration = Duration::from_millis(20);
/// How often [`try_eventually`] looks again (its checks talk to processes).
const TRY_POLL: Duration = Duration::from_millis(100);

/// Awaits `fut`, or panics naming `what` after `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}

/// Polls `cond` every 20 ms until it holds, or panics naming `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    eventually_async(limit, what, async || cond()).await
}

/// Like [`eventually`] for a condition that has to await (a store query, an
/// admin call).
pub async fn eventually_async(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    within(limit, what, async {
        while !cond().await {
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// Polls `check` every 100 ms until it yields `Some`; after `limit`, an error
/// naming `what` and the last error `check` returned. For tests that return
/// `anyhow::Result` and checks that can fail while a process starts.
pub async fn try_eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => {
                    anyhow!("timed out after {limit:?} waiting for {what}; last error: {e:#}")
                }
                None => anyhow!("timed out after {limit:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(TRY_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let n = AtomicU32::new(0);
        eventually(Duration::from_secs(5), "three looks", || {
            n.fetch_add(1, Ordering::Relaxed) == 2
        })
        .await;
        assert_eq!(n.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for: never")]
    async fn eventually_panics_with_what_it_waited_for() {
        eventually(Duration::from_millis(100), "never", || false).await;
    }

    #[tokio::test]
    async fn try_eventually_reports_the_last_error() {
        let err = try_eventually(Duration::from_millis(100), "a port", || async {
            Err::<Option<()>, _>(anyhow!("refused"))
        })
        .await
        .expect_err("times out");
        let text = format!("{err:#}");
        assert!(
            text.contains("waiting for a port") && text.contains("refused"),
            "{text}"
        );
    }
}
