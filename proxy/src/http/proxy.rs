//! Where a request goes, top to bottom: pick the route, answer locally (direct response, redirect) or
//! pick a cluster and an endpoint, rewrite the request, send it upstream within the route timeout,
//! and shape the response. Every failure returns a [`ProxyError`], turned into a reply in one place.

use super::ResponseFlag;
use super::timeout_body::{Limits, TimedBody};
use super::{HttpConnectionManager, ProxyError, forwarding, upgrade};
use crate::policy::deadline::{DeadlineLayer, Deadlined, Expiry, PerTry};
use crate::policy::filters::{self, Filtering};
use crate::policy::mirror::{self, MirrorPolicy, ShadowBody, Tee};
use crate::policy::retry::body::ReplayBody;
use crate::policy::retry::headers::Overrides;
use crate::policy::retry::{Retries, RetryOn, RetryPolicy};
use crate::policy::timeout::{self, StreamDuration};
use crate::routing::hash_policy::request_hash;
use crate::routing::{Action, Forward, RequestView, Route, VirtualHost, strip_port};
use crate::snapshot::Snapshot;
use crate::telemetry::GaugeGuard;
use crate::telemetry::access_log::LogRecord;
use crate::upstream::attempt::{Attempt, TriedHosts, UpstreamRequest};
use crate::upstream::pool::{DownstreamBody, PooledBody, RequestBody, UpstreamResponse};
use crate::upstream::{Cluster, Endpoint, UpstreamProtocol};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, Version, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// What the downstream receives: an upstream body streamed through, or a local reply.
pub type ResponseBody = Either<TimedBody<PooledBody>, Full<Bytes>>;

static X_ENVOY_UPSTREAM_SERVICE_TIME: http::HeaderName = http::HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: http::HeaderName =
    http::HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// One downstream connection's fixed facts.
#[derive(Debug)]
pub struct Downstream {
    pub peer: SocketAddr,
    pub listener: String,
    /// The filter chain it was accepted by: its index in the listener, and its name.
    pub chain: usize,
    pub chain_name: String,
    /// TLS facts, when the chain terminates TLS.
    pub tls: Option<Box<crate::tls::identity::ConnectionTls>>,
    /// The connection's local address (RBAC's destination IP and port).
    pub local: SocketAddr,
}

/// What a request learned on its way, for stats and the access log.
#[derive(Debug, Default)]
struct Outcome {
    request_id: Option<HeaderValue>,
    cluster: Option<Arc<Cluster>>,
    endpoint: Option<SocketAddr>,
    route_name: String,
    /// A sticky-session cookie made up by the route's hash policy, set on the response.
    set_cookie: Option<HeaderValue>,
    /// When the request arrived (a stream's maximum duration counts from here).
    arrived: Option<tokio::time::Instant>,
}

/// The request line and headers as received, kept only when an access log needs them.
struct Received {
    start: Instant,
    start_time: SystemTime,
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    version: Version,
}

/// Where a routed request goes.
enum Upstream {
    /// The endpoint picked when it was routed.
    Endpoint(Arc<Endpoint>, Request<RequestBody>),
    /// Attempts under a retry policy, each picking its endpoint, the body kept for another send.
    Retried(Retried),
}

/// A request to send under its retry policy.
struct Retried {
    policy: Arc<RetryPolicy>,
    request: UpstreamRequest,
    /// Its hash for RING_HASH and MAGLEV clusters.
    hash: Option<u64>,
}

/// A routed request, ready to go upstream.
struct Exchange {
    upstream: Upstream,
    cluster: Arc<Cluster>,
    timeout: Option<std::time::Duration>,
    /// The stream's idle timeout (the route's, or the connection manager's).
    idle: Option<Duration>,
    /// The idle timeout while waiting for the response headers: for a request without a body,
    /// which has nothing more to send (an upload's own pauses are timed by its body).
    idle_before_headers: Option<Duration>,
    /// The stream's end (`max_stream_duration`): 504 before the response starts, cut after.
    stream_deadline: Option<tokio::time::Instant>,
    /// The downstream side of an HTTP/1.1 upgrade (WebSocket), when one was asked for.
    downstream_upgrade: Option<OnUpgrade>,
    /// Set when the downstream request body ran out of time (its 408, not the upstream's fault);
    /// none for a request without a body.
    request_expired: Option<Arc<AtomicBool>>,
}

/// What routing decided: an answer right away, or an exchange with an upstream.
enum Step {
    Reply(Response<ResponseBody>),
    Forward(Exchange),
}

