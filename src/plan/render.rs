//! Plans for people: plain text for terminals and logs, and markdown for a pull-request
//! comment (a summary table, errors and warnings first, details folded). The JSON form is the
//! serde form of `Plan`, versioned by `PLAN_FORMAT_VERSION`.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};

use super::{ClusterPlan, Gate, InitialState, Phase, PhaseKind, Plan, PolicyState, Step};

/// One step as a line: the node it concerns (if any) and what happens.
pub fn describe(step: &Step) -> (Option<&str>, String) {
    match step {
        Step::RestoreSnapshot {
            snapshot,
            request_id,
        } => (
            None,
            format!("restore etcd from snapshot {snapshot} (request {request_id})"),
        ),
        Step::AddEtcdMember { node, peer_url } => {
            (Some(node), format!("add etcd member at {peer_url}"))
        }
        Step::StartEtcdMember {
            node,
            initial_cluster,
            initial_state,
            ..
        } => (Some(node), start_member(initial_cluster, *initial_state)),
        Step::UpdateEtcdMember { node, peer_url } => (
            Some(node),
            format!("update etcd member's peer URL to {peer_url}"),
        ),
        Step::RemoveEtcdMember { node } => (Some(node), "remove etcd member".into()),
        Step::WriteFile {
            node, path, mode, ..
        } => (Some(node), format!("write file {path} (mode {mode})")),
        Step::CreateContainer {
            node,
            component,
            image,
            ..
        } => (
            Some(node),
            format!("create {component} container ({image})"),
        ),
        Step::RecreateContainer {
            node,
            component,
            changed,
            ..
        } => (
            Some(node),
            format!(
                "recreate {component} container: {} changed",
                changed.join(", ")
            ),
        ),
        Step::StartContainer {
            node, component, ..
        } => (Some(node), format!("start stopped {component} container")),
        Step::RemoveContainer {
            node, component, ..
        } => (Some(node), format!("remove {component} container")),
        Step::RemoveFile { node, path } => (Some(node), format!("remove file {path}")),
        Step::DecommissionNode { node } => (
            Some(node),
            "decommission: forget the node and revoke its credential".into(),
        ),
        Step::AwaitHealthy { gate, nodes } => (None, await_healthy(*gate, nodes)),
        Step::UpdateSnapshotPolicy { from, to } => (None, snapshot_policy(from, to)),
    }
}

/// Starting an etcd member: new cluster or joining, and the members it starts with.
fn start_member(initial_cluster: &[String], initial_state: InitialState) -> String {
    let state = match initial_state {
        InitialState::New => "new cluster",
        InitialState::Existing => "joining",
    };
    let members: Vec<&str> = initial_cluster
        .iter()
        .map(|m| m.split('=').next().unwrap_or(m))
        .collect();
    format!(
        "start etcd member ({state}; members {})",
        members.join(", ")
    )
}

/// A health gate: what must be healthy before the plan goes on.
fn await_healthy(gate: Gate, nodes: &[String]) -> String {
    let what = match gate {
        Gate::EtcdHealthy => "etcd members",
        Gate::NodesHealthy => "nodes",
    };
    format!("wait until {what} {} are healthy", nodes.join(", "))
}

/// A snapshot policy change, from what was to what will be.
fn snapshot_policy(from: &Option<PolicyState>, to: &Option<PolicyState>) -> String {
    match (from, to) {
        (None, Some(to)) => format!("start snapshots: {to}"),
        (Some(from), None) => format!("stop snapshots (were: {from})"),
        (Some(from), Some(to)) => format!("snapshots: {from} -> {to}"),
        (None, None) => "no snapshot policy".into(),
    }
}

/// One step as a line: `node: what`, or `what` for a cluster-wide step.
pub fn step_line(step: &Step) -> String {
    match describe(step) {
        (Some(node), text) => format!("{node}: {text}"),
        (None, text) => text,
    }
}

