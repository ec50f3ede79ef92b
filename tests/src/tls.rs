//! A certificate authority made in the test, and a relay certificate it
//! signed for `localhost` and 127.0.0.1, as PEM.

pub struct TestPki {
    /// The CA certificate devices and the CLI are told to trust.
    pub ca_pem: String,
    /// The relay's certificate chain and key.
    pub chain_pem: String,
    pub key_pem: String,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "progress test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let relay_key = KeyPair::generate().expect("relay key");
        let mut relay = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
        relay.distinguished_name.push(DnType::CommonName, "localhost");
        let relay_cert = relay.signed_by(&relay_key, &issuer).expect("relay certificate");
        TestPki { ca_pem: ca_cert.pem(), chain_pem: relay_cert.pem(), key_pem: relay_key.serialize_pem() }
    }

    pub fn server_config(&self) -> std::sync::Arc<rustls::ServerConfig> {
        std::sync::Arc::new(
            tls_config::server_config(self.chain_pem.as_bytes(), self.key_pem.as_bytes()).expect("server config"),
        )
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}
