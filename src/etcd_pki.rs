//! etcd's own PKI. etcd runs with TLS only, for clients and peers, and each managed cluster has
//! its own CA (`etcd-ca-<cluster>.json` in the daemon's state directory; its key never leaves
//! it). Every node of the cluster gets, by the `nodeplan::PKI_*` file names: the CA certificate,
//! a serving certificate for clients, a peer certificate, and a client certificate its agent
//! dials its own member with. `needs_reissue` says why a node's files must be issued anew, in
//! words the daemon shows in status.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData as _,
};
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::model::names::{check_dns_label, FileMode, NodeAddress};
use crate::nodeplan::{
    FileSpec, PKI_CA, PKI_CLIENT_CERT, PKI_CLIENT_KEY, PKI_PEER_CERT, PKI_PEER_KEY,
    PKI_SERVER_CERT, PKI_SERVER_KEY,
};
use crate::pki::{self, StoredCa};
use crate::secret::Secret;
use crate::state::StateError;
use crate::store::DurableState;

/// How long a cluster's etcd CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a node's etcd certificates are valid.
pub const ETCD_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates are issued anew when they expire within this time.
pub const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);

/// Names every serving certificate carries besides the node's addresses, for tools on the node
/// itself (etcdctl, the agent's probes).
const LOCAL_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The file names a node's etcd PKI consists of.
pub const PKI_FILES: [&str; 7] = [
    PKI_CA,
    PKI_SERVER_CERT,
    PKI_SERVER_KEY,
    PKI_PEER_CERT,
    PKI_PEER_KEY,
    PKI_CLIENT_CERT,
    PKI_CLIENT_KEY,
];

/// Why a cluster's etcd CA or a node's certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EtcdPkiError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot make a certificate or key")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0:?} is not a cluster name")]
    BadClusterName(String),
    #[error("{address:?} is neither an IP address nor a DNS name")]
    BadAddress { address: String },
    #[error("the etcd CA of cluster {cluster} ({document} in the state directory) is not valid; restore it from a backup: a new CA would leave every member unable to trust the others")]
    BadCa { cluster: String, document: String },
}

/// Why a node's etcd certificates must be issued anew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reissue {
    /// A file of the set is not there.
    Missing { file: String },
    /// A certificate or key does not parse.
    Invalid { file: String },
    /// A key is not the key of its certificate.
    KeyMismatch { file: String },
    /// The CA certificate, or a certificate's signer, is not the cluster's CA.
    OtherCa { file: String },
    /// The certificates name other addresses than the node has.
    AddressesChanged { from: Vec<String>, to: Vec<String> },
    /// A certificate expires within `RENEW_BEFORE` (or has expired).
    Expiring { not_after: SystemTime },
    /// An operator asked for new certificates (`drover cert rotate`).
    Requested,
}

impl fmt::Display for Reissue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reissue::Missing { file } => write!(f, "{file} is missing"),
            Reissue::Invalid { file } => write!(f, "{file} is not a valid PEM certificate or key"),
            Reissue::KeyMismatch { file } => {
                write!(f, "{file} is not the key of its certificate")
            }
            Reissue::OtherCa { file } => {
                write!(f, "{file} is from another CA than the cluster's etcd CA")
            }
            Reissue::AddressesChanged { from, to } => write!(
                f,
                "the certificates are for {} but the node's addresses are {}",
                list(from),
                list(to)
            ),
            Reissue::Expiring { not_after } => write!(
                f,
                "a certificate expires at {}, within the {} days before expiry when it is renewed",
                humantime::format_rfc3339_seconds(*not_after),
                RENEW_BEFORE.as_secs() / (24 * 3600)
            ),
            Reissue::Requested => write!(f, "an operator asked for new certificates"),
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "no address".to_string()
    } else {
        items.join(", ")
    }
}

/// A cluster's etcd CA.
pub struct ClusterCa {
    cluster: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// PKIs found valid, by their files' digests and addresses, with their first expiry: a
    /// reconcile pass checks every node's, and verifying signatures each time is not free.
    valid: std::sync::Mutex<std::collections::HashMap<String, SystemTime>>,
}

/// More remembered valid PKIs than this and the memory starts over.
const MAX_REMEMBERED: usize = 65_536;

