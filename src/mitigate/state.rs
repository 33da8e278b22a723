//! The mitigation state file: which attacks are being mitigated and which switches
//! flowguard itself switched on (and which BGP routes it announced), so that a restart (or a crash) neither forgets an active
//! mitigation nor leaves one on forever.
//!
//! Owns the file format and its atomic replacement (temp file, fsync, rename, fsync of the
//! directory), and [`StateWriter`], which does those writes on a thread of its own so that
//! no fsync runs on the async runtime's worker threads; it does not decide anything: the
//! planner reads and produces [`PersistedState`].

use std::future::Future;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use serde::{Deserialize, Serialize};

use super::route::{Route, RoutePlan};

/// File name inside `[state] dir`.
pub const FILE_NAME: &str = "mitigation.json";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a mitigation state file: {msg}")]
    Corrupt { path: PathBuf, msg: String },
}

/// One switch: `name` is `toggle` (the policy's protection) or a countermeasure's API name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SwitchKey {
    pub policy: u32,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedAttack {
    pub id: String,
    pub ip: IpAddr,
    pub policy: u32,
    pub countermeasures: Vec<String>,
    pub started_ms: i64,
    /// Last bits/s seen (escalation by rate after a restart). Absent in files written
    /// before BGP actions existed, as are `routes`.
    #[serde(default)]
    pub bps: u64,
    /// The BGP routes the attack asks for, with their conditions.
    #[serde(default)]
    pub routes: Vec<RoutePlan>,
}

/// What survives a restart: the attacks still in force and the switches flowguard owns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub version: u32,
    pub attacks: Vec<PersistedAttack>,
    /// Switches flowguard switched on (or is about to): only these are ever switched off.
    pub owned: Vec<SwitchKey>,
    /// BGP routes flowguard announced (or is about to): only these are ever withdrawn.
    #[serde(default)]
    pub owned_routes: Vec<Route>,
}

/// The state file of one state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> StateStore {
        StateStore { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The saved state; `None` when there is no file yet.
    pub fn load(&self) -> Result<Option<PersistedState>, StateError> {
        let path = self.path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let st: PersistedState =
            serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                msg: e.to_string(),
            })?;
        if st.version != VERSION {
            return Err(StateError::Corrupt {
                path,
                msg: format!("version {} (expected {VERSION})", st.version),
            });
        }
        Ok(Some(st))
    }

    /// Moves an unreadable file aside (keeping it for the operator) and returns where.
    pub fn quarantine(&self, now_ms: i64) -> Result<PathBuf, StateError> {
        let to = self.dir.join(format!("{FILE_NAME}.corrupt-{now_ms}"));
        std::fs::rename(self.path(), &to).map_err(|source| StateError::Io {
            path: self.path(),
            source,
        })?;
        Ok(to)
    }

    /// Replaces the file atomically: a reader (or a restart after a crash) sees either the
    /// old or the new content, never a torn one.
    pub fn save(&self, st: &PersistedState) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let mut st = st.clone();
        st.version = VERSION;
        let body = serde_json::to_vec_pretty(&st).map_err(|e| StateError::Corrupt {
            path: self.path(),
            msg: e.to_string(),
        })?;
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&body).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, self.path()).map_err(io(&tmp))?;
        // The rename itself must reach the disk too, or a power loss could bring back the
        // old file.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Saves [`PersistedState`]s through a [`StateStore`] on a dedicated thread
/// (`flowguard-state`): the temp-file write and the two fsyncs block that thread, never a
/// runtime worker. One slot, not a queue: a snapshot still waiting is replaced by a newer
/// one (each is the whole state, so the newer supersedes it), which bounds what waits to
/// one state however fast callers submit; every caller's future resolves once a snapshot
/// at least as new as its own is on disk (or its write failed and was logged, as before:
/// a failed save never stopped mitigation).
pub struct StateWriter {
    inner: Arc<WriterInner>,
    written: tokio::sync::watch::Receiver<u64>,
    path: PathBuf,
}

struct WriterInner {
    slot: Mutex<Slot>,
    wake: Condvar,
}

#[derive(Default)]
struct Slot {
    /// Generation of the newest submission.
    submitted: u64,
    /// The newest snapshot not yet taken by the thread.
    next: Option<(u64, PersistedState)>,
    closed: bool,
}

