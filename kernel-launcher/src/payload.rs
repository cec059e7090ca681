//! The encrypted connection-info payload a kernel launcher sends back (reference §8.4–8.5).
//!
//! **Version 1** (EG 3.x and gateway_provisioners launchers, and our own agent):
//!
//! ```text
//! aes_key   = 16 random bytes
//! conn_info = base64(AES-128-ECB-PKCS7(aes_key, connection JSON))
//! key       = base64(RSA-PKCS#1-v1.5(gateway public key, aes_key))
//! wire      = base64(JSON {"version": 1, "key": key, "conn_info": conn_info})
//! ```
//!
//! **Version 0** (old launchers): `wire = base64(AES-128-ECB(kernel_id[0..16], JSON + filler))`;
//! the filler after the last `}` is cut off. The gateway only knows which kernel sent it by trying
//! the key of each pending launch.
//!
//! [`KeyPair`] is the gateway's RSA key pair (generated per process); [`encrypt_v1`] is the
//! launcher side, [`KeyPair::decrypt`] the gateway side. AES and the gateway's own key pair are
//! aws-lc-rs. The launcher's RSA step is the `rsa` crate: Enterprise Gateway hands launchers a
//! 1,024-bit key, which aws-lc-rs refuses to encrypt with (it takes 2,048 bits and up).
use aws_lc_rs::cipher::{
    AES_128, DecryptingKey, DecryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey,
    UnboundCipherKey,
};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeySize, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jupyter_protocol::ConnectionInfo;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PaddingScheme as _;

use crate::Error;

/// AES-128 key length.
const AES_KEY_LEN: usize = 16;

/// Fields of the connection JSON that [`LauncherResponse::connection`] takes.
const CONNECTION_FIELDS: [&str; 10] = [
    "transport",
    "ip",
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
    "key",
    "signature_scheme",
    "kernel_name",
];

/// The gateway's RSA key pair; launchers get [`KeyPair::public_key_b64`] as `{public_key}`.
pub struct KeyPair {
    private: Pkcs1PrivateDecryptingKey,
    public_b64: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key_b64", &self.public_b64)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Generates a fresh RSA-2048 key pair (EG uses 1024 bits; launchers accept any size).
    pub fn generate() -> Result<KeyPair, Error> {
        let crypto = |what: &str| Error::Crypto(format!("cannot {what}"));
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| crypto("generate an RSA key"))?;
        let der = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(&private.public_key())
            .map_err(|_| crypto("encode the RSA public key"))?;
        let public_b64 = STANDARD.encode(der.as_ref());
        let private =
            Pkcs1PrivateDecryptingKey::new(private).map_err(|_| crypto("use the RSA key"))?;
        Ok(KeyPair {
            private,
            public_b64,
        })
    }

    /// The public key as launchers expect it: base64 of the DER X.509 SubjectPublicKeyInfo, one line.
    pub fn public_key_b64(&self) -> &str {
        &self.public_b64
    }

    /// Decrypts a version-1 payload (the bytes read from the socket) into its JSON object.
    pub fn decrypt_v1(
        &self,
        wire: &[u8],
    ) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        let bad = |why: &str| Error::Payload(why.to_owned());
        let outer = STANDARD
            .decode(trim_ascii(wire))
            .map_err(|_| bad("not base64"))?;
        let envelope: serde_json::Value =
            serde_json::from_slice(&outer).map_err(|_| bad("not a JSON envelope"))?;
        match envelope.get("version").and_then(serde_json::Value::as_i64) {
            Some(1) => {}
            Some(other) => return Err(Error::Payload(format!("unsupported version {other}"))),
            None => return Err(bad("no version")),
        }
        let field = |name: &str| {
            envelope
                .get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| Error::Payload(format!("no '{name}' string")))
        };
        let wrapped_key = STANDARD
            .decode(field("key")?)
            .map_err(|_| bad("'key' is not base64"))?;
        let mut ciphertext = STANDARD
            .decode(field("conn_info")?)
            .map_err(|_| bad("'conn_info' is not base64"))?;
        let mut aes_key = vec![0u8; self.private.min_output_size()];
        let aes_key = self
            .private
            .decrypt(&wrapped_key, &mut aes_key)
            .map_err(|_| bad("the AES key does not decrypt with this gateway's RSA key"))?;
        if aes_key.len() != AES_KEY_LEN {
            return Err(bad("the wrapped AES key is not 16 bytes"));
        }
        let cipher = UnboundCipherKey::new(&AES_128, aes_key)
            .and_then(PaddedBlockDecryptingKey::ecb_pkcs7)
            .map_err(|_| bad("unusable AES key"))?;
        let plain = cipher
            .decrypt(&mut ciphertext, DecryptionContext::None)
            .map_err(|_| bad("'conn_info' does not decrypt"))?;
        json_object(plain)
    }
}

