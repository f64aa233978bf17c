//! Diagnostics: what is wrong with a repository's files, where, and how bad. Each problem is a
//! typed variant with a stable code; rendering to rustc-style text or JSON happens here and only
//! here.

use std::fmt::Write as _;

use serde::Serialize;

use super::spec::Role;

/// A position in a file: 1-based line, 1-based column counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };
}

/// Where a diagnostic points: a file (relative to the repository root), and within it a position
/// and the number of characters to underline.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub file: String,
    pub pos: Option<Pos>,
    pub len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// Everything drover can find wrong with a cluster repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    // Reading the file.
    #[error("file is {size} bytes, over the {limit}-byte limit for a cluster file")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("file is not valid UTF-8")]
    NotUtf8,
    #[error("cannot read file: {reason}")]
    Unreadable { reason: String },
    #[error("symbolic link skipped: cluster files must be regular files in the repository")]
    SymlinkSkipped,
    #[error("more than {limit} cluster files; the rest were not read")]
    TooManyFiles { limit: usize },

    // YAML structure.
    #[error("YAML syntax: {reason}")]
    Syntax { reason: String },
    #[error("nesting deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("aliases expand to more than {limit} nodes (an alias bomb?)")]
    AliasExpansion { limit: u64 },
    #[error("more than {limit} YAML documents in one file")]
    TooManyDocuments { limit: usize },
    #[error(
        "merge keys (`<<`) are not supported; use a plain alias (`*name`) or repeat the fields"
    )]
    MergeKey,
    #[error("{reason}")]
    Schema { reason: String },
    #[error("file holds no cluster")]
    EmptyFile,

    // Cluster definition.
    #[error("unsupported apiVersion `{found}`; this drover reads `{expected}`")]
    UnsupportedApiVersion {
        found: String,
        expected: &'static str,
    },
    #[error("unsupported kind `{found}`; a cluster file holds `Cluster`")]
    UnsupportedKind { found: String },
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: NameError,
    },
    #[error("cluster `{name}` is also defined at {other}")]
    DuplicateCluster { name: String, other: String },
    #[error("duplicate node name `{name}` (first at line {first_line})")]
    DuplicateNodeName { name: String, first_line: u32 },
    #[error("address `{address}` is already used by node `{other}`")]
    DuplicateAddress { address: String, other: String },
    #[error("invalid address `{value}`: expected an IP address or a DNS name")]
    InvalidAddress { value: String },
    #[error("node `{node}` has no roles; give at least one of etcd, controlplane, worker")]
    NoRoles { node: String },
    #[error("role `{role}` is listed twice")]
    DuplicateRole { role: Role },
    #[error("no node has the etcd role; a cluster needs at least one etcd member")]
    NoEtcdNode,
    #[error("{count} etcd members tolerate no more failures than {fewer}; prefer an odd count")]
    EvenEtcdCount { count: usize, fewer: usize },
    #[error("invalid label `{key}`: {reason}")]
    InvalidLabel { key: String, reason: &'static str },
    #[error("image must not be empty or contain whitespace")]
    InvalidImage,
    #[error("invalid etcd flag name `{name}`: use the name without leading dashes")]
    InvalidFlag { name: String },
    #[error("flag `--{name}` is set by drover and cannot be overridden")]
    ReservedFlag { name: String },
    #[error("port must be between 1 and 65535")]
    InvalidPort,
    #[error("client and peer ports must differ")]
    PortClash,

    // Snapshots and restore.
    #[error("give either `schedule` or `every`, not both")]
    ScheduleConflict,
    #[error("snapshots need a `schedule` (cron) or an `every` interval")]
    ScheduleMissing,
    #[error("invalid cron schedule `{value}`: {reason}")]
    InvalidCron { value: String, reason: String },
    #[error("invalid interval `{value}`: {reason}")]
    InvalidInterval { value: String, reason: String },
    #[error("interval `{value}` is shorter than the minimum of {min}")]
    IntervalTooShort { value: String, min: &'static str },
    #[error("retention `last` must be at least 1: the newest snapshot is always kept")]
    RetentionLastZero,
    #[error("retention tier `{tier}` must be at least 1, or left out")]
    RetentionTierZero { tier: &'static str },
    #[error("invalid snapshot id `{value}`: expected <UTC time>-<revision>-<id>, e.g. 20261125T060000Z-48213-9f3a61c2")]
    InvalidSnapshotId { value: String },
    #[error("invalid restore request id `{value}`: 1 to 63 of a-z A-Z 0-9 . _ -, starting with a letter or digit")]
    InvalidRequestId { value: String },

    // Components.
    #[error("component `{name}` is defined twice for role {role}")]
    DuplicateComponent { role: Role, name: String },
    #[error("component name `etcd` is reserved for drover's etcd member")]
    ReservedComponentName,
    #[error("component `{name}` is defined for both {first} and {second}, and node `{node}` has both roles")]
    ComponentClash {
        name: String,
        first: Role,
        second: Role,
        node: String,
    },
    #[error("invalid environment variable name `{name}`")]
    InvalidEnvName { name: String },
    #[error("invalid bind `{value}`: {reason}")]
    InvalidBind { value: String, reason: &'static str },
    #[error("file path `{value}` must be absolute and normalized")]
    InvalidFilePath { value: String },
    #[error("invalid file mode `{value}`: expected octal permission bits such as \"0644\"")]
    InvalidFileMode { value: String },
    #[error("file `{path}` is written twice on node `{node}`")]
    DuplicateFile { path: String, node: String },
    #[error("node `{node}` would run {count} containers and files; a node runs at most {limit}")]
    TooManySteps {
        node: String,
        count: usize,
        limit: usize,
    },
    #[error("label keys starting with `drover.dev/` are reserved")]
    ReservedLabel,
    #[error("health check needs exactly one of `http`, `tcp`, `exec`")]
    ProbeKind,
    #[error("invalid health check `{value}`: {reason}")]
    InvalidProbe { value: String, reason: &'static str },
    #[error("template error for node `{node}`: {reason}")]
    Template { node: String, reason: String },

    // Daemon configuration.
    #[error("unsupported kind `{found}`; a daemon configuration holds `DaemonConfig`")]
    UnsupportedConfigKind { found: String },
    #[error("a daemon configuration is one YAML document")]
    ConfigDocuments,
    #[error("invalid store: {reason}")]
    InvalidStore { reason: &'static str },
    #[error("invalid daemon setting: {reason}")]
    InvalidDaemonSetting { reason: &'static str },

    // Rollout.
    #[error("invalid maxUnavailable `{value}`: expected a count of at least 1 or a percentage from 1% to 100%")]
    InvalidMaxUnavailable { value: String },
    #[error("etcd members are always replaced one at a time; maxUnavailable for etcd is not used")]
    EtcdMaxUnavailable,
}

/// Why a name is not a DNS label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than 63 characters")]
    TooLong,
    #[error("only lower-case letters, digits and '-' are allowed")]
    BadChar,
    #[error("it must start and end with a letter or digit")]
    BadEdge,
}

impl Problem {
    pub fn severity(&self) -> Severity {
        match self {
            Problem::SymlinkSkipped
            | Problem::EmptyFile
            | Problem::EvenEtcdCount { .. }
            | Problem::EtcdMaxUnavailable => Severity::Warning,
            _ => Severity::Error,
        }
    }

    /// A stable, kebab-case identifier for tools (`--format json`).
    pub fn code(&self) -> &'static str {
        match self {
            Problem::FileTooLarge { .. } => "file-too-large",
            Problem::NotUtf8 => "not-utf8",
            Problem::Unreadable { .. } => "unreadable",
            Problem::SymlinkSkipped => "symlink-skipped",
            Problem::TooManyFiles { .. } => "too-many-files",
            Problem::Syntax { .. } => "yaml-syntax",
            Problem::TooDeep { .. } => "too-deep",
            Problem::AliasExpansion { .. } => "alias-expansion",
            Problem::TooManyDocuments { .. } => "too-many-documents",
            Problem::MergeKey => "merge-key",
            Problem::Schema { .. } => "schema",
            Problem::EmptyFile => "empty-file",
            Problem::UnsupportedApiVersion { .. } => "unsupported-api-version",
            Problem::UnsupportedKind { .. } => "unsupported-kind",
            Problem::InvalidName { .. } => "invalid-name",
            Problem::DuplicateCluster { .. } => "duplicate-cluster",
            Problem::DuplicateNodeName { .. } => "duplicate-node-name",
            Problem::DuplicateAddress { .. } => "duplicate-address",
            Problem::InvalidAddress { .. } => "invalid-address",
            Problem::NoRoles { .. } => "no-roles",
            Problem::DuplicateRole { .. } => "duplicate-role",
            Problem::NoEtcdNode => "no-etcd-node",
            Problem::EvenEtcdCount { .. } => "even-etcd-count",
            Problem::InvalidLabel { .. } => "invalid-label",
            Problem::InvalidImage => "invalid-image",
            Problem::InvalidFlag { .. } => "invalid-flag",
            Problem::ReservedFlag { .. } => "reserved-flag",
            Problem::InvalidPort => "invalid-port",
            Problem::PortClash => "port-clash",
            Problem::ScheduleConflict => "schedule-conflict",
            Problem::ScheduleMissing => "schedule-missing",
            Problem::InvalidCron { .. } => "invalid-cron",
            Problem::InvalidInterval { .. } => "invalid-interval",
            Problem::IntervalTooShort { .. } => "interval-too-short",
            Problem::RetentionLastZero => "retention-last-zero",
            Problem::RetentionTierZero { .. } => "retention-tier-zero",
            Problem::InvalidSnapshotId { .. } => "invalid-snapshot-id",
            Problem::InvalidRequestId { .. } => "invalid-request-id",
            Problem::DuplicateComponent { .. } => "duplicate-component",
            Problem::ReservedComponentName => "reserved-component-name",
            Problem::ComponentClash { .. } => "component-clash",
            Problem::InvalidEnvName { .. } => "invalid-env-name",
            Problem::InvalidBind { .. } => "invalid-bind",
            Problem::InvalidFilePath { .. } => "invalid-file-path",
            Problem::InvalidFileMode { .. } => "invalid-file-mode",
            Problem::DuplicateFile { .. } => "duplicate-file",
            Problem::TooManySteps { .. } => "too-many-steps",
            Problem::ReservedLabel => "reserved-label",
            Problem::ProbeKind => "probe-kind",
            Problem::InvalidProbe { .. } => "invalid-probe",
            Problem::Template { .. } => "template",
            Problem::UnsupportedConfigKind { .. } => "unsupported-config-kind",
            Problem::ConfigDocuments => "config-documents",
            Problem::InvalidStore { .. } => "invalid-store",
            Problem::InvalidDaemonSetting { .. } => "invalid-daemon-setting",
            Problem::InvalidMaxUnavailable { .. } => "invalid-max-unavailable",
            Problem::EtcdMaxUnavailable => "etcd-max-unavailable",
        }
    }
}

/// One finding: a problem at a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub problem: Problem,
}

impl Diagnostic {
    pub fn new(location: Location, problem: Problem) -> Self {
        Diagnostic { location, problem }
    }

    pub fn severity(&self) -> Severity {
        self.problem.severity()
    }

    /// `file:line:column: severity: message`, the offending line and a caret under the span,
    /// when `source` (the file's text) is given.
    pub fn render(&self, source: Option<&str>) -> String {
        let loc = &self.location;
        let mut out = String::new();
        let _ = match loc.pos {
            Some(p) => write!(out, "{}:{}:{}: ", loc.file, p.line, p.column),
            None => write!(out, "{}: ", loc.file),
        };
        let _ = writeln!(out, "{}: {}", self.severity().as_str(), self.problem);
        if let (Some(pos), Some(src)) = (loc.pos, source) {
            let past_end = (pos.line as usize == src.lines().count() + 1).then_some("");
            if let Some(line) = src.lines().nth(pos.line as usize - 1).or(past_end) {
                let gutter = pos.line.to_string();
                let pad = " ".repeat(gutter.len());
                // Tabs would misplace the caret; show them as one space each.
                let shown: String = line
                    .chars()
                    .map(|c| if c == '\t' { ' ' } else { c })
                    .collect();
                let col = pos.column as usize - 1;
                let width = (loc.len as usize)
                    .max(1)
                    .min(shown.chars().count().saturating_sub(col).max(1));
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{gutter} | {shown}");
                let _ = writeln!(out, "{pad} | {}{}", " ".repeat(col), "^".repeat(width));
            }
        }
        out
    }
}

/// The machine-readable form of a diagnostic, part of `drover validate --format json`.
#[derive(Debug, Serialize)]
pub struct DiagnosticJson<'a> {
    pub file: &'a str,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
}

impl<'a> From<&'a Diagnostic> for DiagnosticJson<'a> {
    fn from(d: &'a Diagnostic) -> Self {
        DiagnosticJson {
            file: &d.location.file,
            line: d.location.pos.map(|p| p.line),
            column: d.location.pos.map(|p| p.column),
            severity: d.severity(),
            code: d.problem.code(),
            message: d.problem.to_string(),
        }
    }
}
