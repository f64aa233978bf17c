//! The daemon's certificate authority and the TLS of the agent protocol.
//!
//! - One CA per daemon (`ca.json` in the state directory; the key never leaves it). Agents pin
//!   it by `sha256:` over its SubjectPublicKeyInfo, the hash `drover token create` prints.
//! - The daemon serves with a certificate the CA issues at start for its advertised names, and
//!   sends the CA certificate along so an agent can find the key it pinned.
//! - A node credential is a client certificate the CA issues for the agent's own key, from a
//!   signing request whose signature proves the agent holds that key. Its subject names the
//!   cluster and node; the daemon also checks the key against its binding on every connection,
//!   which is how a credential is revoked.
//! - The agent trusts a server chain only when one of its certificates carries the pinned key
//!   and the server certificate verifies against it (`PinnedCa`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::secret::Secret;
use crate::state::StateError;
use crate::store::DurableState;

/// How long a node credential is valid; the daemon asks for a renewal at half of it.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the daemon's serving certificate is valid; it is issued anew at every start.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates are valid from a little before they are issued, for clocks slightly apart.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Largest signing request or certificate accepted, in PEM bytes.
pub const MAX_PEM_BYTES: usize = 16 * 1024;
const CA_FILE: &str = "ca.json";

/// Why a certificate could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot make or read a certificate or key")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate signing request is not valid: {0}")]
    BadRequest(String),
    #[error("not a valid certificate")]
    BadCertificate,
    #[error("cannot set up TLS")]
    Tls(#[from] rustls::Error),
    #[error("the daemon's CA in the state directory is not valid; move ca.json aside only if every agent will join again")]
    BadCa,
}

/// A CA as a state document keeps it: its certificate and its key.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredCa {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: Secret,
}

impl StoredCa {
    /// The CA's certificate and an issuer that signs with its key; `None` when either does
    /// not parse or they do not belong together.
    pub(crate) fn issuer(&self) -> Option<(CertificateDer<'static>, Issuer<'static, KeyPair>)> {
        let key = KeyPair::from_pem(self.key_pem.expose()).ok()?;
        let cert_der = pem_certificate(&self.cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).ok()?;
        Some((cert_der, issuer))
    }
}

/// The daemon's CA.
pub struct DaemonCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    pin: String,
}

/// A certificate chain and its private key, for one side of a TLS connection.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A node credential as issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// The pin of the node's key.
    pub key_pin: String,
}

impl DaemonCa {
    /// The CA in `state`, made on first use and created only if absent, so a daemon and
    /// `drover token create` starting at once make one CA, not two (the second would replace
    /// the first, whose pin an agent may already have). Blocking.
    pub fn ensure(state: &DurableState) -> Result<DaemonCa, PkiError> {
        let stored: StoredCa = state.create(CA_FILE, || {
            Ok::<_, PkiError>(new_ca("drover daemon CA", None)?)
        })?;
        let (cert_der, issuer) = stored.issuer().ok_or(PkiError::BadCa)?;
        let pin = pin(&issuer.key().subject_public_key_info());
        Ok(DaemonCa {
            cert_pem: stored.cert_pem,
            cert_der,
            issuer,
            pin,
        })
    }

    /// `sha256:<hex>` of the CA's public key.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A serving certificate for `names` (DNS names or IP addresses), chained to the CA.
    pub fn server_identity(&self, names: &[String], now: SystemTime) -> Result<Identity, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params
            .distinguished_name
            .push(DnType::CommonName, "drover daemon");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, now, SERVER_CERT_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// A node credential for the key in `csr_pem`. The request's signature must verify (the
    /// agent holds the key); everything else in it is ignored: the subject is the daemon's
    /// choice, and the certificate is good for client authentication only.
    pub fn issue_node(
        &self,
        csr_pem: &str,
        cluster: &str,
        node: &str,
        now: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        let csr = parse_csr(csr_pem)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cluster}/{node}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, now, NODE_CERT_VALIDITY);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pin: pin(&csr.public_key.subject_public_key_info()),
        })
    }
}

/// A new self-signed CA named `common_name` that may sign end-entity certificates only. Valid
/// from `now` (less `CLOCK_SKEW`) for the given time, or without practical limit when `None`.
pub(crate) fn new_ca(
    common_name: &str,
    valid: Option<(SystemTime, Duration)>,
) -> Result<StoredCa, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some((now, valid_for)) = valid {
        validity(&mut params, now, valid_for);
    }
    let cert = params.self_signed(&key)?;
    Ok(StoredCa {
        cert_pem: cert.pem(),
        key_pem: Secret::new(key.serialize_pem()),
    })
}

/// A subject alternative name: an IP address, or else a DNS name.
pub(crate) fn san(name: &str) -> Result<SanType, rcgen::Error> {
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => name.to_string().try_into().map(SanType::DnsName),
    }
}

