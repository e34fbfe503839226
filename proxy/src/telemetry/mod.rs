//! Stats with Envoy's names and labels (so Envoy dashboards work), exported in Prometheus format, and
//! the access log. Handles are registered once at config time; the hot path only bumps atomics.

pub mod access_log;

use metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns the handle that renders it.
pub fn prometheus() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Only fails if another recorder was installed first, which this process never does.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Counters by response code class (1xx..5xx), as Envoy's `*_rq_Nxx`.
#[derive(Debug, Clone)]
pub struct CodeClassCounters([Counter; 5]);

impl CodeClassCounters {
    fn new(name: &'static str, label: &'static str, value: &str) -> Self {
        let make =
            |class: &'static str| counter!(name, label => value.to_string(), "envoy_response_code_class" => class);
        CodeClassCounters([make("1"), make("2"), make("3"), make("4"), make("5")])
    }

    pub fn record(&self, status: u16) {
        if let Some(c) = self.0.get(usize::from(status / 100).wrapping_sub(1)) {
            c.increment(1);
        }
    }
}

/// Increments a gauge now and decrements it when dropped.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.increment(1.0);
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// An open connection: counted in its `cx_active` gauge; its close is noted for the memory policy
/// ([`crate::sys::return_memory_after_closes`]).
#[derive(Debug)]
pub struct ConnectionGuard {
    _active: GaugeGuard,
}

impl ConnectionGuard {
    pub fn new(cx_active: &Gauge) -> Self {
        ConnectionGuard { _active: GaugeGuard::new(cx_active) }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        crate::sys::connection_closed();
    }
}

/// `envoy_cluster_outlier_detection_*{envoy_cluster_name}`.
#[derive(Debug)]
pub struct OutlierStats {
    pub ejections_active: Gauge,
    ejections_enforced_total: Counter,
    ejections_overflow: Counter,
    /// (detected, enforced) per reason: consecutive 5xx, consecutive gateway failure, success rate,
    /// failure percentage, and their local-origin kinds.
    by_reason: [(Counter, Counter); 7],
}

impl OutlierStats {
    fn new(cluster: &str) -> Self {
        let l = "envoy_cluster_name";
        let pair = |reason: &str| {
            (
                counter!(format!("envoy_cluster_outlier_detection_ejections_detected_{reason}"), l => cluster.to_string()),
                counter!(format!("envoy_cluster_outlier_detection_ejections_enforced_{reason}"), l => cluster.to_string()),
            )
        };
        OutlierStats {
            ejections_active: gauge!("envoy_cluster_outlier_detection_ejections_active", l => cluster.to_string()),
            ejections_enforced_total: counter!(
                "envoy_cluster_outlier_detection_ejections_enforced_total", l => cluster.to_string()
            ),
            ejections_overflow: counter!("envoy_cluster_outlier_detection_ejections_overflow", l => cluster.to_string()),
            by_reason: [
                pair("consecutive_5xx"),
                pair("consecutive_gateway_failure"),
                pair("success_rate"),
                pair("failure_percentage"),
                pair("consecutive_local_origin_failure"),
                pair("local_origin_success_rate"),
                pair("local_origin_failure_percentage"),
            ],
        }
    }

    pub fn count(&self, verdict: crate::upstream::outlier::Verdict) {
        use crate::upstream::outlier::{Reason, Verdict};
        let (Verdict::Ejected(reason) | Verdict::Detected(reason) | Verdict::Overflow(reason)) = verdict;
        let (detected, enforced) = &self.by_reason[match reason {
            Reason::Consecutive5xx => 0,
            Reason::ConsecutiveGatewayFailure => 1,
            Reason::SuccessRate => 2,
            Reason::FailurePercentage => 3,
            Reason::ConsecutiveLocalOriginFailure => 4,
            Reason::LocalOriginSuccessRate => 5,
            Reason::LocalOriginFailurePercentage => 6,
        }];
        detected.increment(1);
        match verdict {
            Verdict::Ejected(_) => {
                enforced.increment(1);
                self.ejections_enforced_total.increment(1);
            }
            Verdict::Overflow(_) => self.ejections_overflow.increment(1),
            Verdict::Detected(_) => {}
        }
    }
}

