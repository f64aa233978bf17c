//! The agent's view of Docker events: a task subscribed to the events of this node's managed
//! containers (labels managed-by, cluster and node; the actions in [`ACTIONS`]) that turns them
//! into [`Notice`]s, the agent's cue to reconcile now rather than at its next periodic pass.
//!
//! The subscription survives Docker: when the stream errors or ends (Docker restarted, the socket
//! went away), the task reports [`Notice::Lost`] once for that outage and subscribes again,
//! waiting between attempts with a [`Backoff`]. Once Docker answers again it reports
//! [`Notice::Resubscribed`]: events may have been missed meanwhile, so the agent must reconcile
//! from what runs. An outage is always `Lost` then `Resubscribed`, in that order.
//!
//! No event after [`watch`] returns is missed while Docker stays up: each subscription asks
//! Docker to replay its recent events (`since`) from the last event received, or from the call
//! to `watch` before any. A replay can repeat an event; notices only mean "something changed",
//! so that is harmless. Events of a Docker that restarted are gone with it: hence `Resubscribed`.
//!
//! The channel is bounded ([`CHANNEL_CAPACITY`]). When it is full, container notices are dropped:
//! the agent has not yet read the ones queued before them, and it reconciles the whole node when
//! it does. `Lost` and `Resubscribed` are never dropped. The task ends when the receiver is
//! dropped.

use std::collections::HashMap;
use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use bollard::Docker;
use futures::StreamExt as _;
use tokio::sync::mpsc::{self, error::TrySendError, Receiver, Sender};
use tokio::task::JoinHandle;

use super::docker::{LABEL_CLUSTER, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_NODE, MANAGED_BY};
use crate::backoff::Backoff;

/// Notices the agent has not read yet, at most; further container notices are coalesced away.
pub const CHANNEL_CAPACITY: usize = 64;

/// The container actions that can change what the agent must do. `health_status` matches its
/// `health_status: healthy` and `health_status: unhealthy` forms.
pub const ACTIONS: &[&str] = &[
    "create",
    "start",
    "restart",
    "die",
    "kill",
    "oom",
    "stop",
    "destroy",
    "pause",
    "unpause",
    "health_status",
];

/// What the watcher tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A managed container of this node did something (`action` is Docker's own word, e.g.
    /// `die` or `health_status: unhealthy`).
    Container { component: String, action: String },
    /// The subscription works again after an outage; events of the outage may be lost.
    Resubscribed,
    /// The subscription broke (or could not be made); sent once per outage.
    Lost { reason: String },
}

/// Why a subscription stopped, for [`Notice::Lost`].
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("Docker event stream failed")]
    Docker(#[source] bollard::errors::Error),
    #[error("Docker ended the event stream")]
    Ended,
}

/// Starts watching the managed containers of `node` in `cluster`. Must be called inside a
/// tokio runtime. The task ends when the receiver is dropped; the handle is for awaiting that
/// or aborting it sooner.
pub fn watch(
    docker: Docker,
    cluster: &str,
    node: &str,
    backoff: Backoff,
) -> (Receiver<Notice>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let watcher = Watcher {
        docker,
        filters: filters(cluster, node),
        tx,
    };
    let task = tokio::spawn(watcher.run(SystemTime::now(), backoff));
    (rx, task)
}

/// The subscription's filters: container events of this node's managed containers.
fn filters(cluster: &str, node: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED_BY}={MANAGED_BY}"),
                format!("{LABEL_CLUSTER}={cluster}"),
                format!("{LABEL_NODE}={node}"),
            ],
        ),
        (
            "event".to_string(),
            ACTIONS.iter().map(|a| a.to_string()).collect(),
        ),
    ])
}

/// How one subscription ended.
enum Outcome {
    /// The receiver was dropped: the watch is over.
    ReceiverGone,
    /// The subscription broke. `confirmed` says whether it had worked (Docker answered) first.
    Broke { error: StreamError, confirmed: bool },
}

