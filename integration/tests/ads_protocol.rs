//! The ADS protocol as `strait-control` speaks it, checked message by message with a real tonic
//! client over a real socket: wildcard and named subscriptions, ACK, NACK (no resend), stale nonces
//! (ignored), unknown types (ignored, stream kept), pushes on change without a request, removed
//! resources, and delta's per-resource versions across a reconnect.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use strait_control::ads::{Ads, AdsStats};
use strait_control::resources::Resources;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use xds_proto::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_proto::pb::google::rpc::Status;
use xds_proto::type_url::{CLUSTER, ROUTE_CONFIGURATION};

/// Compiled resources for two listeners, the given services (`name`, then extra fields) and a route
/// to the first service.
fn resources(services: &[(&str, &str)]) -> Arc<Resources> {
    let list: String = services
        .iter()
        .enumerate()
        .map(|(i, (name, extra))| format!("- {{ name: {name}, endpoints: ['127.0.0.1:{}'] {extra} }}\n", i + 1))
        .collect();
    let yaml = format!(
        "listeners: [{{ name: http, port: 10000 }}, {{ name: admin, port: 10001 }}]\nservices:\n{list}\
         routes: [{{ name: r, listener: http, to: [{{ service: {} }}] }}]\n",
        services[0].0
    );
    let mesh = strait_control::mesh::parse(&yaml).unwrap();
    mesh.validate().unwrap();
    Arc::new(strait_control::compile::compile(&mesh).unwrap())
}

