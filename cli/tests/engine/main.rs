//! Tests against a real Docker engine: the images docker/build.sh makes, containers on internal
//! networks each test creates, `docker kill`, `docker network disconnect` and `docker restart`
//! as the faults, and the compose file; plus the network-filesystem refusal on a real FUSE mount.
//!
//! They are `#[ignore]`d, so a plain `cargo test --workspace` on a machine with only a Rust
//! toolchain passes and lists them as ignored; `.ci/run` installs and starts the engine and runs
//! them with `cargo test --workspace --test engine -- --ignored`. Run that way without an
//! engine, every test fails with a message saying what is missing — never a silent skip.
//!
//! The images are built once per run from the binaries next to `CARGO_BIN_EXE_lorasweep` (the
//! workspace's dev-profile build: build the workspace first). Each test holds [`docker::serial`]
//! so the fault timings do not compete for the two CPUs, and owns a [`docker::Scope`] that
//! removes its containers, networks and volumes when it ends, passed or failed.

mod browser;
mod compose;
#[path = "../support/curve.rs"]
mod curve;
mod docker;
mod netfs;
mod partition;
mod resume;
mod slurm;
mod tiny;