/// Handles one request on `connection`, with the connection manager of the newest snapshot (loaded
/// once for the request). Its error type is `Infallible`: every failure is answered.
///
/// One future for the whole request, boxed once by the connection: routing runs without awaiting
/// (its locals take no room in the future) and only the upstream exchange is awaited. A future
/// nested in another's `async` block would be copied whole each time it moves in, and an `async fn`
/// would hold the request twice (as argument and as local).
#[allow(clippy::manual_async_fn)]
pub fn handle(
    req: Request<Incoming>,
    connection: Arc<super::server::Connection>,
) -> impl Future<Output = Result<Response<ResponseBody>, std::convert::Infallible>> + Send + 'static {
    async move {
        let _stream = connection.stream();
        let snapshot = connection.snapshot();
        let (downstream, hcm) = (connection.downstream(), connection.manager(&snapshot));
        let snapshot = &*snapshot;
        hcm.stats.rq_total.increment(1);
        let _active = GaugeGuard::new(&hcm.stats.rq_active);
        let received = (!hcm.access_logs.is_empty()).then(|| {
            Box::new(Received {
                start: Instant::now(),
                start_time: SystemTime::now(),
                method: req.method().clone(),
                uri: req.uri().clone(),
                headers: req.headers().clone(),
                version: req.version(),
            })
        });
        let mut outcome = Outcome { arrived: Some(tokio::time::Instant::now()), ..Outcome::default() };
        let grpc = crate::routing::is_grpc(req.headers());
        let routed = route(req, downstream, snapshot, hcm, &mut outcome, grpc);
        let mut response = match routed {
            Err(err) => local_reply(err, hcm, grpc),
            Ok(routed) => {
                let (mut response, vhost, route) = match routed {
                    Routed::Step(step, vhost, route) => (answer(step, hcm, grpc).await, vhost, route),
                    Routed::Filter(request, selected, first) => {
                        let (vhost, route) = (selected.vhost, selected.route);
                        let router = (downstream, snapshot, hcm, grpc);
                        let handoff = Handoff { outcome: std::mem::take(&mut outcome), ..Handoff::default() };
                        let handoff = std::sync::Mutex::new(handoff);
                        let filtering = Filtering { request, selected };
                        let answer = through_filters(filtering, &hcm.filters[first..], router, &handoff).await;
                        outcome = handoff.into_inner().unwrap_or_else(|e| e.into_inner()).outcome;
                        (answer.unwrap_or_else(|err| local_reply(err, hcm, grpc)), vhost, route)
                    }
                };
                for level in hcm.routes.mutations(vhost, route, false) {
                    level.apply(response.headers_mut());
                }
                response
            }
        };
        let status = response.status().as_u16();
        hcm.stats.rq_xx.record(status);
        response.headers_mut().insert(header::SERVER, hcm.server_name.clone());
        if let Some(cookie) = outcome.set_cookie.take() {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if let Some(id) = outcome.request_id.take().filter(|_| hcm.always_set_request_id_in_response) {
            response.headers_mut().insert(forwarding::X_REQUEST_ID.clone(), id);
        }
        if let Some(received) = received {
            log(hcm, &received, &response, &outcome, downstream);
        }
        Ok(response)
    }
}

fn log(
    hcm: &HttpConnectionManager,
    received: &Received,
    response: &Response<ResponseBody>,
    outcome: &Outcome,
    downstream: &Downstream,
) {
    let flags = response.extensions().get::<ResponseFlag>().map_or("", |f| f.0);
    let authority = authority(&received.uri, &received.headers);
    let authority = authority.as_ref().and_then(|a| a.to_str().ok()).unwrap_or_default();
    let record = LogRecord {
        start: received.start_time,
        request_headers: &received.headers,
        method: received.method.as_str(),
        path: received.uri.path_and_query().map_or("/", |p| p.as_str()),
        authority,
        protocol: protocol_name(received.version),
        response_headers: Some(response.headers()),
        status: response.status().as_u16(),
        flags,
        bytes_received: 0,
        bytes_sent: http_body::Body::size_hint(response.body()).exact().unwrap_or(0),
        duration: received.start.elapsed(),
        upstream_host: outcome.endpoint,
        upstream_cluster: outcome.cluster.as_ref().map(|c| c.config.name.as_str()),
        downstream: downstream.peer,
        route_name: &outcome.route_name,
        tls: downstream.tls.as_deref(),
    };
    for log in &hcm.access_logs {
        log.log(&record);
    }
}