async fn server(initial: Arc<Resources>) -> (watch::Sender<Arc<Resources>>, Arc<AdsStats>, String) {
    let (tx, rx) = watch::channel(initial);
    let (_, stop) = watch::channel(false);
    let ads = Ads::new(rx, stop);
    let stats = ads.stats();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(ads.into_service(), tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (tx, stats, url)
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(url: &str) -> Sotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string()).await.unwrap();
        let (tx, requests) = mpsc::channel(8);
        let rx = client.stream_aggregated_resources(ReceiverStream::new(requests)).await.unwrap().into_inner();
        Sotw { tx, rx }
    }

    async fn send(&self, type_url: &str, names: &[&str], version: &str, nonce: &str, nack: Option<&str>) {
        let request = DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            error_detail: nack.map(|m| Status { code: 3, message: m.into(), details: vec![] }),
            ..Default::default()
        };
        self.tx.send(request).await.unwrap();
    }

    /// The next response, or `None` if none comes within a short wait.
    async fn next(&mut self) -> Option<DiscoveryResponse> {
        tokio::time::timeout(Duration::from_millis(400), self.rx.message()).await.ok().map(|r| r.unwrap().unwrap())
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    let mut names: Vec<String> = response
        .resources
        .iter()
        .map(|any| match any.type_url.as_str() {
            CLUSTER => xds_proto::pb::envoy::config::cluster::v3::Cluster::decode(any.value.as_slice()).unwrap().name,
            _ => {
                xds_proto::pb::envoy::config::route::v3::RouteConfiguration::decode(any.value.as_slice()).unwrap().name
            }
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn state_of_the_world_ack_nack_stale_and_pushes() {
    let (publish, stats, url) = server(resources(&[("a", ""), ("b", "")])).await;
    let mut client = Sotw::open(&url).await;

    // An empty first CDS request is a wildcard: every cluster, a version and a nonce.
    client.send(CLUSTER, &[], "", "", None).await;
    let first = client.next().await.expect("a CDS response");
    assert_eq!(names(&first), ["a", "b"]);
    assert!(!first.version_info.is_empty() && !first.nonce.is_empty());

    // ACK: nothing more is sent.
    client.send(CLUSTER, &[], &first.version_info, &first.nonce, None).await;
    assert!(client.next().await.is_none());
    assert_eq!(stats.acks.load(Ordering::Relaxed), 1);

    // A named RDS subscription gets just that route configuration.
    client.send(ROUTE_CONFIGURATION, &["http"], "", "", None).await;
    let routes = client.next().await.expect("an RDS response");
    assert_eq!(names(&routes), ["http"]);
    client.send(ROUTE_CONFIGURATION, &["http"], &routes.version_info, &routes.nonce, None).await;

    // An unknown type is ignored and the stream stays up.
    client.send("type.googleapis.com/envoy.example.Unknown", &[], "", "", None).await;
    assert!(client.next().await.is_none());

    // A change is pushed for every subscribed type without being asked; a removed cluster is gone
    // from the full-state CDS response.
    publish.send_replace(resources(&[("a", ""), ("c", "")]));
    let mut pushed = [client.next().await.expect("a push"), client.next().await.expect("a second push")];
    pushed.sort_by(|x, y| x.type_url.cmp(&y.type_url));
    let (cds, rds) = (&pushed[0], &pushed[1]);
    assert_eq!((cds.type_url.as_str(), rds.type_url.as_str()), (CLUSTER, ROUTE_CONFIGURATION));
    assert_eq!(names(cds), ["a", "c"]);
    assert_ne!(cds.version_info, first.version_info);

    // A stale nonce (answering the first response) is ignored, even with a new subscription.
    client.send(CLUSTER, &["a"], &first.version_info, &first.nonce, None).await;
    assert!(client.next().await.is_none());

    // NACK: counted, and the rejected version is not sent again.
    client.send(CLUSTER, &[], &first.version_info, &cds.nonce, Some("cluster 'c': bad")).await;
    assert!(client.next().await.is_none());
    assert_eq!(stats.nacks.load(Ordering::Relaxed), 1);

    // The next good change is sent.
    publish.send_replace(resources(&[("a", "")]));
    let next = loop {
        let r = client.next().await.expect("a push after the NACK");
        if r.type_url == CLUSTER {
            break r;
        }
    };
    assert_eq!(names(&next), ["a"]);
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(url: &str, first: DeltaDiscoveryRequest) -> Delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string()).await.unwrap();
        let (tx, requests) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = client.delta_aggregated_resources(ReceiverStream::new(requests)).await.unwrap().into_inner();
        Delta { tx, rx }
    }

    async fn next(&mut self) -> Option<DeltaDiscoveryResponse> {
        tokio::time::timeout(Duration::from_millis(400), self.rx.message()).await.ok().map(|r| r.unwrap().unwrap())
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        self.tx.send(ack).await.unwrap();
    }
}

fn resource_names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn delta_sends_only_what_the_client_lacks() {
    let (publish, _stats, url) = server(resources(&[("a", ""), ("b", "")])).await;
    let wildcard = DeltaDiscoveryRequest { type_url: CLUSTER.into(), ..Default::default() };
    let mut client = Delta::open(&url, wildcard.clone()).await;
    let first = client.next().await.expect("the initial clusters");
    assert_eq!(resource_names(&first), ["a", "b"]);
    client.ack(&first).await;
    assert!(client.next().await.is_none());

    // One cluster changes and one goes: only those are in the next response.
    publish.send_replace(resources(&[("a", ", connect_timeout: 2s")]));
    let change = client.next().await.expect("a delta push");
    assert_eq!(resource_names(&change), ["a"]);
    assert_eq!(change.removed_resources, ["b"]);
    client.ack(&change).await;

    // A reconnecting client that already has the current version of `a` is sent nothing for it.
    let versions = change.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
    let mut again = Delta::open(&url, DeltaDiscoveryRequest { initial_resource_versions: versions, ..wildcard }).await;
    assert!(again.next().await.is_none(), "nothing new for a client that is up to date");

    // A client holding a resource that no longer exists is told it was removed.
    let stale = [("gone".to_string(), "v0".to_string())].into_iter().collect();
    let wildcard =
        DeltaDiscoveryRequest { type_url: CLUSTER.into(), initial_resource_versions: stale, ..Default::default() };
    let mut third = Delta::open(&url, wildcard).await;
    let response = third.next().await.expect("a response");
    assert_eq!(resource_names(&response), ["a"]);
    assert_eq!(response.removed_resources, ["gone"]);
}

/// A node as a proxy sends it: id, cluster and `{ LABELS: { version } }` metadata.
fn node(id: &str, cluster: &str, version: Option<&str>) -> xds_proto::pb::envoy::config::core::v3::Node {
    use xds_proto::pb::google::protobuf::{Struct, Value, value::Kind};
    let text = |s: &str| Value { kind: Some(Kind::StringValue(s.into())) };
    let metadata = version.map(|v| Struct {
        fields: [
            (
                "LABELS".to_string(),
                Value { kind: Some(Kind::StructValue(Struct { fields: [("version".to_string(), text(v))].into() })) },
            ),
            ("ISTIO_VERSION".to_string(), text("1.0")),
        ]
        .into(),
    });
    xds_proto::pb::envoy::config::core::v3::Node {
        id: id.into(),
        cluster: cluster.into(),
        metadata,
        ..Default::default()
    }
}

#[tokio::test]
async fn each_proxy_gets_the_listeners_for_its_node_and_what_they_use() {
    let mesh = strait_control::mesh::parse(
        "listeners:\n\
         - { name: web, port: 10000, nodes: [frontend] }\n\
         - { name: internal, port: 10001, nodes: [backend] }\n\
         - { name: canary, port: 10002, nodes: [{ cluster: frontend, metadata: { LABELS.version: v2 } }, { id: debug-1 }] }\n\
         services:\n\
         - { name: a, endpoints: ['127.0.0.1:1'] }\n\
         - { name: b, endpoints: ['127.0.0.1:2'] }\n\
         - { name: c, endpoints: ['127.0.0.1:4'] }\n\
         - { name: shared, endpoints: ['127.0.0.1:3'] }\n\
         routes:\n\
         - { name: w, listener: web, to: [{ service: a }] }\n\
         - { name: i, listener: internal, to: [{ service: b }] }\n\
         - { name: k, listener: canary, to: [{ service: c }] }\n",
    )
    .unwrap();
    mesh.validate().unwrap();
    let (_publish, _stats, url) = server(Arc::new(strait_control::compile::compile(&mesh).unwrap())).await;
    let cases = [
        (node("frontend-1", "frontend", Some("v1")), vec!["web"], vec!["a", "shared"]),
        (node("frontend-2", "frontend", Some("v2")), vec!["canary", "web"], vec!["a", "c", "shared"]),
        (node("backend-1", "backend", Some("v2")), vec!["internal"], vec!["b", "shared"]),
        (node("debug-1", "backend", None), vec!["canary", "internal"], vec!["b", "c", "shared"]),
    ];
    for (node, listener, clusters) in cases {
        let id = node.id.clone();
        let mut client = Sotw::open(&url).await;
        let first = DiscoveryRequest { node: Some(node), type_url: CLUSTER.into(), ..Default::default() };
        client.tx.send(first).await.unwrap();
        assert_eq!(names(&client.next().await.expect("clusters")), clusters, "{id}");
        client.send(xds_proto::type_url::LISTENER, &[], "", "", None).await;
        let listeners = client.next().await.expect("listeners");
        let got: Vec<String> = listeners
            .resources
            .iter()
            .map(|any| {
                use prost::Message;
                xds_proto::pb::envoy::config::listener::v3::Listener::decode(any.value.as_slice()).unwrap().name
            })
            .collect();
        assert_eq!(got, listener, "{id}");
    }
}
