//! Integration tests of the coordinator over real gRPC: one binary, one module per concern.

mod artifacts;
mod catalogue;
mod catalogue_observe;
mod dashboard;
mod devices;
mod fairness;
mod fuzz;
mod health;
mod helpers;
mod leases;
mod lifecycle;
mod limits;
mod malformed;
mod metrics;
mod observe;
mod restart;
mod security;
mod tls;