/// Decrypts a legacy version-0 payload with the key of `kernel_id` (its first 16 bytes).
pub fn decrypt_v0(
    wire: &[u8],
    kernel_id: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    let bad = |why: &str| Error::Payload(why.to_owned());
    let key = kernel_id
        .as_bytes()
        .get(..AES_KEY_LEN)
        .ok_or_else(|| bad("kernel id shorter than 16 bytes"))?;
    let mut data = STANDARD
        .decode(trim_ascii(wire))
        .map_err(|_| bad("not base64"))?;
    let cipher = UnboundCipherKey::new(&AES_128, key)
        .and_then(DecryptingKey::ecb)
        .map_err(|_| bad("unusable AES key"))?;
    let plain = cipher
        .decrypt(&mut data, DecryptionContext::None)
        .map_err(|_| bad("not a whole number of AES blocks"))?;
    let text = std::str::from_utf8(plain).map_err(|_| bad("not UTF-8"))?;
    let end = text.rfind('}').ok_or_else(|| bad("no JSON object"))?;
    json_object(text.as_bytes().get(..=end).unwrap_or_default())
}

/// The launcher side of version 1: encrypts `connection_json` for the gateway whose public key
/// (base64 DER SubjectPublicKeyInfo, as passed in `--public-key`) is `public_key_b64`.
/// Returns the bytes to send on the socket.
pub fn encrypt_v1(public_key_b64: &str, connection_json: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |why: &str| Error::Crypto(why.to_owned());
    let der = STANDARD
        .decode(public_key_b64.trim())
        .map_err(|_| bad("the public key is not base64"))?;
    let public = rsa::RsaPublicKey::from_public_key_der(&der)
        .map_err(|_| bad("the public key is not an RSA SubjectPublicKeyInfo"))?;
    let mut aes_key = [0u8; AES_KEY_LEN];
    SystemRandom::new()
        .fill(&mut aes_key)
        .map_err(|_| bad("no randomness"))?;
    let cipher = UnboundCipherKey::new(&AES_128, &aes_key)
        .and_then(PaddedBlockEncryptingKey::ecb_pkcs7)
        .map_err(|_| bad("unusable AES key"))?;
    let mut body = connection_json.to_vec();
    cipher
        .encrypt(&mut body)
        .map_err(|_| bad("AES encryption failed"))?;
    let wrapped = rsa::Pkcs1v15Encrypt
        .encrypt(&mut SystemRng, &public, &aes_key)
        .map_err(|e| Error::Crypto(format!("RSA encryption failed: {e}")))?;
    let envelope = serde_json::json!({
        "version": 1,
        "key": STANDARD.encode(wrapped),
        "conn_info": STANDARD.encode(&body),
    });
    Ok(STANDARD.encode(envelope.to_string()).into_bytes())
}

/// aws-lc-rs's system randomness as the random source the `rsa` crate draws its padding from.
struct SystemRng;

/// The system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the system's random source failed")]
struct NoRandomness;

impl rsa::rand_core::TryRng for SystemRng {
    type Error = NoRandomness;

    fn try_next_u32(&mut self) -> Result<u32, NoRandomness> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, NoRandomness> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), NoRandomness> {
        SystemRandom::new().fill(dst).map_err(|_| NoRandomness)
    }
}

impl rsa::rand_core::TryCryptoRng for SystemRng {}

