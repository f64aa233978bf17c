//! Drift for people: the drift section of `drover plan --server`, as text and as markdown.

use super::{describe, Drift};
use crate::plan::render::Palette;

/// The drift section of `drover plan --server`, as text.
pub fn drift_text(server: &str, drift: &Drift) -> String {
    drift_text_styled(server, drift, &Palette::plain())
}

/// The drift section of `drover plan --server`, as text marked with `palette`.
pub fn drift_text_styled(server: &str, drift: &Drift, palette: &Palette) -> String {
    let (h, w) = (palette.heading, palette.warning);
    let mut out = format!(
        "{h}drift at {server}{h:#}: {} of {} nodes in sync with Git\n",
        drift.in_sync, drift.nodes
    );
    if drift.is_empty() {
        out.push_str("  no drift: what runs is what the base or head revision defines\n");
    }
    let mut cluster = None;
    for item in &drift.items {
        if cluster != Some(&item.cluster) {
            out.push_str(&format!("  cluster {}\n", item.cluster));
            cluster = Some(&item.cluster);
        }
        out.push_str(&format!("  - {w}{}: {}{w:#}\n", item.node, describe(item)));
    }
    out
}

/// The drift section of `drover plan --server`, for a pull-request comment.
pub fn drift_markdown(server: &str, drift: &Drift) -> String {
    let mut out = format!(
        "\n### Drift\n\n`{server}`: {} of {} nodes in sync with Git.\n",
        drift.in_sync, drift.nodes
    );
    if drift.is_empty() {
        out.push_str("\nNo drift: what runs is what the base or head revision defines.\n");
        return out;
    }
    out.push_str("\n| cluster | node | what |\n|---|---|---|\n");
    for item in &drift.items {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            item.cluster,
            item.node,
            describe(item).replace('|', "\\|").replace('\n', " ")
        ));
    }
    out
}