/// Names the cluster only: the key never prints.
impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The state document that keeps `cluster`'s etcd CA.
pub fn ca_document(cluster: &str) -> String {
    format!("etcd-ca-{cluster}.json")
}

impl ClusterCa {
    /// `cluster`'s CA from `state`, made on first use and created only if absent, so two
    /// callers never make two CAs. Blocking.
    pub fn ensure(state: &DurableState, cluster: &str) -> Result<ClusterCa, EtcdPkiError> {
        if check_dns_label(cluster).is_err() {
            return Err(EtcdPkiError::BadClusterName(cluster.to_string()));
        }
        let document = ca_document(cluster);
        let stored: StoredCa = state.create(&document, || {
            let name = format!("drover etcd CA {cluster}");
            Ok::<_, EtcdPkiError>(pki::new_ca(&name, Some((SystemTime::now(), CA_VALIDITY)))?)
        })?;
        let (cert_der, issuer) = stored.issuer().ok_or_else(|| EtcdPkiError::BadCa {
            cluster: cluster.to_string(),
            document: document.clone(),
        })?;
        Ok(ClusterCa {
            cluster: cluster.to_string(),
            cert_pem: stored.cert_pem,
            cert_der,
            issuer,
            valid: Default::default(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `node`'s files, keyed by the `PKI_*` names, valid `ETCD_CERT_VALIDITY` from `now`
    /// (less `pki::CLOCK_SKEW`), each certificate with a fresh key. The serving certificate
    /// and the peer certificates name `addresses` (IPs as IP SANs, others as DNS names) and
    /// `LOCAL_NAMES` (etcd checks a dialling peer's certificate against the address the
    /// connection comes from, which is a loopback address between members of one machine);
    /// the client certificate is `node` (its CN).
    pub fn issue(
        &self,
        node: &str,
        addresses: &[String],
        now: SystemTime,
    ) -> Result<BTreeMap<String, FileSpec>, EtcdPkiError> {
        let peer_names = checked_names(addresses)?;
        let server_names = server_names(&peer_names);
        let both = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let client = [ExtendedKeyUsagePurpose::ClientAuth];
        let leaves = [
            (PKI_SERVER_CERT, PKI_SERVER_KEY, &server_names, &both[..]),
            (PKI_PEER_CERT, PKI_PEER_KEY, &server_names, &both[..]),
            (
                PKI_CLIENT_CERT,
                PKI_CLIENT_KEY,
                &BTreeSet::new(),
                &client[..],
            ),
        ];
        let public = mode("644");
        let mut files = BTreeMap::from([(
            PKI_CA.to_string(),
            FileSpec::new(self.cert_pem.clone(), public),
        )]);
        for (cert_file, key_file, names, usages) in leaves {
            let (cert_pem, key_pem) = self.leaf(node, names, usages, now)?;
            files.insert(cert_file.to_string(), FileSpec::new(cert_pem, public));
            // The key is handed to the plan that carries it to its node, and only there.
            let key = FileSpec::new(key_pem.expose().to_string(), mode("600"));
            files.insert(key_file.to_string(), key);
        }
        Ok(files)
    }

    /// Why `files` (a node's PKI as `issue` made it) must be issued anew for `addresses` at
    /// `now`, or `None` when they are good. The first reason found, in this order: a file
    /// missing or not valid, a key not its certificate's, another CA, other addresses, expiry.
    pub fn needs_reissue(
        &self,
        files: &BTreeMap<String, FileSpec>,
        addresses: &[String],
        now: SystemTime,
    ) -> Option<Reissue> {
        // Digests stand for contents: both are ours, made together by `issue`.
        // Built by hand: this runs for every node on every pass.
        let mut key = String::with_capacity(32 * (files.len() + addresses.len()));
        for (name, f) in files {
            for part in [name.as_str(), "=", f.digest.as_str(), ","] {
                key.push_str(part);
            }
        }
        for address in addresses {
            key.push_str(address);
            key.push(',');
        }
        let remembered = self.valid_lock().get(&key).copied();
        let not_after = match remembered {
            Some(not_after) => not_after,
            None => {
                let not_after = match self.check(files, addresses) {
                    Ok(not_after) => not_after,
                    Err(why) => return Some(why),
                };
                let mut valid = self.valid_lock();
                if valid.len() >= MAX_REMEMBERED {
                    valid.clear();
                }
                valid.insert(key, not_after);
                not_after
            }
        };
        (not_after <= now + RENEW_BEFORE).then_some(Reissue::Expiring { not_after })
    }

    fn valid_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, SystemTime>> {
        self.valid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks everything but expiry; returns the first certificate's expiry.
    fn check(
        &self,
        files: &BTreeMap<String, FileSpec>,
        addresses: &[String],
    ) -> Result<SystemTime, Reissue> {
        let content = |file: &str| {
            files
                .get(file)
                .map(|f| f.content.as_str())
                .ok_or_else(|| Reissue::Missing {
                    file: file.to_string(),
                })
        };
        for file in PKI_FILES {
            content(file)?;
        }
        let ca_der = pki::pem_certificate(content(PKI_CA)?).ok_or_else(|| Reissue::Invalid {
            file: PKI_CA.to_string(),
        })?;
        if ca_der != self.cert_der {
            return Err(Reissue::OtherCa {
                file: PKI_CA.to_string(),
            });
        }
        let (_, ca) = X509Certificate::from_der(&self.cert_der).expect("the CA parsed when loaded");
        let mut leaves = BTreeMap::new();
        for (cert_file, key_file) in [
            (PKI_SERVER_CERT, PKI_SERVER_KEY),
            (PKI_PEER_CERT, PKI_PEER_KEY),
            (PKI_CLIENT_CERT, PKI_CLIENT_KEY),
        ] {
            let leaf = read_leaf(
                &ca,
                content(cert_file)?,
                cert_file,
                content(key_file)?,
                key_file,
            )?;
            leaves.insert(cert_file, leaf);
        }
        let addressed = comparable_names(addresses);
        let wanted = server_names(&addressed);
        for file in [PKI_PEER_CERT, PKI_SERVER_CERT] {
            let carried = &leaves[file].names;
            if *carried != wanted {
                // The node's own addresses, without the local names every certificate has.
                let local = server_names(&BTreeSet::new());
                return Err(Reissue::AddressesChanged {
                    from: carried.difference(&local).cloned().collect(),
                    to: addressed.iter().cloned().collect(),
                });
            }
        }
        Ok(leaves
            .values()
            .map(|l| l.not_after)
            .min()
            .expect("three certificates were read"))
    }

    /// A certificate for `names` and `usages`, CN `node`, with a new key.
    fn leaf(
        &self,
        node: &str,
        names: &BTreeSet<String>,
        usages: &[ExtendedKeyUsagePurpose],
        now: SystemTime,
    ) -> Result<(String, Secret), EtcdPkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = names
            .iter()
            .map(|n| pki::san(n))
            .collect::<Result<_, _>>()?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        pki::validity(&mut params, now, ETCD_CERT_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), Secret::new(key.serialize_pem())))
    }
}

/// What `needs_reissue` reads from a certificate and its key.
struct Leaf {
    /// Its subject alternative names, as `comparable_name` writes them.
    names: BTreeSet<String>,
    not_after: SystemTime,
}

/// The certificate in `cert_pem`, checked: it parses, the cluster's CA signed it, and `key_pem`
/// is its key.
fn read_leaf(
    ca: &X509Certificate<'_>,
    cert_pem: &str,
    cert_file: &str,
    key_pem: &str,
    key_file: &str,
) -> Result<Leaf, Reissue> {
    let invalid = |file: &str| Reissue::Invalid {
        file: file.to_string(),
    };
    let der = pki::pem_certificate(cert_pem).ok_or_else(|| invalid(cert_file))?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|_| invalid(cert_file))?;
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(Reissue::OtherCa {
            file: cert_file.to_string(),
        });
    }
    let key = KeyPair::from_pem(key_pem).map_err(|_| invalid(key_file))?;
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err(Reissue::KeyMismatch {
            file: key_file.to_string(),
        });
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| invalid(cert_file))?;
    let names = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(general_name)
                .collect()
        })
        .unwrap_or_default();
    let (_, not_after) = pki::cert_validity(&cert);
    Ok(Leaf { names, not_after })
}