/// A decrypted launcher response: the kernel's connection info and where its launcher runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LauncherResponse {
    /// The connection info (`ip` is what the launcher bound, usually `0.0.0.0`; the backend
    /// replaces it with the host's address).
    pub connection: ConnectionInfo,
    /// The kernel's process id on its host, if sent.
    pub pid: Option<i32>,
    /// The kernel's process group on its host, if sent.
    pub pgid: Option<i32>,
    /// The launcher's communication port, if sent (0 counts as none).
    pub comm_port: Option<u16>,
    /// Every other field (`kernel_id`, `curve_publickey`, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl LauncherResponse {
    /// Reads the decrypted JSON object.
    pub fn from_json(
        mut object: serde_json::Map<String, serde_json::Value>,
    ) -> Result<LauncherResponse, Error> {
        let number = |object: &serde_json::Map<String, serde_json::Value>, key: &str| {
            object.get(key).and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            })
        };
        let pid = number(&object, "pid").and_then(|v| i32::try_from(v).ok());
        let pgid = number(&object, "pgid").and_then(|v| i32::try_from(v).ok());
        let comm_port = number(&object, "comm_port")
            .and_then(|v| u16::try_from(v).ok())
            .filter(|p| *p != 0);
        for key in ["pid", "pgid", "comm_port"] {
            object.remove(key);
        }
        let mut known = serde_json::Map::new();
        for key in CONNECTION_FIELDS {
            if let Some(value) = object.remove(key) {
                known.insert(key.to_owned(), value);
            }
        }
        let connection: ConnectionInfo =
            serde_json::from_value(serde_json::Value::Object(known))
                .map_err(|e| Error::Payload(format!("connection info: {e}")))?;
        Ok(LauncherResponse {
            connection,
            pid,
            pgid,
            comm_port,
            extra: object,
        })
    }

    /// The `kernel_id` the launcher reported, if any.
    pub fn kernel_id(&self) -> Option<&str> {
        self.extra
            .get("kernel_id")
            .and_then(serde_json::Value::as_str)
    }

    /// Whether the launcher provisioned CurveZMQ keys (which this gateway does not use).
    pub fn has_curve_keys(&self) -> bool {
        self.extra.contains_key("curve_publickey") || self.extra.contains_key("curve_secretkey")
    }
}

