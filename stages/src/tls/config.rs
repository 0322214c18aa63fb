//! `[listeners.tls]`: a listener's certificates and client authentication, owned here beside
//! the certificate store; `config` assembles them into the pipeline's model.

use std::path::PathBuf;

use serde::Deserialize;

use crate::units::Dur;

/// `[listeners.tls]`: a table, `"off"`, or absent (generated self-signed certificate).
#[derive(Debug, Clone, Default)]
pub enum TlsSetting {
    #[default]
    SelfSigned,
    Off,
    Files(TlsConfig),
}

impl<'de> Deserialize<'de> for TlsSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TlsSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"off\" or a table with cert/key or [[listeners.tls.certificates]]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TlsSetting, E> {
                match v {
                    "off" => Ok(TlsSetting::Off),
                    _ => Err(E::custom(format!(
                        "expected \"off\" or a table, found \"{v}\""
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TlsSetting, A::Error> {
                TlsConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(TlsSetting::Files)
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for TlsSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TlsSetting::SelfSigned => s.serialize_str("self-signed"),
            TlsSetting::Off => s.serialize_str("off"),
            TlsSetting::Files(c) => c.serialize(s),
        }
    }
}

/// Certificates of a TLS listener: the single-certificate form (`cert`, `key`) and/or
/// several certificates chosen by SNI (`[[listeners.tls.certificates]]`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Client certificates (mTLS): `"off"`, `"optional"` (verified when sent), `"required"`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM file of the CAs client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Forward the verified client identity to backends in this request header (any value a
    /// client sends in it is removed first).
    pub client_identity_header: Option<String>,
    /// Reload the certificate files when they change (checked every `watch_interval`).
    #[serde(default)]
    pub watch: bool,
    #[serde(default = "default_watch_interval")]
    pub watch_interval: Dur,
    /// 0-RTT over HTTP/3: requests in TLS early data. Safe ones (GET, HEAD, OPTIONS without
    /// a body, and routes with `early_data = true`) are processed at once and marked
    /// `Early-Data: 1` upstream; the others wait for the handshake (RFC 8470).
    #[serde(default)]
    pub early_data: bool,
}

pub(crate) fn default_watch_interval() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    #[default]
    Off,
    /// Asked for; verified when sent; the handshake succeeds without one.
    Optional,
    /// A client without a valid certificate fails the handshake.
    Required,
}

/// One certificate chosen by SNI.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Server names it serves: exact (`api.example.com`) or wildcard (`*.example.com`).
    #[serde(default)]
    pub names: Vec<String>,
    /// Served when the client sends no SNI or an unknown name (else the first entry).
    #[serde(default)]
    pub default: bool,
}