fn count_steps(c: &ClusterPlan) -> usize {
    c.steps()
        .filter(|s| !matches!(s, Step::AwaitHealthy { .. }))
        .count()
}

/// `1 step`, `2 steps`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min("sha256:".len() + 12)]
}

/// How the text form marks what matters on a terminal: ANSI styles, or none.
#[derive(Debug, Clone, Copy, Default)]
pub struct Palette {
    pub(crate) heading: Style,
    error: Style,
    pub(crate) warning: Style,
    add: Style,
    change: Style,
    remove: Style,
    muted: Style,
}

impl Palette {
    /// No styles: plain text, for files, pipes and CI logs.
    pub fn plain() -> Palette {
        Palette::default()
    }

    /// ANSI colours: red errors and removals, yellow warnings and changes, green additions.
    pub fn ansi() -> Palette {
        let fg = |c: AnsiColor| Style::new().fg_color(Some(c.into()));
        Palette {
            heading: Style::new().bold(),
            error: fg(AnsiColor::Red).bold(),
            warning: fg(AnsiColor::Yellow),
            add: fg(AnsiColor::Green),
            change: fg(AnsiColor::Yellow),
            remove: fg(AnsiColor::Red),
            muted: Style::new().dimmed(),
        }
    }

    fn step(&self, step: &Step) -> Style {
        match step {
            Step::AddEtcdMember { .. }
            | Step::StartEtcdMember { .. }
            | Step::CreateContainer { .. }
            | Step::WriteFile { .. } => self.add,
            Step::RemoveEtcdMember { .. }
            | Step::RemoveContainer { .. }
            | Step::RemoveFile { .. }
            | Step::DecommissionNode { .. } => self.remove,
            Step::AwaitHealthy { .. } => self.muted,
            Step::RestoreSnapshot { .. }
            | Step::UpdateEtcdMember { .. }
            | Step::RecreateContainer { .. }
            | Step::StartContainer { .. }
            | Step::UpdateSnapshotPolicy { .. } => self.change,
        }
    }
}

/// The plan as plain text.
pub fn text(plan: &Plan) -> String {
    text_styled(plan, &Palette::plain())
}

/// The plan as text, marked with `palette`.
pub fn text_styled(plan: &Plan, palette: &Palette) -> String {
    let p = palette;
    let mut out = String::new();
    for c in &plan.clusters {
        let steps = count_steps(c);
        let status = if steps == 0 {
            "no changes".to_string()
        } else {
            let new = if c.new_cluster { "new cluster, " } else { "" };
            format!(
                "{new}{} in {}",
                count(steps, "step"),
                count(c.phases.len(), "phase")
            )
        };
        let h = p.heading;
        let _ = writeln!(out, "{h}cluster {}{h:#}: {status}", c.cluster);
        let (e, w) = (p.error, p.warning);
        for error in &c.errors {
            let _ = writeln!(out, "  {e}error{e:#}: {error}");
        }
        for warning in &c.warnings {
            let _ = writeln!(out, "  {w}warning{w:#}: {warning}");
        }
        for (i, phase) in c.phases.iter().enumerate() {
            let _ = writeln!(out, "  {h}{}. {}{h:#}", i + 1, phase.kind.title());
            write_phase(&mut out, phase, "     ", p);
        }
    }
    for name in &plan.held_back {
        let _ = writeln!(
            out,
            "cluster {name}: invalid at this revision; its last good definition stays"
        );
    }
    for name in &plan.unmanaged {
        let _ = writeln!(
            out,
            "cluster {name}: runs but is no longer declared; drover leaves it as it is"
        );
    }
    let m = p.muted;
    let _ = writeln!(out, "{m}plan digest: {}{m:#}", plan.digest);
    out
}

