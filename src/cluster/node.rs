//! The NATS I/O of cluster mode: everything here talks to NATS; the decisions are the
//! pure functions of [`super::lease`] and [`super::frame`].
//!
//! Names (prefix `name` = `[cluster] name`):
//! - core subjects `<name>.d.<partition>`: delta frames, collector → detectors;
//! - stream `<name>_events` (`<name>.events`), replicated, de-duplicated by
//!   `Nats-Msg-Id`: attack events, detectors (and hook endpoints) → controller;
//! - KV `<name>_leases` (TTL `lease_ttl_ms`): `member.<node>` heartbeats,
//!   `part.<p>` partition leases, `controller` the controller lease;
//! - KV `<name>_state` (no TTL): `controller`, the controller's state, written only
//!   with compare-and-set on its revision.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame;
use super::lease::{self, Lifecycle, Member, SecondBook};

use super::{ClusterConfig, Role};
use crate::aggregate::{HostDelta, HostKey};
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::mitigate::state::{PersistedState, StateStore};
use crate::mitigate::MitigationHandle;
use crate::model::{AttackEvent, Direction, EventKind};
use crate::pipeline::Pipeline;

/// What `GET /api/v1/cluster` shows; every task writes its part.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ClusterStatus {
    pub node_id: String,
    pub roles: Vec<String>,
    pub members: Vec<Member>,
    /// Partition → detector holding its lease.
    pub partition_owners: BTreeMap<u16, String>,
    /// Partitions this node holds.
    pub owned_partitions: Vec<u16>,
    /// The node holding the controller lease, if any.
    pub controller_leader: Option<String>,
    pub fenced: bool,
    /// This node's config hash, and the live members whose hash differs (their delta
    /// frames are refused).
    pub config_hash: u64,
    pub config_mismatch: Vec<String>,
}

#[derive(Default)]
pub struct ClusterView {
    pub status: Mutex<ClusterStatus>,
    /// The running mitigation worker's state, while this node leads.
    pub mitigation: Mutex<Option<MitigationHandle>>,
}

/// `GET /api/v1/cluster`.
pub fn router(view: Arc<ClusterView>) -> axum::Router {
    axum::Router::new().route(
        "/api/v1/cluster",
        axum::routing::get(move || {
            let v = view.clone();
            async move { axum::Json(v.status.lock().clone()) }
        }),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("NATS: {0}")]
    Nats(String),
}

fn nats<E: std::fmt::Display>(e: E) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

/// The controller's record in the state bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ControllerState {
    lifecycle: Lifecycle,
    /// The mitigation planner's state file content as of the last write.
    mitigation: PersistedState,
    /// Who wrote it (for operators).
    writer: String,
    /// The leader's term (node and controller lease revision at its win): a write whose
    /// reply was lost is recognised as this term's own, not another leader's.
    #[serde(default)]
    term: String,
}

/// Why the state could not be written.
#[derive(Debug)]
enum WriteError {
    /// Another leader wrote it: this node is deposed for good.
    Deposed(String),
    /// No answer (NATS down, quorum lost): nothing may change until it is written.
    Unavailable(String),
}

/// The controller's record and its revision. Every write of it goes through here, one
/// at a time (the event loop's and the mitigation lanes' barrier), so each one's
/// compare-and-set expects the revision of the one before.
struct StateCell {
    cur: tokio::sync::Mutex<(ControllerState, Option<u64>)>,
    /// The running worker, for the mitigation part (taken under the lock, so a later
    /// write never carries an older planner state than an earlier one).
    handle: std::sync::OnceLock<MitigationHandle>,
}

impl StateCell {
    async fn write(
        &self,
        ctx: &Ctx,
        fallback: Option<PersistedState>,
        f: impl FnOnce(&mut ControllerState),
    ) -> Result<(), WriteError> {
        let mut g = self.cur.lock().await;
        f(&mut g.0);
        if let Some(h) = self.handle.get() {
            g.0.mitigation = h.snapshot();
        } else if let Some(m) = fallback {
            g.0.mitigation = m;
        }
        g.0.writer = ctx.node.clone();
        let body = Bytes::from(
            serde_json::to_vec(&g.0).map_err(|e| WriteError::Unavailable(e.to_string()))?,
        );
        let put = match g.1 {
            Some(r) => ctx.state.update("controller", body, r).await.map_err(nats),
            None => ctx.state.create("controller", body).await.map_err(nats),
        };
        let err = match put {
            Ok(r) => {
                g.1 = Some(r);
                return Ok(());
            }
            Err(e) => e.to_string(),
        };
        ctx.metrics
            .cluster
            .publish_errors
            .with_label_values(&["state"])
            .inc();
        // A refused compare-and-set: someone else's write, or this term's own whose reply
        // was lost (then its revision is taken and the next write goes on from there).
        match live_entry(&ctx.state, "controller").await {
            Ok(Some(e)) if Some(e.revision) != g.1 => {
                match serde_json::from_slice::<ControllerState>(&e.value) {
                    Ok(other) if other.term == g.0.term => {
                        g.1 = Some(e.revision);
                        Err(WriteError::Unavailable(err))
                    }
                    Ok(other) => Err(WriteError::Deposed(format!(
                        "state written by {} (term {})",
                        other.writer, other.term
                    ))),
                    Err(_) => Err(WriteError::Deposed("state overwritten".into())),
                }
            }
            _ => Err(WriteError::Unavailable(err)),
        }
    }
}

struct Ctx {
    cfg: ClusterConfig,
    /// `[aggregate] window_seconds`.
    window_seconds: u32,
    node: String,
    hash: u64,
    client: async_nats::Client,
    js: jetstream::Context,
    leases: kv::Store,
    state: kv::Store,
    metrics: Arc<Metrics>,
    view: Arc<ClusterView>,
    /// The live members as of the last good read of the leases bucket, and when that
    /// read started.
    members: Mutex<(Vec<Member>, i64)>,
    /// The leader's last state write found no answer (its MITIGATOR calls wait).
    state_unwritable: std::sync::atomic::AtomicBool,
    /// Attack events on their way to the stream, in order (see [`run_outbox`]).
    outbox: mpsc::Sender<AttackEvent>,
    clock: Clock,
}

/// Attack events a node holds while the stream does not take them (NATS down).
const OUTBOX: usize = 10_000;

