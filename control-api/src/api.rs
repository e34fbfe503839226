//! The management API (`strait.control.v1.MeshService`): apply, delete (both with dry run), list and
//! watch the mesh objects, over gRPC. Objects convert to and from the mesh YAML's types, so the API,
//! the files and the CLI say the same things.

use crate::control::{ChangeError, Changed, Control, Served};
use crate::mesh::{self, Mesh};
use crate::policy::{self, TrafficPolicy};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use xds_proto::control as pb;
use xds_proto::control::mesh_service_server::{MeshService, MeshServiceServer};

#[derive(Debug, Clone)]
pub struct MeshApi {
    control: Arc<Control>,
    stop: watch::Receiver<bool>,
}

impl MeshApi {
    pub fn new(control: Arc<Control>, stop: watch::Receiver<bool>) -> Self {
        MeshApi { control, stop }
    }

    pub fn into_service(self) -> MeshServiceServer<Self> {
        MeshServiceServer::new(self)
    }
}

fn status(e: ChangeError) -> Status {
    match e {
        ChangeError::Invalid(m) => Status::invalid_argument(m),
        ChangeError::NotFound(m) => Status::not_found(m),
        ChangeError::OwnedByFile(m) => Status::failed_precondition(m),
        ChangeError::Storage(m) => Status::internal(m),
    }
}

fn changed(c: Changed) -> Response<pb::ChangeResponse> {
    Response::new(pb::ChangeResponse { version: c.version, changes: c.changes })
}

