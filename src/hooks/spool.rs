//! The spool: events the hook could not hand to the service, kept on disk until it can.
//!
//! Layout: one JSON [`ExternalEvent`] per file in `<[state] dir>/spool/`, named
//! `<unix nanos>-<pid>-<counter>.json` so that name order is arrival order (a `ban`
//! spooled before its `unban` is delivered first). Files are written to a dot-named temp
//! file and renamed, so the drainer never sees half an event. The service deletes a file
//! only after its event was accepted into the queue; a file it cannot read as an event is
//! renamed to `*.bad` (kept for a person to look at) and counted.
//!
//! The spool is bounded ([`MAX_SPOOL_FILES`]): past that the hook fails loudly instead of
//! filling the disk while nobody drains it.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::ExternalEvent;
use super::HookError;
use crate::metrics::Metrics;

/// Events the spool may hold before the hook refuses to add more.
pub const MAX_SPOOL_FILES: usize = 10_000;
/// A spool file larger than this is not one of ours.
pub const MAX_SPOOL_FILE_BYTES: u64 = 1024 * 1024;
/// How often the service looks at the spool.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(2);

/// `<state dir>/spool`.
pub fn spool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("spool")
}

fn is_event_file(name: &OsStr) -> bool {
    let n = name.to_string_lossy();
    !n.starts_with('.') && n.ends_with(".json")
}

/// Number of events waiting (temp and `.bad` files excluded). A missing dir holds none.
pub fn pending(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| is_event_file(&e.file_name()))
                .count()
        })
        .unwrap_or(0)
}

/// Writes `ev` into the spool at `dir` (created if missing); at most [`MAX_SPOOL_FILES`].
pub fn spool_event(dir: &Path, ev: &ExternalEvent) -> Result<PathBuf, HookError> {
    spool_event_bounded(dir, ev, MAX_SPOOL_FILES)
}

/// [`spool_event`] with an explicit bound.
pub fn spool_event_bounded(
    dir: &Path,
    ev: &ExternalEvent,
    max_files: usize,
) -> Result<PathBuf, HookError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HookError::Spool { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let count = pending(dir);
    if count >= max_files {
        return Err(HookError::SpoolFull {
            path: dir.to_path_buf(),
            count,
        });
    }
    let body = serde_json::to_vec(ev)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Fixed widths keep lexical order equal to numeric order.
    let name = format!("{nanos:020}-{:010}-{n:06}.json", std::process::id());
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(&name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(&body)?;
        // The event must survive a crash right after we told FastNetMon it was handled.
        f.sync_all()?;
        std::fs::rename(&tmp, &dst)?;
        // Persist the rename too; failing to open a dir for fsync is not worth failing for.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&dst)(e));
    }
    Ok(dst)
}

/// Hands spooled events to `tx` in arrival order, deleting each file once its event is
/// queued. Stops at the first full (or closed) queue, leaving the rest for the next pass.
/// Returns how many events were delivered.
pub async fn drain_spool(dir: &Path, tx: &mpsc::Sender<ExternalEvent>, metrics: &Metrics) -> usize {
    let mut names = Vec::new();
    match tokio::fs::read_dir(dir).await {
        Ok(mut rd) => {
            // Bounded by the spool's own bound (plus what arrives while we list).
            while let Ok(Some(e)) = rd.next_entry().await {
                if is_event_file(&e.file_name()) {
                    names.push(e.path());
                }
                if names.len() > MAX_SPOOL_FILES * 2 {
                    break;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the hook spool");
            return 0;
        }
    }
    names.sort();
    let mut delivered = 0;
    for path in names {
        let ev = match read_event(&path).await {
            Ok(ev) => ev,
            Err(ReadError::Gone) => continue,
            Err(ReadError::Bad(why)) => {
                let mut bad = path.clone().into_os_string();
                bad.push(".bad");
                let moved = tokio::fs::rename(&path, &bad).await;
                tracing::warn!(file = %path.display(), reason = %why, moved = moved.is_ok(),
                    "malformed hook spool file set aside as .bad");
                metrics
                    .hook_events
                    .with_label_values(&["unknown", "spool_bad"])
                    .inc();
                continue;
            }
        };
        let action = ev.action.as_str();
        let summary = ev.summary();
        match tx.try_send(ev) {
            Ok(()) => {
                // Queued: the file has done its job. If the delete fails the event would be
                // delivered twice; say so, the detect stage treats a repeated ban as an update.
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    tracing::warn!(file = %path.display(), error = %e,
                        "spooled event queued but its file could not be deleted");
                }
                metrics
                    .hook_events
                    .with_label_values(&[action, "spool_delivered"])
                    .inc();
                tracing::info!(event = %summary, "delivered spooled hook event");
                delivered += 1;
            }
            Err(mpsc::error::TrySendError::Full(_)) | Err(mpsc::error::TrySendError::Closed(_)) => {
                break;
            }
        }
    }
    delivered
}

enum ReadError {
    /// Deleted between listing and reading (another drainer); not a problem.
    Gone,
    Bad(String),
}

async fn read_event(path: &Path) -> Result<ExternalEvent, ReadError> {
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Gone),
        Err(e) => return Err(ReadError::Bad(e.to_string())),
    };
    if meta.len() > MAX_SPOOL_FILE_BYTES {
        return Err(ReadError::Bad(format!("{} bytes is too large", meta.len())));
    }
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Gone),
        Err(e) => return Err(ReadError::Bad(e.to_string())),
    };
    serde_json::from_slice(&bytes).map_err(|e| ReadError::Bad(e.to_string()))
}

