//! The agent protocol's messages: every kind survives a round trip, oversized and malformed
//! frames are refused with a reason, and no input makes decoding panic.

use std::collections::BTreeMap;

use drover::model::{load_sources, SourceFile};
use drover::plan::container::desired_nodes;
use drover::protocol::TokenRefusal;
use drover::protocol::{
    decode, encode, AgentMessage, AppliedMark, ContainerState, EtcdTask, ProtocolError, Refusal,
    RestoreMember, ServerMessage, StepReport, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use drover::secret::Secret;
use proptest::prelude::*;

fn a_node_plan() -> drover::nodeplan::NodeSpec {
    let file = SourceFile {
        path: "clusters/dev.yaml".into(),
        bytes: include_bytes!("../../examples-repo/clusters/dev.yaml").to_vec(),
    };
    let repo = load_sources(vec![file], Vec::new());
    desired_nodes(&repo.clusters[0]).remove("node-1").unwrap()
}

/// One of every server message, with real content.
fn server_messages() -> Vec<ServerMessage> {
    let spec = a_node_plan();
    vec![
        ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_interval_ms: 5000,
        },
        ServerMessage::Heartbeat { seq: 7 },
        ServerMessage::Plan {
            generation: 3,
            checksum: spec.checksum(),
            spec: spec.clone(),
            fence: None,
        },
        ServerMessage::Plan {
            generation: 4,
            checksum: spec.checksum(),
            spec: spec.clone(),
            fence: Some(1207),
        },
        ServerMessage::Redirect {
            url: "wss://127.0.0.2:7443/v1/agent".into(),
            reason: "cluster dev is served by daemon b".into(),
        },
        ServerMessage::RetryAfter {
            seconds: 5,
            reason: "starting".into(),
        },
        ServerMessage::Joined {
            cluster: "dev".into(),
            cert_pem: "cert".into(),
            ca_pem: "ca".into(),
        },
        ServerMessage::RenewCredential {},
        ServerMessage::Credential {
            cert_pem: "cert".into(),
        },
        ServerMessage::Refused {
            reason: Refusal::Token {
                problem: TokenRefusal::AlreadyUsed,
            },
        },
        ServerMessage::Refused {
            reason: Refusal::Token {
                problem: TokenRefusal::OtherNode {
                    node: "node-4".into(),
                },
            },
        },
        ServerMessage::Refused {
            reason: Refusal::Revoked {
                cluster: "dev".into(),
                node: "node-1".into(),
                why: "the node left the cluster's definition in Git".into(),
            },
        },
        ServerMessage::Refused {
            reason: Refusal::UndeclaredNode {
                cluster: "dev".into(),
                node: "intruder".into(),
            },
        },
    ]
    .into_iter()
    .chain(
        etcd_tasks()
            .into_iter()
            .enumerate()
            .map(|(id, task)| ServerMessage::EtcdTask {
                id: id as u64,
                task,
                fence: (id % 2 == 1).then_some(id as u64 * 100),
            }),
    )
    .collect()
}

/// One of every etcd task.
fn etcd_tasks() -> Vec<EtcdTask> {
    let member = RestoreMember {
        image: "quay.io/coreos/etcd:v3.5.17".into(),
        name: "node-1".into(),
        initial_cluster: vec!["node-1=https://10.0.0.1:2380".into()],
        peer_url: "https://10.0.0.1:2380".into(),
        token: "dev-r1".into(),
    };
    vec![
        EtcdTask::Health,
        EtcdTask::Status,
        EtcdTask::MemberList,
        EtcdTask::MemberAdd {
            peer_url: "https://10.0.0.2:2380".into(),
        },
        EtcdTask::MemberRemove {
            id: "8e9e05c52164694d".into(),
        },
        EtcdTask::MemberUpdate {
            id: "8e9e05c52164694d".into(),
            peer_url: "https://10.0.0.3:2380".into(),
        },
        EtcdTask::Snapshot {
            transfer: "t1".into(),
        },
        EtcdTask::Fetch {
            transfer: "t2".into(),
            request_id: "r1".into(),
            member: member.clone(),
        },
        EtcdTask::Restore {
            request_id: "r1".into(),
            member,
        },
        EtcdTask::Verify {
            transfer: "t3".into(),
            image: "quay.io/coreos/etcd:v3.5.17".into(),
        },
    ]
}

/// One of every agent message, with real content.
fn agent_messages() -> Vec<AgentMessage> {
    let spec = a_node_plan();
    let containers = BTreeMap::from([(
        "api".to_string(),
        ContainerState {
            running: true,
            spec_hash: "ab12".into(),
            healthy: Some(false),
            reason: Some("HTTP 503".into()),
        },
    )]);
    vec![
        AgentMessage::Hello {
            protocol: 1,
            cluster: "dev".into(),
            node: "node-1".into(),
            agent_version: "0.1.0".into(),
            applied: Some(AppliedMark {
                generation: 3,
                checksum: spec.checksum(),
            }),
        },
        AgentMessage::Join {
            protocol: 1,
            node: "node-1".into(),
            token: Secret::new("abcd.ef01"),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        },
        AgentMessage::Renew {
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        },
        AgentMessage::Heartbeat { seq: 8 },
        AgentMessage::Applied {
            generation: 3,
            checksum: spec.checksum(),
            steps: vec![StepReport {
                subject: "api".into(),
                action: "created".into(),
                error: None,
            }],
        },
        AgentMessage::Observed { containers },
        AgentMessage::Fenced {
            what: "plan generation 4".into(),
            fence: Some(1190),
            newest: 1207,
        },
        AgentMessage::Fenced {
            what: "etcd task 9".into(),
            fence: None,
            newest: 1207,
        },
    ]
}