/// See [`Ctx::lease_tick`].
const LEASE_RETRY: Duration = Duration::from_millis(250);

impl Ctx {
    fn ttl_ms(&self) -> i64 {
        self.cfg.lease_ttl_ms as i64
    }
    fn interval(&self) -> Duration {
        Duration::from_millis(self.cfg.heartbeat_interval_ms)
    }
    /// How often a lease loop looks again: renewals go every interval, but a lease this
    /// node wants and another holds (a dead node's, until its key expires) is tried
    /// this often, so a takeover waits for the expiry and not for the next round.
    fn lease_tick(&self) -> Duration {
        self.interval().min(LEASE_RETRY)
    }
    fn live_with(&self, role: Role, now_ms: i64) -> Vec<Member> {
        let m = self.members.lock();
        let at = lease::judged_at(now_ms, m.1, self.cfg.heartbeat_interval_ms as i64);
        lease::live(&m.0, at, self.ttl_ms())
            .filter(|m| m.has(role.as_str()))
            .cloned()
            .collect()
    }
    fn events_subject(&self) -> String {
        format!("{}.events", self.cfg.name)
    }
}

/// Connects, creates the streams and buckets, and starts this node's roles. `events`
/// carries attack events made on this node outside the detector role (hook claims):
/// they go to the event stream too.
pub async fn start(
    cfg: &Config,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    events: mpsc::Receiver<AttackEvent>,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
    clock: Clock,
) -> anyhow::Result<Arc<ClusterView>> {
    let Some(c) = cfg.cluster.clone() else {
        anyhow::bail!("no [cluster] section");
    };
    let addrs = c
        .nats_urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(nats)?;
    let client = async_nats::ConnectOptions::new()
        .name(format!("flowguard-{}", c.node_id))
        .retry_on_initial_connect()
        .connect(addrs)
        .await
        .map_err(nats)?;
    // Requests to a stream that has no leader (after a NATS server loss, until the others
    // elect one) get no answer at all: a short timeout lets the caller retry on its next
    // tick instead of waiting async-nats' default 5 s per request. Two heartbeat
    // intervals, at least 1 s: loopback or LAN answers take milliseconds.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(
            (2 * c.heartbeat_interval_ms).max(1000),
        ))
        .build(client.clone());
    let replicas = c.replicas.min(c.nats_urls.len()).max(1);
    // The JetStream cluster may still be electing its meta leader: retry for a while.
    let mut tries = 0;
    let (leases, state) = loop {
        match setup(&js, &c, replicas).await {
            Ok(x) => break x,
            Err(e) if tries < 60 => {
                tries += 1;
                tracing::info!(error = %e, "cluster streams not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let view = Arc::new(ClusterView::default());
    {
        let mut s = view.status.lock();
        s.node_id = c.node_id.clone();
        s.roles = c.roles.iter().map(|r| r.as_str().to_string()).collect();
        s.config_hash = super::config_hash(cfg);
    }
    let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
    let ctx = Arc::new(Ctx {
        outbox,
        window_seconds: cfg.aggregate.window_seconds,
        state_unwritable: Default::default(),
        node: c.node_id.clone(),
        hash: super::config_hash(cfg),
        cfg: c.clone(),
        client,
        js,
        leases,
        state,
        metrics,
        view: view.clone(),
        members: Mutex::new((Vec::new(), clock.now_ms())),
        clock: clock.clone(),
    });
    // Membership first, so the first frames of this node are not from an unknown node.
    heartbeat_once(&ctx).await;
    tasks.spawn(run_heartbeat(ctx.clone(), shutdown.clone()));
    tasks.spawn(run_outbox(ctx.clone(), outbox_rx, shutdown.clone()));
    tasks.spawn(run_local_events(ctx.clone(), events, shutdown.clone()));
    if c.has(Role::Collector) {
        tasks.spawn(run_collector(
            ctx.clone(),
            pipeline.clone(),
            shutdown.clone(),
        ));
    }
    if c.has(Role::Detector) {
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        tasks.spawn(run_partition_leases(
            ctx.clone(),
            pipeline.clone(),
            owned.clone(),
            shutdown.clone(),
        ));
        let sub = ctx
            .client
            .subscribe(format!("{}.d.>", c.name))
            .await
            .map_err(nats)?;
        tasks.spawn(run_detector(
            ctx.clone(),
            pipeline.clone(),
            owned,
            sub,
            shutdown.clone(),
        ));
    }
    let setup = crate::mitigate::Setup {
        mitigator: cfg.mitigator.clone(),
        bgp: cfg.bgp.clone(),
        protected: cfg.protected_prefixes()?,
        clock,
    };
    tasks.spawn(run_controller_lease(
        ctx.clone(),
        c.has(Role::Controller)
            .then_some((setup, cfg.state.dir.clone())),
        shutdown,
    ));
    tracing::info!(node = %c.node_id, roles = ?c.roles, "cluster node started");
    Ok(view)
}

async fn setup(
    js: &jetstream::Context,
    c: &ClusterConfig,
    replicas: usize,
) -> Result<(kv::Store, kv::Store), ClusterError> {
    let leases = open_bucket(
        js,
        &format!("{}_leases", c.name),
        Duration::from_millis(c.lease_ttl_ms),
        replicas,
    )
    .await?;
    let state = open_bucket(js, &format!("{}_state", c.name), Duration::ZERO, replicas).await?;
    js.get_or_create_stream(stream::Config {
        name: format!("{}_events", c.name),
        subjects: vec![format!("{}.events", c.name)],
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        max_age: Duration::from_secs(86_400),
        max_messages: 1_000_000,
        ..Default::default()
    })
    .await
    .map_err(nats)?;
    Ok((leases, state))
}

/// Opens bucket `name`, creating its stream first if needed. The stream is made here
/// rather than with `create_key_value`, which first reads the account info in a form
/// NATS 2.9 does not send (it lacks the `reserved_*` fields async-nats 0.51 requires);
/// the stream settings are the ones `create_key_value` would use.
async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    if let Ok(s) = js.get_key_value(name).await {
        return Ok(s);
    }
    let cfg = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_messages: -1,
        max_message_size: -1,
        max_age: ttl,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    // Another node may create it meanwhile: an identical config is accepted.
    if let Err(e) = js.create_stream(cfg).await {
        tracing::debug!(error = %e, bucket = name, "bucket stream create");
    }
    js.get_key_value(name).await.map_err(nats)
}

/// The value of `key` if its latest operation is a put.
async fn live_entry(store: &kv::Store, key: &str) -> Result<Option<kv::Entry>, ClusterError> {
    Ok(store
        .entry(key)
        .await
        .map_err(nats)?
        .filter(|e| e.operation == kv::Operation::Put))
}

async fn heartbeat_once(ctx: &Ctx) {
    put_heartbeat(ctx).await;
    read_leases(ctx).await;
}

/// Writes this node's membership (on its own timer: a slow read of the bucket must not
/// delay it past the TTL).
async fn put_heartbeat(ctx: &Ctx) {
    let now = ctx.clock.now_ms();
    let me = Member {
        node_id: ctx.node.clone(),
        roles: ctx
            .cfg
            .roles
            .iter()
            .map(|r| r.as_str().to_string())
            .collect(),
        heartbeat_ms: now,
        config_hash: ctx.hash,
    };
    let body = serde_json::to_vec(&me).unwrap_or_default();
    if let Err(e) = ctx
        .leases
        .put(format!("member.{}", ctx.node), Bytes::from(body))
        .await
    {
        ctx.metrics
            .cluster
            .publish_errors
            .with_label_values(&["heartbeat"])
            .inc();
        tracing::warn!(error = %e, "cluster heartbeat failed");
    }
}

/// Reads everyone's membership (first, judged live as of its read) and then the lease
/// holders, for this node's roles and the API.
///
/// A read that fails (the listing, or any member's entry) leaves the members as they were
/// with the time of their read, so liveness is judged as of then ([`lease::judged_at`]).
async fn read_leases(ctx: &Ctx) {
    let started = ctx.clock.now_ms();
    let Ok(mut keys) = ctx.leases.keys().await else {
        return;
    };
    let mut members = Vec::new();
    let mut owners = BTreeMap::new();
    let mut leader = None;
    let mut names = Vec::new();
    while let Some(k) = keys.next().await {
        match k {
            Ok(k) => names.push(k),
            // A listing cut short is not a membership: keep the last good one.
            Err(_) => return,
        }
    }
    // A listing taken while keys are written can name a key twice (seen: a member listed
    // twice in the API's members).
    names.sort();
    names.dedup();
    // Members first: their liveness is what the other roles act on.
    names.sort_by_key(|k| !k.starts_with("member."));
    let mut members_done = false;
    let mut members_failed = false;
    // Lease keys whose read failed: the view keeps what it last read for them rather than
    // report no owner (a CI run saw a leading node's API name no leader; an unanswered
    // read of the key is one way that happens).
    let mut unread = Vec::new();
    let publish = |members: &[Member], failed: bool| {
        if failed {
            return;
        }
        let now = ctx.clock.now_ms();
        let live: Vec<Member> = lease::live(members, now, ctx.ttl_ms()).cloned().collect();
        *ctx.members.lock() = (live, started);
    };
    for k in names {
        if !members_done && !k.starts_with("member.") {
            members_done = true;
            publish(&members, members_failed);
        }
        let e = match live_entry(&ctx.leases, &k).await {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(_) => {
                members_failed |= !members_done;
                if members_done {
                    unread.push(k);
                }
                continue;
            }
        };
        if k.starts_with("member.") {
            if let Ok(m) = serde_json::from_slice::<Member>(&e.value) {
                members.push(m);
            }
        } else if let Some(p) = k.strip_prefix("part.") {
            if let Ok(p) = p.parse::<u16>() {
                owners.insert(p, String::from_utf8_lossy(&e.value).into_owned());
            }
        } else if k == "controller" {
            leader = Some(String::from_utf8_lossy(&e.value).into_owned());
        }
    }
    if !members_done {
        publish(&members, members_failed);
    }
    let mut live = ctx.members.lock().0.clone();
    live.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let mismatch = config_mismatch(&live, ctx.hash);
    let mut s = ctx.view.status.lock();
    for k in &unread {
        if let Some(p) = k.strip_prefix("part.").and_then(|p| p.parse::<u16>().ok()) {
            if let Some(o) = s.partition_owners.get(&p) {
                owners.entry(p).or_insert_with(|| o.clone());
            }
        } else if k == "controller" && leader.is_none() {
            leader = s.controller_leader.clone();
        }
    }
    if mismatch != s.config_mismatch && !mismatch.is_empty() {
        tracing::warn!(nodes = ?mismatch, "cluster members with another config hash: their frames are refused");
    }
    s.config_mismatch = mismatch;
    s.members = live;
    s.partition_owners = owners;
    s.controller_leader = leader;
}

async fn run_heartbeat(ctx: Arc<Ctx>, stop: CancellationToken) {
    let reader = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tokio::spawn(async move {
            let mut t = tokio::time::interval(ctx.interval());
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = t.tick() => read_leases(&ctx).await,
                }
            }
        })
    };
    let mut t = tokio::time::interval(ctx.interval());
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = t.tick() => put_heartbeat(&ctx).await,
        }
    }
    let _ = reader.await;
    let _ = ctx.leases.delete(format!("member.{}", ctx.node)).await;
}