/// The route a request matched, and what routing learned on the way.
pub struct Selected<'h> {
    pub vhost: &'h VirtualHost,
    pub route: &'h Route,
    /// Sent from inside the mesh (may steer the proxy with x-envoy-* headers).
    internal: bool,
    pub authority: HeaderValue,
    pub path: http::uri::PathAndQuery,
    /// A forwarding route's cluster for this request (a weighted split is drawn here, as Envoy does
    /// when it resolves the route, so filters see it).
    pub cluster_name: Option<std::borrow::Cow<'h, str>>,
    /// The trusted client address.
    pub client: std::net::IpAddr,
}

/// A routed request: what the router does with it now, or the request still to go through the
/// connection manager's HTTP filters from the one at the index on, no larger than the step.
#[allow(clippy::large_enum_variant)]
enum Routed<'h> {
    Step(Step, &'h VirtualHost, &'h Route),
    Filter(Request<Incoming>, Selected<'h>, usize),
}

/// Routes a request: the route chosen (for its response headers) and what to do. An error before a
/// route was found is answered without any route's headers.
fn route<'h>(
    mut req: Request<Incoming>,
    downstream: &Downstream,
    snapshot: &Snapshot,
    hcm: &'h HttpConnectionManager,
    outcome: &mut Outcome,
    grpc: bool,
) -> Result<Routed<'h>, ProxyError> {
    let selected = select(&mut req, downstream, hcm, outcome)?;
    let (vhost, route) = (selected.vhost, selected.route);
    if !hcm.filters.is_empty() {
        let table = &hcm.routes.filter_configs;
        match filters::decide_early(&hcm.filters, table, downstream, &mut req, &selected) {
            Ok(first) if first < hcm.filters.len() => return Ok(Routed::Filter(req, selected, first)),
            Ok(_) => {}
            Err(refused) => return Ok(Routed::Step(Step::Reply(local_reply(refused, hcm, grpc)), vhost, route)),
        }
    }
    Ok(Routed::Step(act(req, downstream, snapshot, hcm, selected, outcome, grpc), vhost, route))
}

/// Steps 1 and 2: sets the forwarding headers and finds the virtual host and route.
fn select<'h>(
    req: &mut Request<Incoming>,
    downstream: &Downstream,
    hcm: &'h HttpConnectionManager,
    outcome: &mut Outcome,
) -> Result<Selected<'h>, ProxyError> {
    // 1. Forwarding headers (x-forwarded-*, x-request-id) are set before routing, as Envoy does.
    let scheme = if downstream.tls.is_some() { "https" } else { "http" };
    let forwarded = forwarding::apply(hcm, req.headers_mut(), downstream.peer, scheme);
    super::client_cert::apply(
        hcm.forward_client_cert,
        hcm.client_cert_details,
        req.headers_mut(),
        downstream.tls.as_deref(),
    );
    outcome.request_id = forwarded.request_id;

    // 2. Which virtual host and route.
    let authority_value = authority(req.uri(), req.headers()).ok_or(ProxyError::BadRequest("missing host"))?;
    let authority = authority_value.to_str().map_err(|_| ProxyError::BadRequest("invalid host"))?;
    let match_authority = if hcm.strip_any_host_port { strip_port(authority) } else { authority };
    let path = req.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let view = RequestView {
        authority: match_authority,
        path_and_query: path.as_str(),
        method: req.method(),
        headers: req.headers(),
    };
    let (vhost, route) = hcm.routes.find(&view).ok_or(ProxyError::NoRoute)?;
    outcome.route_name.clone_from(&route.name);
    let cluster_name = match &route.action {
        Action::Forward(forward) => Some(forward.target.pick(req.headers())),
        _ => None,
    };
    Ok(Selected {
        vhost,
        route,
        internal: forwarded.internal,
        authority: authority_value,
        path,
        cluster_name,
        client: forwarded.client,
    })
}