#[test]
fn every_message_survives_a_round_trip() {
    for m in server_messages() {
        let text = encode(&m).unwrap();
        assert_eq!(decode::<ServerMessage>(&text).unwrap(), m, "{text}");
    }
    for m in agent_messages() {
        let text = encode(&m).unwrap();
        assert_eq!(decode::<AgentMessage>(&text).unwrap(), m, "{text}");
    }
}

#[test]
fn the_wire_form_is_tagged_and_camel_cased() {
    let text = encode(&ServerMessage::Welcome {
        protocol: 1,
        heartbeat_interval_ms: 5000,
    })
    .unwrap();
    assert_eq!(
        text,
        r#"{"type":"welcome","protocol":1,"heartbeatIntervalMs":5000}"#
    );
    let refused = ServerMessage::Refused {
        reason: Refusal::ProtocolVersion { theirs: 2, ours: 1 },
    };
    assert_eq!(
        encode(&refused).unwrap(),
        r#"{"type":"refused","reason":{"code":"protocol-version","theirs":2,"ours":1}}"#
    );
    assert_eq!(
        Refusal::UndeclaredNode {
            cluster: "dev".into(),
            node: "x".into()
        }
        .to_string(),
        "node x is not declared in cluster dev's definition in Git"
    );
}

#[test]
fn unknown_types_fields_and_oversized_frames_are_refused() {
    for bad in [
        r#"{"type":"hello"}"#,
        r#"{"type":"reboot","now":true}"#,
        r#"{"type":"heartbeat","seq":1,"extra":2}"#,
        r#"{"seq":1}"#,
        "not json",
    ] {
        assert!(
            matches!(
                decode::<AgentMessage>(bad),
                Err(ProtocolError::Malformed(_))
            ),
            "{bad}"
        );
    }
    let huge = format!(
        r#"{{"type":"heartbeat","seq":1,"pad":"{}"}}"#,
        "x".repeat(MAX_MESSAGE_BYTES)
    );
    match decode::<AgentMessage>(&huge) {
        Err(ProtocolError::TooLarge { size, limit }) => assert!(size > limit),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn the_plan_checksum_follows_the_content() {
    let spec = a_node_plan();
    assert_eq!(spec.checksum(), spec.clone().checksum());
    let mut changed = spec.clone();
    changed.containers.get_mut("api").unwrap().image =
        drover::model::ImageRef::parse("drover-test/busybox:2").unwrap();
    assert_ne!(spec.checksum(), changed.checksum());
    assert!(spec.checksum().starts_with("sha256:"));
}

/// Every message's wire form, the seeds of the mutation property.
fn wire_forms() -> Vec<String> {
    let server = server_messages().into_iter().map(|m| encode(&m).unwrap());
    let agent = agent_messages().into_iter().map(|m| encode(&m).unwrap());
    server.chain(agent).collect()
}

/// An edit of a frame: at a position (a fraction of its length), delete some bytes and insert
/// JSON-significant text.
fn frame_edit() -> impl Strategy<Value = (f64, usize, String)> {
    let token = prop_oneof![
        Just(String::new()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\"".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("null".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"type\":\"plan\"".to_string()),
        Just("\"extra\":1".to_string()),
        Just("\\u0000".to_string()),
        Just("[[[[[[[[[[".to_string()),
        ".{0,8}",
    ];
    (0.0..1.0f64, 0usize..16, token)
}

fn mutate(seed: &str, edits: &[(f64, usize, String)]) -> String {
    let mut text = seed.as_bytes().to_vec();
    for (at, delete, insert) in edits {
        let at = ((text.len() as f64) * at) as usize;
        let end = (at + delete).min(text.len());
        text.splice(at..end, insert.bytes());
    }
    String::from_utf8_lossy(&text).into_owned()
}

proptest! {
    #[test]
    fn decoding_never_panics(text in ".{0,512}") {
        let _ = decode::<AgentMessage>(&text);
        let _ = decode::<ServerMessage>(&text);
    }

    /// Mutated real frames: decoding never panics, and whatever still decodes is a message
    /// whose own wire form decodes to it again (nothing half-parsed gets through).
    #[test]
    fn mutated_frames_decode_to_whole_messages_or_errors(
        seed in prop::sample::select(wire_forms()),
        edits in prop::collection::vec(frame_edit(), 1..4),
    ) {
        let text = mutate(&seed, &edits);
        if let Ok(m) = decode::<AgentMessage>(&text) {
            let again = encode(&m).unwrap();
            prop_assert_eq!(decode::<AgentMessage>(&again).unwrap(), m);
        }
        if let Ok(m) = decode::<ServerMessage>(&text) {
            let again = encode(&m).unwrap();
            prop_assert_eq!(decode::<ServerMessage>(&again).unwrap(), m);
        }
    }
}