/// Publishes an attack event to the stream, de-duplicated by its id, kind and time (a
/// retried publish whose ack was lost is stored once).
async fn publish_event(ctx: &Ctx, ev: &AttackEvent) -> Result<(), ClusterError> {
    let body = serde_json::to_vec(ev).map_err(nats)?;
    let msg_id = format!(
        "{}:{}:{}:{}",
        ctx.node,
        ev.id,
        kind_str(ev.event),
        ev.time_ms
    );
    let mut h = async_nats::HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
    let ack = ctx
        .js
        .publish_with_headers(ctx.events_subject(), h, Bytes::from(body))
        .await
        .map_err(nats)?;
    ack.await.map(|_| ()).map_err(nats)
}

/// Queues an attack event for the stream; a full queue drops it, counted.
fn send_event(ctx: &Ctx, ev: AttackEvent) {
    if ctx.outbox.try_send(ev).is_err() {
        ctx.metrics
            .cluster
            .publish_errors
            .with_label_values(&["events_dropped"])
            .inc();
        tracing::error!("attack event outbox full: event dropped");
    }
}

/// Publishes the queued attack events in order, each until the stream takes it: an end
/// made while NATS is down (quorum lost) reaches the controller once it is back, not
/// never. The message id makes a retry whose first ack was lost one event.
async fn run_outbox(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<AttackEvent>, stop: CancellationToken) {
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => {
                // Shutting down: what is queued (the last pass's events) gets one try
                // each, within a bounded time.
                let until = tokio::time::Instant::now() + Duration::from_secs(2);
                while let Ok(ev) = rx.try_recv() {
                    if tokio::time::timeout_at(until, publish_event(&ctx, &ev)).await.is_err() {
                        break;
                    }
                }
                break;
            }
            ev = rx.recv() => match ev { Some(e) => e, None => break },
        };
        let mut attempt = 0u32;
        loop {
            match publish_event(&ctx, &ev).await {
                Ok(()) => {
                    if attempt > 0 {
                        tracing::info!(attack = %ev.id, attempts = attempt + 1, "attack event published after retries");
                    }
                    break;
                }
                Err(e) => {
                    ctx.metrics
                        .cluster
                        .publish_errors
                        .with_label_values(&["events"])
                        .inc();
                    if attempt == 0 {
                        tracing::warn!(error = %e, attack = %ev.id, queued = rx.len(), "attack event publish failed; retrying until the stream takes it");
                    }
                    attempt = attempt.saturating_add(1);
                    let d = Duration::from_millis((100u64 << attempt.min(4)).min(1000));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
    }
}

async fn run_local_events(
    ctx: Arc<Ctx>,
    mut rx: mpsc::Receiver<AttackEvent>,
    stop: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = rx.recv() => match ev { Some(e) => e, None => break },
        };
        send_event(&ctx, ev);
    }
}