/// Sends a request through the connection manager's filters ([`filters::Chain`]) to the router.
/// The router decides the request's [`Step`] and hands it over; the exchange's future is driven
/// here, beside the chain (boxing it into the chain would copy it whole), and its answer goes
/// back up through the filters.
fn through_filters<'a>(
    filtering: Filtering<'a>,
    filters: &'a [crate::policy::HttpFilter],
    (downstream, snapshot, hcm, grpc): (&'a Downstream, &'a Snapshot, &'a HttpConnectionManager, bool),
    handoff: &'a std::sync::Mutex<Handoff>,
) -> impl Future<Output = filters::Answer> + Send + 'a {
    use std::task::Poll;
    use tower::Service;
    let router = Router { downstream, snapshot, hcm, handoff, grpc };
    // Always ready (the chain's `poll_ready`): called at once.
    let mut filtered = filters::Chain::new(filters, &hcm.routes.filter_configs, downstream, router).call(filtering);
    async move {
        let mut answering = std::pin::pin!(None);
        std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(answer) = std::pin::Pin::new(&mut filtered).poll(cx) {
                    return Poll::Ready(answer);
                }
                if answering.is_none() {
                    let Some(step) = Handoff::lock(handoff).step.take() else { return Poll::Pending };
                    answering.set(Some(answer(*step, hcm, grpc)));
                }
                let Some(answering_now) = answering.as_mut().as_pin_mut() else { return Poll::Pending };
                let response = std::task::ready!(answering_now.poll(cx));
                answering.set(None);
                Handoff::lock(handoff).answer = Some(response);
            }
        })
        .await
    }
}

/// What the router at the bottom of the filter chain shares with [`through_filters`]: the
/// request's [`Outcome`], the step it decided and the answer to pass back up.
#[derive(Default)]
struct Handoff {
    outcome: Outcome,
    step: Option<Box<Step>>,
    answer: Option<Response<ResponseBody>>,
}

impl Handoff {
    fn lock(handoff: &std::sync::Mutex<Handoff>) -> std::sync::MutexGuard<'_, Handoff> {
        handoff.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bottom of the filter chain: decides as a request without filters goes, and hands the step
/// over (behind a lock only because the chain copies the router).
#[derive(Clone, Copy)]
struct Router<'a> {
    downstream: &'a Downstream,
    snapshot: &'a Snapshot,
    hcm: &'a HttpConnectionManager,
    handoff: &'a std::sync::Mutex<Handoff>,
    grpc: bool,
}

impl<'a> tower::Service<Filtering<'a>> for Router<'a> {
    type Response = Response<ResponseBody>;
    type Error = ProxyError;
    type Future = RouterAnswer<'a>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, filtering: Filtering<'a>) -> RouterAnswer<'a> {
        let Router { downstream, snapshot, hcm, handoff, grpc } = *self;
        // A filter calls the router once it lets the request through (a fault's delay first), so
        // the endpoint is picked now.
        let mut shared = Handoff::lock(handoff);
        let step = act(filtering.request, downstream, snapshot, hcm, filtering.selected, &mut shared.outcome, grpc);
        shared.step = Some(Box::new(step));
        drop(shared);
        // The router's own failures are answered as replies, so the filters above see (and mark)
        // them as Envoy's encoder filters do; a filter's refusal stays an error.
        RouterAnswer(handoff)
    }
}

/// The router's answer: the exchange's response once [`through_filters`] has put it in the
/// hand-off. It needs no waker: [`through_filters`] polls the chain again once the answer is there.
struct RouterAnswer<'a>(&'a std::sync::Mutex<Handoff>);

impl Future for RouterAnswer<'_> {
    type Output = filters::Answer;

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<filters::Answer> {
        match Handoff::lock(self.0).answer.take() {
            Some(response) => std::task::Poll::Ready(Ok(response)),
            None => std::task::Poll::Pending,
        }
    }
}

/// Step 3: answers locally, or prepares the exchange with the upstream; a failure after the route
/// was chosen still gets its headers.
fn act(
    req: Request<Incoming>,
    downstream: &Downstream,
    snapshot: &Snapshot,
    hcm: &HttpConnectionManager,
    selected: Selected<'_>,
    outcome: &mut Outcome,
    grpc: bool,
) -> Step {
    let Selected { vhost, route, internal, authority, path, cluster_name, .. } = selected;
    match &route.action {
        Action::Direct(direct) => {
            let mut resp = Response::builder().status(direct.status);
            if let Some(body) = &direct.body {
                resp = resp.header(header::CONTENT_TYPE, "text/plain");
                resp = resp.header(header::CONTENT_LENGTH, body.len());
            }
            let body = direct.body.clone().unwrap_or_default();
            Step::Reply(resp.body(Either::Right(Full::new(body))).expect("valid direct response"))
        }
        Action::Redirect(redirect) => {
            let scheme = req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("http");
            let authority = authority.to_str().unwrap_or_default();
            let location = redirect.location(scheme, authority, path.as_str(), &route.matcher.path);
            let resp = Response::builder()
                .status(redirect.status)
                .header(header::LOCATION, location)
                .header(header::CONTENT_LENGTH, 0)
                .body(Either::Right(Full::new(Bytes::new())));
            match resp {
                Ok(resp) => Step::Reply(resp),
                Err(_) => Step::Reply(local_reply(
                    ProxyError::BadRequest("redirect location is not a valid header"),
                    hcm,
                    grpc,
                )),
            }
        }
        Action::Forward(forward) => {
            let at = (vhost, route, internal);
            // Drawn once, when the route was chosen (`route` names one for every forwarding route),
            // so the filters and the exchange agree on a weighted split's cluster.
            let cluster_name = cluster_name.unwrap_or_default();
            match prepare(req, downstream, snapshot, hcm, at, (forward, &cluster_name), (&authority, &path), outcome) {
                Ok(exchange) => Step::Forward(exchange),
                Err(err) => Step::Reply(local_reply(err, hcm, grpc)),
            }
        }
    }
}

