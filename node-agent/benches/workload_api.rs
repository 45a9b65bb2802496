//! Workload API benchmarks over the real Unix socket with a warm cache of 1,000 entries:
//! the latency of the first `FetchX509SVID` response (attestation + match + encoding), with
//! p50/p99 printed from 2,000 sequential calls, and the resident memory of the process holding
//! the cache (`VmRSS`).
//!
//! Run: `cargo bench -p warden-node-agent --bench workload_api`

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    missing_docs,
    reason = "benchmark code"
)]

#[path = "../tests/it/support.rs"]
#[allow(dead_code, unreachable_pub)]
mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use support::{TD, TestAgent, TestCa, entry, uid_selector};
use warden_api::WORKLOAD_API_HEADER;
use warden_api::workload::X509svidRequest;
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

const ENTRIES: usize = 1_000;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn first_response(client: &mut SpiffeWorkloadApiClient<tonic::transport::Channel>) {
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert(WORKLOAD_API_HEADER, "true".parse().unwrap());
    let mut stream = client.fetch_x509svid(req).await.unwrap().into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    assert_eq!(msg.svids.len(), 1);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rss_before = rss_kib();
    let ca = TestCa::new(TD);
    // One entry matches this process; 999 belong to other workloads.
    let mut entries = vec![entry(
        "mine",
        &format!("spiffe://{TD}/mine"),
        &uid_selector(),
        0,
        "",
    )];
    for i in 1..ENTRIES {
        entries.push(entry(
            &format!("e{i}"),
            &format!("spiffe://{TD}/w{i}"),
            &format!("unix:uid:{}", 100_000 + i),
            1,
            "",
        ));
    }
    let agent = rt.block_on(TestAgent::start(
        &ca,
        entries,
        Duration::from_secs(3600),
        vec![],
    ));
    let mut client = rt.block_on(async { SpiffeWorkloadApiClient::new(agent.raw_channel().await) });
    rt.block_on(first_response(&mut client)); // warm: digest cache, connection
    let rss_after = rss_kib();
    eprintln!(
        "resident memory with {ENTRIES} cached entries and svids: {} KiB (process before cache: {} KiB, cache + server: {} KiB)",
        rss_after,
        rss_before,
        rss_after.saturating_sub(rss_before)
    );

    let mut samples: Vec<Duration> = rt.block_on(async {
        let mut v = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t = Instant::now();
            first_response(&mut client).await;
            v.push(t.elapsed());
        }
        v
    });
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    eprintln!(
        "FetchX509SVID first response over UDS, warm cache ({ENTRIES} entries): p50 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1]
    );

    c.bench_function(
        "fetch_x509svid_first_response_warm_cache_1000_entries",
        |b| {
            b.iter(|| rt.block_on(first_response(&mut client)));
        },
    );
    rt.block_on(agent.stop());
}

criterion_group!(benches, bench);
criterion_main!(benches);
