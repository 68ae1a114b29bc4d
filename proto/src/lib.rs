//! The wire contract of lorasweep: the `lorasweep.v1` protobuf messages and gRPC services,
//! generated at build time. Nothing here is edited by hand; domain code converts at one boundary
//! (`lorasweep-common`).

#![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all)]

/// Generated `lorasweep.v1` messages, clients and servers.
pub mod pb {
    tonic::include_proto!("lorasweep.v1");
}