/// What the downstream gets for a step: the local answer, or the upstream's (a failure answered by
/// [`local_reply`]).
// Not an `async fn`: that would keep the step beside the exchange's future, which holds it too.
fn answer(
    step: Step,
    hcm: &HttpConnectionManager,
    grpc: bool,
) -> impl Future<Output = Response<ResponseBody>> + Send + '_ {
    use futures_util::future::{Either, FutureExt};
    match step {
        Step::Reply(response) => Either::Left(std::future::ready(response)),
        Step::Forward(exchange) => Either::Right(
            forward(exchange, hcm).map(move |answer| answer.unwrap_or_else(|e| local_reply(e, hcm, grpc))),
        ),
    }
}

/// The one place a failure becomes the downstream's answer: counted, logged, Envoy's reply.
fn local_reply(err: ProxyError, hcm: &HttpConnectionManager, grpc: bool) -> Response<ResponseBody> {
    tracing::debug!(error = %err, side = err.source_side(), "local reply");
    match err {
        ProxyError::NoRoute => hcm.stats.no_route.increment(1),
        ProxyError::ClusterNotFound(..) => hcm.stats.no_cluster.increment(1),
        _ => {}
    }
    err.into_response(grpc).map(Either::Right)
}

/// Picks the cluster and endpoint of a forwarding route and rewrites the request as the upstream
/// will see it.
#[allow(clippy::too_many_arguments)]
fn prepare(
    mut req: Request<Incoming>,
    downstream: &Downstream,
    snapshot: &Snapshot,
    hcm: &HttpConnectionManager,
    (vhost, route, internal): (&VirtualHost, &Route, bool),
    (forward, cluster_name): (&Forward, &str),
    (authority, path): (&HeaderValue, &http::uri::PathAndQuery),
    outcome: &mut Outcome,
) -> Result<Exchange, ProxyError> {
    // Upgrades (WebSocket) only where the connection manager allows them.
    let upgrade_type = upgrade::requested(&req);
    if let Some(kind) = &upgrade_type
        && !hcm.upgrades.iter().any(|u| u == kind)
    {
        return Err(ProxyError::UpgradeRejected(kind.clone()));
    }

    // 4. Cluster and endpoint.
    let cluster = snapshot
        .clusters
        .get(cluster_name)
        .ok_or_else(|| ProxyError::ClusterNotFound(cluster_name.to_string(), forward.cluster_not_found))?
        .clone();
    outcome.cluster = Some(cluster.clone());
    // RING_HASH and MAGLEV pick by the request's hash (a made-up sticky cookie is set on the way back).
    let hash = if cluster.config.lb_policy.is_hashing() {
        let (hash, set_cookie) = request_hash(&forward.hash_policy, req.headers(), path.query(), downstream.peer);
        outcome.set_cookie = set_cookie;
        hash
    } else {
        None
    };
    let (mut retry, mut timeout) = (forward.retry.clone(), forward.timeout);
    // Whether the request changed its route's timeouts (else the route's precomputed header is told).
    let mut own_timeouts = false;
    // A gRPC caller's deadline: the route timeout (max_grpc_timeout), or the stream's limit.
    let grpc = crate::routing::is_grpc(req.headers());
    let grpc_deadline = if grpc { timeout::grpc_timeout(req.headers()) } else { None };
    if let Some(grpc_timeout) = forward.grpc_timeout.filter(|_| grpc) {
        timeout = grpc_timeout.route_timeout(grpc_deadline);
        own_timeouts = true;
    }
    let stream_limit = StreamDuration::limit(forward.stream_duration.as_ref(), hcm.max_stream_duration, grpc_deadline);
    let stream_deadline = stream_limit.map(|limit| outcome.arrived.unwrap_or_else(tokio::time::Instant::now) + limit);
    // An internal request may change its retries and timeout with x-envoy-* headers.
    if internal && forwarding::has_envoy_headers(req.headers()) {
        if let Some(overrides) = Overrides::read(req.headers()) {
            retry = overrides.retry_policy(forward.retry.as_ref(), forward.retry_buffer_limit);
            timeout = overrides.timeout(timeout);
            own_timeouts = true;
        }
        forwarding::remove_control_headers(req.headers_mut());
    }
    if let Some(policy) = retry.as_mut().filter(|p| !p.retries_request(req.headers())) {
        *policy = Arc::new(RetryPolicy { retry_on: RetryOn::default(), ..RetryPolicy::clone(policy) });
    }
    if !hcm.suppress_envoy_headers {
        let expected = match own_timeouts {
            true => timeout::expected_header(timeout, retry.as_ref().and_then(|p| p.per_try_timeout)),
            false => forward.expected_timeout.clone(),
        };
        if let Some(expected) = expected {
            req.headers_mut().insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), expected);
        }
    }
    // With a retry policy each attempt picks its endpoint (upgrades are never retried).
    let retry = retry.filter(|_| upgrade_type.is_none());
    let endpoint = match &retry {
        Some(_) => None,
        None => {
            let Some(endpoint) = cluster.pick(hash) else {
                cluster.stats.cx_none_healthy.increment(1);
                return Err(ProxyError::NoHealthyUpstream);
            };
            outcome.endpoint = Some(endpoint.addr);
            Some(endpoint)
        }
    };

    // 5. The request as the upstream sees it.
    let downstream_upgrade = upgrade_type.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let no_body = http_body::Body::is_end_stream(&body);
    let request_expired = (!no_body).then(|| Arc::new(AtomicBool::new(false)));
    let idle = forward.idle_timeout.unwrap_or(hcm.stream_idle_timeout);
    let limits = Limits { idle, deadline: hcm.request_timeout.map(|d| tokio::time::Instant::now() + d) };
    let body = TimedBody::new(body, limits, request_expired.clone());
    forwarding::strip_hop_by_hop(&mut parts.headers, upgrade_type.is_some());
    for level in hcm.routes.mutations(vhost, route, true) {
        level.apply(&mut parts.headers);
    }
    let new_path = forward.rewrite_path(&route.matcher.path, path.as_str());
    let upstream_authority = forward.host_rewrite.as_ref().unwrap_or(authority).clone();
    let tee = match upgrade_type {
        None if !forward.mirrors.is_empty() => {
            let at = (&upstream_authority, new_path.as_deref(), path);
            mirror(&forward.mirrors, snapshot, &parts, at, no_body)
        }
        _ => Tee::default(),
    };
    let body = DownstreamBody::new(body, tee);
    parts.uri = upstream_uri(&cluster, &upstream_authority, new_path, path)?;
    match cluster.config.protocol {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            parts.headers.insert(header::HOST, upstream_authority);
        }
        UpstreamProtocol::Http2 => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
        }
    }
    let upstream = match (endpoint, retry) {
        (Some(endpoint), _) => Upstream::Endpoint(endpoint, Request::from_parts(parts, RequestBody::Streamed(body))),
        (None, Some(policy)) => {
            let body = ReplayBody::new(body, policy.buffer_limit);
            let request = Request::from_parts(parts, body);
            Upstream::Retried(Retried { policy, request, hash })
        }
        (None, None) => return Err(ProxyError::NoHealthyUpstream),
    };
    let idle_before_headers = idle.filter(|_| no_body && downstream_upgrade.is_none());
    let exchange = Exchange {
        upstream,
        cluster,
        timeout,
        idle,
        idle_before_headers,
        stream_deadline,
        downstream_upgrade,
        request_expired,
    };
    Ok(exchange)
}