/// The pin of the key in a signing request whose signature verifies.
pub fn csr_key_pin(csr_pem: &str) -> Result<String, PkiError> {
    Ok(pin(&parse_csr(csr_pem)?
        .public_key
        .subject_public_key_info()))
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, PkiError> {
    if csr_pem.len() > MAX_PEM_BYTES {
        return Err(PkiError::BadRequest(format!(
            "{} bytes, over the {MAX_PEM_BYTES}-byte limit",
            csr_pem.len()
        )));
    }
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::BadRequest(e.to_string()))
}

/// Valid from `now` less `CLOCK_SKEW` until `now + valid_for`, with a random serial number.
pub(crate) fn validity(params: &mut CertificateParams, now: SystemTime, valid_for: Duration) {
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + valid_for).into();
    let mut serial = [0u8; 16];
    if getrandom::fill(&mut serial).is_ok() {
        serial[0] &= 0x7f;
        params.serial_number = Some(serial.to_vec().into());
    }
}

/// The pin of a public key: `sha256:` and the hex digest of its SubjectPublicKeyInfo DER.
pub fn pin(spki_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(spki_der)))
}

/// Whether `text` has the form of a pin.
pub fn is_pin(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The pin of the key a certificate carries.
pub fn cert_pin(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| PkiError::BadCertificate)?;
    Ok(pin(cert.public_key().raw))
}

/// The first certificate in a PEM text.
pub fn pem_certificate(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

/// Who a node credential says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub cluster: String,
    pub node: String,
    pub key_pin: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The identity in a client certificate the daemon's CA issued (TLS has verified the chain).
pub fn node_identity(der: &[u8]) -> Option<NodeIdentity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let (cluster, node) = cn.split_once('/')?;
    let (not_before, not_after) = cert_validity(&cert);
    Some(NodeIdentity {
        cluster: cluster.to_string(),
        node: node.to_string(),
        key_pin: pin(cert.public_key().raw),
        not_before,
        not_after,
    })
}

/// A certificate's validity period (a time before 1970 reads as 1970).
pub(crate) fn cert_validity(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    (
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    )
}