/// An IP or DNS subject alternative name as `comparable_name` writes it.
fn general_name(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some(comparable_name(dns)),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// An address in one spelling (`NodeAddress::canonical`: IPs canonical, names lower-case).
fn comparable_name(address: &str) -> String {
    NodeAddress::parse(address).map_or_else(|| address.to_ascii_lowercase(), |a| a.canonical())
}

fn comparable_names(addresses: &[String]) -> BTreeSet<String> {
    addresses.iter().map(|a| comparable_name(a)).collect()
}

/// `addresses` as `comparable_names`, each one an IP address or a DNS name.
fn checked_names(addresses: &[String]) -> Result<BTreeSet<String>, EtcdPkiError> {
    addresses
        .iter()
        .map(|a| {
            NodeAddress::parse(a)
                .map(|a| a.canonical())
                .ok_or_else(|| EtcdPkiError::BadAddress { address: a.clone() })
        })
        .collect()
}

/// The serving certificate's names: the peer's and `LOCAL_NAMES`.
fn server_names(peer_names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = peer_names.clone();
    names.extend(LOCAL_NAMES.iter().map(|n| n.to_string()));
    names
}

fn mode(octal: &str) -> FileMode {
    FileMode::parse(octal).expect("a constant file mode")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::state::StateDir;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// A time in whole seconds, as certificates keep it.
    fn whole_seconds(t: SystemTime) -> SystemTime {
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn ca(dir: &tempfile::TempDir, cluster: &str) -> ClusterCa {
        ClusterCa::ensure(&StateDir::new(dir.path()).into(), cluster).unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// A certificate's subject alternative names as `IP:...` and `DNS:...`, sorted.
    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        let mut names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default()
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(_) => format!("IP:{}", general_name(n).unwrap()),
                other => panic!("unexpected name {other:?}"),
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_clusters_ca_is_made_once_even_by_callers_at_once() {
        const MAKERS: usize = 6;
        let dir = crate::state::private_tempdir();
        let start = std::sync::Barrier::new(MAKERS);
        let pems: Vec<String> = std::thread::scope(|s| {
            let makers: Vec<_> = (0..MAKERS)
                .map(|_| {
                    s.spawn(|| {
                        // Each with its own StateDir, as separate processes would be.
                        let state: DurableState = StateDir::new(dir.path()).into();
                        start.wait();
                        ClusterCa::ensure(&state, "dev")
                            .unwrap()
                            .ca_pem()
                            .to_string()
                    })
                })
                .collect();
            makers.into_iter().map(|m| m.join().unwrap()).collect()
        });
        let stored = ca(&dir, "dev");
        assert!(pems.iter().all(|p| p == stored.ca_pem()), "{pems:#?}");
        assert_ne!(
            ca(&dir, "prod").ca_pem(),
            stored.ca_pem(),
            "one CA per cluster"
        );

        let document = dir.path().join(ca_document("dev"));
        let mode = std::fs::metadata(&document).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{stored:?}").contains("PRIVATE"), "{stored:?}");
    }

    #[test]
    fn the_ca_is_a_ca_valid_for_ten_years() {
        let dir = crate::state::private_tempdir();
        let now = SystemTime::now();
        let ca = ca(&dir, "dev");
        let (_, cert) = X509Certificate::from_der(&ca.cert_der).unwrap();
        assert!(cert.is_ca());
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "drover etcd CA dev");
        let (not_before, not_after) = pki::cert_validity(&cert);
        assert!(not_before <= now - pki::CLOCK_SKEW + Duration::from_secs(60));
        let lifetime = not_after.duration_since(now).unwrap();
        assert!(
            lifetime.abs_diff(CA_VALIDITY) < Duration::from_secs(60),
            "{lifetime:?}"
        );
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        let dir = crate::state::private_tempdir();
        let state: DurableState = StateDir::new(dir.path()).into();
        for cluster in ["", "../etc", "Dev", "a/b"] {
            assert!(
                matches!(
                    ClusterCa::ensure(&state, cluster),
                    Err(EtcdPkiError::BadClusterName(_))
                ),
                "{cluster:?}"
            );
        }
        let ca = ca(&dir, "dev");
        for address in ["", "has space", "a/b", "-x.example"] {
            let issued = ca.issue("n1", &strings(&[address]), SystemTime::now());
            assert!(
                matches!(issued, Err(EtcdPkiError::BadAddress { .. })),
                "{address:?}: {issued:?}"
            );
        }
    }

    #[test]
    fn a_node_gets_each_certificate_etcd_needs_with_its_own_key() {
        let dir = crate::state::private_tempdir();
        let ca = ca(&dir, "dev");
        let now = whole_seconds(SystemTime::now());
        let addresses = strings(&["10.1.2.3", "CP-1.Example.com", "fd00::1"]);
        let files = ca.issue("cp-1", &addresses, now).unwrap();
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        let mut all = PKI_FILES.to_vec();
        all.sort();
        assert_eq!(names, all);
        assert_eq!(files[PKI_CA].content, ca.ca_pem());
        assert_eq!(files[PKI_CA].mode, mode("644"));

        let addressed = ["DNS:cp-1.example.com", "IP:10.1.2.3", "IP:fd00::1"];
        // Peers dial from a loopback address between members of one machine.
        let server = [&addressed[..], &["DNS:localhost", "IP:127.0.0.1"]].concat();
        let peer = server.clone();
        // (certificate, key, subject alternative names, serverAuth, clientAuth)
        let cases: [(&str, &str, Vec<&str>, bool, bool); 3] = [
            (PKI_SERVER_CERT, PKI_SERVER_KEY, server, true, true),
            (PKI_PEER_CERT, PKI_PEER_KEY, peer, true, true),
            (PKI_CLIENT_CERT, PKI_CLIENT_KEY, vec![], false, true),
        ];
        let (_, ca_cert) = X509Certificate::from_der(&ca.cert_der).unwrap();
        for (cert_file, key_file, mut want_sans, server_auth, client_auth) in cases {
            want_sans.sort();
            let der = pki::pem_certificate(&files[cert_file].content).unwrap();
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(sans(&cert), want_sans, "{cert_file}");
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert_eq!(
                (eku.server_auth, eku.client_auth),
                (server_auth, client_auth),
                "{cert_file}"
            );
            let cn = cert.subject().iter_common_name().next().unwrap();
            assert_eq!(cn.as_str().unwrap(), "cp-1", "{cert_file}");
            assert!(!cert.is_ca(), "{cert_file}");
            cert.verify_signature(Some(ca_cert.public_key()))
                .unwrap_or_else(|e| panic!("{cert_file} is not the CA's: {e}"));
            let validity = pki::cert_validity(&cert);
            assert_eq!(
                validity,
                (now - pki::CLOCK_SKEW, now + ETCD_CERT_VALIDITY),
                "{cert_file}"
            );
            assert_eq!(files[cert_file].mode, mode("644"), "{cert_file}");
            assert_eq!(files[key_file].mode, mode("600"), "{key_file}");
            let key = KeyPair::from_pem(&files[key_file].content).unwrap();
            assert_eq!(key.subject_public_key_info(), cert.public_key().raw);
        }

        let keys: BTreeSet<&str> = [PKI_SERVER_KEY, PKI_PEER_KEY, PKI_CLIENT_KEY]
            .iter()
            .map(|k| files[*k].content.as_str())
            .collect();
        assert_eq!(keys.len(), 3, "a key per certificate");
        let again = ca.issue("cp-1", &addresses, now).unwrap();
        assert_ne!(again[PKI_SERVER_KEY], files[PKI_SERVER_KEY], "fresh keys");
    }

    #[test]
    fn reissue_says_why_a_nodes_files_must_be_issued_anew() {
        let dir = crate::state::private_tempdir();
        let ca = ca(&dir, "dev");
        let other = super::tests::ca(&dir, "other");
        let issued_at = whole_seconds(SystemTime::now());
        let addresses = strings(&["10.1.2.3", "cp-1.example.com"]);
        let good = ca.issue("cp-1", &addresses, issued_at).unwrap();
        let foreign = other.issue("cp-1", &addresses, issued_at).unwrap();
        let not_after = issued_at + ETCD_CERT_VALIDITY;
        let renew_from = not_after - RENEW_BEFORE;

        type Change = Box<dyn Fn(&mut BTreeMap<String, FileSpec>)>;
        /// What the case is, how the issued files are changed, the node's addresses, the time
        /// of the check, and the reason expected.
        type Case<'a> = (&'a str, Change, Vec<String>, SystemTime, Option<Reissue>);
        let keep: Change = Box::new(|_| {});
        let replace = |file: &'static str, with: String| -> Change {
            Box::new(move |files| {
                files.insert(file.to_string(), FileSpec::new(with.clone(), mode("644")));
            })
        };
        let cases: Vec<Case> = vec![
            ("as issued", keep, addresses.clone(), issued_at, None),
            (
                "addresses reordered, repeated and in upper case",
                Box::new(|_| {}),
                strings(&["CP-1.example.com.", "10.1.2.3", "cp-1.example.com"]),
                issued_at,
                None,
            ),
            (
                "a key missing",
                Box::new(|files| {
                    files.remove(PKI_SERVER_KEY);
                }),
                addresses.clone(),
                issued_at,
                Some(Reissue::Missing {
                    file: PKI_SERVER_KEY.into(),
                }),
            ),
            (
                "a certificate that does not parse",
                replace(PKI_PEER_CERT, "-----BEGIN CERTIFICATE-----\nAAAA\n".into()),
                addresses.clone(),
                issued_at,
                Some(Reissue::Invalid {
                    file: PKI_PEER_CERT.into(),
                }),
            ),
            (
                "another certificate's key",
                replace(PKI_SERVER_KEY, good[PKI_PEER_KEY].content.clone()),
                addresses.clone(),
                issued_at,
                Some(Reissue::KeyMismatch {
                    file: PKI_SERVER_KEY.into(),
                }),
            ),
            (
                "another cluster's CA certificate",
                replace(PKI_CA, other.ca_pem().to_string()),
                addresses.clone(),
                issued_at,
                Some(Reissue::OtherCa {
                    file: PKI_CA.into(),
                }),
            ),
            (
                "a client certificate another CA signed",
                Box::new(move |files| {
                    for f in [PKI_CLIENT_CERT, PKI_CLIENT_KEY] {
                        files.insert(f.to_string(), foreign[f].clone());
                    }
                }),
                addresses.clone(),
                issued_at,
                Some(Reissue::OtherCa {
                    file: PKI_CLIENT_CERT.into(),
                }),
            ),
            (
                "an address changed",
                Box::new(|_| {}),
                strings(&["10.1.2.4", "cp-1.example.com"]),
                issued_at,
                Some(Reissue::AddressesChanged {
                    from: strings(&["10.1.2.3", "cp-1.example.com"]),
                    to: strings(&["10.1.2.4", "cp-1.example.com"]),
                }),
            ),
            (
                "a day before the renewal window",
                Box::new(|_| {}),
                addresses.clone(),
                renew_from - DAY,
                None,
            ),
            (
                "in the renewal window",
                Box::new(|_| {}),
                addresses.clone(),
                renew_from + DAY,
                Some(Reissue::Expiring { not_after }),
            ),
            (
                "expired",
                Box::new(|_| {}),
                addresses.clone(),
                not_after + DAY,
                Some(Reissue::Expiring { not_after }),
            ),
        ];
        for (what, change, addresses, now, want) in cases {
            let mut files = good.clone();
            change(&mut files);
            assert_eq!(ca.needs_reissue(&files, &addresses, now), want, "{what}");
        }
    }

    #[test]
    fn reissue_reasons_read_as_status() {
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cases = [
            (
                Reissue::Missing {
                    file: "server-key.pem".into(),
                },
                "server-key.pem is missing",
            ),
            (
                Reissue::Invalid {
                    file: "peer.pem".into(),
                },
                "peer.pem is not a valid PEM certificate or key",
            ),
            (
                Reissue::KeyMismatch {
                    file: "peer-key.pem".into(),
                },
                "peer-key.pem is not the key of its certificate",
            ),
            (
                Reissue::OtherCa {
                    file: "ca.pem".into(),
                },
                "ca.pem is from another CA than the cluster's etcd CA",
            ),
            (
                Reissue::AddressesChanged {
                    from: strings(&["10.0.0.1"]),
                    to: strings(&["10.0.0.2", "n1.example"]),
                },
                "the certificates are for 10.0.0.1 but the node's addresses are 10.0.0.2, n1.example",
            ),
            (
                Reissue::Expiring { not_after },
                "a certificate expires at 2027-01-15T08:00:00Z, within the 90 days before expiry when it is renewed",
            ),
        ];
        for (reason, want) in cases {
            assert_eq!(reason.to_string(), want);
        }
    }
}
