//! `--metrics-address`: the real `warren all` answers CSI calls, then /metrics shows them
//! (counts, error codes, latency, volume kinds, per-volume gauges), /healthz reports ready,
//! and the log lines of each call carry its method and volume.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use csi_proto::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const SECRET: &str = "hunter2-observability-s3cret";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `warren all` as `Warren::spawn` starts it, plus `--metrics-address` (and `extra`).
fn start_with_metrics(port: u16) -> Warren {
    start_with_metrics_and(port, |_| vec![])
}

fn start_with_metrics_and(port: u16, extra: impl Fn(&std::path::Path) -> Vec<String>) -> Warren {
    let dir = Warren::dirs();
    let d = dir.path();
    let log = std::fs::File::create(d.join("warren.log")).unwrap();
    let socket = d.join("csi.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("all")
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg(format!("--node-id={NODE}"))
        .arg(format!("--state-dir={}", d.join("state").display()))
        .arg(format!("--storage-root={}", d.join("storage").display()))
        .arg(format!("--kubelet-dir={}", d.join("kubelet").display()))
        .arg(format!("--metrics-address=127.0.0.1:{port}"))
        .args(extra(d))
        .env("WARREN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start warren");
    let w = Warren {
        dir,
        child: Some(child),
        launcher: vec![],
        extra_args: vec![],
    };
    wait_for_socket(&socket);
    w
}

/// One HTTP/1.1 GET: (status, content type, body).
async fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics address");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The samples of a Prometheus text exposition, by name and label set.
struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    fn parse(text: &str) -> Samples {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
            };
            out.push((name.to_string(), labels, value));
        }
        Samples(out)
    }

    /// The value of the one sample with this name and exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} appears twice");
        found.first().copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    /// Every sample of `name` whose labels include these.
    fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&BTreeMap<String, String>> {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, l, _)| l)
            .collect()
    }
}