/// Collector role: once a second, the deltas of every second that ended, as frames.
async fn run_collector(ctx: Arc<Ctx>, pipeline: Arc<Pipeline>, stop: CancellationToken) {
    let mut next_sec: Option<u32> = None;
    loop {
        let now = ctx.clock.now_ms();
        // A little after the boundary: the last records of the second are in.
        let at = (now / 1000 + 1) * 1000 + 20;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis((at - now).max(1) as u64)) => {}
        }
        let cur = (ctx.clock.now_ms() / 1000) as u32;
        let deltas = pipeline.drain_deltas(cur);
        let mut by_sec: BTreeMap<u32, Vec<HostDelta>> = BTreeMap::new();
        for d in deltas {
            by_sec.entry(d.sec).or_default().push(d);
        }
        // Every second since the last one sent, an idle one too (an empty frame). A
        // second sent already (records placed back by a clock step) goes again; the
        // detector applies it as late.
        let first = next_sec.unwrap_or(cur.saturating_sub(1));
        for sec in first..cur {
            by_sec.entry(sec).or_default();
        }
        for (sec, ds) in by_sec {
            let p = ctx.cfg.partitions;
            let frames = frame::encode_second(
                &ctx.node,
                ctx.hash,
                sec,
                &ds,
                |k| lease::partition_of(k.ip, p),
                ctx.cfg.max_frame_bytes,
            );
            for (part, f) in frames {
                let subject = format!("{}.d.{part}", ctx.cfg.name);
                match ctx.client.publish(subject, Bytes::from(f)).await {
                    Ok(()) => ctx.metrics.cluster.frames_published.inc(),
                    Err(e) => {
                        ctx.metrics
                            .cluster
                            .publish_errors
                            .with_label_values(&["deltas"])
                            .inc();
                        tracing::warn!(error = %e, "delta frame publish failed");
                    }
                }
            }
        }
        next_sec = Some(cur);
    }
}

/// A delta frame the detector merges: decoded, from a live collector with this node's
/// config hash. Anything else is counted by reason and dropped.
fn admit_frame(
    payload: &[u8],
    live_collectors: &[Member],
    hash: u64,
    metrics: &Metrics,
) -> Option<frame::Frame> {
    let fr = frame::decode(payload).and_then(|f| {
        frame::check_sender(
            &f.header,
            |n| {
                live_collectors
                    .iter()
                    .find(|m| m.node_id == n)
                    .map(|m| m.config_hash)
            },
            hash,
        )
        .map(|()| f)
    });
    match fr {
        Ok(f) => {
            metrics.cluster.frames_merged.inc();
            Some(f)
        }
        Err(e) => {
            metrics
                .cluster
                .bad_frames
                .with_label_values(&[e.reason()])
                .inc();
            tracing::debug!(error = %e, "delta frame dropped");
            None
        }
    }
}

/// The live members whose config hash differs from `hash` (their frames are refused).
fn config_mismatch(live: &[Member], hash: u64) -> Vec<String> {
    live.iter()
        .filter(|m| m.config_hash != hash)
        .map(|m| m.node_id.clone())
        .collect()
}

