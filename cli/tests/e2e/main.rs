//! End-to-end tests: a real coordinator (in-process or as a child process) on 127.0.0.1:0 with a
//! SQLite data dir, real worker daemons running the synthetic trainer, and the `lorasweep` CLI
//! binary. One integration binary, so the workspace links once.

mod auth;
mod bench;
mod chaos;
#[path = "../support/curve.rs"]
mod curve;
mod demo;
mod export;
mod faults;
mod grid;
mod helpers;
mod observe;
mod output;
mod resume;
mod steer;
mod tls;