/// Sends a copy of the request to each shadow cluster whose share it falls in (its authority
/// suffixed `-shadow`, its body teed from this one); returns the tee that feeds them.
fn mirror(
    mirrors: &[MirrorPolicy],
    snapshot: &Snapshot,
    parts: &http::request::Parts,
    (authority, rewritten, original): (&HeaderValue, Option<&str>, &http::uri::PathAndQuery),
    no_body: bool,
) -> Tee {
    let mut tee = Tee::default();
    for policy in mirrors.iter().filter(|m| m.share.sample()) {
        let Some(cluster) = policy.target.cluster(&parts.headers).and_then(|name| snapshot.clusters.get(name)) else {
            continue;
        };
        let shadow_authority = match policy.keep_host {
            true => authority.clone(),
            false => match HeaderValue::from_str(&mirror::shadow_authority(authority.to_str().unwrap_or_default())) {
                Ok(value) => value,
                Err(_) => continue,
            },
        };
        let Ok(uri) = upstream_uri(cluster, &shadow_authority, rewritten.map(str::to_string), original) else {
            continue;
        };
        let body = if no_body { ShadowBody::empty() } else { tee.shadow() };
        let mut shadow = Request::new(RequestBody::Shadow(body));
        *shadow.method_mut() = parts.method.clone();
        *shadow.uri_mut() = uri;
        *shadow.headers_mut() = parts.headers.clone();
        match cluster.config.protocol {
            UpstreamProtocol::Http1 => {
                *shadow.version_mut() = Version::HTTP_11;
                shadow.headers_mut().insert(header::HOST, shadow_authority);
            }
            UpstreamProtocol::Http2 => {
                *shadow.version_mut() = Version::HTTP_2;
                shadow.headers_mut().remove(header::HOST);
            }
        }
        mirror::send(cluster.clone(), shadow);
    }
    tee
}