/// Detector role: merges every live collector's frames into the host table, closes
/// seconds, runs detection over the owned partitions and publishes the events.
async fn run_detector(
    ctx: Arc<Ctx>,
    pipeline: Arc<Pipeline>,
    owned: Arc<Mutex<BTreeSet<u16>>>,
    mut sub: async_nats::Subscriber,
    stop: CancellationToken,
) {
    let mut book = SecondBook::default();
    // Long enough for the averages to climb back over the threshold once the missing
    // collector's traffic is in again (three windows), and a margin.
    let mut guard = lease::GapGuard::new(3 * ctx.window_seconds + 2);
    let mut held: BTreeMap<u32, Vec<HostDelta>> = BTreeMap::new();
    // Collectors whose frames were admitted, with when the last one came (see
    // lease::merged_collectors); bounded by the members ever admitted, pruned below.
    let mut heard: HashMap<String, (Member, i64)> = HashMap::new();
    let mut t = tokio::time::interval(Duration::from_millis(50));
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let m = &ctx.metrics.cluster;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                let now = ctx.clock.now_ms();
                let live = lease::merged_collectors(
                    ctx.live_with(Role::Collector, now),
                    &heard,
                    now,
                    ctx.ttl_ms(),
                );
                let Some(f) = admit_frame(&msg.payload, &live, ctx.hash, &ctx.metrics) else {
                    continue;
                };
                if let Some(m) = live.iter().find(|m| m.node_id == f.header.node) {
                    heard.insert(m.node_id.clone(), (m.clone(), now));
                }
                if book.note(&f.header.node, f.header.sec, f.header.total) {
                    held.entry(f.header.sec).or_default().extend(f.deltas);
                } else {
                    // Its second is merged: applied now, with the decay of its age.
                    m.late_frames.inc();
                    pipeline.apply_deltas(&f.deltas);
                }
            }
            _ = t.tick() => {}
        }
        let now = ctx.clock.now_ms();
        heard.retain(|_, (_, last)| now - *last < ctx.ttl_ms());
        let live: BTreeSet<String> = lease::merged_collectors(
            ctx.live_with(Role::Collector, now),
            &heard,
            now,
            ctx.ttl_ms(),
        )
        .into_iter()
        .map(|m| m.node_id)
        .collect();
        while let Some(sec) = book.closable(&live, now, ctx.cfg.merge_wait_ms as i64) {
            if guard.merged(sec, &book.senders(sec)) {
                m.gap_seconds.inc();
            }
            book.close(sec);
            let deltas = held.remove(&sec).unwrap_or_default();
            held.retain(|s, _| *s > sec);
            let end_ms = (i64::from(sec) + 1) * 1000;
            m.merge_lag_seconds
                .observe((now - end_ms).max(0) as f64 / 1000.0);
            let owned_now = owned.lock().clone();
            let p = ctx.cfg.partitions;
            let pl = pipeline.clone();
            let events = tokio::task::spawn_blocking(move || {
                pl.apply_deltas(&deltas);
                pl.tick_owned(end_ms, |k: &HostKey| {
                    owned_now.contains(&lease::partition_of(k.ip, p))
                })
            })
            .await
            .unwrap_or_default();
            let events = guard.filter(sec, events);
            for ev in &events {
                if ev.event != EventKind::Update || ev.is_change() {
                    tracing::info!(attack = %ev.id, ip = %ev.ip, event = kind_str(ev.event), "cluster attack event");
                }
                send_event(&ctx, ev.clone());
            }
        }
    }
}

/// Detector role: holds the leases of the partitions rendezvous hashing gives this node
/// among the live detectors; adopts the active attacks of partitions it takes over.
async fn run_partition_leases(
    ctx: Arc<Ctx>,
    pipeline: Arc<Pipeline>,
    owned: Arc<Mutex<BTreeSet<u16>>>,
    stop: CancellationToken,
) {
    let mut t = tokio::time::interval(ctx.lease_tick());
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interval_ms = ctx.cfg.heartbeat_interval_ms as i64;
    // Revision of each lease this node holds, and when its last good renewal was sent.
    let mut held: BTreeMap<u16, (u64, i64)> = BTreeMap::new();
    // Unanswered renewals are ridden out this long (NATS 2.9 elects a stream leader in
    // 4–9 s; see lease::keep_partition).
    let hold_ms = (3 * ctx.ttl_ms()).max(12_000);
    let mut first_round = true;
    let m = &ctx.metrics.cluster;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = t.tick() => {}
        }
        let now = ctx.clock.now_ms();
        let detectors = ctx.live_with(Role::Detector, now);
        let names: Vec<&str> = detectors.iter().map(|m| m.node_id.as_str()).collect();
        let mut gained = Vec::new();
        let (mut lost, mut last_error) = (Vec::new(), String::new());
        for p in 0..ctx.cfg.partitions {
            let key = format!("part.{p}");
            let mine = lease::rendezvous(p, &names) == Some(ctx.node.as_str());
            let body = Bytes::from(ctx.node.clone());
            let sent = ctx.clock.now_ms();
            match (mine, held.get(&p).copied()) {
                // Renewed every interval, not every tick.
                (true, Some((_, renewed))) if sent - renewed < interval_ms => {}
                (true, Some((rev, renewed))) => match ctx.leases.update(&key, body, rev).await {
                    Ok(r) => {
                        held.insert(p, (r, sent));
                    }
                    Err(e) => {
                        let refused = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                        if lease::keep_partition(refused, renewed, ctx.clock.now_ms(), hold_ms) {
                            tracing::debug!(partition = p, error = %e, "partition lease renewal unanswered; kept");
                            continue;
                        }
                        // Refused because the key is gone (it outlived its TTL while the
                        // bucket had no leader) rather than taken: take it again at once,
                        // so the partition's detection goes on without a handover.
                        if refused {
                            let body = Bytes::from(ctx.node.clone());
                            if let Ok(r) = ctx.leases.create(&key, body).await {
                                held.insert(p, (r, sent));
                                continue;
                            }
                        }
                        lost.push(p);
                        last_error = e.to_string();
                        held.remove(&p);
                        m.lease_changes.with_label_values(&["partition"]).inc();
                    }
                },
                (true, None) => {
                    // Free (never held, or expired: its holder is gone) → take it.
                    if let Ok(r) = ctx.leases.create(&key, body).await {
                        held.insert(p, (r, sent));
                        gained.push(p);
                        m.lease_changes.with_label_values(&["partition"]).inc();
                    }
                }
                (false, Some((rev, _))) => {
                    // Rendezvous gives it to another live detector: let it go.
                    let _ = ctx.leases.delete_expect_revision(&key, Some(rev)).await;
                    held.remove(&p);
                    m.lease_changes.with_label_values(&["partition"]).inc();
                }
                (false, None) => {}
            }
        }
        if !lost.is_empty() {
            tracing::warn!(partitions = ?lost, error = %last_error, "partition leases lost");
        }
        let set: BTreeSet<u16> = held.keys().copied().collect();
        m.partitions_owned.set(set.len() as i64);
        ctx.view.status.lock().owned_partitions = set.iter().copied().collect();
        *owned.lock() = set;
        if !gained.is_empty() && !first_round {
            m.cold_takeovers.inc_by(gained.len() as u64);
        }
        if !gained.is_empty() {
            // Its hosts are looked at on the next pass, traffic or not: a flood that
            // stopped during the handover still gets its start (or its adopted end).
            let p = ctx.cfg.partitions;
            pipeline.revisit_where(|k| gained.contains(&lease::partition_of(k.ip, p)));
            // Attacks the controller knows in the partitions just taken: continued here
            // (with their ids), so they end here, once.
            if let Ok(Some(e)) = live_entry(&ctx.state, "controller").await {
                if let Ok(st) = serde_json::from_slice::<ControllerState>(&e.value) {
                    let p = ctx.cfg.partitions;
                    for ev in st.lifecycle.active.values() {
                        if gained.contains(&lease::partition_of(ev.ip, p))
                            && pipeline.adopt(ev, now)
                        {
                            tracing::info!(attack = %ev.id, ip = %ev.ip, "attack adopted with its partition");
                        }
                    }
                }
            }
        }
        first_round = false;
    }
}

