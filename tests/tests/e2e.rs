//! The end-to-end tests, one module per area, linked into one test binary (one link and one
//! executable instead of one per file: the workspace's test build fits on a small CI disk).
//! Run one area with `cargo nextest run -p aether-tests AREA::`, e.g. `failover::`.

mod cli_support;
mod common;
mod lifecycle_support;
mod store_support;

mod admission;
mod bounded_memory;
mod bus_config;
mod bus_failover;
mod cli_attributes;
mod cli_git;
mod cli_lifecycle;
mod cli_mount;
mod cli_mount_posix;
mod cli_output;
mod cli_readme;
mod cli_sync;
mod etcd_quorum;
mod etcd_size;
mod expiry;
mod failover;
mod foundation;
mod gc_process;
mod hostile_auth;
mod hostile_input;
mod hung_bus;
mod hung_store;
mod lifecycle_checkpoints;
mod lifecycle_fork;
mod lifecycle_review;
mod lifecycle_single;
mod paging;
mod python_client;
mod retries_once;
mod session_events;
mod store_api;
mod store_integrity;
mod store_limits;
mod store_s3;
mod telemetry;
mod tls;
