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

use std::collections::{BTreeMap, BTreeSet};
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
use crate::clock::system_now_ms;
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
}

struct Ctx {
    cfg: ClusterConfig,
    node: String,
    hash: u64,
    client: async_nats::Client,
    js: jetstream::Context,
    leases: kv::Store,
    state: kv::Store,
    metrics: Arc<Metrics>,
    view: Arc<ClusterView>,
    members: Mutex<Vec<Member>>,
}

impl Ctx {
    fn ttl_ms(&self) -> i64 {
        self.cfg.lease_ttl_ms as i64
    }
    fn interval(&self) -> Duration {
        Duration::from_millis(self.cfg.heartbeat_interval_ms)
    }
    fn live_with(&self, role: Role, now_ms: i64) -> Vec<Member> {
        let m = self.members.lock();
        lease::live(&m, now_ms, self.ttl_ms())
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
    let js = jetstream::new(client.clone());
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
    let ctx = Arc::new(Ctx {
        node: c.node_id.clone(),
        hash: super::config_hash(cfg),
        cfg: c.clone(),
        client,
        js,
        leases,
        state,
        metrics,
        view: view.clone(),
        members: Mutex::new(Vec::new()),
    });
    // Membership first, so the first frames of this node are not from an unknown node.
    heartbeat_once(&ctx).await;
    tasks.spawn(run_heartbeat(ctx.clone(), shutdown.clone()));
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
    let now = system_now_ms();
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
async fn read_leases(ctx: &Ctx) {
    // Everyone's membership and the lease holders, for this node's roles and the API.
    let Ok(mut keys) = ctx.leases.keys().await else {
        return;
    };
    let mut members = Vec::new();
    let mut owners = BTreeMap::new();
    let mut leader = None;
    let mut names = Vec::new();
    while let Some(Ok(k)) = keys.next().await {
        names.push(k);
    }
    // Members first: their liveness is what the other roles act on.
    names.sort_by_key(|k| !k.starts_with("member."));
    let mut members_done = false;
    for k in names {
        if !members_done && !k.starts_with("member.") {
            members_done = true;
            let now = system_now_ms();
            let live: Vec<Member> = lease::live(&members, now, ctx.ttl_ms()).cloned().collect();
            *ctx.members.lock() = live;
        }
        let Ok(Some(e)) = live_entry(&ctx.leases, &k).await else {
            continue;
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
        let now = system_now_ms();
        *ctx.members.lock() = lease::live(&members, now, ctx.ttl_ms()).cloned().collect();
    }
    let mut live = ctx.members.lock().clone();
    live.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let mismatch: Vec<String> = live
        .iter()
        .filter(|m| m.config_hash != ctx.hash)
        .map(|m| m.node_id.clone())
        .collect();
    let mut s = ctx.view.status.lock();
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
async fn publish_event(ctx: &Ctx, ev: &AttackEvent) {
    let Ok(body) = serde_json::to_vec(ev) else {
        return;
    };
    let msg_id = format!(
        "{}:{}:{}:{}",
        ctx.node,
        ev.id,
        kind_str(ev.event),
        ev.time_ms
    );
    for attempt in 0..3 {
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        let r = match ctx
            .js
            .publish_with_headers(ctx.events_subject(), h, Bytes::from(body.clone()))
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(nats),
            Err(e) => Err(nats(e)),
        };
        match r {
            Ok(()) => return,
            Err(e) => {
                ctx.metrics
                    .cluster
                    .publish_errors
                    .with_label_values(&["events"])
                    .inc();
                tracing::warn!(error = %e, attempt, attack = %ev.id, "attack event publish failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
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
        publish_event(&ctx, &ev).await;
    }
}

/// Collector role: once a second, the deltas of every second that ended, as frames.
async fn run_collector(ctx: Arc<Ctx>, pipeline: Arc<Pipeline>, stop: CancellationToken) {
    let mut next_sec: Option<u32> = None;
    loop {
        let now = system_now_ms();
        // A little after the boundary: the last records of the second are in.
        let at = (now / 1000 + 1) * 1000 + 20;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis((at - now).max(1) as u64)) => {}
        }
        let cur = (system_now_ms() / 1000) as u32;
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
    let mut held: BTreeMap<u32, Vec<HostDelta>> = BTreeMap::new();
    let mut t = tokio::time::interval(Duration::from_millis(50));
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let m = &ctx.metrics.cluster;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                let now = system_now_ms();
                let live = ctx.live_with(Role::Collector, now);
                let fr = frame::decode(&msg.payload).and_then(|f| {
                    frame::check_sender(
                        &f.header,
                        |n| live.iter().find(|m| m.node_id == n).map(|m| m.config_hash),
                        ctx.hash,
                    )
                    .map(|()| f)
                });
                let f = match fr {
                    Ok(f) => f,
                    Err(e) => {
                        m.bad_frames.with_label_values(&[e.reason()]).inc();
                        tracing::debug!(error = %e, "delta frame dropped");
                        continue;
                    }
                };
                m.frames_merged.inc();
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
        let now = system_now_ms();
        let live: BTreeSet<String> = ctx
            .live_with(Role::Collector, now)
            .into_iter()
            .map(|m| m.node_id)
            .collect();
        while let Some(sec) = book.closable(&live, now, ctx.cfg.merge_wait_ms as i64) {
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
            for ev in &events {
                if ev.event != EventKind::Update || ev.is_change() {
                    tracing::info!(attack = %ev.id, ip = %ev.ip, event = kind_str(ev.event), "cluster attack event");
                }
                publish_event(&ctx, ev).await;
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
    let mut t = tokio::time::interval(ctx.interval());
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Revision of each lease this node holds.
    let mut held: BTreeMap<u16, u64> = BTreeMap::new();
    let mut first_round = true;
    let m = &ctx.metrics.cluster;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = t.tick() => {}
        }
        let now = system_now_ms();
        let detectors = ctx.live_with(Role::Detector, now);
        let names: Vec<&str> = detectors.iter().map(|m| m.node_id.as_str()).collect();
        let mut gained = Vec::new();
        for p in 0..ctx.cfg.partitions {
            let key = format!("part.{p}");
            let mine = lease::rendezvous(p, &names) == Some(ctx.node.as_str());
            let body = Bytes::from(ctx.node.clone());
            match (mine, held.get(&p).copied()) {
                (true, Some(rev)) => match ctx.leases.update(&key, body, rev).await {
                    Ok(r) => {
                        held.insert(p, r);
                    }
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "partition lease lost");
                        held.remove(&p);
                        m.lease_changes.with_label_values(&["partition"]).inc();
                    }
                },
                (true, None) => {
                    // Free (never held, or expired: its holder is gone) → take it.
                    if let Ok(r) = ctx.leases.create(&key, body).await {
                        held.insert(p, r);
                        gained.push(p);
                        m.lease_changes.with_label_values(&["partition"]).inc();
                    }
                }
                (false, Some(rev)) => {
                    // Rendezvous gives it to another live detector: let it go.
                    let _ = ctx.leases.delete_expect_revision(&key, Some(rev)).await;
                    held.remove(&p);
                    m.lease_changes.with_label_values(&["partition"]).inc();
                }
                (false, None) => {}
            }
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
    let mut t = tokio::time::interval(ctx.interval());
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let m = &ctx.metrics.cluster;
    let renewed = Arc::new(Mutex::new(None::<i64>));
    let mut rev: Option<u64> = None;
    let mut leading: Option<CancellationToken> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = t.tick() => {}
        }
        let body = Bytes::from(ctx.node.clone());
        let r = match rev {
            Some(r) => ctx.leases.update("controller", body, r).await.map_err(nats),
            None => ctx.leases.create("controller", body).await.map_err(nats),
        };
        let now = system_now_ms();
        match r {
            Ok(new_rev) => {
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
                        tok,
                    ));
                }
            }
            Err(e) => {
                if rev.is_some() {
                    tracing::warn!(error = %e, "controller lease renewal failed");
                }
                // Renewal failed: fenced until the lease is fresh again, deposed once
                // another node holds it (the update by revision fails for good).
                if !lease::lease_fresh(*renewed.lock(), now, ctx.ttl_ms()) {
                    if let Some(tok) = leading.take() {
                        tracing::warn!("controller lease lost: stepping down");
                        m.lease_changes.with_label_values(&["controller"]).inc();
                        tok.cancel();
                    }
                    rev = None;
                }
            }
        }
        let fenced = leading.is_some() && !lease::lease_fresh(*renewed.lock(), now, ctx.ttl_ms());
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

/// The active controller: loads the state, starts the mitigation worker from it
/// (which reconciles MITIGATOR), then applies the event stream in order, writing the
/// state with compare-and-set before each event reaches mitigation.
async fn lead(
    ctx: Arc<Ctx>,
    setup: crate::mitigate::Setup,
    dir: std::path::PathBuf,
    renewed: Arc<Mutex<Option<i64>>>,
    stop: CancellationToken,
) {
    if let Err(e) = lead_inner(&ctx, setup, dir, renewed, stop.clone()).await {
        tracing::error!(error = %e, "controller stopped");
    }
    *ctx.view.mitigation.lock() = None;
    stop.cancel();
}

async fn lead_inner(
    ctx: &Arc<Ctx>,
    setup: crate::mitigate::Setup,
    dir: std::path::PathBuf,
    renewed: Arc<Mutex<Option<i64>>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let m = &ctx.metrics.cluster;
    let (mut st, mut rev) = match live_entry(&ctx.state, "controller").await? {
        Some(e) => (
            serde_json::from_slice::<ControllerState>(&e.value)?,
            Some(e.revision),
        ),
        None => (ControllerState::default(), None),
    };
    tracing::info!(
        active = st.lifecycle.active.len(),
        last_seq = st.lifecycle.last_seq,
        previous_writer = %st.writer,
        "controller state loaded"
    );
    // The worker restores (and reconciles against MITIGATOR) what the state bucket says,
    // not whatever this node's file held from an earlier term.
    StateStore::new(&dir).save(&st.mitigation)?;
    let (tx, rx) = mpsc::channel::<AttackEvent>(crate::service::EVENT_QUEUE);
    let (handle, join) =
        crate::mitigate::spawn_with(setup, dir, ctx.metrics.clone(), rx, stop.clone())?;
    *ctx.view.mitigation.lock() = Some(handle.clone());
    // The lifecycle is the truth: attacks it has renew their restored mitigation (a
    // start that never reached MITIGATOR before the old leader died is made now), and
    // restored ones it no longer has end (an end the old leader wrote but did not apply).
    let restored: BTreeSet<String> = st.mitigation.attacks.iter().map(|a| a.id.clone()).collect();
    let live_ids: BTreeSet<String> = st.lifecycle.active.values().map(|a| a.id.clone()).collect();
    for ev in st.lifecycle.active.values() {
        let mut s = ev.clone();
        s.event = EventKind::Start;
        tx.send(s).await.ok();
    }
    for a in st
        .mitigation
        .attacks
        .iter()
        .filter(|a| !live_ids.contains(&a.id))
    {
        tx.send(end_of(&a.id, a.ip)).await.ok();
    }
    tracing::info!(
        renewed = live_ids.len(),
        ended = restored.difference(&live_ids).count(),
        "controller reconciled"
    );

    let stream = ctx
        .js
        .get_stream(format!("{}_events", ctx.cfg.name))
        .await?;
    let deliver = if st.lifecycle.last_seq == 0 {
        jetstream::consumer::DeliverPolicy::All
    } else {
        jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: st.lifecycle.last_seq + 1,
        }
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: ctx.events_subject(),
            deliver_policy: deliver,
            ..Default::default()
        })
        .await?;
    let mut msgs = consumer.messages().await?;
    let mut t = tokio::time::interval(ctx.interval());
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            _ = t.tick() => None,
            msg = msgs.next() => match msg {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "event stream read failed");
                    None
                }
                None => break,
            },
        };
        let mut out = None;
        if let Some(msg) = msg {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            match serde_json::from_slice::<AttackEvent>(&msg.payload) {
                Ok(ev) => out = st.lifecycle.apply(seq, ev),
                Err(e) => {
                    tracing::warn!(error = %e, seq, "unreadable attack event skipped");
                    st.lifecycle.last_seq = st.lifecycle.last_seq.max(seq);
                }
            }
        }
        // Compare-and-set: a deposed leader's write fails here, before any REST call.
        st.mitigation = handle.snapshot();
        st.writer = ctx.node.clone();
        let body = Bytes::from(serde_json::to_vec(&st)?);
        let w = match rev {
            Some(r) => ctx.state.update("controller", body, r).await.map_err(nats),
            None => ctx.state.create("controller", body).await.map_err(nats),
        };
        match w {
            Ok(r) => rev = Some(r),
            Err(e) => {
                m.publish_errors.with_label_values(&["state"]).inc();
                anyhow::bail!("controller state write refused ({e}): deposed");
            }
        }
        if let Some(ev) = out {
            if !lease::lease_fresh(*renewed.lock(), system_now_ms(), ctx.ttl_ms()) {
                // Fenced: the state says what should happen; the next leader (or this
                // node once its lease is fresh, from the state) applies it.
                m.fenced.set(1);
                anyhow::bail!("controller lease not fresh: fenced");
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

fn end_of(id: &str, ip: std::net::IpAddr) -> AttackEvent {
    AttackEvent {
        event: EventKind::End,
        id: id.to_string(),
        ip,
        direction: Direction::Incoming,
        attack_type: crate::model::AttackType::Unknown,
        protocol: crate::model::Protocol::Unknown,
        time_ms: system_now_ms(),
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