/// Every node watches the controller lease (the API names the leader); a controller
/// node campaigns for it and, while it holds it, runs [`lead`].
async fn run_controller_lease(
    ctx: Arc<Ctx>,
    controller: Option<(crate::mitigate::Setup, std::path::PathBuf)>,
    stop: CancellationToken,
) {
    let Some((setup, dir)) = controller else {
        return;
    };
    let mut t = tokio::time::interval(ctx.lease_tick());
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interval_ms = ctx.cfg.heartbeat_interval_ms as i64;
    let m = &ctx.metrics.cluster;
    let renewed = Arc::new(Mutex::new(None::<i64>));
    let mut rev: Option<u64> = None;
    let mut leading: Option<CancellationToken> = None;
    // The leases bucket did not answer the last write (NATS down, quorum lost).
    let mut unreachable = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = t.tick() => {}
        }
        // A term that ended by itself (deposed, or an error): the next renewal starts a
        // new one from the state bucket.
        if leading.as_ref().is_some_and(|t| t.is_cancelled()) {
            leading = None;
        }
        // The leader renews every interval (at once when its term ended, to start the
        // next); a standby tries every tick.
        let due = rev.is_none()
            || leading.is_none()
            || !renewed
                .lock()
                .is_some_and(|r| ctx.clock.now_ms() - r < interval_ms);
        if !due {
            continue;
        }
        let body = Bytes::from(ctx.node.clone());
        // Err((another node holds it, error)).
        let r: Result<u64, (bool, String)> = match rev {
            Some(r) => match ctx.leases.update("controller", body, r).await {
                Ok(r) => Ok(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // This node's own renewal whose reply was lost, or another's lease.
                    own_controller_key(&ctx)
                        .await
                        .ok_or_else(|| (true, e.to_string()))
                }
                Err(e) => Err((false, e.to_string())),
            },
            None => match ctx.leases.create("controller", body).await {
                Ok(r) => Ok(r),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Still this node's own key (it stepped down on a late renewal and
                    // nobody took it since): take it back by its revision rather than
                    // leave the cluster without a leader until the key expires.
                    match own_controller_key(&ctx).await {
                        Some(rev) => ctx
                            .leases
                            .update("controller", Bytes::from(ctx.node.clone()), rev)
                            .await
                            .map_err(|e| (true, e.to_string())),
                        None => Err((true, e.to_string())),
                    }
                }
                Err(e) => Err((false, e.to_string())),
            },
        };
        let now = ctx.clock.now_ms();
        match r {
            Ok(new_rev) => {
                if unreachable {
                    tracing::info!("leases bucket answers again: controller resumes");
                    unreachable = false;
                }
                rev = Some(new_rev);
                *renewed.lock() = Some(now);
                if leading.is_none() {
                    tracing::info!(node = %ctx.node, "controller lease won: leading");
                    m.lease_changes.with_label_values(&["controller"]).inc();
                    let tok = stop.child_token();
                    leading = Some(tok.clone());
                    tokio::spawn(lead(
                        ctx.clone(),
                        setup.clone(),
                        dir.clone(),
                        renewed.clone(),
                        format!("{}:{new_rev}", ctx.node),
                        tok,
                    ));
                }
            }
            Err((held, e)) => {
                if !held && !unreachable {
                    tracing::error!(error = %e, "controller lease cannot be written (NATS unreachable or JetStream quorum lost): MITIGATOR frozen as it is, no switch either way until NATS answers");
                } else if held && rev.is_some() {
                    tracing::warn!(error = %e, "controller lease taken by another node");
                }
                unreachable = !held;
                // Fenced until the lease is fresh again; deposed once it is not (another
                // node may hold it after the TTL) or another node holds it now.
                if held || !lease::lease_fresh(*renewed.lock(), now, ctx.ttl_ms()) {
                    if let Some(tok) = leading.take() {
                        tracing::warn!("controller lease lost: stepping down");
                        m.lease_changes.with_label_values(&["controller"]).inc();
                        tok.cancel();
                    }
                    rev = None;
                    *renewed.lock() = None;
                }
            }
        }
        let stale = leading.is_some() && !lease::lease_fresh(*renewed.lock(), now, ctx.ttl_ms());
        let fenced = unreachable
            || stale
            || (leading.is_some() && ctx.state_unwritable.load(Ordering::Relaxed));
        m.fenced.set(i64::from(fenced));
        m.controller_leader.set(i64::from(leading.is_some()));
        ctx.view.status.lock().fenced = fenced;
    }
    if let Some(tok) = leading.take() {
        tok.cancel();
    }
    if rev.is_some() {
        let _ = ctx.leases.delete("controller").await;
    }
}

/// The revision of the controller lease key if it names this node.
async fn own_controller_key(ctx: &Ctx) -> Option<u64> {
    match live_entry(&ctx.leases, "controller").await {
        Ok(Some(en)) if en.value.as_ref() == ctx.node.as_bytes() => Some(en.revision),
        _ => None,
    }
}