impl StateWriter {
    pub fn spawn(store: StateStore) -> Result<StateWriter, StateError> {
        let inner = Arc::new(WriterInner {
            slot: Mutex::new(Slot::default()),
            wake: Condvar::new(),
        });
        let (tx, written) = tokio::sync::watch::channel(0u64);
        let path = store.path();
        let thread_inner = inner.clone();
        std::thread::Builder::new()
            .name("flowguard-state".into())
            .spawn(move || write_loop(&store, &thread_inner, &tx))
            .map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(StateWriter {
            inner,
            written,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands `st` to the writer thread. Cheap and synchronous, so a caller holding a lock
    /// submits snapshots in the order it took them; the returned future (which borrows
    /// nothing) resolves when `st` or a newer snapshot has been written.
    pub fn submit(&self, st: PersistedState) -> impl Future<Output = ()> + Send + 'static {
        let generation = {
            let mut slot = self.inner.slot.lock();
            slot.submitted += 1;
            let g = slot.submitted;
            slot.next = Some((g, st));
            g
        };
        self.inner.wake.notify_one();
        let mut written = self.written.clone();
        async move {
            // An Err means the thread is gone (it only exits once closed): nothing to
            // wait for any more.
            let _ = written.wait_for(|w| *w >= generation).await;
        }
    }
}

impl Drop for StateWriter {
    /// The thread writes what is still in the slot, then exits.
    fn drop(&mut self) {
        self.inner.slot.lock().closed = true;
        self.inner.wake.notify_one();
    }
}

fn write_loop(store: &StateStore, inner: &WriterInner, written: &tokio::sync::watch::Sender<u64>) {
    loop {
        let (generation, st) = {
            let mut slot = inner.slot.lock();
            loop {
                if let Some(n) = slot.next.take() {
                    break n;
                }
                if slot.closed {
                    return;
                }
                inner.wake.wait(&mut slot);
            }
        };
        if let Err(e) = store.save(&st) {
            tracing::error!(error = %e, "cannot save the mitigation state file");
        }
        written.send_replace(generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("sub"));
        assert_eq!(store.load().unwrap(), None);
        let st = PersistedState {
            version: 0,
            attacks: vec![PersistedAttack {
                id: "a1".into(),
                ip: "192.0.2.1".parse().unwrap(),
                policy: 3,
                countermeasures: vec!["tcp".into()],
                started_ms: 5,
                bps: 0,
                routes: Vec::new(),
            }],
            owned: vec![SwitchKey {
                policy: 3,
                name: "toggle".into(),
            }],
            owned_routes: Vec::new(),
        };
        store.save(&st).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.attacks, st.attacks);
        assert_eq!(back.owned, st.owned);
        assert_eq!(back.version, VERSION);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    fn with_attack(id: &str) -> PersistedState {
        PersistedState {
            version: 0,
            attacks: vec![PersistedAttack {
                id: id.into(),
                ip: "192.0.2.1".parse().unwrap(),
                policy: 3,
                countermeasures: vec!["tcp".into()],
                started_ms: 5,
                bps: 0,
                routes: Vec::new(),
            }],
            owned: Vec::new(),
            owned_routes: Vec::new(),
        }
    }

    /// The write happens on the writer's own thread, and awaiting a submission means
    /// that snapshot (or a newer one) is in the file.
    #[tokio::test(flavor = "current_thread")]
    async fn the_writer_saves_off_the_runtime_and_the_newest_snapshot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let w = StateWriter::spawn(store.clone()).unwrap();
        let first = w.submit(with_attack("a"));
        let second = w.submit(with_attack("b"));
        second.await;
        first.await;
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.attacks[0].id, "b");
        // The thread exists under its name while the writer lives.
        let named = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .any(|c| c.trim() == "flowguard-state");
        assert!(named, "no flowguard-state thread");
        w.submit(with_attack("c")).await;
        assert_eq!(store.load().unwrap().unwrap().attacks[0].id, "c");
    }

    /// A snapshot submitted just before the writer is dropped is still written.
    #[test]
    fn a_dropped_writer_still_writes_what_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let w = StateWriter::spawn(store.clone()).unwrap();
        drop(w.submit(with_attack("last")));
        drop(w);
        let mut ok = false;
        for _ in 0..200 {
            if let Ok(Some(st)) = store.load() {
                ok = st.attacks[0].id == "last";
                if ok {
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(ok, "the last snapshot was not written");
    }

    #[test]
    fn corrupt_file_is_reported_and_can_be_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StateError::Corrupt { .. })));
        let to = store.quarantine(42).unwrap();
        assert!(to.exists());
        assert_eq!(store.load().unwrap(), None);
    }
}
