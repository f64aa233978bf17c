//! Registry credentials for image pulls, from the node's Docker client configuration
//! (`config.json`, as `docker login` writes it). The engine's API does not read that file, so
//! the agent does, and hands the pull the credentials of the image's registry.
//!
//! The file is read again for every pull, so a `docker login` on the node takes effect without
//! restarting the agent. Only the `auths` entries are used; credential helpers (`credsStore`,
//! `credHelpers`) are not run. Passwords are `Secret`s and never appear in errors or logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

use crate::model::names::ImageRef;
use crate::secret::Secret;

/// The largest client configuration read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Why the credentials for a pull could not be read. No variant carries file content.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read registry credentials from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is over {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a Docker client configuration (JSON with `auths`)")]
    Malformed { path: PathBuf },
    #[error("the credentials for {registry} in {path} are not base64 of `user:password`")]
    BadAuth { registry: String, path: PathBuf },
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<Secret>,
    identitytoken: Option<Secret>,
}

/// Where the agent finds registry credentials.
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    config: PathBuf,
}

/// A registry's credentials, ready for a pull.
pub struct Credentials {
    registry: String,
    username: Option<String>,
    password: Option<Secret>,
    identity_token: Option<Secret>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The form the engine's API takes. Only built for the request itself.
    pub fn docker(&self) -> DockerCredentials {
        DockerCredentials {
            username: self.username.clone(),
            password: self.password.as_ref().map(|p| p.expose().to_string()),
            identitytoken: self.identity_token.as_ref().map(|t| t.expose().to_string()),
            serveraddress: Some(self.registry.clone()),
            ..Default::default()
        }
    }
}

impl RegistryAuth {
    /// Credentials from the Docker client configuration file `config`.
    pub fn new(config: impl Into<PathBuf>) -> RegistryAuth {
        RegistryAuth {
            config: config.into(),
        }
    }

    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`: where `docker login`
    /// writes.
    pub fn from_environment() -> RegistryAuth {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))
            .unwrap_or_else(|| PathBuf::from("/root/.docker"));
        RegistryAuth::new(dir.join("config.json"))
    }

    pub fn path(&self) -> &Path {
        &self.config
    }

    /// The credentials for `image`'s registry; `None` when the file or its entry is absent.
    pub fn for_image(&self, image: &ImageRef) -> Result<Option<Credentials>, AuthError> {
        let path = &self.config;
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AuthError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        if size > MAX_CONFIG_BYTES {
            return Err(AuthError::TooLarge { path: path.clone() });
        }
        let bytes = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.clone(),
            source,
        })?;
        let config: ConfigFile = serde_json::from_slice(&bytes)
            .map_err(|_| AuthError::Malformed { path: path.clone() })?;
        let registry = image.registry();
        let Some(entry) = config
            .auths
            .iter()
            .find(|(key, _)| normalize(key) == registry)
            .map(|(_, e)| e)
        else {
            return Ok(None);
        };
        let (username, password) = match &entry.auth {
            Some(auth) => {
                let bad = || AuthError::BadAuth {
                    registry: registry.to_string(),
                    path: path.clone(),
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.expose().trim())
                    .map_err(|_| bad())?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
                let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
                (Some(user.to_string()), Some(Secret::new(password)))
            }
            None => (None, None),
        };
        Ok(Some(Credentials {
            registry: registry.to_string(),
            username,
            password,
            identity_token: entry.identitytoken.clone(),
        }))
    }
}

/// A key of `auths` as a registry host: `https://index.docker.io/v1/` is `docker.io`.
fn normalize(key: &str) -> &str {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(text: &str) -> ImageRef {
        ImageRef::parse(text).unwrap()
    }

    #[test]
    fn config_keys_name_their_registry_as_docker_login_writes_them() {
        for (key, host) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
        ] {
            assert_eq!(normalize(key), host, "{key}");
        }
    }

    #[test]
    fn credentials_are_read_per_registry_and_errors_quote_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = RegistryAuth::new(&path);
        assert!(
            auth.for_image(&img("busybox")).unwrap().is_none(),
            "no file"
        );
        let secret = "pa:ss-word";
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("me:{secret}"));
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{encoded}"}}, "127.0.0.1:5000": {{"auth": "not base64!"}}}}, "credsStore": "desktop"}}"#
            ),
        )
        .unwrap();
        let hub = auth
            .for_image(&img("busybox:1"))
            .unwrap()
            .expect("Docker Hub's entry");
        let docker = hub.docker();
        assert_eq!(docker.username.as_deref(), Some("me"));
        assert_eq!(
            docker.password.as_deref(),
            Some(secret),
            "split at the first colon"
        );
        assert_eq!(docker.serveraddress.as_deref(), Some("docker.io"));
        assert!(!format!("{hub:?}").contains(secret));
        assert!(auth
            .for_image(&img("registry.k8s.io/pause:3"))
            .unwrap()
            .is_none());
        let bad = auth.for_image(&img("127.0.0.1:5000/app:1")).unwrap_err();
        assert!(matches!(bad, AuthError::BadAuth { .. }), "{bad}");
        std::fs::write(&path, format!("{{\"auths\": [\"{secret}\"]}}")).unwrap();
        let malformed = auth.for_image(&img("busybox")).unwrap_err();
        assert!(
            !crate::error_chain(&malformed).contains(secret),
            "{malformed}"
        );
    }
}
