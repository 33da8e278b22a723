//! The simulator's own contract, checked over real HTTP(S) against the process.

mod common;
use common::sim as support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{calls, Sim, PASS, USER};

async fn send(
    sim: &Sim,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let mut r = sim
        .http()
        .request(method, format!("{}/api/v4/{path}", sim.base));
    if let Some(t) = token {
        r = r.header("X-Auth-Token", t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let loc = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let v = resp.json().await.unwrap_or(Value::Null);
    (status, v, loc)
}

use reqwest::Method as M;

#[tokio::test]
async fn login_token_envelope_and_errors() {
    let sim = Sim::start(false);
    let (st, v, _) = send(
        &sim,
        M::POST,
        "users/session",
        None,
        Some(json!({"username": USER, "password": "wrong"})),
    )
    .await;
    assert_eq!(st, 401, "{v}");
    let (st, v, _) = send(
        &sim,
        M::POST,
        "users/session",
        None,
        Some(json!({"username": USER, "password": PASS})),
    )
    .await;
    assert_eq!(st, 200);
    let tok = v["data"]["token"].as_str().unwrap().to_string();

    // No token, a wrong token: 401.
    assert_eq!(send(&sim, M::GET, "backend/ping", None, None).await.0, 401);
    assert_eq!(
        send(&sim, M::GET, "backend/ping", Some("nope"), None)
            .await
            .0,
        401
    );
    let (st, v, _) = send(&sim, M::GET, "backend/version", Some(&tok), None).await;
    assert_eq!(st, 200);
    assert!(v["data"]["version"].as_str().unwrap().starts_with('v'));

    // Switches start off, are per policy and per name, and unknown policies are 404.
    let (st, v, _) = send(&sim, M::GET, "tcp/switch?policy=3", Some(&tok), None).await;
    assert_eq!((st, v.clone()), (200, json!({"data": {"switch": 0}})));
    let (st, _, _) = send(
        &sim,
        M::PUT,
        "tcp/switch?policy=3",
        Some(&tok),
        Some(json!({"switch": 1})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        send(&sim, M::GET, "tcp/switch?policy=3", Some(&tok), None)
            .await
            .1["data"]["switch"],
        1
    );
    assert_eq!(
        send(&sim, M::GET, "tcp/switch?policy=4", Some(&tok), None)
            .await
            .1["data"]["switch"],
        0
    );
    assert_eq!(
        send(&sim, M::GET, "acl/switch?policy=3", Some(&tok), None)
            .await
            .1["data"]["switch"],
        0
    );
    assert_eq!(
        send(&sim, M::GET, "tcp/switch?policy=11", Some(&tok), None)
            .await
            .0,
        404
    );
    assert_eq!(
        send(
            &sim,
            M::PUT,
            "tcp/switch?policy=3",
            Some(&tok),
            Some(json!({"on": 1}))
        )
        .await
        .0,
        400
    );

    let (_, v, _) = send(&sim, M::GET, "policies/policies", Some(&tok), None).await;
    let ids: Vec<u64> = v["data"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=10).collect::<Vec<u64>>());

    assert_eq!(sim.switch(3, "tcp").await, 1);
    // /sim/* calls are not logged; every /api/v4 call is, body as sent.
    let log = sim.log().await;
    assert_eq!(log.len(), 13, "{:#?}", calls(&log));
    assert_eq!(log[4]["path"], "/api/v4/backend/version");
    let put = log.iter().find(|r| r["method"] == "PUT").unwrap();
    assert_eq!(put["body"], r#"{"switch":1}"#);
    assert_eq!(put["query"], "policy=3");
    assert_eq!(put["status"], 200);
    assert!(put["time"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn policies_are_configurable_and_tbl_items_work() {
    let sim = Sim::start_at("127.0.0.1:0", false, &["--policies", "1,42"]);
    let tok = sim.login().await;
    assert_eq!(
        send(&sim, M::GET, "toggle/switch?policy=2", Some(&tok), None)
            .await
            .0,
        404
    );
    assert_eq!(
        send(&sim, M::GET, "toggle/switch?policy=42", Some(&tok), None)
            .await
            .0,
        200
    );
    let items = json!({"items": [{"prefix": "203.0.113.7/32", "ttl": 300}]});
    assert_eq!(
        send(
            &sim,
            M::POST,
            "tbl/items?policy=42",
            Some(&tok),
            Some(items)
        )
        .await
        .0,
        200
    );
    assert_eq!(sim.state().await["tbl"]["42"]["203.0.113.7/32"], 300);
    let del = json!({"items": [{"prefix": "203.0.113.7/32"}]});
    assert_eq!(
        send(
            &sim,
            M::DELETE,
            "tbl/items?policy=42",
            Some(&tok),
            Some(del)
        )
        .await
        .0,
        200
    );
    assert_eq!(sim.state().await["tbl"]["42"], json!({}));
}

#[tokio::test]
async fn faults_status_latency_and_token_expiry() {
    let sim = Sim::start(false);
    let tok = sim.login().await;
    sim.fault(json!({"status": 503, "count": 2})).await;
    assert_eq!(
        send(&sim, M::GET, "backend/ping", Some(&tok), None).await.0,
        503
    );
    assert_eq!(
        send(&sim, M::GET, "backend/ping", Some(&tok), None).await.0,
        503
    );
    assert_eq!(
        send(&sim, M::GET, "backend/ping", Some(&tok), None).await.0,
        200
    );

    sim.fault(json!({"latency_ms": 300})).await;
    let t0 = Instant::now();
    assert_eq!(
        send(&sim, M::GET, "backend/ping", Some(&tok), None).await.0,
        200
    );
    assert!(t0.elapsed() >= Duration::from_millis(300));

    sim.fault(json!({"expire_tokens": true})).await;
    assert_eq!(
        send(&sim, M::GET, "backend/ping", Some(&tok), None).await.0,
        401
    );
    sim.fault(json!({"token_ttl_ms": 200})).await;
    let tok = sim.login().await;
    assert_eq!(
        send(&sim, M::GET, "backend/ping", Some(&tok), None).await.0,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        send(&sim, M::GET, "backend/ping", Some(&tok), None).await.0,
        401
    );

    sim.fault(json!({"status": 500, "count": 5})).await;
    sim.fault(json!({"clear": true})).await;
    assert_eq!(
        send(
            &sim,
            M::POST,
            "users/session",
            None,
            Some(json!({"username": USER, "password": PASS}))
        )
        .await
        .0,
        200
    );
    let r = sim
        .http()
        .post(format!("{}/sim/faults", sim.base))
        .json(&json!({"bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn misdirected_request_names_the_leader() {
    let leader = Sim::start(false);
    let follower = Sim::start(false);
    follower
        .fault(json!({"location": leader.base, "count": 1}))
        .await;
    let (st, _, loc) = send(&follower, M::GET, "tcp/switch?policy=1", None, None).await;
    assert_eq!(st, 421);
    assert_eq!(
        loc.unwrap(),
        format!("{}/api/v4/tcp/switch?policy=1", leader.base)
    );
    assert_eq!(
        calls(&follower.log().await),
        ["GET tcp/switch?policy=1 -> 421"]
    );
}

#[tokio::test]
async fn tls_with_the_written_certificate() {
    let sim = Sim::start(true);
    assert!(sim.base.starts_with("https://"));
    let tok = sim.login().await; // the support client trusts only the written certificate
    assert_eq!(
        send(&sim, M::GET, "backend/ping", Some(&tok), None).await.0,
        200
    );
    // A client with the system roots only must refuse the self-signed certificate.
    let plain = reqwest::Client::builder()
        .tls_certs_only(Vec::new())
        .build()
        .unwrap();
    assert!(plain
        .get(format!("{}/sim/log", sim.base))
        .send()
        .await
        .is_err());
}
