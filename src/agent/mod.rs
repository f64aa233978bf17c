//! The node agent: dials the daemon, receives its node's plan, applies it with the Docker
//! Engine API and reports what runs.
//!
//! - `docker`: the driver that takes a node to a plan (containers, files, labels, spec hashes);
//! - `probe`: components' health checks;
//! - `etcd`: tasks against the node's own etcd member (health, membership), over TLS;
//! - `events`: the Docker events stream, re-subscribed when Docker restarts;
//! - `executor`: the task that applies the plan on every trigger and publishes results;
//! - `session`: TLS with the pinned CA, the join, and the protocol session;
//! - `credential`: the files of the agent's data directory;
//! - `fence`: the newest fencing token seen, and the refusal of older ones;
//! - `registry`: registry credentials for image pulls, from the node's Docker client config.
//!
//! `run` ties them: join once if there is no credential yet, start the executor (which
//! re-applies a saved plan at once), then keep a session up, redialling with backoff.

pub mod credential;
pub mod docker;
pub mod etcd;
pub mod events;
pub mod executor;
pub mod fence;
pub mod oneoff;
pub mod probe;
pub mod registry;
pub mod restore;
pub mod session;
pub mod transfer;

use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::secret::Secret;
use crate::state::StateDir;
use credential::DataDir;
use executor::{Executor, ExecutorSettings};
use session::{Dial, SessionError};

/// Everything an agent needs.
pub struct AgentSettings {
    pub dial: Dial,
    /// Further daemons sharing the state, tried in turn after `dial` when it cannot be reached.
    pub also: Vec<Dial>,
    pub node: String,
    /// Needed only until the agent has a credential.
    pub token: Option<Secret>,
    pub data_dir: PathBuf,
    pub docker: Docker,
    /// `/` on a real node; a directory per simulated node.
    pub host_root: PathBuf,
    pub reconnect_base: Duration,
    pub reconnect_cap: Duration,
    pub executor: ExecutorSettings,
    /// Where pulls find registry credentials; `None`: pull without any.
    pub registry_auth: Option<registry::RegistryAuth>,
}