/// An ordered reader of the event stream from the event after `last_seq`.
async fn event_reader(
    ctx: &Ctx,
    last_seq: u64,
) -> anyhow::Result<jetstream::consumer::pull::Ordered> {
    let stream = ctx
        .js
        .get_stream(format!("{}_events", ctx.cfg.name))
        .await?;
    let deliver = if last_seq == 0 {
        jetstream::consumer::DeliverPolicy::All
    } else {
        jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: last_seq + 1,
        }
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: ctx.events_subject(),
            deliver_policy: deliver,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// The active controller: loads the state, starts the mitigation worker from it
/// (which reconciles MITIGATOR), then applies the event stream in order, writing the
/// state with compare-and-set before each event reaches mitigation.
async fn lead(
    ctx: Arc<Ctx>,
    setup: crate::mitigate::Setup,
    dir: std::path::PathBuf,
    renewed: Arc<Mutex<Option<i64>>>,
    term: String,
    stop: CancellationToken,
) {
    if let Err(e) = lead_inner(&ctx, setup, dir, renewed, term, stop.clone()).await {
        tracing::error!(error = %e, "controller stopped");
    }
    *ctx.view.mitigation.lock() = None;
    ctx.state_unwritable.store(false, Ordering::Relaxed);
    stop.cancel();
}

/// The barrier every MITIGATOR (and BGP) write of this term waits for: the lease is
/// fresh and the state, with the resource about to be switched on already owned, is in
/// the replicated bucket. A leader killed after the call leaves a state that says it owns
/// the switch, so the next one switches it off when the attack ends; one killed before
/// the call leaves one that says it wants it, so the next one switches it on.
fn write_barrier(
    ctx: &Arc<Ctx>,
    cell: &Arc<StateCell>,
    renewed: &Arc<Mutex<Option<i64>>>,
    stop: &CancellationToken,
) -> crate::mitigate::backend::WriteBarrier {
    let (ctx, cell, renewed, stop) = (ctx.clone(), cell.clone(), renewed.clone(), stop.clone());
    Arc::new(move |snap: PersistedState| {
        let (ctx, cell, renewed, stop) = (ctx.clone(), cell.clone(), renewed.clone(), stop.clone());
        Box::pin(async move {
            let fresh = || lease::lease_fresh(*renewed.lock(), ctx.clock.now_ms(), ctx.ttl_ms());
            if !fresh() {
                return Err("controller lease not fresh: fenced, MITIGATOR left as it is".into());
            }
            match cell.write(&ctx, Some(snap), |_| {}).await {
                Ok(()) => ctx.state_unwritable.store(false, Ordering::Relaxed),
                Err(WriteError::Deposed(e)) => {
                    stop.cancel();
                    return Err(format!("deposed ({e}): no call"));
                }
                Err(WriteError::Unavailable(e)) => {
                    ctx.state_unwritable.store(true, Ordering::Relaxed);
                    return Err(format!(
                        "state bucket not writable ({e}): MITIGATOR frozen as it is"
                    ));
                }
            }
            // The write may have taken a while: the lease must still be fresh for the call.
            if !fresh() {
                return Err("controller lease not fresh: fenced, MITIGATOR left as it is".into());
            }
            Ok(())
        })
    })
}

async fn lead_inner(
    ctx: &Arc<Ctx>,
    setup: crate::mitigate::Setup,
    dir: std::path::PathBuf,
    renewed: Arc<Mutex<Option<i64>>>,
    term: String,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (mut st, rev) = match live_entry(&ctx.state, "controller").await? {
        Some(e) => (
            serde_json::from_slice::<ControllerState>(&e.value)?,
            Some(e.revision),
        ),
        None => (ControllerState::default(), None),
    };
    tracing::info!(
        active = st.lifecycle.active.len(),
        restored_attacks = st.mitigation.attacks.len(),
        owned_switches = st.mitigation.owned.len(),
        last_seq = st.lifecycle.last_seq,
        previous_writer = %st.writer,
        previous_term = %st.term,
        term = %term,
        "controller state loaded"
    );
    st.term = term;
    let mut lifecycle = st.lifecycle.clone();
    let restored_state = st.mitigation.clone();
    // The worker restores (and reconciles against MITIGATOR) what the state bucket says,
    // not whatever this node's file held from an earlier term.
    StateStore::new(&dir).save(&st.mitigation)?;
    let cell = Arc::new(StateCell {
        cur: tokio::sync::Mutex::new((st, rev)),
        handle: std::sync::OnceLock::new(),
    });
    // The term's first write claims the record: from here a deposed leader's write (and
    // so its next MITIGATOR call) fails.
    loop {
        match cell.write(ctx, None, |_| {}).await {
            Ok(()) => break,
            Err(WriteError::Deposed(e)) => anyhow::bail!("state taken by another leader: {e}"),
            Err(WriteError::Unavailable(e)) => {
                tracing::warn!(error = %e, "controller state not writable yet; MITIGATOR left as it is");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(ctx.interval()) => {}
                }
            }
        }
    }
    let (tx, rx) = mpsc::channel::<AttackEvent>(crate::mitigate::EVENT_QUEUE);
    let (handle, join) = crate::mitigate::spawn_guarded(
        setup,
        dir,
        ctx.metrics.clone(),
        rx,
        stop.clone(),
        Some(write_barrier(ctx, &cell, &renewed, &stop)),
    )?;
    let _ = cell.handle.set(handle.clone());
    *ctx.view.mitigation.lock() = Some(handle.clone());
    // The lifecycle is the truth: attacks it has renew their restored mitigation (a
    // start that never reached MITIGATOR before the old leader died is made now), and
    // restored ones it no longer has end (an end the old leader wrote but did not apply).
    let restored: BTreeSet<String> = restored_state
        .attacks
        .iter()
        .map(|a| a.id.clone())
        .collect();
    let live_ids: BTreeSet<String> = lifecycle.active.values().map(|a| a.id.clone()).collect();
    for ev in lifecycle.active.values() {
        let mut s = ev.clone();
        s.event = EventKind::Start;
        tx.send(s).await.ok();
    }
    for a in restored_state
        .attacks
        .iter()
        .filter(|a| !live_ids.contains(&a.id))
    {
        tx.send(end_of(&a.id, a.ip, ctx.clock.now_ms())).await.ok();
    }
    tracing::info!(
        renewed = live_ids.len(),
        ended = restored.difference(&live_ids).count(),
        "controller reconciled"
    );

    // The event stream may still be electing its leader (a NATS server loss): retry the
    // reader within this term rather than end the term and restart mitigation.
    let mut msgs = loop {
        match event_reader(ctx, lifecycle.last_seq).await {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!(error = %e, "event stream not readable yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(ctx.interval()) => {}
                }
            }
        }
    };
    let mut t = tokio::time::interval(ctx.interval());
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The event applied to the lifecycle but not yet handed to mitigation: held (and no
    // further event read) until the state saying so is written and the lease is fresh.
    let mut out: Option<AttackEvent> = None;
    let mut frozen = false;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            _ = t.tick() => None,
            msg = msgs.next(), if out.is_none() => match msg {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "event stream read failed");
                    None
                }
                None => break,
            },
        };
        if let Some(msg) = msg {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            match serde_json::from_slice::<AttackEvent>(&msg.payload) {
                Ok(ev) => out = lifecycle.apply(seq, ev),
                Err(e) => {
                    tracing::warn!(error = %e, seq, "unreadable attack event skipped");
                    lifecycle.last_seq = lifecycle.last_seq.max(seq);
                }
            }
        }
        // Compare-and-set: a deposed leader's write fails here, before any REST call.
        let lc = lifecycle.clone();
        match cell.write(ctx, None, move |s| s.lifecycle = lc).await {
            Ok(()) => {
                if frozen {
                    tracing::info!("controller state writable again: resuming");
                    frozen = false;
                }
                ctx.state_unwritable.store(false, Ordering::Relaxed);
            }
            Err(WriteError::Deposed(e)) => {
                anyhow::bail!("controller state write refused ({e}): deposed")
            }
            Err(WriteError::Unavailable(e)) => {
                if !frozen {
                    tracing::error!(error = %e, "controller state not writable (NATS quorum lost?): MITIGATOR frozen as it is until it is");
                }
                frozen = true;
                ctx.state_unwritable.store(true, Ordering::Relaxed);
                continue;
            }
        }
        if let Some(ev) = out.take() {
            if !lease::lease_fresh(*renewed.lock(), ctx.clock.now_ms(), ctx.ttl_ms()) {
                // Fenced: the state says what should happen; this term (once the lease is
                // fresh) or the next leader (from the state) applies it.
                out = Some(ev);
                continue;
            }
            tracing::info!(attack = %ev.id, ip = %ev.ip, event = kind_str(ev.event), "controller applies attack event");
            if tx.send(ev).await.is_err() {
                anyhow::bail!("mitigation worker gone");
            }
        }
    }
    drop(tx);
    stop.cancel();
    let _ = join.await;
    Ok(())
}