/// 6. Sends the request within the route timeout; 7. shapes the response for the downstream.
// Not an `async fn`: that would hold the exchange twice in its future (as argument and as local).
#[allow(clippy::manual_async_fn)]
fn forward(
    exchange: Exchange,
    hcm: &HttpConnectionManager,
) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + Send + '_ {
    async move {
        let stats = &exchange.cluster.stats;
        let Some(slot) = exchange.cluster.open.request(&exchange.cluster.config.breakers) else {
            stats.rq_active_overflow.increment(1);
            return Err(ProxyError::Overflow);
        };
        stats.rq_total.increment(1);
        exchange.cluster.note_traffic();
        let _active = GaugeGuard::new(&stats.rq_active);
        let upgrade = exchange.downstream_upgrade.is_some();
        let per_try_idle = match &exchange.upstream {
            Upstream::Retried(retried) => retried.policy.per_try_idle_timeout,
            Upstream::Endpoint(..) => None,
        };
        let sent_at = (!hcm.suppress_envoy_headers).then(Instant::now);
        // Where the attempt cut short by the route timeout went, for outlier detection: the
        // endpoint picked up front, else the latest a retried request's attempts went to.
        let picked = match &exchange.upstream {
            Upstream::Endpoint(endpoint, _) => Some(endpoint.addr),
            Upstream::Retried(_) => None,
        };
        let tried = TriedHosts::default();
        // The route timeout, the stream's end or its idle timeout: whichever comes first (a tower
        // layer over the exchange, the service made where it is awaited).
        use tower::{Layer, Service, ServiceExt};
        let now = tokio::time::Instant::now();
        let deadline = DeadlineLayer::new([
            (exchange.timeout.map(|limit| now + limit), Expiry::Route),
            (exchange.stream_deadline, Expiry::StreamDuration),
            (exchange.idle_before_headers.map(|idle| now + idle), Expiry::Idle),
        ]);
        let mut exchanging =
            deadline.layer(tower::service_fn(|upstream| send(upstream, &exchange.cluster, &tried, upgrade)));
        let result = match exchanging.ready().await {
            Ok(ready) => ready.call(exchange.upstream).await,
            Err(e) => Err(e),
        };
        let result = match result {
            Ok(response) => Ok(response),
            Err(Deadlined::Inner(e)) => Err(e),
            Err(Deadlined::Expired(Expiry::StreamDuration)) => {
                hcm.stats.rq_max_duration_reached.increment(1);
                return Err(ProxyError::StreamDurationTimeout);
            }
            Err(Deadlined::Expired(Expiry::Idle)) => {
                hcm.stats.rq_idle_timeout.increment(1);
                return Err(ProxyError::StreamIdleTimeout);
            }
            Err(Deadlined::Expired(Expiry::Route)) => {
                stats.rq_timeout.increment(1);
                if let Some(addr) = picked.or_else(|| tried.last()) {
                    exchange.cluster.report_timeout(addr);
                }
                return Err(ProxyError::UpstreamTimeout);
            }
        };
        let response = match result {
            Ok(r) => r,
            // The upstream exchange failed because the downstream body timed out: that is the client's 408.
            Err(_) if exchange.request_expired.as_ref().is_some_and(|expired| expired.load(Ordering::Acquire)) => {
                hcm.stats.rq_timeout.increment(1);
                return Err(ProxyError::RequestTimeout);
            }
            Err(err) => {
                stats.rq_xx.record(err.status().as_u16());
                return Err(err);
            }
        };

        let status = response.status().as_u16();
        stats.rq_xx.record(status);
        let mut response = match (exchange.downstream_upgrade, response) {
            (Some(down), UpstreamResponse::Upgraded(resp)) => upgrade::splice(down, resp),
            (_, UpstreamResponse::Pooled(resp)) => {
                let idle = match (exchange.idle, per_try_idle) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let limits = Limits { idle, deadline: exchange.stream_deadline };
                resp.map(|mut b| {
                    b.hold(slot);
                    Either::Left(TimedBody::new(b, limits, None))
                })
            }
            (None, UpstreamResponse::Upgraded(resp)) => upgrade::refused(resp),
        };
        forwarding::strip_hop_by_hop(response.headers_mut(), status == 101);
        if let Some(sent_at) = sent_at {
            let service_time = sent_at.elapsed().as_millis() as u64;
            response.headers_mut().insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), HeaderValue::from(service_time));
        }
        Ok(response)
    }
}