struct Watcher {
    docker: Docker,
    filters: HashMap<String, Vec<String>>,
    tx: Sender<Notice>,
}

impl Watcher {
    /// Subscribes, forwards, and subscribes again after each break until the receiver is gone.
    async fn run(self, mut since: SystemTime, mut backoff: Backoff) {
        let mut outage = false;
        loop {
            let outcome = tokio::select! {
                () = self.tx.closed() => Outcome::ReceiverGone,
                outcome = self.subscription(&mut since, outage) => outcome,
            };
            let (error, confirmed) = match outcome {
                Outcome::ReceiverGone => return,
                Outcome::Broke { error, confirmed } => (error, confirmed),
            };
            if confirmed {
                backoff.reset();
                outage = false;
            }
            let reason = crate::error_chain(&error);
            if !outage {
                tracing::warn!(reason, "lost the Docker event stream; resubscribing");
                if self.tx.send(Notice::Lost { reason }).await.is_err() {
                    return;
                }
                outage = true;
            } else {
                tracing::debug!(reason, attempt = backoff.attempt(), "Docker still away");
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = self.tx.closed() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One subscription: opened with `since`, confirmed once Docker answers (an event or a
    /// ping), announced with `Resubscribed` after an outage, then forwarded until it breaks.
    /// `since` advances to each event received, where the next subscription resumes.
    async fn subscription(&self, since: &mut SystemTime, outage: bool) -> Outcome {
        let options = EventsOptions {
            since: Some(docker_timestamp(*since)),
            until: None,
            filters: Some(self.filters.clone()),
        };
        let mut stream = pin!(self.docker.events(Some(options)));
        // Polling the stream sends the subscription; the ping, made meanwhile, says whether
        // Docker is there to receive it.
        let first = tokio::select! {
            biased;
            item = stream.next() => match item {
                Some(Ok(event)) => Some(event),
                Some(Err(e)) => return broke(StreamError::Docker(e), false),
                None => return broke(StreamError::Ended, false),
            },
            pong = self.docker.ping() => match pong {
                Ok(_) => None,
                Err(e) => return broke(StreamError::Docker(e), false),
            },
        };
        if outage {
            tracing::info!("Docker event stream is back");
            if self.tx.send(Notice::Resubscribed).await.is_err() {
                return Outcome::ReceiverGone;
            }
        }
        if let Some(event) = first {
            if self.offer(event, since).is_err() {
                return Outcome::ReceiverGone;
            }
        }
        loop {
            let event = match stream.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => return broke(StreamError::Docker(e), true),
                None => return broke(StreamError::Ended, true),
            };
            if self.offer(event, since).is_err() {
                return Outcome::ReceiverGone;
            }
        }
    }

    /// Queues a container notice, or drops it when the channel is full (coalescing), and moves
    /// `since` up to the event's time. `Err` when the receiver is gone.
    fn offer(&self, event: EventMessage, since: &mut SystemTime) -> Result<(), ()> {
        if let Some(time) = event_time(&event) {
            *since = (*since).max(time);
        }
        let Some(notice) = container_notice(event) else {
            return Ok(());
        };
        match self.tx.try_send(notice) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(notice)) => {
                tracing::trace!(?notice, "notice coalesced: the agent has some queued");
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(()),
        }
    }
}

fn broke(error: StreamError, confirmed: bool) -> Outcome {
    Outcome::Broke { error, confirmed }
}

/// The notice for a container event, if it names a component (the filters only let this node's
/// managed containers through, and drover labels each with its component).
fn container_notice(event: EventMessage) -> Option<Notice> {
    let action = event.action?;
    let mut attributes = event.actor?.attributes?;
    let component = attributes.remove(LABEL_COMPONENT)?;
    Some(Notice::Container { component, action })
}

/// When Docker says the event happened.
fn event_time(event: &EventMessage) -> Option<SystemTime> {
    let nanos = u64::try_from(event.time_nano?).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

/// `time` as Docker's `since` takes it: seconds and nanoseconds since the epoch.
fn docker_timestamp(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "{}.{:09}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use bollard::models::EventActor;

    use super::*;

    #[test]
    fn timestamps_are_seconds_dot_nanoseconds() {
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 42);
        assert_eq!(docker_timestamp(time), "1700000000.000000042");
        let event = EventMessage {
            time_nano: Some(1_700_000_000_000_000_042),
            ..Default::default()
        };
        assert_eq!(event_time(&event), Some(time));
        let before_epoch = EventMessage {
            time_nano: Some(-1),
            ..Default::default()
        };
        assert_eq!(event_time(&before_epoch), None);
    }

    fn container_event(component: &str, action: &str) -> EventMessage {
        EventMessage {
            action: Some(action.to_string()),
            actor: Some(EventActor {
                id: Some("abc".to_string()),
                attributes: Some(HashMap::from([(
                    LABEL_COMPONENT.to_string(),
                    component.to_string(),
                )])),
            }),
            ..Default::default()
        }
    }

    /// A client for a loopback port nothing listens on (the port was free a moment ago).
    fn unreachable_docker() -> Docker {
        let listener = std::net::TcpListener::bind("127.77.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        Docker::connect_with_http(
            &format!("http://{address}"),
            5,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_full_channel_coalesces_and_a_dropped_receiver_is_noticed() {
        let (tx, mut rx) = mpsc::channel(2);
        let watcher = Watcher {
            docker: unreachable_docker(),
            filters: filters("c1", "n1"),
            tx,
        };
        let mut since = UNIX_EPOCH;
        for action in ["create", "start", "die"] {
            let offered = watcher.offer(container_event("api", action), &mut since);
            assert_eq!(offered, Ok(()), "a full channel drops the notice quietly");
        }
        let received = [rx.recv().await, rx.recv().await];
        let expected = ["create", "start"].map(|action| {
            Some(Notice::Container {
                component: "api".to_string(),
                action: action.to_string(),
            })
        });
        assert_eq!(received, expected, "the oldest notices stay");
        drop(rx);
        let offered = watcher.offer(container_event("api", "stop"), &mut since);
        assert_eq!(offered, Err(()));
    }

    #[tokio::test]
    async fn an_unreachable_docker_is_lost_and_the_watch_ends_with_its_receiver() {
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
        let (mut notices, task) = watch(unreachable_docker(), "c1", "n1", backoff);
        let limit = Duration::from_secs(30);
        let first = tokio::time::timeout(limit, notices.recv()).await;
        let Ok(Some(Notice::Lost { reason })) = first else {
            panic!("expected Lost first, got {first:?}");
        };
        assert!(
            reason.starts_with("Docker event stream failed: "),
            "{reason}"
        );
        // Retrying in the background, between attempts or in one: the task still ends.
        drop(notices);
        tokio::time::timeout(limit, task)
            .await
            .expect("the watch ends once its receiver is dropped")
            .expect("the watch does not panic");
    }

    #[test]
    fn filters_select_this_nodes_managed_containers() {
        let f = filters("c1", "n1");
        assert_eq!(f["type"], ["container"]);
        assert_eq!(
            f["label"],
            [
                "drover.dev/managed-by=drover",
                "drover.dev/cluster=c1",
                "drover.dev/node=n1"
            ]
        );
        assert!(f["event"].iter().any(|a| a == "die"));
    }

    #[test]
    fn events_become_notices_naming_their_component() {
        let event = |attributes: &[(&str, &str)]| EventMessage {
            action: Some("die".to_string()),
            actor: Some(EventActor {
                id: Some("abc".to_string()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        };
        assert_eq!(
            container_notice(event(&[(LABEL_COMPONENT, "api"), ("exitCode", "137")])),
            Some(Notice::Container {
                component: "api".to_string(),
                action: "die".to_string()
            })
        );
        assert_eq!(container_notice(event(&[("exitCode", "0")])), None);
    }
}