fn write_phase(out: &mut String, phase: &Phase, indent: &str, p: &Palette) {
    for (j, batch) in phase.batches.iter().enumerate() {
        if phase.batches.len() > 1 {
            let _ = writeln!(out, "{indent}batch {} of {}", j + 1, phase.batches.len());
        }
        for step in &batch.steps {
            let s = p.step(step);
            let _ = writeln!(out, "{indent}- {s}{}{s:#}", step_line(step));
        }
    }
}

/// The plan as a pull-request comment.
pub fn markdown(plan: &Plan) -> String {
    let mut out = String::from("### drover plan\n\n");
    out.push_str(
        "| cluster | change | etcd | control plane | workers | steps | errors | warnings |\n",
    );
    out.push_str("|---|---|---|---|---|---:|---:|---:|\n");
    for c in &plan.clusters {
        summary_row(&mut out, c);
    }
    let findings: Vec<String> = plan
        .clusters
        .iter()
        .flat_map(|c| {
            let errors = c
                .errors
                .iter()
                .map(move |e| format!("- :x: **{}**: {e}", c.cluster));
            let warnings = c
                .warnings
                .iter()
                .map(move |w| format!("- :warning: **{}**: {w}", c.cluster));
            errors.chain(warnings)
        })
        .collect();
    if !findings.is_empty() {
        out.push('\n');
        out.push_str(&findings.join("\n"));
        out.push('\n');
    }
    for c in plan.clusters.iter().filter(|c| count_steps(c) > 0) {
        details(&mut out, c);
    }
    for name in &plan.held_back {
        let _ = writeln!(
            out,
            "\n:x: `{name}` is invalid at this revision; its last good definition stays."
        );
    }
    for name in &plan.unmanaged {
        let _ = writeln!(
            out,
            "\n`{name}` runs but is no longer declared; drover leaves it as it is."
        );
    }
    let _ = writeln!(
        out,
        "\nPlan digest: `{}` (full: `{}`)",
        short(&plan.digest),
        plan.digest
    );
    out
}

/// A cluster's row in the summary table: what changes, nodes touched per phase, counts.
fn summary_row(out: &mut String, c: &ClusterPlan) {
    let steps = count_steps(c);
    let change = match (steps, c.new_cluster, c.errors.is_empty()) {
        (_, _, false) => "unsafe",
        (0, _, true) => "none",
        (_, true, true) => "new cluster",
        _ => "changes",
    };
    let nodes_in = |kinds: &[PhaseKind]| {
        let n: usize = c
            .phases
            .iter()
            .filter(|p| kinds.contains(&p.kind))
            .flat_map(|p| &p.batches)
            .map(|b| b.nodes.len())
            .sum();
        if n == 0 {
            "-".to_string()
        } else {
            count(n, "node")
        }
    };
    let _ = writeln!(
        out,
        "| `{}` | {change} | {} | {} | {} | {steps} | {} | {} |",
        c.cluster,
        nodes_in(&[PhaseKind::Etcd]),
        nodes_in(&[PhaseKind::Controlplane]),
        nodes_in(&[PhaseKind::Workers]),
        c.errors.len(),
        c.warnings.len()
    );
}

/// A cluster's steps, phase by phase and batch by batch, folded in a `<details>` block.
fn details(out: &mut String, c: &ClusterPlan) {
    let _ = write!(
        out,
        "\n<details><summary><code>{}</code>: {} in {}</summary>\n\n",
        c.cluster,
        count(count_steps(c), "step"),
        count(c.phases.len(), "phase")
    );
    for (i, phase) in c.phases.iter().enumerate() {
        let _ = writeln!(out, "{}. **{}**", i + 1, phase.kind.title());
        for (j, batch) in phase.batches.iter().enumerate() {
            if phase.batches.len() > 1 {
                let _ = writeln!(out, "   - batch {} of {}", j + 1, phase.batches.len());
            }
            let pad = if phase.batches.len() > 1 {
                "     "
            } else {
                "   "
            };
            for step in &batch.steps {
                let _ = writeln!(out, "{pad}- {}", step_line(step));
            }
        }
    }
    out.push_str("\n</details>\n");
}
