//! Mutual TLS: the verified client certificate names the user.
//!
//! rustls has already verified the certificate against the configured client CA by the time a
//! request arrives (the server puts the leaf into [`super::ConnectionInfo`]); this authenticator
//! only reads the configured field of it. A connection without a certificate is not this
//! authenticator's business ([`Outcome::Skip`]), so tokens still work beside it when the TLS
//! settings make the certificate optional.
use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{Authenticator, Credentials, Identity, Outcome, Rejection, Roles};

/// Which part of the certificate is the user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserField {
    /// The subject's common name (CN).
    CommonName,
    /// The first `rfc822Name` (e-mail) subject alternative name.
    Email,
    /// The first `dNSName` subject alternative name.
    Dns,
    /// The first `uniformResourceIdentifier` subject alternative name.
    Uri,
}

impl FromStr for UserField {
    type Err = String;

    fn from_str(text: &str) -> Result<UserField, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cn" | "common_name" | "commonname" => Ok(UserField::CommonName),
            "email" | "rfc822" => Ok(UserField::Email),
            "dns" => Ok(UserField::Dns),
            "uri" => Ok(UserField::Uri),
            other => Err(format!(
                "unknown certificate field {other:?} (cn, email, dns or uri)"
            )),
        }
    }
}

impl fmt::Display for UserField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UserField::CommonName => "common name",
            UserField::Email => "e-mail SAN",
            UserField::Dns => "DNS SAN",
            UserField::Uri => "URI SAN",
        })
    }
}

/// Authenticates by the TLS client certificate.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    field: UserField,
}

impl ClientCertificate {
    /// Takes the user name from `field`.
    pub fn new(field: UserField) -> ClientCertificate {
        ClientCertificate { field }
    }

    /// The user name in a DER certificate, or why there is none.
    pub fn user_of(&self, der: &[u8]) -> Result<String, Rejection> {
        let (_, certificate) = X509Certificate::from_der(der)
            .map_err(|_| Rejection::new("the client certificate cannot be parsed"))?;
        let found = match self.field {
            UserField::CommonName => certificate
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            field => certificate
                .subject_alternative_name()
                .ok()
                .flatten()
                .and_then(|san| {
                    san.value
                        .general_names
                        .iter()
                        .find_map(|name| match (field, name) {
                            (UserField::Email, GeneralName::RFC822Name(v))
                            | (UserField::Dns, GeneralName::DNSName(v))
                            | (UserField::Uri, GeneralName::URI(v)) => Some((*v).to_owned()),
                            _ => None,
                        })
                }),
        };
        found.ok_or_else(|| Rejection::new(format!("the client certificate has no {}", self.field)))
    }
}

#[async_trait::async_trait]
impl Authenticator for ClientCertificate {
    fn name(&self) -> &'static str {
        "mtls"
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Outcome {
        let Some(certificate) = credentials.client_certificate else {
            return Outcome::Skip;
        };
        match self.user_of(certificate.as_ref()) {
            Ok(user) => Outcome::Accept(Identity {
                user,
                groups: Vec::new(),
                roles: Roles::default(),
                method: "mtls",
            }),
            Err(rejection) => Outcome::Reject(rejection),
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn certificate(cn: &str, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        let key = KeyPair::generate().ok();
        key.and_then(|key| params.self_signed(&key).ok())
            .map(|cert| cert.der().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn each_field_names_the_user() {
        let der = certificate(
            "alice",
            vec![
                SanType::Rfc822Name(
                    "alice@example.com"
                        .try_into()
                        .unwrap_or_else(|_| unreachable!()),
                ),
                SanType::DnsName(
                    "alice.clients.example"
                        .try_into()
                        .unwrap_or_else(|_| unreachable!()),
                ),
                SanType::URI(
                    "spiffe://example/alice"
                        .try_into()
                        .unwrap_or_else(|_| unreachable!()),
                ),
            ],
        );
        let cases = [
            (UserField::CommonName, "alice"),
            (UserField::Email, "alice@example.com"),
            (UserField::Dns, "alice.clients.example"),
            (UserField::Uri, "spiffe://example/alice"),
        ];
        for (field, want) in cases {
            assert_eq!(
                ClientCertificate::new(field).user_of(&der),
                Ok(want.to_owned()),
                "{field}"
            );
        }
        let bare = certificate("bob", Vec::new());
        assert_eq!(
            ClientCertificate::new(UserField::Email).user_of(&bare),
            Err(Rejection::new("the client certificate has no e-mail SAN"))
        );
        assert!(
            ClientCertificate::new(UserField::CommonName)
                .user_of(b"junk")
                .is_err()
        );
        assert_eq!("CN".parse::<UserField>(), Ok(UserField::CommonName));
        assert!("subject".parse::<UserField>().is_err());
    }
}
