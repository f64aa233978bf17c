//! The daemon's own configuration, which never lives in Git: the snapshot stores that cluster
//! files name. It holds no secret: S3 credentials are read from files or the environment, and
//! the configuration says only where.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::diagnostic::{Diagnostic, Severity};
use crate::model::document::{
    parse_documents, read_limited, Checker, LoadError, SourceFile, MAX_FILE_BYTES,
};
use crate::model::names::StoreName;

/// `kind` of a daemon configuration file.
pub const KIND: &str = "DaemonConfig";

/// The file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonConfigFile {
    pub api_version: String,
    pub kind: String,
    /// Snapshot stores by name; cluster files refer to them by that name.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreSpec {
    /// `file:///absolute/path` or `s3://bucket[/prefix]`.
    pub url: String,
    /// For S3-compatible servers: the endpoint URL, e.g. `http://127.0.0.1:3900`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible servers want.
    #[serde(default)]
    pub path_style: bool,
    /// Allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,
}

/// Where S3 credentials come from: files (one value each, e.g. mounted secrets) or the standard
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub from_environment: bool,
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub stores: BTreeMap<StoreName, Store>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// Snapshots under a local directory.
    File {
        root: PathBuf,
    },
    S3(S3Store),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Store {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub endpoint: Option<url::Url>,
    pub region: String,
    pub path_style: bool,
    pub allow_http: bool,
    pub credentials: Credentials,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Files {
        access_key_id: PathBuf,
        secret_access_key: PathBuf,
    },
    Environment,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("invalid daemon configuration")]
    Invalid { diagnostics: Vec<Diagnostic> },
}

impl ConfigError {
    /// Every problem as `file:line:column: error: message`. The file's lines are never shown:
    /// the configuration sits beside credentials, and a value pasted into the wrong field must
    /// not reach a log.
    pub fn render(&self) -> String {
        match self {
            ConfigError::Load(e) => format!("error: {e}\n"),
            ConfigError::Invalid { diagnostics } => {
                diagnostics.iter().map(|d| d.render(None)).collect()
            }
        }
    }
}

/// Reads and checks a daemon configuration file.
pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
    let bytes = read_limited(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&path.display().to_string(), bytes)
}

/// Checks a daemon configuration from its bytes; `name` is how diagnostics refer to it.
pub fn parse(name: &str, bytes: Vec<u8>) -> Result<DaemonConfig, ConfigError> {
    debug_assert!(bytes.len() as u64 <= MAX_FILE_BYTES + 1);
    let file = SourceFile {
        path: name.to_string(),
        bytes,
    };
    let mut diagnostics = Vec::new();
    let parsed = parse_documents::<DaemonConfigFile>(&file, &mut diagnostics);
    let mut config = None;
    match parsed.documents.as_slice() {
        [(doc, index)] => {
            let mut c = Checker::new(name, index, &mut diagnostics);
            config = check(doc, &mut c);
        }
        [] => {}
        [_, (_, index), ..] => {
            let mut c = Checker::new(name, index, &mut diagnostics);
            c.at("", crate::model::diagnostic::Problem::ConfigDocuments);
        }
    }
    diagnostics.sort_by(|a, b| a.location.cmp(&b.location));
    let errors = diagnostics.iter().any(|d| d.severity() == Severity::Error);
    match config {
        Some(config) if !errors => Ok(config),
        _ => Err(ConfigError::Invalid { diagnostics }),
    }
}