/// `envoy_cluster_health_check_*{envoy_cluster_name}`.
#[derive(Debug)]
pub struct HealthCheckStats {
    pub attempt: Counter,
    pub success: Counter,
    pub failure: Counter,
    /// Endpoints passing their checks.
    pub healthy: Gauge,
}

impl HealthCheckStats {
    fn new(cluster: &str) -> Self {
        let l = "envoy_cluster_name";
        HealthCheckStats {
            attempt: counter!("envoy_cluster_health_check_attempt", l => cluster.to_string()),
            success: counter!("envoy_cluster_health_check_success", l => cluster.to_string()),
            failure: counter!("envoy_cluster_health_check_failure", l => cluster.to_string()),
            healthy: gauge!("envoy_cluster_health_check_healthy", l => cluster.to_string()),
        }
    }
}

/// `envoy_cluster_*{envoy_cluster_name}`.
#[derive(Debug)]
pub struct ClusterStats {
    pub rq_total: Counter,
    pub rq_xx: CodeClassCounters,
    pub rq_active: Gauge,
    pub rq_timeout: Counter,
    pub rq_per_try_timeout: Counter,
    pub rq_per_try_idle_timeout: Counter,
    pub rq_retry_backoff_exponential: Counter,
    pub rq_retry_backoff_ratelimited: Counter,
    pub rq_retry: Counter,
    pub rq_retry_success: Counter,
    pub rq_retry_limit_exceeded: Counter,
    /// Retries not made: `max_retries` reached.
    pub rq_retry_overflow: Counter,
    /// Requests answered at once: `max_requests` reached.
    pub rq_active_overflow: Counter,
    /// Requests that waited for a connection, those waiting now, and those answered at once because
    /// `max_pending_requests` was reached.
    pub rq_pending_total: Counter,
    pub rq_pending_active: Gauge,
    pub rq_pending_overflow: Counter,
    /// Times `max_connections` kept a connection from being opened.
    pub cx_overflow: Counter,
    /// Requests refused because `max_connection_pools` kept their endpoint from a pool.
    pub cx_pool_overflow: Counter,
    /// Retries given up because the request body outgrew its buffer limit.
    pub retry_or_shadow_abandoned: Counter,
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub cx_connect_fail: Counter,
    /// Upstream TLS handshakes that failed (`cluster.<name>.ssl.connection_error`).
    pub ssl_connection_error: Counter,
    pub cx_none_healthy: Counter,
    /// Requests balanced over all endpoints of a level in panic.
    pub lb_healthy_panic: Counter,
    pub membership_healthy: Gauge,
    pub membership_degraded: Gauge,
    pub membership_total: Gauge,
    pub outlier: OutlierStats,
    pub health_check: HealthCheckStats,
}