/// Sends the request to the endpoint picked for it, or under its retry policy.
fn send<'a>(
    upstream: Upstream,
    cluster: &'a Arc<Cluster>,
    tried: &'a TriedHosts,
    upgrade: bool,
) -> impl Future<Output = Result<UpstreamResponse, ProxyError>> + Send + 'a {
    use futures_util::future::Either;
    match upstream {
        Upstream::Endpoint(endpoint, request) => {
            Either::Left(crate::upstream::attempt::send_to(cluster, endpoint, request, upgrade, |result, _| {
                result.map_err(ProxyError::from)
            }))
        }
        Upstream::Retried(request) => Either::Right(retried(request, cluster, tried)),
    }
}

/// Sends a request under its retry policy: tower's retry layer over a per-try timeout over one
/// [`Attempt`]; the last attempt's response or error is the answer. The attempts and the policy
/// borrow the cluster and `tried` (where the attempts went) from the caller.
async fn retried(retried: Retried, cluster: &Cluster, tried: &TriedHosts) -> Result<UpstreamResponse, ProxyError> {
    use tower::ServiceExt;
    let Retried { policy, request, hash } = retried;
    let host_selection_attempts = if policy.avoid_previous_hosts { policy.host_selection_attempts } else { 0 };
    let attempt = Attempt { cluster, host_selection_attempts, tried, hash };
    let result = match (policy.hedge_on_per_try_timeout, policy.per_try_timeout) {
        // Hedging: a slow attempt keeps running beside the next.
        (true, Some(per_try)) => {
            let retries = Retries::new(&policy, cluster, tried);
            // Boxed: the common (unhedged) future stays small.
            Box::pin(crate::policy::retry::hedge::hedged(retries, attempt, request, per_try)).await
        }
        _ => {
            // No per-try limit, no per-try timer.
            let per_try = policy.attempt_limit().map(|(limit, _)| limit);
            let service = tower::ServiceBuilder::new()
                .retry(Retries::new(&policy, cluster, tried))
                .map_err(crate::policy::retry::attempt_error as fn(_) -> _)
                .layer(DeadlineLayer::per_call(per_try, PerTry))
                .service_fn(move |request| attempt.send(request));
            service.oneshot(request).await
        }
    };
    match result {
        Ok(attempted) => Ok(attempted.response),
        Err(ProxyError::Upstream(e)) if tried.count() > 1 => Err(ProxyError::UpstreamAfterRetries(e)),
        Err(e) => Err(e),
    }
}

/// The upstream request target: origin-form for HTTP/1.1 (no copy when the path is not rewritten),
/// absolute for HTTP/2 (`:scheme` and `:authority`).
fn upstream_uri(
    cluster: &Cluster,
    authority: &HeaderValue,
    rewritten: Option<String>,
    original: &http::uri::PathAndQuery,
) -> Result<Uri, ProxyError> {
    let invalid = |_| ProxyError::BadRequest("invalid request target");
    let path = match rewritten {
        Some(p) => http::uri::PathAndQuery::try_from(p).map_err(invalid)?,
        None => original.clone(),
    };
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path);
    if cluster.config.protocol == UpstreamProtocol::Http2 {
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(http::uri::Authority::try_from(authority.as_bytes()).map_err(invalid)?);
    }
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))
}

/// The request authority: `:authority` (HTTP/2, absolute-form) or `host`. For HTTP/1.1 this is a
/// reference-counted view of the received header, not a copy.
fn authority(uri: &Uri, headers: &http::HeaderMap) -> Option<HeaderValue> {
    if let Some(a) = uri.authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    headers.get(header::HOST).filter(|h| !h.is_empty() && h.to_str().is_ok()).cloned()
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/3",
    }
}