fn state(served: &Served) -> pb::MeshState {
    pb::MeshState { version: served.version.clone(), mesh: Some(to_proto(&served.mesh)) }
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::MeshState, Status>> + Send>>;

#[tonic::async_trait]
impl MeshService for MeshApi {
    async fn apply(&self, request: Request<pb::ApplyRequest>) -> Result<Response<pb::ChangeResponse>, Status> {
        let request = request.into_inner();
        let objects = from_proto(request.objects.unwrap_or_default()).map_err(Status::invalid_argument)?;
        let control = self.control.clone();
        let result = tokio::task::spawn_blocking(move || control.apply(objects, request.dry_run))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        result.map(changed).map_err(status)
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::ChangeResponse>, Status> {
        let request = request.into_inner();
        let refs: Vec<(String, String)> = request.objects.into_iter().map(|o| (o.kind, o.name)).collect();
        let control = self.control.clone();
        let result = tokio::task::spawn_blocking(move || control.delete(&refs, request.dry_run))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        result.map(changed).map_err(status)
    }

    async fn list(&self, _: Request<pb::ListRequest>) -> Result<Response<pb::MeshState>, Status> {
        Ok(Response::new(state(&self.control.current())))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let mut served = self.control.served();
        let stop = self.stop.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let current = state(&served.borrow_and_update().clone());
                if tx.send(Ok(current)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = served.changed() => if changed.is_err() { return },
                    () = crate::stopped(stop.clone()) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn duration(text: &str, field: &str) -> Result<Option<Duration>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    humantime::parse_duration(text).map(Some).map_err(|e| format!("{field}: '{text}': {e}"))
}

fn format_duration(d: Option<Duration>) -> String {
    d.map(|d| humantime::format_duration(d).to_string()).unwrap_or_default()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn operations_from_proto(o: pb::HeaderOperations) -> mesh::HeaderOperations {
    mesh::HeaderOperations { set: o.set.into_iter().collect(), add: o.add.into_iter().collect(), remove: o.remove }
}

fn operations_to_proto(o: &mesh::HeaderOperations) -> pb::HeaderOperations {
    pb::HeaderOperations {
        set: o.set.clone().into_iter().collect(),
        add: o.add.clone().into_iter().collect(),
        remove: o.remove.clone(),
    }
}

/// API objects to the mesh's own types; errors name the object and field.
pub fn from_proto(m: pb::Mesh) -> Result<Mesh, String> {
    let listeners = m
        .listeners
        .into_iter()
        .map(|l| mesh::ListenerSpec {
            name: l.name,
            address: non_empty(l.address).unwrap_or_else(|| "127.0.0.1".into()),
            port: u16::try_from(l.port).unwrap_or(0),
            nodes: l
                .nodes
                .into_iter()
                .map(|n| mesh::NodeSelector {
                    id: non_empty(n.id),
                    cluster: non_empty(n.cluster),
                    metadata: n.metadata.into_iter().collect(),
                })
                .collect(),
            origin: None,
        })
        .collect();
    let mut services = Vec::new();
    for s in m.services {
        let protocol = match s.protocol.as_str() {
            "" | "http1" => mesh::Protocol::Http1,
            "http2" => mesh::Protocol::Http2,
            other => return Err(format!("service '{}': protocol: '{other}' is not http1 or http2", s.name)),
        };
        let at = format!("service '{}'", s.name);
        services.push(mesh::ServiceSpec {
            connect_timeout: duration(&s.connect_timeout, &format!("{at}: connect_timeout"))?,
            traffic_policy: policy_from_proto(s.traffic_policy.unwrap_or_default(), &format!("{at}: traffic_policy"))?,
            endpoints: s
                .endpoints
                .into_iter()
                .map(|e| mesh::EndpointSpec::Weighted {
                    address: e.address,
                    weight: e.weight.max(1),
                    priority: e.priority,
                })
                .collect(),
            name: s.name,
            protocol,
            origin: None,
        });
    }
    let mut routes = Vec::new();
    for r in m.routes {
        let at = format!("route '{}'", r.name);
        let matcher = r.r#match.unwrap_or_default();
        routes.push(mesh::RouteSpec {
            timeout: duration(&r.timeout, &format!("{at}: timeout"))?,
            retries: match r.retries {
                Some(t) => Some(mesh::RetriesSpec {
                    attempts: t.attempts,
                    per_try_timeout: duration(&t.per_try_timeout, &format!("{at}: retries.per_try_timeout"))?,
                    retry_on: non_empty(t.retry_on),
                }),
                None => None,
            },
            fault: match r.fault {
                Some(f) => Some(mesh::FaultSpec {
                    delay: match f.delay {
                        Some(d) => Some(mesh::DelaySpec {
                            fixed_delay: duration(&d.fixed_delay, &format!("{at}: fault.delay.fixed_delay"))?
                                .ok_or_else(|| format!("{at}: fault.delay.fixed_delay: required"))?,
                            percentage: d.percentage.unwrap_or(100.0),
                        }),
                        None => None,
                    },
                    abort: f.abort.map(|a| mesh::AbortSpec {
                        http_status: (a.http_status != 0).then(|| u16::try_from(a.http_status).unwrap_or(u16::MAX)),
                        grpc_status: a.grpc_status,
                        percentage: a.percentage.unwrap_or(100.0),
                    }),
                }),
                None => None,
            },
            mirror: r
                .mirror
                .map(|m| mesh::MirrorSpec { service: m.service, percentage: m.percentage.unwrap_or(100.0) }),
            headers: r
                .headers
                .map(|h| mesh::HeadersSpec {
                    request: h.request.map(operations_from_proto).unwrap_or_default(),
                    response: h.response.map(operations_from_proto).unwrap_or_default(),
                })
                .unwrap_or_default(),
            name: r.name,
            listener: r.listener,
            hosts: if r.hosts.is_empty() { vec!["*".into()] } else { r.hosts },
            matcher: mesh::MatchSpec {
                prefix: non_empty(matcher.prefix),
                path: non_empty(matcher.path),
                headers: matcher.headers.into_iter().collect(),
            },
            to: r.to.into_iter().map(|t| mesh::TargetSpec { service: t.service, weight: t.weight.max(1) }).collect(),
            prefix_rewrite: non_empty(r.prefix_rewrite),
            redirect: r.redirect.map(|d| mesh::RedirectSpec {
                prefix: non_empty(d.prefix),
                path: non_empty(d.path),
                status: if d.status == 0 { 302 } else { u16::try_from(d.status).unwrap_or(0) },
            }),
            direct: r
                .direct
                .map(|d| mesh::DirectSpec { status: u16::try_from(d.status).unwrap_or(0), body: non_empty(d.body) }),
            origin: None,
        });
    }
    Ok(Mesh { listeners, services, routes, ..Mesh::default() })
}

/// The mesh's types as API objects.
pub fn to_proto(m: &Mesh) -> pb::Mesh {
    pb::Mesh {
        listeners: m
            .listeners
            .iter()
            .map(|l| pb::Listener {
                name: l.name.clone(),
                address: l.address.clone(),
                port: u32::from(l.port),
                nodes: l
                    .nodes
                    .iter()
                    .map(|n| pb::NodeSelector {
                        id: n.id.clone().unwrap_or_default(),
                        cluster: n.cluster.clone().unwrap_or_default(),
                        metadata: n.metadata.clone().into_iter().collect(),
                    })
                    .collect(),
            })
            .collect(),
        services: m
            .services
            .iter()
            .map(|s| pb::Service {
                name: s.name.clone(),
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|e| pb::Endpoint {
                        address: e.address().to_string(),
                        weight: e.weight(),
                        priority: e.priority(),
                    })
                    .collect(),
                traffic_policy: (s.traffic_policy != TrafficPolicy::default())
                    .then(|| policy_to_proto(&s.traffic_policy)),
                protocol: match s.protocol {
                    mesh::Protocol::Http1 => "http1".into(),
                    mesh::Protocol::Http2 => "http2".into(),
                },
                connect_timeout: format_duration(s.connect_timeout),
            })
            .collect(),
        routes: m
            .routes
            .iter()
            .map(|r| pb::Route {
                name: r.name.clone(),
                listener: r.listener.clone(),
                hosts: r.hosts.clone(),
                r#match: Some(pb::Match {
                    prefix: r.matcher.prefix.clone().unwrap_or_default(),
                    path: r.matcher.path.clone().unwrap_or_default(),
                    headers: r.matcher.headers.clone().into_iter().collect(),
                }),
                to: r.to.iter().map(|t| pb::Target { service: t.service.clone(), weight: t.weight }).collect(),
                prefix_rewrite: r.prefix_rewrite.clone().unwrap_or_default(),
                redirect: r.redirect.as_ref().map(|d| pb::Redirect {
                    prefix: d.prefix.clone().unwrap_or_default(),
                    path: d.path.clone().unwrap_or_default(),
                    status: u32::from(d.status),
                }),
                direct: r
                    .direct
                    .as_ref()
                    .map(|d| pb::Direct { status: u32::from(d.status), body: d.body.clone().unwrap_or_default() }),
                timeout: format_duration(r.timeout),
                retries: r.retries.as_ref().map(|t| pb::Retries {
                    attempts: t.attempts,
                    per_try_timeout: format_duration(t.per_try_timeout),
                    retry_on: t.retry_on.clone().unwrap_or_default(),
                }),
                fault: r.fault.as_ref().map(|f| pb::Fault {
                    delay: f.delay.as_ref().map(|d| pb::FaultDelay {
                        fixed_delay: format_duration(Some(d.fixed_delay)),
                        percentage: Some(d.percentage),
                    }),
                    abort: f.abort.as_ref().map(|a| pb::FaultAbort {
                        http_status: a.http_status.map_or(0, u32::from),
                        grpc_status: a.grpc_status,
                        percentage: Some(a.percentage),
                    }),
                }),
                mirror: r
                    .mirror
                    .as_ref()
                    .map(|m| pb::Mirror { service: m.service.clone(), percentage: Some(m.percentage) }),
                headers: (r.headers != mesh::HeadersSpec::default()).then(|| pb::Headers {
                    request: Some(operations_to_proto(&r.headers.request)),
                    response: Some(operations_to_proto(&r.headers.response)),
                }),
            })
            .collect(),
    }
}

fn policy_from_proto(p: pb::TrafficPolicy, at: &str) -> Result<TrafficPolicy, String> {
    let load_balancer = match p.load_balancer.as_str() {
        "" => policy::LoadBalancer::default(),
        name => policy::LoadBalancer::parse(name)
            .ok_or_else(|| format!("{at}: load_balancer: '{name}' is not one of {}", policy::LoadBalancer::NAMES))?,
    };
    let outlier_detection = match p.outlier_detection {
        None => None,
        Some(o) => Some(policy::OutlierSpec {
            consecutive_5xx_errors: o.consecutive_5xx_errors,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            interval: duration(&o.interval, &format!("{at}: outlier_detection.interval"))?,
            base_ejection_time: duration(
                &o.base_ejection_time,
                &format!("{at}: outlier_detection.base_ejection_time"),
            )?,
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: o.min_health_percent,
        }),
    };
    let health_check = match p.health_check {
        None => None,
        Some(h) => Some(policy::HealthCheckSpec {
            kind: match h.kind.as_str() {
                "" | "http" => policy::ProbeKind::Http,
                "tcp" => policy::ProbeKind::Tcp,
                "grpc" => policy::ProbeKind::Grpc,
                other => return Err(format!("{at}: health_check.kind: '{other}' is not http, tcp or grpc")),
            },
            path: non_empty(h.path),
            service: non_empty(h.service),
            interval: duration(&h.interval, &format!("{at}: health_check.interval"))?,
            timeout: duration(&h.timeout, &format!("{at}: health_check.timeout"))?,
            unhealthy_threshold: h.unhealthy_threshold,
            healthy_threshold: h.healthy_threshold,
        }),
    };
    let connection_pool = match p.connection_pool {
        None => None,
        Some(c) => Some(policy::ConnectionPoolSpec {
            max_connections: c.max_connections,
            max_pending_requests: c.max_pending_requests,
            max_requests: c.max_requests,
            max_retries: c.max_retries,
            max_requests_per_connection: c.max_requests_per_connection,
            idle_timeout: duration(&c.idle_timeout, &format!("{at}: connection_pool.idle_timeout"))?,
        }),
    };
    let hash_on = match p.hash_on {
        None => None,
        Some(h) => Some(policy::HashOn {
            header: non_empty(h.header),
            cookie: non_empty(h.cookie),
            cookie_ttl: duration(&h.cookie_ttl, &format!("{at}: hash_on.cookie_ttl"))?,
            source_ip: h.source_ip,
        }),
    };
    Ok(TrafficPolicy { load_balancer, hash_on, outlier_detection, health_check, connection_pool, tls: None })
}

fn policy_to_proto(p: &TrafficPolicy) -> pb::TrafficPolicy {
    pb::TrafficPolicy {
        load_balancer: p.load_balancer.name().to_string(),
        hash_on: p.hash_on.as_ref().map(|h| pb::HashOn {
            header: h.header.clone().unwrap_or_default(),
            cookie: h.cookie.clone().unwrap_or_default(),
            cookie_ttl: format_duration(h.cookie_ttl),
            source_ip: h.source_ip,
        }),
        outlier_detection: p.outlier_detection.as_ref().map(|o| pb::OutlierDetection {
            consecutive_5xx_errors: o.consecutive_5xx_errors,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            interval: format_duration(o.interval),
            base_ejection_time: format_duration(o.base_ejection_time),
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: o.min_health_percent,
        }),
        health_check: p.health_check.as_ref().map(|h| pb::HealthCheck {
            kind: match h.kind {
                policy::ProbeKind::Http => "http",
                policy::ProbeKind::Tcp => "tcp",
                policy::ProbeKind::Grpc => "grpc",
            }
            .to_string(),
            path: h.path.clone().unwrap_or_default(),
            service: h.service.clone().unwrap_or_default(),
            interval: format_duration(h.interval),
            timeout: format_duration(h.timeout),
            unhealthy_threshold: h.unhealthy_threshold,
            healthy_threshold: h.healthy_threshold,
        }),
        connection_pool: p.connection_pool.as_ref().map(|c| pb::ConnectionPool {
            max_connections: c.max_connections,
            max_pending_requests: c.max_pending_requests,
            max_requests: c.max_requests,
            max_retries: c.max_retries,
            max_requests_per_connection: c.max_requests_per_connection,
            idle_timeout: format_duration(c.idle_timeout),
        }),
    }
}