/// An agent's own key. Its PEM is a secret: kept in the agent's data directory, mode 0600.
pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, PkiError> {
        Ok(NodeKey {
            key: KeyPair::generate()?,
        })
    }

    pub fn from_pem(pem: &Secret) -> Result<NodeKey, PkiError> {
        Ok(NodeKey {
            key: KeyPair::from_pem(pem.expose())?,
        })
    }

    pub fn to_pem(&self) -> Secret {
        Secret::new(self.key.serialize_pem())
    }

    pub fn pin(&self) -> String {
        pin(&self.key.subject_public_key_info())
    }

    /// A signing request for this key; its signature proves possession.
    pub fn csr_pem(&self, node: &str) -> Result<String, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, node);
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    /// This key with its certificate, for TLS client authentication.
    pub fn identity(&self, cert_pem: &str) -> Result<Identity, PkiError> {
        let cert = pem_certificate(cert_pem).ok_or(PkiError::BadCertificate)?;
        Ok(Identity {
            chain: vec![cert],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der())),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The daemon's TLS: its serving identity; client certificates are optional at the TLS layer
/// (an agent joins without one) and, when presented, must chain to the CA.
pub fn server_config(
    ca: &DaemonCa,
    identity: Identity,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der.clone())?;
    let clients = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The agent's TLS: the server is trusted through the pinned CA only; `client` is the node
/// credential, absent when joining.
pub fn agent_config(
    ca_pin: &str,
    client: Option<Identity>,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let verifier = Arc::new(PinnedCa {
        pin: ca_pin.to_string(),
        provider: provider(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Trusts a server whose chain contains a CA certificate with the pinned key, and whose own
/// certificate verifies against that CA for the name dialled.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
}

/// The error text an agent shows when the daemon's CA is not the pinned one.
pub const PIN_MISMATCH: &str = "the daemon's CA does not match the pinned --ca-hash";

/// The daemon's CA is not the pinned one. The verifier fails the handshake with it, so callers
/// recognise it by type (`is_pin_mismatch`), never by its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", PIN_MISMATCH)]
pub struct PinMismatch;

/// Whether `error`, or any error it was caused by, is a `PinMismatch`: through rustls (whose
/// `Error::Other` carries it) and `std::io::Error`s wrapping either (as TLS streams and HTTP
/// clients report handshake failures).
pub fn is_pin_mismatch(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if carries_pin_mismatch(e) {
            return true;
        }
        // An `io::Error` hides the error it wraps from `source()`; several may be nested.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

fn carries_pin_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<PinMismatch>() {
        return true;
    }
    match e.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::Other(other)) => other.0.is::<PinMismatch>(),
        _ => false,
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| cert_pin(c).is_ok_and(|p| p == self.pin))
            .ok_or_else(|| rustls::Error::Other(rustls::OtherError(Arc::new(PinMismatch))))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;

    #[test]
    fn a_pin_mismatch_is_recognised_by_type_through_wrapping_errors() {
        let tls = || rustls::Error::Other(rustls::OtherError(Arc::new(PinMismatch)));
        let kind = std::io::ErrorKind::InvalidData;
        // As an HTTP client reports it: an io::Error in an io::Error around rustls's error.
        let nested = std::io::Error::other(std::io::Error::new(kind, tls()));
        assert!(is_pin_mismatch(&nested));
        assert!(is_pin_mismatch(&tls()));
        let text_only = std::io::Error::other(PIN_MISMATCH);
        assert!(
            !is_pin_mismatch(&text_only),
            "the text alone proves nothing"
        );
        let other = std::io::Error::new(kind, rustls::Error::General("x".into()));
        assert!(!is_pin_mismatch(&other));
    }

    #[test]
    fn the_ca_is_made_once_and_issues_node_credentials_for_the_requesters_key() {
        let dir = crate::state::private_tempdir();
        let state: DurableState = StateDir::new(dir.path()).into();
        let ca = DaemonCa::ensure(&state).unwrap();
        let again = DaemonCa::ensure(&state).unwrap();
        assert_eq!(ca.pin(), again.pin());
        assert!(is_pin(ca.pin()), "{}", ca.pin());
        assert_eq!(cert_pin(&ca.cert_der).unwrap(), ca.pin());

        let key = NodeKey::generate().unwrap();
        let now = SystemTime::now();
        let issued = ca
            .issue_node(&key.csr_pem("n1").unwrap(), "dev", "n1", now)
            .unwrap();
        assert_eq!(issued.key_pin, key.pin());
        let der = pem_certificate(&issued.cert_pem).unwrap();
        let id = node_identity(&der).unwrap();
        assert_eq!((id.cluster.as_str(), id.node.as_str()), ("dev", "n1"));
        assert_eq!(id.key_pin, key.pin());
        assert!(id.not_before < now && id.not_after > now + NODE_CERT_VALIDITY / 2);

        // A request whose signature does not verify proves nothing about the key.
        let tampered = {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            let pem = key.csr_pem("n1").unwrap();
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let mut der = b64.decode(body).unwrap();
            let last = der.len() - 1;
            der[last] ^= 0x01;
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
                b64.encode(der)
            )
        };
        assert!(matches!(
            ca.issue_node(&tampered, "dev", "n1", now),
            Err(PkiError::BadRequest(_))
        ));
        let huge = "A".repeat(MAX_PEM_BYTES + 1);
        assert!(matches!(
            ca.issue_node(&huge, "dev", "n1", now),
            Err(PkiError::BadRequest(_))
        ));
    }

    #[test]
    fn processes_making_the_ca_at_once_all_get_the_same_one() {
        const MAKERS: usize = 8;
        for round in 0..5 {
            let dir = crate::state::private_tempdir();
            let start = std::sync::Barrier::new(MAKERS);
            let pins: Vec<String> = std::thread::scope(|s| {
                let makers: Vec<_> = (0..MAKERS)
                    .map(|_| {
                        s.spawn(|| {
                            // Each with its own StateDir, as separate processes would be.
                            let state: DurableState = StateDir::new(dir.path()).into();
                            start.wait();
                            DaemonCa::ensure(&state).unwrap().pin().to_string()
                        })
                    })
                    .collect();
                makers.into_iter().map(|m| m.join().unwrap()).collect()
            });
            let stored = DaemonCa::ensure(&StateDir::new(dir.path()).into()).unwrap();
            assert!(
                pins.iter().all(|p| p == stored.pin()),
                "round {round}: {pins:#?} vs stored {}",
                stored.pin()
            );
        }
    }

    #[test]
    fn certificates_are_valid_from_issue_for_their_documented_time() {
        let dir = crate::state::private_tempdir();
        let ca = DaemonCa::ensure(&StateDir::new(dir.path()).into()).unwrap();
        let key = NodeKey::generate().unwrap();
        let now = SystemTime::now();
        let node = ca
            .issue_node(&key.csr_pem("n1").unwrap(), "dev", "n1", now)
            .unwrap();
        let server = ca.server_identity(&["127.0.0.1".into()], now).unwrap();
        let cases = [
            (
                "node credential",
                pem_certificate(&node.cert_pem).unwrap(),
                NODE_CERT_VALIDITY,
            ),
            (
                "serving certificate",
                server.chain[0].clone(),
                SERVER_CERT_VALIDITY,
            ),
        ];
        let secs =
            |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        let tolerance = 60;
        for (what, der, valid_for) in cases {
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            let not_before = cert.validity().not_before.timestamp();
            let not_after = cert.validity().not_after.timestamp();
            let backdated = secs(now) - not_before;
            assert!(
                (0..=CLOCK_SKEW.as_secs() as i64 + tolerance).contains(&backdated),
                "{what}: valid from {backdated} s before issue"
            );
            let lifetime = not_after - secs(now);
            assert!(
                (lifetime - valid_for.as_secs() as i64).abs() <= tolerance,
                "{what}: valid for {lifetime} s after issue, not {valid_for:?}"
            );
        }
    }

    #[test]
    fn the_key_pem_never_prints() {
        let key = NodeKey::generate().unwrap();
        let pem = key.to_pem();
        assert_eq!(format!("{pem:?}"), "[redacted]");
        assert_eq!(NodeKey::from_pem(&pem).unwrap().pin(), key.pin());
    }
}
