//! Integration tests: drover against real components (Docker engine, etcd,
//! Garage S3, git repositories). `scripts/test` starts the components; see
//! `support` for how a test asks for one and what happens when it is missing.

mod agent_cli;
mod agent_docker;
mod agent_events;
mod agent_probe;
mod agent_security;
mod agents;
mod approval;
mod bench_apply;
mod browser;
mod cli;
mod config;
mod dashboard;
mod etcd_quorum;
mod etcd_tasks;
mod fuzz;
mod image;
mod plan;
mod plan_cli;
mod plan_props;
mod plan_server;
mod protocol;
mod prune_props;
mod reconcile;
mod restore;
mod schema;
mod serve;
mod serve_crash;
mod serve_http;
mod server_limits;
mod sharing;
mod sharing_failover;
mod sharing_snapshots;
mod smoke;
mod snapshot_faults;
mod snapshot_prune;
mod snapshot_store;
mod snapshot_transfer;
mod source;
mod state_etcd;
mod support;
mod validate;
mod verdict;
