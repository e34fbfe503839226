//! Applying a big config: an Envoy bootstrap with 1,000 clusters and 10,000 routes (100 virtual hosts
//! of 100 routes), started by Strait and by Envoy (`--concurrency 1` each): time from start until
//! `/ready`, and the RSS it costs over the same proxy on a minimal config.
//!
//!   cargo build --release -p strait-proxy -p strait-benches && ./target/release/config-apply

use std::fmt::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strait_benches::{admin_ready, free_port};

fn bootstrap(admin: u16, port: u16, clusters: usize, vhosts: usize, routes_per_vhost: usize) -> String {
    let mut y = format!(
        "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\n\
         static_resources:\n  listeners:\n  - name: http\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n\
         \x20   filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n\
         \x20       typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n\
         \x20         stat_prefix: big\n          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]\n\
         \x20         route_config:\n            virtual_hosts:\n"
    );
    for v in 0..vhosts {
        let _ = writeln!(
            y,
            "            - name: vh{v}\n              domains: [\"host{v}.example\"]\n              routes:"
        );
        for r in 0..routes_per_vhost {
            let cluster = (v * routes_per_vhost + r) % clusters;
            let _ = writeln!(
                y,
                "              - {{ match: {{ prefix: \"/svc{r}/\" }}, route: {{ cluster: c{cluster}, timeout: 3s }} }}"
            );
        }
    }
    y.push_str("  clusters:\n");
    for c in 0..clusters {
        let _ = writeln!(
            y,
            "  - {{ name: c{c}, connect_timeout: 1s, load_assignment: {{ cluster_name: c{c}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.{}.{}, port_value: 8080 }} }} }} }}] }}] }} }}",
            c / 250,
            c % 250 + 1
        );
    }
    y
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Starts `cmd` on `config`: (seconds until /ready, RSS once ready).
fn measure(cmd: &[&str], config: &str, dir: &Path, admin: u16) -> Option<(f64, f64)> {
    let path = dir.join(format!("bootstrap-{admin}.yaml"));
    std::fs::write(&path, config).unwrap();
    let started = Instant::now();
    let mut child: Child = Command::new(cmd[0])
        .args(&cmd[1..])
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", "1", "-l", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let result = loop {
        if admin_ready(admin) {
            let elapsed = started.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(500));
            break Some((elapsed, rss_mb(child.id())));
        }
        if started.elapsed() > Duration::from_secs(120) || child.try_wait().ok().flatten().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn main() {
    let dir = std::env::temp_dir().join(format!("strait-config-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let strait = std::env::current_exe().unwrap().with_file_name("strait-proxy");
    let strait = strait.to_str().unwrap().to_string();
    let base_id = std::process::id().to_string();
    let mut targets: Vec<(&str, Vec<&str>)> = vec![("strait", vec![strait.as_str()])];
    let have_envoy = Command::new("envoy").arg("--version").stdout(Stdio::null()).status().is_ok();
    if have_envoy {
        targets.push(("envoy", vec!["envoy", "--base-id", base_id.as_str()]));
    }
    println!("| proxy | config | time to /ready | RSS | RSS added by the config |");
    println!("|---|---|---|---|---|");
    for (name, cmd) in targets {
        let admin = free_port();
        let Some((_, small_rss)) = measure(&cmd, &bootstrap(admin, free_port(), 1, 1, 1), &dir, admin) else {
            println!("| {name} | did not start |");
            continue;
        };
        let admin = free_port();
        match measure(&cmd, &bootstrap(admin, free_port(), 1000, 100, 100), &dir, admin) {
            Some((secs, rss)) => println!(
                "| {name} | 1,000 clusters, 10,000 routes | {:.0} ms | {rss:.1} MB | {:.1} MB |",
                secs * 1000.0,
                rss - small_rss
            ),
            None => println!("| {name} | 1,000 clusters, 10,000 routes | did not become ready | | |"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