fn parse_labels(mut rest: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label key");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => match chars.next().unwrap().1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

#[tokio::test]
async fn metrics_health_and_call_spans() {
    let port = free_port();
    let w = start_with_metrics(port);

    // Ready once the CSI socket serves (allow the instant between bind and ready).
    let start = Instant::now();
    loop {
        let (status, _, body) = get(port, "/healthz").await;
        if status == 200 {
            assert_eq!(body, "ok\n");
            break;
        }
        assert_eq!(status, 503);
        assert!(start.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut identity = w.identity().await;
    let mut ctl = w.controller().await;
    let mut node = w.node().await;
    identity.probe(ProbeRequest {}).await.unwrap();

    // Two local volumes: an image (the default) and a dir volume whose request carries a
    // secret that must never be logged.
    let image = ctl
        .create_volume(create_request("obs-image", 16 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mut dir_request = create_request("obs-dir", 16 * MIB);
    dir_request.parameters = HashMap::from([("layout".into(), "dir".into())]);
    dir_request.secrets = HashMap::from([("password".into(), SECRET.into())]);
    let dir = ctl
        .create_volume(dir_request)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();

    // Failures: a backend this version does not have, a volume that does not exist, and
    // an id Warren could not have made.
    let mut nfs = create_request("obs-nfs", 16 * MIB);
    nfs.parameters = HashMap::from([("backend".into(), "nfs".into())]);
    let err = ctl.create_volume(nfs).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let missing = format!("local#image#{NODE}#{}", "0".repeat(32));
    let err = ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: missing.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 32 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "not-an-id".into(),
            volume_path: w.kubelet().join("x").display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The dir volume goes away again: its gauges must too.
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: dir.volume_id.clone(),
        secrets: HashMap::from([("password".into(), SECRET.into())]),
    })
    .await
    .unwrap();

    let (status, content_type, body) = get(port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let s = Samples::parse(&body);
    let requests = "warren_csi_requests_total";
    let errors = "warren_csi_request_errors_total";
    let kind_local = [("method", "CreateVolume"), ("kind", "local")];
    assert_eq!(s.value(requests, &kind_local), 2.0, "{body}");
    assert_eq!(
        s.value(requests, &[("method", "CreateVolume"), ("kind", "nfs")]),
        1.0
    );
    assert_eq!(
        s.value(
            errors,
            &[
                ("method", "CreateVolume"),
                ("kind", "nfs"),
                ("code", "InvalidArgument")
            ]
        ),
        1.0
    );
    assert!(
        s.matching(errors, &kind_local).is_empty(),
        "CreateVolume of local volumes did not fail: {body}"
    );
    assert_eq!(
        s.value(
            errors,
            &[
                ("method", "ControllerExpandVolume"),
                ("kind", "local"),
                ("code", "NotFound")
            ]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            errors,
            &[
                ("method", "NodeGetVolumeStats"),
                ("kind", "unknown"),
                ("code", "NotFound")
            ]
        ),
        1.0
    );
    assert_eq!(
        s.value(requests, &[("method", "DeleteVolume"), ("kind", "local")]),
        1.0
    );
    assert!(s.matching(errors, &[("method", "DeleteVolume")]).is_empty());
    assert!(s.value(requests, &[("method", "Probe"), ("kind", "unknown")]) >= 1.0);

    // Latency: one histogram per method and kind, every call in it.
    let duration = "warren_csi_request_duration_seconds";
    assert_eq!(s.value(&format!("{duration}_count"), &kind_local), 2.0);
    assert!(s.value(&format!("{duration}_sum"), &kind_local) > 0.0);
    let inf = [
        ("method", "CreateVolume"),
        ("kind", "local"),
        ("le", "+Inf"),
    ];
    assert_eq!(s.value(&format!("{duration}_bucket"), &inf), 2.0);
    let buckets = s.matching(&format!("{duration}_bucket"), &kind_local);
    assert!(buckets.len() > 5, "{body}");

    // Per-volume gauges, read from the node's store: the image is thick, so all of its
    // 16 MiB are taken on the node; the deleted dir volume is gone.
    let mib16 = (16 * MIB) as f64;
    let this = [("volume", image.volume_id.as_str())];
    assert_eq!(
        s.value("warren_volume_capacity_bytes", &this),
        mib16,
        "{body}"
    );
    let used = s.value("warren_volume_used_bytes", &this);
    assert!(used >= mib16 && used < 2.0 * mib16, "used {used}");
    let gone = [("volume", dir.volume_id.as_str())];
    assert_eq!(s.get("warren_volume_capacity_bytes", &gone), None, "{body}");
    assert_eq!(s.get("warren_volume_used_bytes", &gone), None);

    assert_eq!(get(port, "/healthz").await.0, 200);
    assert_eq!(get(port, "/nothing-here").await.0, 404);

    // Every line logged while a call ran names the call and its volume; secrets never.
    let log = w.log();
    assert!(!log.contains(SECRET), "a secret reached the log:\n{log}");
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{log}"))
            .to_string()
    };
    let done = line("CreateVolume done");
    assert!(
        done.contains("method=CreateVolume") && done.contains("volume=obs-image"),
        "{done}"
    );
    let failed = log
        .lines()
        .find(|l| l.contains("method=ControllerExpandVolume") && l.contains("CSI call failed"))
        .unwrap_or_else(|| panic!("the failed expansion was not logged:\n{log}"));
    assert!(
        failed.contains(&format!("volume={missing}")) && failed.contains("code=NotFound"),
        "{failed}"
    );
    let stats = line("method=NodeGetVolumeStats");
    assert!(stats.contains("volume=not-an-id"), "{stats}");
}

#[tokio::test]
async fn a_taken_metrics_address_fails_startup() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = Warren::dirs();
    let d = dir.path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("all")
        .arg(format!(
            "--endpoint=unix://{}",
            d.join("csi.sock").display()
        ))
        .arg(format!("--node-id={NODE}"))
        .arg(format!("--state-dir={}", d.join("state").display()))
        .arg(format!("--storage-root={}", d.join("storage").display()))
        .arg(format!("--kubelet-dir={}", d.join("kubelet").display()))
        .env("WARREN_METRICS_ADDRESS", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("warren kept running on a taken metrics address");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("--metrics-address") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
    assert!(!d.join("csi.sock").exists(), "served CSI anyway");
    drop(taken);
}

/// A replicated volume staged on the node has gauges from its engine while it is staged
/// (one replica: `warren all` is one node), and none once unstaged.
#[tokio::test]
async fn replicated_volume_gauges() {
    if !std::path::Path::new("/dev/fuse").exists() || !nix::unistd::geteuid().is_root() {
        return warren_test_support::skip(
            "WARREN_REQUIRE_FUSE",
            "a replicated volume is staged through FUSE + loop, which needs root and /dev/fuse",
        );
    }
    let port = free_port();
    let w = start_with_metrics_and(port, |d| {
        let token = d.join("replica-token");
        std::fs::write(&token, "observability-replica-token").unwrap();
        vec![
            "--replica-listen=127.0.0.1:0".into(),
            format!("--replica-token-file={}", token.display()),
        ]
    });
    let mut ctl = w.controller().await;
    let mut node = w.node().await;
    let mut request = create_request("obs-replicated", 64 * MIB);
    request.parameters = HashMap::from([
        ("backend".into(), "replicated".into()),
        ("replicas".into(), "1".into()),
    ]);
    let volume = ctl
        .create_volume(request)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let key = volume
        .volume_id
        .strip_prefix("replicated#")
        .unwrap()
        .to_string();
    let staging = w.kubelet().join("staging-replicated");
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap()),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (_, _, text) = get(port, "/metrics").await;
    for line in [
        format!(r#"warren_replicated_replicas{{volume="{key}"}} 1"#),
        format!(r#"warren_replicated_replicas_in_sync{{volume="{key}"}} 1"#),
        format!(r#"warren_replicated_replicas_rebuilding{{volume="{key}"}} 0"#),
        format!(r#"warren_replicated_degraded_seconds{{volume="{key}"}} 0.0"#),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .unwrap();
    let (_, _, text) = get(port, "/metrics").await;
    assert!(
        !text.contains(&key),
        "gauges of an unstaged volume left:\n{text}"
    );
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: volume.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
}