impl ClusterStats {
    pub fn new(cluster: &str) -> Self {
        let l = "envoy_cluster_name";
        let name = cluster.to_string();
        ClusterStats {
            rq_total: counter!("envoy_cluster_upstream_rq_total", l => name.clone()),
            rq_xx: CodeClassCounters::new("envoy_cluster_upstream_rq_xx", l, cluster),
            rq_active: gauge!("envoy_cluster_upstream_rq_active", l => name.clone()),
            rq_timeout: counter!("envoy_cluster_upstream_rq_timeout", l => name.clone()),
            rq_per_try_timeout: counter!("envoy_cluster_upstream_rq_per_try_timeout", l => name.clone()),
            rq_per_try_idle_timeout: counter!("envoy_cluster_upstream_rq_per_try_idle_timeout", l => name.clone()),
            rq_retry_backoff_exponential: counter!("envoy_cluster_upstream_rq_retry_backoff_exponential", l => name.clone()),
            rq_retry_backoff_ratelimited: counter!("envoy_cluster_upstream_rq_retry_backoff_ratelimited", l => name.clone()),
            rq_retry: counter!("envoy_cluster_upstream_rq_retry", l => name.clone()),
            rq_retry_success: counter!("envoy_cluster_upstream_rq_retry_success", l => name.clone()),
            rq_retry_limit_exceeded: counter!("envoy_cluster_upstream_rq_retry_limit_exceeded", l => name.clone()),
            rq_retry_overflow: counter!("envoy_cluster_upstream_rq_retry_overflow", l => name.clone()),
            rq_active_overflow: counter!("envoy_cluster_upstream_rq_active_overflow", l => name.clone()),
            rq_pending_total: counter!("envoy_cluster_upstream_rq_pending_total", l => name.clone()),
            rq_pending_active: gauge!("envoy_cluster_upstream_rq_pending_active", l => name.clone()),
            rq_pending_overflow: counter!("envoy_cluster_upstream_rq_pending_overflow", l => name.clone()),
            cx_overflow: counter!("envoy_cluster_upstream_cx_overflow", l => name.clone()),
            cx_pool_overflow: counter!("envoy_cluster_upstream_cx_pool_overflow", l => name.clone()),
            retry_or_shadow_abandoned: counter!("envoy_cluster_retry_or_shadow_abandoned", l => name.clone()),
            cx_total: counter!("envoy_cluster_upstream_cx_total", l => name.clone()),
            cx_active: gauge!("envoy_cluster_upstream_cx_active", l => name.clone()),
            cx_connect_fail: counter!("envoy_cluster_upstream_cx_connect_fail", l => name.clone()),
            ssl_connection_error: counter!("envoy_cluster_ssl_connection_error", l => name.clone()),
            cx_none_healthy: counter!("envoy_cluster_upstream_cx_none_healthy", l => name.clone()),
            lb_healthy_panic: counter!("envoy_cluster_lb_healthy_panic", l => name.clone()),
            membership_healthy: gauge!("envoy_cluster_membership_healthy", l => name.clone()),
            membership_degraded: gauge!("envoy_cluster_membership_degraded", l => name.clone()),
            membership_total: gauge!("envoy_cluster_membership_total", l => name),
            outlier: OutlierStats::new(cluster),
            health_check: HealthCheckStats::new(cluster),
        }
    }

    pub fn connection_opened(&self) -> ConnectionGuard {
        ConnectionGuard::new(&self.cx_active)
    }

    pub fn set_membership(&self, set: &crate::upstream::EndpointSet) {
        self.membership_total.set(set.all.len() as f64);
        let available = set.all.iter().filter(|e| e.takes_traffic(set.health_checked));
        let (degraded, healthy): (Vec<_>, Vec<_>) =
            available.partition(|e| e.health == crate::upstream::HealthStatus::Degraded);
        self.membership_healthy.set(healthy.len() as f64);
        self.membership_degraded.set(degraded.len() as f64);
    }
}

/// `envoy_http_*{envoy_http_conn_manager_prefix}`: one HTTP connection manager's downstream side.
#[derive(Debug)]
pub struct HttpStats {
    pub rq_total: Counter,
    pub rq_xx: CodeClassCounters,
    pub rq_active: Gauge,
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub rq_timeout: Counter,
    /// Streams ended by their maximum duration.
    pub rq_max_duration_reached: Counter,
    /// Streams ended by their idle timeout.
    pub rq_idle_timeout: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
}

