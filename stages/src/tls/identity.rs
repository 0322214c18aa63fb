//! The verified identity of a client certificate (mTLS): subject, subject alternative names
//! and SHA-256 fingerprint, attached to the exchange and optionally forwarded to backends.

use std::fmt::Write;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who the client proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// RFC 4514 form, e.g. `CN=client-a,O=Example`.
    pub subject: String,
    /// `dns:…`, `uri:…`, `email:…`, `ip:…` entries.
    pub sans: Vec<String>,
    /// Lower-case hex SHA-256 of the certificate DER.
    pub sha256: String,
}

impl ClientIdentity {
    /// Reads the identity of a verified leaf certificate.
    pub fn from_der(cert: &CertificateDer<'_>) -> ClientIdentity {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let sha256 = digest
            .as_ref()
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
        let (subject, sans) = match X509Certificate::from_der(cert.as_ref()) {
            Ok((_, x)) => {
                let sans = x
                    .subject_alternative_name()
                    .ok()
                    .flatten()
                    .map(|ext| {
                        ext.value
                            .general_names
                            .iter()
                            .filter_map(|n| match n {
                                GeneralName::DNSName(d) => Some(format!("dns:{d}")),
                                GeneralName::URI(u) => Some(format!("uri:{u}")),
                                GeneralName::RFC822Name(e) => Some(format!("email:{e}")),
                                GeneralName::IPAddress(ip) => {
                                    ip_text(ip).map(|i| format!("ip:{i}"))
                                }
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (x.subject().to_string(), sans)
            }
            Err(_) => (String::new(), Vec::new()),
        };
        ClientIdentity {
            subject,
            sans,
            sha256,
        }
    }

    /// The forwarded header value: `subject="…"; san="…,…"; sha256=…` (quotes and
    /// backslashes in values escaped, per RFC 9110 quoted-string).
    pub fn header_value(&self) -> String {
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        format!(
            "subject=\"{}\"; san=\"{}\"; sha256={}",
            q(&self.subject),
            q(&self.sans.join(",")),
            self.sha256
        )
    }
}

fn ip_text(ip: &[u8]) -> Option<String> {
    match ip.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(ip).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?).to_string()),
        _ => None,
    }
}
