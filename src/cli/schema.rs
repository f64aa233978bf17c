//! `drover schema`: the JSON Schema of the cluster file format.

use std::io::Write;

use super::Exit;
use crate::model::spec::ClusterFile;

#[derive(Debug, clap::Args)]
pub struct Args {}

/// The JSON Schema of `kind: Cluster` files.
pub fn cluster_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(ClusterFile);
    serde_json::to_value(schema).expect("a schema is always JSON")
}

pub fn run(_args: &Args, out: &mut dyn Write) -> Exit {
    let text = serde_json::to_string_pretty(&cluster_schema()).expect("a schema is always JSON");
    match writeln!(out, "{text}") {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Io,
    }
}
