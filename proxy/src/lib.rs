//! Strait's data plane: an L4/L7 proxy configured with Envoy xDS v3 resources.
//!
//! A request's path: [`listeners`] accept -> [`http::server`] -> [`http::proxy::handle`] (routing,
//! upstream pick, send) -> [`upstream`] pools. Config: [`xds`] converts Envoy protos into a
//! [`snapshot::Snapshot`], published atomically by [`app`].

pub mod admin;
pub mod ads;
pub mod app;
pub mod demo;
pub mod http;
pub mod listeners;
pub mod mesh;
pub mod net;
pub mod policy;
pub mod routing;
pub mod snapshot;
pub mod sys;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod xds;