fn check(doc: &DaemonConfigFile, c: &mut Checker<'_>) -> Option<DaemonConfig> {
    use crate::model::diagnostic::Problem;
    if doc.api_version != crate::model::spec::API_VERSION {
        let found = doc.api_version.clone();
        let expected = crate::model::spec::API_VERSION;
        c.at(
            "apiVersion",
            Problem::UnsupportedApiVersion { found, expected },
        );
    }
    if doc.kind != KIND {
        let found = doc.kind.clone();
        c.at("kind", Problem::UnsupportedConfigKind { found });
    }
    let mut stores = BTreeMap::new();
    for (name, spec) in &doc.stores {
        let at = format!("stores.{name}");
        let parsed_name = match StoreName::parse(name) {
            Ok(n) => Some(n),
            Err(reason) => {
                let value = name.clone();
                let what = StoreName::WHAT;
                c.at_key(
                    &at,
                    Problem::InvalidName {
                        what,
                        value,
                        reason,
                    },
                );
                None
            }
        };
        let store = check_store(&at, spec, c);
        if let (Some(n), Some(s)) = (parsed_name, store) {
            stores.insert(n, s);
        }
    }
    (c.errors == 0).then_some(DaemonConfig { stores })
}

fn check_store(at: &str, s: &StoreSpec, c: &mut Checker<'_>) -> Option<Store> {
    use crate::model::diagnostic::Problem;
    let bad = |reason: &'static str| Problem::InvalidStore { reason };
    let url = match url::Url::parse(&s.url) {
        Ok(u) => u,
        Err(_) => {
            c.at(&format!("{at}.url"), bad("not a URL"));
            return None;
        }
    };
    match url.scheme() {
        "file" => {
            let s3_only = s.endpoint.is_some()
                || s.region.is_some()
                || s.credentials.is_some()
                || s.path_style
                || s.allow_http;
            if s3_only {
                c.at_key(at, bad("endpoint, region, credentials, pathStyle and allowHttp are for s3:// stores"));
            }
            if url.host_str().is_some_and(|h| !h.is_empty()) || url.path().len() <= 1 {
                c.at(
                    &format!("{at}.url"),
                    bad("a file store is file:///absolute/path"),
                );
                return None;
            }
            let root = url.to_file_path().ok()?;
            Some(Store::File { root })
        }
        "s3" => check_s3(at, &url, s, c).map(Store::S3),
        _ => {
            c.at(&format!("{at}.url"), bad("the scheme must be file or s3"));
            None
        }
    }
}

fn check_s3(at: &str, url: &url::Url, s: &StoreSpec, c: &mut Checker<'_>) -> Option<S3Store> {
    use crate::model::diagnostic::Problem;
    let bad = |reason: &'static str| Problem::InvalidStore { reason };
    let bucket = url.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        c.at(
            &format!("{at}.url"),
            bad("an s3 store is s3://bucket[/prefix]"),
        );
    }
    let endpoint = match s.endpoint.as_deref().map(url::Url::parse) {
        None => None,
        Some(Ok(e)) if e.scheme() == "https" || (e.scheme() == "http" && s.allow_http) => Some(e),
        Some(Ok(e)) if e.scheme() == "http" => {
            c.at(
                &format!("{at}.endpoint"),
                bad("a plain http endpoint needs allowHttp: true"),
            );
            None
        }
        Some(_) => {
            c.at(
                &format!("{at}.endpoint"),
                bad("the endpoint must be an http(s) URL"),
            );
            None
        }
    };
    let credentials = match &s.credentials {
        Some(CredentialsSpec {
            access_key_id_file: Some(id),
            secret_access_key_file: Some(secret),
            from_environment: false,
        }) => Some(Credentials::Files {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
        }),
        Some(CredentialsSpec {
            access_key_id_file: None,
            secret_access_key_file: None,
            from_environment: true,
        }) => Some(Credentials::Environment),
        _ => {
            let reason = "give credentials: both accessKeyIdFile and secretAccessKeyFile, or fromEnvironment: true";
            c.at_key(&format!("{at}.credentials"), bad(reason));
            None
        }
    };
    Some(S3Store {
        bucket,
        prefix: url.path().trim_matches('/').to_string(),
        endpoint,
        region: s.region.clone().unwrap_or_else(|| "us-east-1".to_string()),
        path_style: s.path_style,
        allow_http: s.allow_http,
        credentials: credentials?,
    })
}
