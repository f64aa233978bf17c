//! The dashboard's pages, rendered on the server with maud (every value escaped). Each page is
//! whole without scripts; `live.js` swaps a fresh `<main>` in when the daemon says something
//! changed.

use std::time::SystemTime;

use maud::{html, Markup, DOCTYPE};

use super::{ClustersQuery, PAGE_SIZE, UI_PATH};
use crate::api::snapshots::SnapshotView;
use crate::api::{ClusterStatus, ConditionType, NodeView};
use crate::daemon::operator::{source_view, with_snapshots, Operator};

pub fn cluster_href(name: &str) -> String {
    format!("{UI_PATH}/clusters/{}", encode(name))
}

fn node_href(cluster: &str, node: &str) -> String {
    format!("{}/nodes/{}", cluster_href(cluster), encode(node))
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

/// A page: the navigation (with sign-out when signed in), `body` as `<main>`, the scripts.
fn layout(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · drover" }
                link rel="stylesheet" href={ (UI_PATH) "/assets/style.css" };
            }
            body {
                header {
                    nav aria-label="Main" {
                        a.brand href={ (UI_PATH) "/" } { "drover" }
                        @if let Some(csrf) = csrf {
                            a href={ (UI_PATH) "/" } { "Clusters" }
                            a href={ (UI_PATH) "/daemon" } { "Daemon" }
                            form.inline method="post" action={ (UI_PATH) "/sign-out" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" data-live=[csrf.map(|_| "1")] {
                    (body)
                }
                @if csrf.is_some() {
                    noscript { p.hint { "Scripts are off: reload the page to see changes." } }
                    script src={ (UI_PATH) "/assets/live.js" } defer {}
                }
            }
        }
    }
}

pub fn sign_in(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            form method="post" action={ (UI_PATH) "/sign-in" } {
                label for="token" { "Operator token" }
                input id="token" name="token" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            p.hint { "The token `drover token operator` printed on the daemon's machine." }
        },
    )
}

pub fn refused(why: &str) -> Markup {
    layout(
        "Refused",
        None,
        html! {
            h1 { "Refused" }
            p.error role="alert" { (why) }
            p { a href={ (UI_PATH) "/" } { "Back to the clusters" } }
        },
    )
}

pub fn not_found(what: &str, csrf: &str) -> Markup {
    layout(
        "Not found",
        Some(csrf),
        html! {
            h1 { "Not found" }
            p { "Nothing is known of " code { (what) } "." }
        },
    )
}

/// The condition that holds (Stalled before Reconciling before Ready), as a badge.
fn condition_badge(status: &ClusterStatus) -> Markup {
    let held = [
        ConditionType::Stalled,
        ConditionType::Reconciling,
        ConditionType::Ready,
    ]
    .into_iter()
    .find_map(|kind| status.condition(kind).filter(|c| c.status));
    match held {
        Some(c) => html! {
            span class={ "badge " (badge_class(c.kind)) } title=(c.message) { (format!("{:?}", c.kind)) }
            " " span.reason { (c.reason) }
        },
        None => html! { span.badge.unknown { "Unknown" } },
    }
}

fn badge_class(kind: ConditionType) -> &'static str {
    match kind {
        ConditionType::Ready => "ok",
        ConditionType::Reconciling => "busy",
        ConditionType::Stalled | ConditionType::SnapshotOverdue => "bad",
    }
}

fn short(revision: Option<&str>) -> Markup {
    match revision {
        Some(r) => html! { code title=(r) { (r.chars().take(12).collect::<String>()) } },
        None => html! { span.none { "none" } },
    }
}

/// A revision, linked to its commit's page when the forge is known and it is a commit.
fn revision(op: &Operator, revision: Option<&str>) -> Markup {
    let commit = revision.filter(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()));
    match (&op.forge, commit) {
        (Some(forge), Some(commit)) => html! {
            a href=(forge.commit_url(commit)) { (short(Some(commit))) }
        },
        _ => short(revision),
    }
}

/// How long ago an RFC 3339 time was, in a few words.
fn age(at: &str) -> String {
    match humantime::parse_rfc3339_weak(at) {
        Ok(then) => {
            let secs = SystemTime::now()
                .duration_since(then)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let d = std::time::Duration::from_secs(secs);
            format!("{} ago", humantime::format_duration(d))
        }
        Err(_) => at.to_string(),
    }
}

