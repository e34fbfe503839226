//! Arbitrary bytes decoded as the xDS resources a control plane can send (a listener, a cluster, a
//! route configuration) go through the same conversions as a static file or an ADS response: an
//! error is fine, a panic is a bug.
//!
//!   cargo +nightly fuzz run xds_resources -- -max_total_time=60

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the type; the rest is the encoded resource.
    let Some((&kind, bytes)) = data.split_first() else { return };
    match kind % 3 {
        0 => {
            if let Ok(listener) = Listener::decode(bytes) {
                let _ = strait_proxy::xds::listener_config(&listener);
            }
        }
        1 => {
            if let Ok(cluster) = Cluster::decode(bytes) {
                let _ = strait_proxy::xds::cluster_config(&cluster);
            }
        }
        _ => {
            if let Ok(routes) = RouteConfiguration::decode(bytes) {
                let _ = strait_proxy::xds::route_table(&routes);
            }
        }
    }
});