impl AgentSettings {
    pub fn new(dial: Dial, node: &str, data_dir: PathBuf, docker: Docker) -> AgentSettings {
        AgentSettings {
            dial,
            also: Vec::new(),
            node: node.to_string(),
            token: None,
            data_dir,
            docker,
            host_root: PathBuf::from("/"),
            reconnect_base: Duration::from_millis(500),
            reconnect_cap: Duration::from_secs(30),
            executor: ExecutorSettings::default(),
            registry_auth: None,
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("this agent has no credential yet and no join token was given (--token-file)")]
    NoToken,
    #[error("the data directory holds the credential of node {have}, not {want}; use another --data-dir")]
    OtherNode { have: String, want: String },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Data(#[from] credential::DataError),
    #[error("cannot build the health prober")]
    Prober(#[from] probe::ProberError),
}

/// Runs the agent until `shutdown` or a refusal that waiting cannot fix.
pub async fn run(settings: AgentSettings, shutdown: CancellationToken) -> Result<(), AgentError> {
    let data = DataDir::new(StateDir::new(&settings.data_dir));
    let mut backoff = Backoff::new(settings.reconnect_base, settings.reconnect_cap);
    let mut route = Route::new(&settings);
    let credential = loop {
        if let Some(c) = data.off_thread(DataDir::credential).await? {
            if c.node != settings.node {
                return Err(AgentError::OtherNode {
                    have: c.node,
                    want: settings.node.clone(),
                });
            }
            break c;
        }
        let token = settings.token.as_ref().ok_or(AgentError::NoToken)?;
        match session::join(route.current(), &data, &settings.node, token).await {
            Ok(c) => {
                tracing::info!(cluster = c.cluster, node = c.node, "joined the cluster");
                break c;
            }
            Err(e) if e.is_transient_join() => {
                let wait = route.after(&e, &mut backoff);
                tracing::warn!(error = %crate::error_chain(&e), retry_in = ?wait, "cannot join yet");
                if wait_or_stop(wait, &shutdown).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    backoff.reset();

    let driver = docker::Driver::new(
        settings.docker.clone(),
        &credential.cluster,
        &credential.node,
        settings.host_root.clone(),
    )
    .stopped_by(shutdown.clone());
    let driver = match settings.registry_auth.clone() {
        Some(auth) => driver.with_registry_auth(auth),
        None => driver,
    };
    let pki_dir = driver.etcd_pki_path();
    let prober = probe::Prober::new(settings.docker.clone())?.with_etcd_pki(pki_dir.clone());
    let executor = Executor::spawn(
        driver,
        prober,
        &credential.cluster,
        &credential.node,
        data.clone(),
        settings.executor.clone(),
        shutdown.clone(),
    );
    let (mut notices, watcher) = events::watch(
        settings.docker.clone(),
        &credential.cluster,
        &credential.node,
        Backoff::new(settings.reconnect_base, settings.reconnect_cap),
    );

    let outcome = loop {
        let credential = match data.off_thread(DataDir::credential).await? {
            Some(c) => c,
            None => break Err(AgentError::NoToken),
        };
        let mut established = false;
        let ended = tokio::select! {
            r = session::session(route.current(), &data, &credential, &executor, &pki_dir, &mut established, &shutdown) => r,
            () = forward_events(&mut notices, &executor) => Ok(()),
        };
        match ended {
            Ok(()) => break Ok(()),
            Err(e) if e.is_transient() => {
                if established {
                    backoff.reset();
                    route.established();
                }
                let wait = route.after(&e, &mut backoff);
                tracing::warn!(error = %crate::error_chain(&e), retry_in = ?wait, "session ended; dialling again");
                if wait_or_stop_forwarding(wait, &shutdown, &mut notices, &executor).await {
                    break Ok(());
                }
            }
            Err(e) => break Err(e.into()),
        }
    };
    watcher.abort();
    executor.join().await;
    outcome
}

/// Docker events poke the executor; this only returns when the watcher is gone.
async fn forward_events(
    notices: &mut tokio::sync::mpsc::Receiver<events::Notice>,
    executor: &Executor,
) {
    while let Some(notice) = notices.recv().await {
        match notice {
            events::Notice::Lost { reason } => {
                tracing::warn!(reason, "lost the Docker event stream; re-subscribing")
            }
            events::Notice::Resubscribed => {
                tracing::info!("Docker event stream back; reconciling");
                executor.poke();
            }
            events::Notice::Container { .. } => executor.poke(),
        }
    }
    std::future::pending::<()>().await;
}

/// Which daemon the agent dials: the one a redirect named, else the configured ones in turn.
/// A configured daemon that cannot be reached is passed over at once for the next; only when
/// every one of them failed in a row does the agent back off. A redirect is followed at once.
/// A daemon that asks to retry is alive but cannot say where the cluster is (it moves, or that
/// daemon is cut off from the state): the agent waits as asked and dials the next one.
struct Route {
    servers: Vec<Dial>,
    next: usize,
    redirected: Option<Dial>,
    /// Redirects followed since the last session was established.
    hops: u32,
    /// Configured daemons that failed in a row since one last answered.
    unanswered: usize,
}

/// Redirects followed at once, one after another; past this they wait like any retry (two
/// daemons that disagree on the owner for a moment must not make the agent spin).
const MAX_HOPS: u32 = 3;

impl Route {
    fn new(settings: &AgentSettings) -> Route {
        let mut servers = vec![settings.dial.clone()];
        servers.extend(settings.also.iter().cloned());
        Route::over(servers)
    }

    fn over(servers: Vec<Dial>) -> Route {
        Route {
            servers,
            next: 0,
            redirected: None,
            hops: 0,
            unanswered: 0,
        }
    }

    fn current(&self) -> &Dial {
        self.redirected
            .as_ref()
            .unwrap_or(&self.servers[self.next % self.servers.len()])
    }

    fn established(&mut self) {
        self.hops = 0;
        self.unanswered = 0;
    }

    /// How long to wait after `e`, and where to dial next.
    fn after(&mut self, e: &SessionError, backoff: &mut Backoff) -> Duration {
        match e {
            SessionError::Redirect { url, .. } => match self.current().to(url) {
                Ok(dial) => {
                    self.unanswered = 0;
                    self.redirected = Some(dial);
                    self.hops += 1;
                    if self.hops <= MAX_HOPS {
                        return Duration::ZERO;
                    }
                    self.hops = 0;
                    return backoff.next_delay();
                }
                Err(bad) => {
                    tracing::warn!(url, error = %bad, "ignoring a redirect to a URL that is not wss://");
                }
            },
            SessionError::RetryAfter { seconds, .. } => {
                self.unanswered = 0;
                if self.redirected.take().is_none() {
                    self.next = self.next.wrapping_add(1);
                }
                return Duration::from_secs(*seconds);
            }
            _ => {}
        }
        // The daemon a redirect named failed: back to the configured one that named it.
        if self.redirected.take().is_some() {
            return backoff.next_delay();
        }
        self.next = self.next.wrapping_add(1);
        self.unanswered += 1;
        if self.unanswered < self.servers.len() {
            return Duration::ZERO;
        }
        self.unanswered = 0;
        backoff.next_delay()
    }
}

/// Waits `wait`; true when the agent is to stop instead.
async fn wait_or_stop(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = shutdown.cancelled() => true,
    }
}

async fn wait_or_stop_forwarding(
    wait: Duration,
    shutdown: &CancellationToken,
    notices: &mut tokio::sync::mpsc::Receiver<events::Notice>,
    executor: &Executor,
) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = shutdown.cancelled() => true,
        () = forward_events(notices, executor) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn down(host: &str) -> SessionError {
        SessionError::Timeout {
            addr: host.to_string(),
            timeout: Duration::from_secs(1),
        }
    }

    fn redirect(url: &str) -> SessionError {
        SessionError::Redirect {
            url: url.to_string(),
            reason: "moved".into(),
        }
    }

    fn retry(seconds: u64) -> SessionError {
        SessionError::RetryAfter {
            seconds,
            reason: "moving".into(),
        }
    }

    /// How soon the agent dials again: at once, after a backoff, or when the daemon asked.
    #[derive(Debug, PartialEq)]
    enum Wait {
        Now,
        Backoff,
        Seconds(u64),
    }

    /// What the dialled daemon did, then which daemon is dialled next and how soon.
    type Step = (SessionError, &'static str, Wait);

    #[test]
    fn the_agent_passes_over_dead_daemons_and_waits_where_a_live_one_says() {
        let d = |host: &str| Dial::new(&format!("wss://{host}:7443"), PIN).unwrap();
        let cases: &[(&str, &[Step])] = &[
            (
                "a dead daemon in the list is passed over at once; a round of dead ones backs off",
                &[
                    (down("a"), "b", Wait::Now),
                    (down("b"), "c", Wait::Now),
                    (down("c"), "a", Wait::Backoff),
                    (down("a"), "b", Wait::Now),
                ],
            ),
            (
                "a redirect is followed at once; its target down, back to who sent it",
                &[
                    (redirect("wss://c:7443"), "c", Wait::Now),
                    (down("c"), "a", Wait::Backoff),
                    (redirect("wss://c:7443"), "c", Wait::Now),
                ],
            ),
            (
                "a daemon asking to wait is left for the next after the wait; a round starts over",
                &[
                    (down("a"), "b", Wait::Now),
                    (retry(5), "c", Wait::Seconds(5)),
                    (down("c"), "a", Wait::Now),
                    (down("a"), "b", Wait::Now),
                    (down("b"), "c", Wait::Backoff),
                ],
            ),
            (
                "a retry from a redirect's target goes back to the configured daemon",
                &[
                    (redirect("wss://c:7443"), "c", Wait::Now),
                    (retry(2), "a", Wait::Seconds(2)),
                ],
            ),
            (
                "redirects bounce at most three times in a row before backing off",
                &[
                    (redirect("wss://b:7443"), "b", Wait::Now),
                    (redirect("wss://c:7443"), "c", Wait::Now),
                    (redirect("wss://b:7443"), "b", Wait::Now),
                    (redirect("wss://c:7443"), "c", Wait::Backoff),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut route = Route::over(vec![d("a"), d("b"), d("c")]);
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            for (i, (answer, next, want)) in steps.iter().enumerate() {
                let before = backoff.attempt();
                let wait = route.after(answer, &mut backoff);
                let got = if backoff.attempt() > before {
                    Wait::Backoff
                } else if wait.is_zero() {
                    Wait::Now
                } else {
                    Wait::Seconds(wait.as_secs())
                };
                assert_eq!(&got, want, "{name}: step {i}");
                let host = route.current().server.host_str().unwrap().to_string();
                assert_eq!(host, *next, "{name}: step {i}");
            }
        }
    }
}