/// Whether `status` is one `query` asks for; `overdue` says whether its snapshots are (the
/// status itself carries that condition only once decorated).
fn matches(
    status: &ClusterStatus,
    query: &ClustersQuery,
    overdue: &dyn Fn(&ClusterStatus) -> bool,
) -> bool {
    let named = query.q.is_empty()
        || status
            .name
            .to_lowercase()
            .contains(&query.q.trim().to_lowercase());
    let holds = |kind| status.condition(kind).is_some_and(|c| c.status);
    let conditioned = match query.condition.as_str() {
        "ready" => holds(ConditionType::Ready),
        "reconciling" => holds(ConditionType::Reconciling),
        "stalled" => holds(ConditionType::Stalled),
        "overdue" => holds(ConditionType::SnapshotOverdue) || overdue(status),
        _ => true,
    };
    named && conditioned
}

pub fn clusters(op: &Operator, query: &ClustersQuery, csrf: &str) -> Markup {
    let desired = op.desired.borrow().clone();
    let now = SystemTime::now();
    let overdue = |s: &ClusterStatus| {
        let entry = crate::model::ClusterName::parse(&s.name)
            .ok()
            .and_then(|name| desired.clusters.get(&name));
        match (op.snapshots.get(), entry) {
            (Some(scheduler), Some(entry)) => scheduler.overdue(entry, now),
            _ => false,
        }
    };
    let skip = query.page.saturating_mul(PAGE_SIZE);
    let (total, mut shown) = match op.controller.get() {
        Some(c) => c.select(|s| matches(s, query, &overdue), skip, PAGE_SIZE),
        None => (0, Vec::new()),
    };
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let page = query.page.min(pages - 1);
    for s in &mut shown {
        with_snapshots(op, s);
    }
    let link = |page: usize| {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("q", &query.q)
            .append_pair("condition", &query.condition)
            .append_pair("page", &page.to_string())
            .finish();
        format!("{UI_PATH}/?{q}")
    };
    let conditions = [
        ("", "any condition"),
        ("ready", "Ready"),
        ("reconciling", "Reconciling"),
        ("stalled", "Stalled"),
        ("overdue", "Snapshot overdue"),
    ];
    layout(
        "Clusters",
        Some(csrf),
        html! {
            h1 { "Clusters" }
            form.filters method="get" action={ (UI_PATH) "/" } role="search" {
                label for="q" { "Name" }
                input id="q" name="q" type="search" value=(query.q);
                label for="condition" { "Condition" }
                select id="condition" name="condition" {
                    @for (value, label) in conditions {
                        option value=(value) selected[query.condition == value] { (label) }
                    }
                }
                button type="submit" { "Filter" }
            }
            p.count { (total) " clusters" @if pages > 1 { ", page " (page + 1) " of " (pages) } }
            table.clusters {
                caption.visually-hidden { "Clusters and their state" }
                thead { tr {
                    th scope="col" { "Cluster" }
                    th scope="col" { "Condition" }
                    th scope="col" { "Desired" }
                    th scope="col" { "Applied" }
                    th scope="col" { "Nodes ready" }
                    th scope="col" { "Agents connected" }
                    th scope="col" { "Newest snapshot" }
                    th scope="col" { "Last drill" }
                } }
                tbody {
                    @for s in &shown {
                        tr data-cluster=(s.name) {
                            th scope="row" { a href=(cluster_href(&s.name)) { (s.name) } }
                            td.condition { (condition_badge(s)) }
                            td { (revision(op, s.desired_revision.as_deref())) }
                            td { (revision(op, s.applied_revision.as_deref())) }
                            td.ready { (s.nodes.iter().filter(|n| n.ready).count()) "/" (s.nodes.len()) }
                            td { (s.nodes.iter().filter(|n| n.connected).count()) "/" (s.nodes.len()) }
                            td { (newest_snapshot(s)) }
                            td { (last_drill(s)) }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pages aria-label="Pages" {
                    @if page > 0 { a href=(link(page - 1)) rel="prev" { "Previous" } }
                    @if page + 1 < pages { a href=(link(page + 1)) rel="next" { "Next" } }
                }
            }
        },
    )
}

fn newest_snapshot(s: &ClusterStatus) -> Markup {
    match s.snapshots.as_ref().and_then(|p| p.last_success.as_ref()) {
        Some(run) => html! { span title=(run.at) { (age(&run.at)) } },
        None if s.snapshots.is_some() => html! { span.none { "none yet" } },
        None => html! { span.none { "no policy" } },
    }
}

fn last_drill(s: &ClusterStatus) -> Markup {
    match s.snapshots.as_ref().and_then(|p| p.last_drill.as_ref()) {
        Some(v) if v.passed => html! { span.badge.ok title=(v.at) { "passed" } },
        Some(v) => {
            html! { span.badge.bad title=(v.error.clone().unwrap_or_default()) { "failed" } }
        }
        None => html! { span.none { "none" } },
    }
}

pub async fn cluster(op: &Operator, name: &str, csrf: &str) -> Option<Markup> {
    let controller = op.controller.get()?;
    let mut status = controller.status(name)?;
    with_snapshots(op, &mut status);
    let snapshots = match op.snapshots.get() {
        Some(scheduler) if status.snapshots.is_some() => match scheduler.list(name).await {
            Ok((manifests, record)) => Ok(manifests
                .iter()
                .map(|m| {
                    crate::daemon::snapshots::views::snapshot(m, record.of(m.id.as_str()).cloned())
                })
                .collect::<Vec<_>>()),
            Err(e) => Err(crate::error_chain(&e)),
        },
        _ => Ok(Vec::new()),
    };
    let restores = match controller.restores() {
        Some(r) => r.list(name).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let diagnostics = held_back(op, name);
    Some(layout(
        name,
        Some(csrf),
        html! {
            h1 { "Cluster " (name) }
            section aria-labelledby="state" {
                h2 id="state" { "State" }
                p.state { (condition_badge(&status)) }
                dl.facts {
                    dt { "Desired revision" } dd { (revision(op, status.desired_revision.as_deref())) }
                    dt { "Applied revision" } dd { (revision(op, status.applied_revision.as_deref())) }
                }
                ul.conditions {
                    @for c in &status.conditions {
                        li { span class={ "badge " (if c.status { badge_class(c.kind) } else { "off" }) } { (format!("{:?}", c.kind)) } " " (c.reason) ": " (c.message) }
                    }
                }
                div.actions {
                    form.inline method="post" action={ (cluster_href(name)) "/reconcile" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Reconcile now" }
                    }
                    @if status.snapshots.is_some() {
                        form.inline method="post" action={ (cluster_href(name)) "/snapshot" } {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Snapshot now" }
                        }
                    }
                }
            }
            @if !diagnostics.is_empty() {
                section aria-labelledby="held" {
                    h2 id="held" { "Held back: invalid definition" }
                    @for d in &diagnostics { pre.diagnostic { (d) } }
                }
            }
            (rollout(&status))
            (nodes(name, &status))
            (snapshots_section(&status, &snapshots))
            @if !restores.is_empty() {
                section aria-labelledby="restores" {
                    h2 id="restores" { "Restores" }
                    @for r in &restores {
                        details {
                            summary { (r.request_id) ": " (format!("{:?}", r.phase)) ", snapshot " (r.snapshot) ", by " (r.by) }
                            @if let Some(e) = &r.error { p.error { (e) } }
                            ol { @for step in &r.steps { li { (step) } } }
                        }
                    }
                }
            }
        },
    ))
}

/// The diagnostics of `cluster`'s file, when its definition is held back.
fn held_back(op: &Operator, cluster: &str) -> Vec<String> {
    let desired = op.desired.borrow().clone();
    let Some(entry) = crate::model::ClusterName::parse(cluster)
        .ok()
        .and_then(|n| desired.clusters.get(&n).cloned())
    else {
        return Vec::new();
    };
    if !entry.held_back {
        return Vec::new();
    }
    let file = &entry.cluster.source.file;
    desired
        .diagnostics
        .iter()
        .filter(|d| &d.location.file == file)
        .map(|d| d.render(desired.sources.get(&d.location.file).map(String::as_str)))
        .collect()
}

fn rollout(status: &ClusterStatus) -> Markup {
    html! {
        section aria-labelledby="rollout" {
            h2 id="rollout" { "Rollout" }
            @match &status.plan {
                None => p { "Nothing to roll out." },
                Some(plan) => {
                    @if let Some(waiting) = &plan.waiting_on {
                        p.waiting { "Waiting on: " (waiting) }
                    }
                    @if plan.steps.is_empty() {
                        ol.phases {
                            @for (i, phase) in plan.phases.iter().enumerate() {
                                li class={ "phase " (if i == 0 { "running" } else { "pending" }) } {
                                    strong { (phase.phase) }
                                    " " (phase.batches) " batches, " (phase.steps) " steps"
                                    @if i == 0 { " (running now)" }
                                }
                            }
                        }
                    } @else {
                        (steps(&plan.steps))
                    }
                    p.hint { "Plan " code { (plan.digest) } }
                }
            }
            @if !status.findings.is_empty() {
                ul.findings { @for f in &status.findings { li { (f) } } }
            }
            @if let Some(hold) = &status.hold { (plan_hold(hold)) }
        }
    }
}

/// The rollout's steps grouped by phase and batch, each marked with its state in words (for
/// screen readers and scripts-off) and in colour.
fn steps(steps: &[crate::api::StepProgress]) -> Markup {
    /// A batch's number and its steps; a phase's title and its batches.
    type Batch<'a> = (usize, Vec<&'a crate::api::StepProgress>);
    let mut phases: Vec<(&str, Vec<Batch>)> = Vec::new();
    for step in steps {
        if phases.last().is_none_or(|(p, _)| *p != step.phase) {
            phases.push((&step.phase, Vec::new()));
        }
        let batches = &mut phases.last_mut().expect("pushed").1;
        if batches.last().is_none_or(|(b, _)| *b != step.batch) {
            batches.push((step.batch, Vec::new()));
        }
        batches.last_mut().expect("pushed").1.push(step);
    }
    html! {
        ol.phases {
            @for (phase, batches) in &phases {
                li.phase {
                    strong { (phase) }
                    @for (batch, steps) in batches {
                        @if batches.len() > 1 { div.batch { "batch " (batch) } }
                        ol.steps {
                            @for step in steps {
                                li class={ "step " (step.state.as_str()) } data-state=(step.state.as_str()) {
                                    span.state { (step.state.as_str()) }
                                    " "
                                    @if let Some(node) = &step.node { (node) ": " }
                                    (step.text)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A revision held for an approved plan: what would run, what the commit approves, and how
/// the plan against what runs differs from the one a reviewer saw.
fn plan_hold(hold: &crate::api::PlanHold) -> Markup {
    html! {
        div.hold role="status" {
            h3 { "Held for an approved plan" }
            p {
                "Revision " (short(Some(&hold.revision))) " runs only when its commit carries "
                code { "Drover-Plan: " (hold.digest) }
            }
            @if hold.approved.is_empty() {
                p { "The commit approves no plan." }
            } @else {
                p { "The commit approves: " @for d in &hold.approved { code { (d) } " " } }
            }
            h4 { "The plan against what runs" }
            ol.steps { @for step in &hold.steps { li { (step) } } }
            @if let Some(r) = &hold.reviewed {
                h4 { "Against " (short(Some(&r.base))) ", as drover plan shows it" }
                p { "Plan " code { (r.digest) } }
                @if r.only_running.is_empty() && r.only_reviewed.is_empty() {
                    p { "The same steps: nothing drifted." }
                } @else {
                    ul.diff {
                        @for step in &r.only_running { li.added { "+ " (step) } }
                        @for step in &r.only_reviewed { li.removed { "- " (step) } }
                    }
                }
            }
        }
    }
}

fn nodes(cluster: &str, status: &ClusterStatus) -> Markup {
    html! {
        section aria-labelledby="nodes" {
            h2 id="nodes" { "Nodes" }
            table.nodes {
                caption.visually-hidden { "Nodes of " (cluster) }
                thead { tr {
                    th scope="col" { "Node" }
                    th scope="col" { "Address" }
                    th scope="col" { "Agent" }
                    th scope="col" { "Generation" }
                    th scope="col" { "Revision" }
                    th scope="col" { "Ready" }
                } }
                tbody {
                    @for n in &status.nodes {
                        tr data-node=(n.name) {
                            th scope="row" { a href=(node_href(cluster, &n.name)) { (n.name) } }
                            td { code { (n.address) } }
                            td { @if n.connected { span.badge.ok { "connected" } } @else { span.badge.bad { "away" } } }
                            td { (n.applied_generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into())) " / " (n.generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into())) }
                            td { (short(n.revision.as_deref())) }
                            td.ready {
                                @if n.ready { span.badge.ok { "ready" } }
                                @else { span.badge.busy { "not ready" } " " (n.reason.clone().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn snapshots_section(status: &ClusterStatus, listed: &Result<Vec<SnapshotView>, String>) -> Markup {
    let Some(schedule) = &status.snapshots else {
        return html! {};
    };
    html! {
        section aria-labelledby="snapshots" {
            h2 id="snapshots" { "Snapshots" }
            p { "Store " code { (schedule.store) } ", " (schedule.schedule)
                @if let Some(next) = &schedule.next_run { "; next " (next) }
                @if schedule.running { "; one is being taken now" } }
            @if let Some(blocked) = &schedule.blocked { p.error { (blocked) } }
            @if let Some(f) = &schedule.last_failure { p.error { "Last failure " (f.at) ": " (f.reason) } }
            @match listed {
                Err(e) => p.error { "Cannot list the store: " (e) },
                Ok(list) if list.is_empty() => p { "None stored yet." },
                Ok(list) => {
                    (chart(list))
                    table.snapshots {
                        caption.visually-hidden { "Stored snapshots, newest first" }
                        thead { tr {
                            th scope="col" { "Snapshot" }
                            th scope="col" { "Taken" }
                            th scope="col" { "Revision" }
                            th scope="col" { "Stored" }
                            th scope="col" { "Duration" }
                            th scope="col" { "Verification" }
                        } }
                        tbody {
                            @for s in list {
                                tr {
                                    th scope="row" { code { (s.id) } }
                                    td { (s.finished_at) }
                                    td { (s.revision) }
                                    td { (bytes(s.compressed_size)) }
                                    td { (s.duration_ms) " ms" }
                                    td { @match &s.verification {
                                        Some(v) if v.passed => span.badge.ok { @if v.deep { "restored" } @else { "checked" } },
                                        Some(_) => span.badge.bad { "failed" },
                                        None => span.none { "not verified" },
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n as f64 >= MIB {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// Size and duration of the newest snapshots, oldest on the left, as an SVG chart.
fn chart(list: &[SnapshotView]) -> Markup {
    let points: Vec<&SnapshotView> = list.iter().take(60).rev().collect();
    let (w, h) = (600.0_f64, 120.0_f64);
    let max_size = points
        .iter()
        .map(|s| s.compressed_size)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_ms = points
        .iter()
        .map(|s| s.duration_ms)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let step = if points.len() > 1 {
        w / (points.len() - 1) as f64
    } else {
        0.0
    };
    let line = |value: &dyn Fn(&SnapshotView) -> f64, max: f64| -> String {
        points
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{:.1},{:.1}",
                    i as f64 * step,
                    h - value(s) / max * (h - 10.0)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let sizes = line(&|s| s.compressed_size as f64, max_size);
    let durations = line(&|s| s.duration_ms as f64, max_ms);
    let label = format!(
        "Size (up to {}) and duration (up to {} ms) of the newest {} snapshots",
        bytes(max_size as u64),
        max_ms as u64,
        points.len()
    );
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (w) " " (h) } role="img" aria-label=(label) width="600" height="120" {
                polyline.size points=(sizes) fill="none" {}
                polyline.duration points=(durations) fill="none" {}
            }
            figcaption { (label) ": " span.key-size { "size" } ", " span.key-duration { "duration" } "." }
        }
    }
}

pub fn node(op: &Operator, cluster: &str, node: &str, csrf: &str) -> Option<Markup> {
    let hub = op.controller.get()?.hub();
    let report = hub.node_status(cluster, node)?;
    let view = NodeView::of(cluster, node, hub.plan_of(cluster, node), Some(report));
    Some(layout(
        &format!("{cluster}/{node}"),
        Some(csrf),
        html! {
            h1 { "Node " (node) " of " a href=(cluster_href(cluster)) { (cluster) } }
            @if let Some(report) = &view.report {
                dl.facts {
                    dt { "Agent" } dd { @if report.connected { "connected" } @else { "away" } }
                    dt { "Last seen" } dd { (report.last_seen.clone().unwrap_or_else(|| "never".into())) }
                    dt { "Generation" } dd { (view.generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into())) }
                    dt { "Applied" } dd { (report.applied.as_ref().map(|a| a.generation.to_string()).unwrap_or_else(|| "-".into())) }
                }
                @if !report.failed_steps.is_empty() {
                    h2 { "Failed steps" }
                    ul { @for s in &report.failed_steps { li.error { (format!("{s:?}")) } } }
                }
            }
            h2 { "Containers" }
            table.containers {
                caption.visually-hidden { "Containers of " (node) }
                thead { tr { th scope="col" { "Component" } th scope="col" { "Image" } th scope="col" { "State" } th scope="col" { "Probe" } } }
                tbody {
                    @for (name, spec) in &view.containers {
                        @let state = view.report.as_ref().and_then(|r| r.containers.get(name));
                        tr {
                            th scope="row" { (name) }
                            td { code { (spec.image) } }
                            td { @match state {
                                Some(s) if s.running && s.healthy != Some(false) => span.badge.ok { "running" },
                                Some(s) if s.running => { span.badge.busy { "unhealthy" } " " (s.reason.clone().unwrap_or_default()) },
                                Some(s) => { span.badge.bad { "stopped" } " " (s.reason.clone().unwrap_or_default()) },
                                None => span.none { "not reported" },
                            } }
                            td { (view.probes.get(name).cloned().unwrap_or_default()) }
                        }
                    }
                }
            }
            @if !view.files.is_empty() {
                h2 { "Files" }
                ul.files { @for f in &view.files { li { code { (f.path) } " " (f.mode) ", " (f.bytes) " bytes" } } }
            }
            @if !view.certificates.is_empty() {
                h2 { "Certificates" }
                ul { @for c in &view.certificates { li { code { (c.file) } ": " (c.subject) ", until " (c.not_after) } } }
            }
        },
    ))
}

/// The last webhook deliveries, newest first.
fn deliveries(recent: &[crate::source::webhook::Delivery]) -> Markup {
    html! {
        section aria-labelledby="webhooks" {
            h2 id="webhooks" { "Webhook deliveries" }
            @if recent.is_empty() {
                p { "None since the daemon started." }
            } @else {
                table.deliveries {
                    caption.visually-hidden { "The last webhook deliveries, newest first" }
                    thead { tr {
                        th scope="col" { "Received" }
                        th scope="col" { "Provider" }
                        th scope="col" { "Delivery" }
                        th scope="col" { "Outcome" }
                    } }
                    tbody {
                        @for d in recent {
                            tr {
                                td { (humantime::format_rfc3339_seconds(d.at).to_string()) }
                                td { (d.provider) }
                                td { @match &d.id { Some(id) => code { (id) }, None => span.none { "none" } } }
                                td { @if d.accepted { span.badge.ok { "accepted" } } @else { span.badge.bad { "refused: bad signature" } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn daemon(op: &Operator, csrf: &str) -> Markup {
    let source = source_view(op);
    let agents = op
        .controller
        .get()
        .map(|c| c.hub().nodes_document().nodes)
        .unwrap_or_default();
    let connected = agents.iter().filter(|n| n.connected).count();
    layout(
        "Daemon",
        Some(csrf),
        html! {
            h1 { "Daemon" }
            dl.facts {
                dt { "Version" } dd { (env!("CARGO_PKG_VERSION")) }
                dt { "Source" } dd { code { (source.location) } }
                dt { "Revision" } dd { (revision(op, source.revision.as_deref())) }
                dt { "Last check" } dd { (source.last_check.clone().unwrap_or_else(|| "never".into())) }
                dt { "Agents connected" } dd { (connected) " of " (agents.len()) " declared nodes" }
            }
            @if let Some(error) = &source.error { p.error role="alert" { (error) } }
            (deliveries(&op.webhooks.recent()))
            @if !source.diagnostics.is_empty() {
                h2 { "Invalid cluster files" }
                @for d in &source.diagnostics { pre.diagnostic { (d) } }
            }
        },
    )
}