fn end_of(id: &str, ip: std::net::IpAddr, now_ms: i64) -> AttackEvent {
    AttackEvent {
        event: EventKind::End,
        id: id.to_string(),
        ip,
        direction: Direction::Incoming,
        attack_type: crate::model::AttackType::Unknown,
        protocol: crate::model::Protocol::Unknown,
        time_ms: now_ms,
        pps: 0,
        bps: 0,
        flows_per_second: 0,
        peak_pps: 0,
        hostgroup: String::new(),
        top_sources: Vec::new(),
        vectors: Vec::new(),
        previous_attack_type: None,
        new_vectors: Vec::new(),
    }
}

fn kind_str(k: EventKind) -> &'static str {
    match k {
        EventKind::Start => "start",
        EventKind::Update => "update",
        EventKind::End => "end",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Counters;

    fn member(id: &str, hash: u64) -> Member {
        Member {
            node_id: id.into(),
            roles: vec!["collector".into()],
            heartbeat_ms: 0,
            config_hash: hash,
        }
    }

    fn frame_of(node: &str, hash: u64) -> Vec<u8> {
        let d = HostDelta {
            key: HostKey {
                ip: "127.16.0.10".parse().unwrap(),
                dir: Direction::Incoming,
            },
            group: 0,
            sec: 1_800_000_000,
            counters: Counters {
                packets: 6000,
                bytes: 3_000_000,
                ..Counters::default()
            },
        };
        frame::encode_second(node, hash, 1_800_000_000, &[d], |_| 0, 1 << 20)
            .remove(0)
            .1
    }

    fn bad(m: &Metrics, reason: &str) -> u64 {
        m.cluster.bad_frames.with_label_values(&[reason]).get()
    }

    #[test]
    fn bad_frames_are_counted_by_reason_and_dropped() {
        let m = Metrics::new();
        let live = [member("A", 7), member("B", 8)];
        let good = frame_of("A", 7);
        let f = admit_frame(&good, &live, 7, &m).expect("a good frame is merged");
        assert_eq!(f.deltas.len(), 1);
        assert_eq!(m.cluster.frames_merged.get(), 1);

        let mut v9 = good.clone();
        v9[2] = 9;
        assert!(admit_frame(&v9, &live, 7, &m).is_none());
        assert!(admit_frame(&good[..good.len() - 3], &live, 7, &m).is_none());
        assert!(admit_frame(&good[..10], &live, 7, &m).is_none());
        assert!(admit_frame(&frame_of("Z", 7), &live, 7, &m).is_none());
        assert!(admit_frame(&frame_of("B", 8), &live, 7, &m).is_none());
        assert!(admit_frame(b"GET / HTTP/1.1", &live, 7, &m).is_none());
        assert_eq!(
            (
                bad(&m, "version"),
                bad(&m, "truncated"),
                bad(&m, "unknown_node"),
                bad(&m, "config_hash"),
                bad(&m, "magic"),
            ),
            (1, 2, 1, 1, 1)
        );
        assert_eq!(m.cluster.frames_merged.get(), 1, "nothing bad was merged");
    }

    #[test]
    fn members_with_another_config_hash_are_reported() {
        let live = [member("A", 7), member("B", 8), member("C", 7)];
        assert_eq!(config_mismatch(&live, 7), vec!["B".to_string()]);
        assert!(config_mismatch(&live[..1], 7).is_empty());
    }

    #[test]
    fn another_config_gives_another_hash() {
        let base = "[networks]\nprotected = [\"127.16.0.0/16\"]\n[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\nnode_id = \"A\"\nroles = [\"collector\"]\n";
        let a = crate::config::Config::from_toml_str(base).unwrap();
        // Another node name and roles: the same hash (they need not agree).
        let b = crate::config::Config::from_toml_str(
            &base
                .replace("\"A\"", "\"B\"")
                .replace("\"collector\"", "\"detector\""),
        )
        .unwrap();
        assert_eq!(super::super::config_hash(&a), super::super::config_hash(&b));
        // Other partitions or other protected networks: another hash.
        let c = crate::config::Config::from_toml_str(&format!("{base}partitions = 32\n")).unwrap();
        let d = crate::config::Config::from_toml_str(&base.replace("/16", "/24")).unwrap();
        assert_ne!(super::super::config_hash(&a), super::super::config_hash(&c));
        assert_ne!(super::super::config_hash(&a), super::super::config_hash(&d));
    }
}
