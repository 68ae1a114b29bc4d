//! Integration tests of the coordinator over real gRPC: one binary, one module per concern.

mod helpers;
mod leases;
mod lifecycle;
mod malformed;
mod restart;