impl HttpStats {
    pub fn new(stat_prefix: &str) -> Self {
        let l = "envoy_http_conn_manager_prefix";
        let p = stat_prefix.to_string();
        HttpStats {
            rq_total: counter!("envoy_http_downstream_rq_total", l => p.clone()),
            rq_xx: CodeClassCounters::new("envoy_http_downstream_rq_xx", l, stat_prefix),
            rq_active: gauge!("envoy_http_downstream_rq_active", l => p.clone()),
            cx_total: counter!("envoy_http_downstream_cx_total", l => p.clone()),
            cx_active: gauge!("envoy_http_downstream_cx_active", l => p.clone()),
            rq_timeout: counter!("envoy_http_downstream_rq_timeout", l => p.clone()),
            rq_max_duration_reached: counter!("envoy_http_downstream_rq_max_duration_reached", l => p.clone()),
            rq_idle_timeout: counter!("envoy_http_downstream_rq_idle_timeout", l => p.clone()),
            no_route: counter!("envoy_http_no_route", l => p.clone()),
            no_cluster: counter!("envoy_http_no_cluster", l => p),
        }
    }
}

/// `envoy_listener_*{envoy_listener_address}`.
#[derive(Debug)]
pub struct ListenerStats {
    pub cx_total: Counter,
    pub cx_active: Gauge,
    /// Connections no filter chain matched (closed).
    pub no_filter_chain_match: Counter,
    /// TLS handshakes completed, and failed (`ssl.connection_error`); a failed handshake whose peer
    /// certificate was refused also counts in `ssl.fail_verify_error` (or `_san`), one without a
    /// required certificate in `ssl.fail_verify_no_cert`.
    pub ssl_handshake: Counter,
    pub ssl_connection_error: Counter,
    pub ssl_fail_verify_error: Counter,
    pub ssl_fail_verify_san: Counter,
    pub ssl_fail_verify_no_cert: Counter,
}

impl ListenerStats {
    pub fn new(addr: &std::net::SocketAddr) -> Self {
        // Envoy's label for 0.0.0.0:10000 is "0.0.0.0_10000".
        let label = format!("{}_{}", addr.ip(), addr.port());
        ListenerStats {
            cx_total: counter!("envoy_listener_downstream_cx_total", "envoy_listener_address" => label.clone()),
            cx_active: gauge!("envoy_listener_downstream_cx_active", "envoy_listener_address" => label.clone()),
            no_filter_chain_match: counter!("envoy_listener_no_filter_chain_match", "envoy_listener_address" => label.clone()),
            ssl_handshake: counter!("envoy_listener_ssl_handshake", "envoy_listener_address" => label.clone()),
            ssl_connection_error: counter!("envoy_listener_ssl_connection_error", "envoy_listener_address" => label.clone()),
            ssl_fail_verify_error: counter!("envoy_listener_ssl_fail_verify_error", "envoy_listener_address" => label.clone()),
            ssl_fail_verify_san: counter!("envoy_listener_ssl_fail_verify_san", "envoy_listener_address" => label.clone()),
            ssl_fail_verify_no_cert: counter!("envoy_listener_ssl_fail_verify_no_cert", "envoy_listener_address" => label),
        }
    }
}

/// `envoy_tcp_*{envoy_tcp_prefix}`: one TCP proxy filter.
#[derive(Debug)]
pub struct TcpStats {
    pub cx_total: Counter,
    pub cx_no_route: Counter,
    pub idle_timeout: Counter,
    pub rx_bytes: Counter,
    pub tx_bytes: Counter,
}

impl TcpStats {
    pub fn new(stat_prefix: &str) -> Self {
        let l = "envoy_tcp_prefix";
        let p = stat_prefix.to_string();
        TcpStats {
            cx_total: counter!("envoy_tcp_downstream_cx_total", l => p.clone()),
            cx_no_route: counter!("envoy_tcp_downstream_cx_no_route", l => p.clone()),
            idle_timeout: counter!("envoy_tcp_idle_timeout", l => p.clone()),
            rx_bytes: counter!("envoy_tcp_downstream_cx_rx_bytes_total", l => p.clone()),
            tx_bytes: counter!("envoy_tcp_downstream_cx_tx_bytes_total", l => p),
        }
    }
}
