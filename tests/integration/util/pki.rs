//! Certificates for TLS tests: a root CA, an intermediate under it, and server and client
//! certificates the intermediate signs, written as PEM files as an operator would have them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A root and an intermediate CA whose files live in `dir`.
pub struct Pki {
    dir: PathBuf,
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A new root (`<dir>/<name>-ca.crt`) and intermediate.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca = |common_name: String| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params
        };
        let root = CertifiedIssuer::self_signed(
            ca(format!("{name} test root")),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            ca(format!("{name} test intermediate")),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        let pki = Pki {
            dir: dir.to_owned(),
            root,
            intermediate,
        };
        std::fs::write(pki.root_path_for(name), pki.root.pem()).unwrap();
        pki
    }

    fn root_path_for(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-ca.crt"))
    }

    /// The root certificate's PEM, which clients trust.
    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// Writes a server certificate for `names` (host names or IP addresses) as a chain with
    /// the intermediate to `cert`, and its key to `key`; returns the server certificate's DER.
    pub fn issue_server(&self, names: &[&str], cert: &Path, key: &Path) -> Vec<u8> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, cert, key)
    }

    /// Writes a client certificate named `who` (chain and key) to `cert` and `key`.
    pub fn issue_client(&self, who: &str, cert: &Path, key: &Path) -> Vec<u8> {
        self.issue(&[who], ExtendedKeyUsagePurpose::ClientAuth, cert, key)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        cert: &Path,
        key: &Path,
    ) -> Vec<u8> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].to_owned());
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &self.intermediate).unwrap();
        std::fs::write(cert, format!("{}{}", leaf.pem(), self.intermediate.pem())).unwrap();
        std::fs::write(key, leaf_key.serialize_pem()).unwrap();
        leaf.der().to_vec()
    }
}

/// This machine's first IPv4 address that is not loopback, for clients (Docker) that treat
/// loopback registries as insecure and would not check the certificate there. Read from the
/// kernel's routing table (`/proc/net/fib_trie`: an address followed by `/32 host LOCAL` is
/// one of this machine's), so no network tool is needed.
pub fn non_loopback_ipv4() -> std::net::Ipv4Addr {
    let table = std::fs::read_to_string("/proc/net/fib_trie").expect("/proc/net/fib_trie");
    let mut last: Option<std::net::Ipv4Addr> = None;
    for line in table.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            last = address.parse().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(ip) = last.filter(|ip| !ip.is_loopback())
        {
            return ip;
        }
    }
    panic!("no IPv4 address but loopback on this machine:\n{table}")
}
