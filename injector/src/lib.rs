//! chaperone-injector: the mutating admission webhook that injects the chaperone proxy
//! into pods of labelled namespaces, and the controller that keeps each such namespace
//! supplied with the proxy's CA, serving certificate and config.
//!
//! `mutate` is the pure heart (pod + namespace + config -> JSON patch) and `sidecar`
//! what it adds; `webhook` adapts it to AdmissionReview and `server` serves that over
//! HTTPS; `controller` keeps the per-namespace objects (and `retention` their
//! AccessRequests from piling up), `certs` the injector's own.

pub mod cli;
pub mod config;

pub mod mutate;
pub mod sidecar;

pub mod server;
pub mod tls;
pub mod webhook;

pub mod certs;
pub mod controller;
pub mod pki;
pub mod proxy_config;
pub mod retention;
