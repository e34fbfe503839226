//! Criterion micro-benchmarks of the per-request hot path: route matching over 1,000 routes and 100
//! virtual hosts, and load-balancer picks over 10, 100 and 1,000 endpoints for every policy (hashing
//! ones by a changing key).

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use std::hint::black_box;
use strait_benches::{cluster, peak_ewma_cluster, route_table};
use strait_proxy::routing::RequestView;
use xds_proto::pb::envoy::config::cluster::v3::cluster::LbPolicy;

fn routing(c: &mut Criterion) {
    let table = route_table(100, 1000);
    let headers = HeaderMap::new();
    let method = Method::GET;
    let view = |authority: &'static str, path: &'static str| RequestView {
        authority,
        path_and_query: path,
        method: &method,
        headers: &headers,
    };
    let mut g = c.benchmark_group("route_match_1000_routes");
    let first = view("anything", "/path0/x");
    g.bench_function("first_route", |b| b.iter(|| black_box(table.find(black_box(&first)))));
    let last = view("anything", "/path999/x");
    g.bench_function("last_route", |b| b.iter(|| black_box(table.find(black_box(&last)))));
    let miss = view("anything", "/nothing");
    g.bench_function("no_match", |b| b.iter(|| black_box(table.find(black_box(&miss)))));
    let vhost = view("svc57.example.com", "/path3/x");
    g.bench_function("vhost_of_100_exact", |b| b.iter(|| black_box(table.find(black_box(&vhost)))));
    g.finish();
}

fn load_balancing(c: &mut Criterion) {
    for n in [10, 100, 1000] {
        let mut g = c.benchmark_group(format!("lb_pick_{n}_endpoints"));
        let mut clusters = vec![];
        for (name, policy, weighted) in [
            ("round_robin", LbPolicy::RoundRobin, false),
            ("weighted_round_robin", LbPolicy::RoundRobin, true),
            ("least_request", LbPolicy::LeastRequest, false),
            ("weighted_least_request", LbPolicy::LeastRequest, true),
            ("random", LbPolicy::Random, false),
            ("ring_hash", LbPolicy::RingHash, false),
            ("weighted_ring_hash", LbPolicy::RingHash, true),
            ("maglev", LbPolicy::Maglev, false),
            ("weighted_maglev", LbPolicy::Maglev, true),
        ] {
            clusters.push((name, cluster(n, policy, weighted)));
        }
        clusters.push(("peak_ewma", peak_ewma_cluster(n, false)));
        for (name, cluster) in clusters {
            let mut key = 0u64;
            g.bench_function(name, |b| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(cluster.pick(Some(black_box(key))))
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, routing, load_balancing);
criterion_main!(benches);