fn json_object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(Error::Payload(
            "the connection info is not a JSON object".to_owned(),
        )),
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Version 0 the way old launchers built it: AES-ECB with the kernel id's first 16 bytes,
    /// JSON filled up with `%` to the block size.
    pub(crate) fn encrypt_v0(kernel_id: &str, json: &str) -> Vec<u8> {
        let mut body = json.as_bytes().to_vec();
        while !body.len().is_multiple_of(16) {
            body.push(b'%');
        }
        let key = UnboundCipherKey::new(&AES_128, &kernel_id.as_bytes()[..16]).expect("key");
        aws_lc_rs::cipher::EncryptingKey::ecb(key)
            .expect("ecb")
            .encrypt(&mut body)
            .expect("encrypt");
        STANDARD.encode(body).into_bytes()
    }

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
            "ip": "0.0.0.0", "key": "5a2c", "transport": "tcp", "signature_scheme": "hmac-sha256",
            "kernel_name": "", "pid": 42, "pgid": 41, "comm_port": 6,
            "kernel_id": "0f3c7a52-6f1e-4c3e-9a49-1d5b1c0f7d11"
        })
    }

    #[test]
    fn v1_round_trip() -> Result<(), Error> {
        let keys = KeyPair::generate()?;
        let json = sample().to_string();
        let wire = encrypt_v1(keys.public_key_b64(), json.as_bytes())?;
        let object = keys.decrypt_v1(&wire)?;
        let response = LauncherResponse::from_json(object)?;
        assert_eq!(response.pid, Some(42));
        assert_eq!(response.pgid, Some(41));
        assert_eq!(response.comm_port, Some(6));
        assert_eq!(response.connection.hb_port, 5);
        assert_eq!(response.connection.key, "5a2c");
        assert_eq!(
            response.kernel_id(),
            Some("0f3c7a52-6f1e-4c3e-9a49-1d5b1c0f7d11")
        );
        assert!(!response.has_curve_keys());
        // Another gateway's key cannot read it.
        let other = KeyPair::generate()?;
        assert!(other.decrypt_v1(&wire).is_err());
        Ok(())
    }

    /// Enterprise Gateway's key pair is 1,024 bits (a test key, PKCS#1 DER from `openssl genpkey`).
    const EG_SIZED_KEY_PKCS1: [&str; 10] = [
        "MIICWwIBAAKBgQDAEGUwbSlq92WM4eXE5aRGFR+rdZjRQ4K6gPfoWvmpJ8UR56uBPpnUNKhD/CcunLUDqsN5edNn",
        "Gl+UbXXIuEBxO1gqq8xOgy4JQE6Oiffj3cux+NFoEiTZub1JM7RWN/f01X7MzkSjVOe5oldYIWLdo4Ajl52Hb9JI",
        "EgPBdhEHSwIDAQABAoGAMitWM0sgeYd8KEvNuBwASCo2ZpRGQctvt4X+u9wfwPbZfG7WluEiT5MdrPyNw5g9lGKj",
        "wvR2q0TxWJUrIi427qkgwqjNCKwWwhUcV3CSmHC4T0gSSd7PSqcm/XcMTqaoIGsMbFt8WbmBvVbc/FWsvxndBXbQ",
        "CbNefb/+WWrBUAECQQDi+hNSzG/WL8V79qjjVMGWa1p2t3/F6m9KUDsWjOaKaTNy+H1RpSqo1foz9cfz8b4bQbrX",
        "dhxCdjDK/o4fNPgBAkEA2J95UZ3iGTHp7KdD8/rD1rNaLeadldwnIo1U9076wIXXdF4IbRMyx1Lj7NvAI/mF9X83",
        "LhqzMLTjCQyByYRfSwJAIbHgJn2E6LYEyidO4RiW+H6NWmxZQodP6CdK7kkSfF+rrJio+fLcB15km0wUV+l+QEuc",
        "shmtjkw/aBMsBAP4AQJAEwJTjBT1vU5C/9BhxywvOUz90d9V3su153NNjHIy0Ogt0vlZdfDkWNduRt+1ybJgzf0+",
        "413WcaS985JUZVGnZwJABWRgOdEJJ0ISYCBAiM7VwZR7svBfDwEntETo2MvbRR98D1tFQAQzJxJdJ+sR05i8Bj5y",
        "vEIV6IhrXKeQau4PNg==",
    ];

    #[test]
    fn v1_encrypts_for_a_1024_bit_gateway_key() -> Result<(), Box<dyn std::error::Error>> {
        use rsa::pkcs1::DecodeRsaPrivateKey as _;
        use rsa::pkcs8::EncodePublicKey as _;
        let der = STANDARD.decode(EG_SIZED_KEY_PKCS1.concat())?;
        let private = rsa::RsaPrivateKey::from_pkcs1_der(&der)?;
        let public = STANDARD.encode(private.to_public_key().to_public_key_der()?.as_bytes());
        let json = sample().to_string();
        let wire = encrypt_v1(&public, json.as_bytes())?;

        // Undo it as the gateway does: RSA for the AES key, then AES-128-ECB.
        let envelope: serde_json::Value = serde_json::from_slice(&STANDARD.decode(&wire)?)?;
        let wrapped = STANDARD.decode(envelope["key"].as_str().unwrap_or_default())?;
        let aes_key = rsa::Pkcs1v15Encrypt.decrypt(None::<&mut SystemRng>, &private, &wrapped)?;
        assert_eq!(aes_key.len(), AES_KEY_LEN);
        let mut body = STANDARD.decode(envelope["conn_info"].as_str().unwrap_or_default())?;
        let cipher = UnboundCipherKey::new(&AES_128, &aes_key)
            .and_then(PaddedBlockDecryptingKey::ecb_pkcs7)
            .map_err(|_| "AES key")?;
        let plain = cipher
            .decrypt(&mut body, DecryptionContext::None)
            .map_err(|_| "AES decryption")?;
        assert_eq!(plain, json.as_bytes());
        Ok(())
    }

    #[test]
    fn v0_round_trip() -> Result<(), Error> {
        let id = "0f3c7a52-6f1e-4c3e-9a49-1d5b1c0f7d11";
        let wire = encrypt_v0(id, &sample().to_string());
        let object = decrypt_v0(&wire, id)?;
        assert_eq!(object.get("hb_port"), Some(&serde_json::json!(5)));
        assert!(decrypt_v0(&wire, "ffffffff-6f1e-4c3e-9a49-1d5b1c0f7d11").is_err());
        Ok(())
    }

    #[test]
    fn garbage_is_refused() -> Result<(), Error> {
        let keys = KeyPair::generate()?;
        let cases: [&[u8]; 6] = [
            b"",
            b"%%%",
            b"aGVsbG8=",
            b"eyJ2ZXJzaW9uIjogMn0=", // {"version": 2}
            b"eyJrZXkiOiAiIn0=",     // {"key": ""}
            b"eyJ2ZXJzaW9uIjogMSwgImtleSI6ICJBQUFBIiwgImNvbm5faW5mbyI6ICJBQUFBIn0=",
        ];
        for wire in cases {
            assert!(keys.decrypt_v1(wire).is_err(), "{wire:?}");
            assert!(decrypt_v0(wire, "0f3c7a52-6f1e-4c3e").is_err(), "{wire:?}");
        }
        Ok(())
    }

    #[test]
    fn response_needs_connection_fields() {
        let mut object = sample();
        if let Some(map) = object.as_object_mut() {
            map.remove("shell_port");
        }
        let serde_json::Value::Object(map) = object else {
            panic!("object");
        };
        assert!(LauncherResponse::from_json(map).is_err());
    }
}
