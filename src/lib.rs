//! chaperone: a least-privilege sidecar between an MCP server and the Kubernetes API.
//!
//! Modules are listed in the order a request meets them; `pipeline` joins them.

pub mod admin;
pub mod approval;
pub mod audit;
pub mod body;
pub mod cli;
pub mod config;
pub mod exec_credential;
pub mod headers;
pub mod identity;
pub mod json_once;
pub mod kubeconfig;
pub mod launch;
pub mod mask;
pub mod metrics;
pub mod pipeline;
pub mod pki;
pub mod places;
pub mod policy;
pub mod protobuf;
pub mod request_info;
pub mod sandbox;
pub mod self_review;
pub mod server;
pub mod status;
pub mod sync;
pub mod text;
pub mod tls;
pub mod upstream;
