//! The node agent: applies its node's plan and reports what runs. `docker` executes container
//! and file steps with the Docker Engine API; `probe` runs components' health checks.

pub mod docker;
pub mod events;
pub mod probe;
