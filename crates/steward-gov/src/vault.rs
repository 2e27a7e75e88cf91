//! The vault: provider and tool credentials encrypted at rest (XChaCha20-Poly1305, a random
//! nonce per value, the secret's name bound in as associated data so a value cannot be moved to
//! another name). The key comes from the environment or a file; without it the stored values
//! are noise. Decrypted values live only in memory and are handed out by name at call time.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use steward_store::merkle::hex;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault key: {0}")]
    Key(String),
    #[error("secret {0:?} cannot be decrypted: wrong vault key, or the stored value was altered")]
    Decrypt(String),
    #[error("{0}")]
    Other(String),
}

pub struct VaultCipher {
    cipher: XChaCha20Poly1305,
}

impl VaultCipher {
    /// The key from `STEWARD_VAULT_KEY` (64 hex characters) if set, else from `file`, created
    /// (mode 0600) when absent.
    pub fn load(env_key: Option<&str>, file: &Path) -> Result<Self, VaultError> {
        let hex_key = match env_key {
            Some(k) => k.trim().to_string(),
            None => match std::fs::read_to_string(file) {
                Ok(t) => t.trim().to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut key = [0u8; 32];
                    getrandom::getrandom(&mut key).map_err(|e| VaultError::Key(e.to_string()))?;
                    crate::audit_key::write_private(file, &hex(&key))
                        .map_err(|e| VaultError::Key(format!("{}: {e}", file.display())))?;
                    tracing::info!(path = %file.display(), "created a new vault key");
                    hex(&key)
                }
                Err(e) => return Err(VaultError::Key(format!("{}: {e}", file.display()))),
            },
        };
        let key = steward_store::merkle::unhex(&hex_key)
            .ok_or_else(|| VaultError::Key("expected 64 hex characters (32 bytes)".into()))?;
        Ok(VaultCipher {
            cipher: XChaCha20Poly1305::new(&key.into()),
        })
    }

    /// Hex of nonce ‖ ciphertext.
    pub fn seal(&self, name: &str, value: &str) -> Result<String, VaultError> {
        let mut nonce = [0u8; 24];
        getrandom::getrandom(&mut nonce).map_err(|e| VaultError::Other(e.to_string()))?;
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Other("encryption failed".into()))?;
        Ok(format!("{}{}", hex(&nonce), hex(&ct)))
    }

    pub fn open(&self, name: &str, sealed: &str) -> Result<String, VaultError> {
        let bytes =
            crate::audit_key::parse_hex(sealed).ok_or_else(|| VaultError::Decrypt(name.into()))?;
        if bytes.len() < 24 + 16 {
            return Err(VaultError::Decrypt(name.into()));
        }
        let (nonce, ct) = bytes.split_at(24);
        let pt = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Decrypt(name.into()))?;
        String::from_utf8(pt).map_err(|_| VaultError::Decrypt(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_are_bound_to_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let v = VaultCipher::load(None, &dir.path().join("vault.key")).unwrap();
        let sealed = v.seal("openai", "sk-live-123").unwrap();
        assert!(!sealed.contains("sk-live"));
        assert_eq!(v.open("openai", &sealed).unwrap(), "sk-live-123");
        assert!(
            v.open("anthropic", &sealed).is_err(),
            "moved to another name"
        );
        let mut tampered = sealed.clone();
        tampered.replace_range(60..62, if &sealed[60..62] == "00" { "01" } else { "00" });
        assert!(v.open("openai", &tampered).is_err());
        let other = VaultCipher::load(Some(&"ab".repeat(32)), Path::new("/nonexistent")).unwrap();
        assert!(other.open("openai", &sealed).is_err(), "another key");
        assert_eq!(
            VaultCipher::load(None, &dir.path().join("vault.key"))
                .unwrap()
                .open("openai", &sealed)
                .unwrap(),
            "sk-live-123",
            "the key file persists"
        );
    }
}
