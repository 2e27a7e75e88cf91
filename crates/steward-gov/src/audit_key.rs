//! A node's audit signing key (ed25519). It signs checkpoints — the audit tree's root at a
//! size — so that rows changed in the database no longer match what was signed. The secret is
//! kept in a file readable by its owner only; verifiers need only the public key (`key_id`).

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use steward_store::merkle::hex;
use steward_store::AuditCheckpoint;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("audit key file {path}: {detail}")]
    File { path: String, detail: String },
    #[error("no randomness for a new audit key: {0}")]
    Random(String),
    #[error("{0:?} is not a hex ed25519 public key")]
    PublicKey(String),
}

pub struct AuditKey {
    signing: SigningKey,
}

/// What a checkpoint's signature covers: its size and root, under a fixed prefix so the
/// signature can never be taken for one over anything else.
pub fn signed_text(size: i64, root: &str) -> String {
    format!("steward audit checkpoint v1\nsize {size}\nroot {root}\n")
}

impl AuditKey {
    /// Reads the key from `path`, or creates one there (mode 0600) when there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let err = |detail: String| KeyError::File {
            path: path.display().to_string(),
            detail,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let seed = parse_hex32(text.trim())
                    .ok_or_else(|| err("expected 64 hex characters (an ed25519 seed)".into()))?;
                Ok(AuditKey {
                    signing: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
                write_private(path, &hex(&seed)).map_err(|e| err(e.to_string()))?;
                tracing::info!(path = %path.display(), "created a new audit signing key");
                Ok(AuditKey {
                    signing: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Hex of the public key: how checkpoints name their signer.
    pub fn key_id(&self) -> String {
        hex(self.signing.verifying_key().as_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn sign(&self, size: i64, root: &str, at: i64) -> AuditCheckpoint {
        let sig = self.signing.sign(signed_text(size, root).as_bytes());
        AuditCheckpoint {
            size,
            root: root.to_string(),
            at,
            key_id: self.key_id(),
            signature: hex(&sig.to_bytes()),
        }
    }
}

/// A public key from its hex form.
pub fn public_key(hex_key: &str) -> Result<VerifyingKey, KeyError> {
    parse_hex32(hex_key)
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| KeyError::PublicKey(hex_key.to_string()))
}

/// Whether `c` was signed by one of `trusted` over exactly its size and root.
pub fn check_signature(c: &AuditCheckpoint, trusted: &[VerifyingKey]) -> Result<(), String> {
    let Some(key) = trusted.iter().find(|k| hex(k.as_bytes()) == c.key_id) else {
        return Err(format!(
            "signed by key {}, which is not a trusted audit key",
            c.key_id
        ));
    };
    let bytes = parse_hex(&c.signature)
        .filter(|b| b.len() == 64)
        .ok_or("its signature is not 64 hex bytes")?;
    let mut arr = [0u8; 64];
    arr.copy_from_slice(&bytes);
    key.verify(
        signed_text(c.size, &c.root).as_bytes(),
        &Signature::from_bytes(&arr),
    )
    .map_err(|_| "its signature does not match its size and root".to_string())
}

/// Bytes from hex, or `None` when it is not hex.
pub(crate) fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    parse_hex(s)?.try_into().ok()
}

/// Writes a new file readable by its owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_persists_and_its_signatures_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let k = AuditKey::load_or_create(&path).unwrap();
        let again = AuditKey::load_or_create(&path).unwrap();
        assert_eq!(k.key_id(), again.key_id());
        let c = k.sign(7, "ab", 1);
        let trusted = [public_key(&k.key_id()).unwrap()];
        assert_eq!(check_signature(&c, &trusted), Ok(()));
        let forged = AuditCheckpoint {
            size: 8,
            ..c.clone()
        };
        assert!(check_signature(&forged, &trusted).is_err());
        let other = AuditKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(check_signature(&c, &[other.verifying_key()]).is_err());
    }
}