/// Drains the spool now and every [`DRAIN_INTERVAL`] until `shutdown`.
pub async fn run_spool_drainer(
    dir: PathBuf,
    tx: mpsc::Sender<ExternalEvent>,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    run_spool_drainer_every(dir, tx, metrics, shutdown, DRAIN_INTERVAL).await
}

/// [`run_spool_drainer`] with an explicit interval.
pub async fn run_spool_drainer_every(
    dir: PathBuf,
    tx: mpsc::Sender<ExternalEvent>,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
    interval: Duration,
) {
    // Created by the service, so the service owns the directory and can always delete
    // what the hook (often running as FastNetMon's user) writes into it.
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the hook spool");
    }
    loop {
        drain_spool(&dir, &tx, &metrics).await;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookAction;
    use crate::model::Direction;

    fn ev(action: HookAction, pps: u64) -> ExternalEvent {
        ExternalEvent {
            action,
            ip: "192.0.2.7".parse().unwrap(),
            direction: Direction::Incoming,
            pps,
            attack_type: None,
            protocol: None,
            report: Some("IP: 192.0.2.7\n".into()),
            source: None,
        }
    }

    fn count(m: &Metrics, action: &str, outcome: &str) -> u64 {
        m.hook_events.with_label_values(&[action, outcome]).get()
    }

    #[tokio::test]
    async fn spooled_events_drain_in_order_and_are_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let a = spool_event(&dir, &ev(HookAction::Ban, 1)).unwrap();
        let b = spool_event(&dir, &ev(HookAction::Unban, 2)).unwrap();
        assert!(a < b, "names sort in arrival order");
        assert_eq!(pending(&dir), 2);
        let (tx, mut rx) = mpsc::channel(8);
        let m = Metrics::new();
        assert_eq!(drain_spool(&dir, &tx, &m).await, 2);
        assert_eq!(rx.recv().await.unwrap(), ev(HookAction::Ban, 1));
        assert_eq!(rx.recv().await.unwrap(), ev(HookAction::Unban, 2));
        assert_eq!(pending(&dir), 0);
        assert!(!a.exists() && !b.exists());
        assert_eq!(count(&m, "ban", "spool_delivered"), 1);
    }

    #[tokio::test]
    async fn full_queue_leaves_files_and_bad_files_are_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("00000000000000000000-bad.json"), b"{not json").unwrap();
        std::fs::write(dir.join(".partial.tmp"), b"{").unwrap();
        for i in 0..3 {
            spool_event(&dir, &ev(HookAction::Ban, i)).unwrap();
        }
        let (tx, mut rx) = mpsc::channel(2);
        let m = Metrics::new();
        assert_eq!(drain_spool(&dir, &tx, &m).await, 2);
        assert_eq!(pending(&dir), 1, "third event waits for room");
        assert!(dir.join("00000000000000000000-bad.json.bad").exists());
        assert!(
            dir.join(".partial.tmp").exists(),
            "temp files are not touched"
        );
        assert_eq!(count(&m, "unknown", "spool_bad"), 1);
        assert_eq!(rx.recv().await.unwrap().pps, 0);
        assert_eq!(rx.recv().await.unwrap().pps, 1);
        assert_eq!(drain_spool(&dir, &tx, &m).await, 1);
        assert_eq!(rx.recv().await.unwrap().pps, 2);
        assert_eq!(pending(&dir), 0);
    }

    #[test]
    fn spool_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..3 {
            spool_event_bounded(tmp.path(), &ev(HookAction::Ban, i), 3).unwrap();
        }
        let err = spool_event_bounded(tmp.path(), &ev(HookAction::Ban, 9), 3).unwrap_err();
        assert!(
            matches!(err, HookError::SpoolFull { count: 3, .. }),
            "{err}"
        );
        assert_eq!(pending(tmp.path()), 3);
    }

    #[test]
    fn unwritable_spool_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            spool_event(&file.join("spool"), &ev(HookAction::Ban, 1)),
            Err(HookError::Spool { .. })
        ));
    }

    /// On paused time: the intervals and the 5 s limit are tokio's, so the test takes
    /// as long as the file work does, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn drainer_runs_every_interval_until_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (tx, mut rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let tick = Duration::from_millis(50);
        let task = tokio::spawn(run_spool_drainer_every(
            dir.clone(),
            tx,
            std::sync::Arc::new(Metrics::new()),
            stop.clone(),
            tick,
        ));
        // Let the first (empty) pass happen, so the event below is found by a later one.
        tokio::time::sleep(tick).await;
        spool_event(&dir, &ev(HookAction::Ban, 5)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(got.unwrap().pps, 5);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
    }
}
