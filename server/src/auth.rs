//! Secrets: device and API tokens (random, stored as SHA-256) and administrator
//! passwords (Argon2id).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix that makes a CTData token recognisable in a config file or a leak scanner.
const TOKEN_PREFIX: &str = "ctd_";

/// A new random token (256 bits) to show once.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// What is stored for a token: high-entropy secrets need no slow hash, and a SHA-256
/// keeps checking one per request cheap.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Shortest administrator password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;

/// Argon2id with the crate's default cost (19 MiB, t=2): a deliberate ~20 ms per check.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password failed: {e}"))?;
    Ok(hash.to_string())
}

/// Checks a password for a name that may not exist: an unknown name is checked against
/// a throwaway hash, so the answer takes as long as for a real administrator and its
/// timing does not tell which names exist.
pub fn verify_admin_password(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match stored {
        Some(stored) => verify_password(password, stored),
        None => {
            let dummy = DUMMY.get_or_init(|| {
                hash_password(&new_token()).expect("hashing a random token cannot fail")
            });
            verify_password(password, dummy);
            false
        }
    }
}

pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hashes_stable() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("ctd_") && a.len() == 4 + 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let stored = hash_password("correct horse battery").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &stored));
        assert!(!verify_password("correct horse batter", &stored));
        assert!(!verify_password("anything", "not a hash"));
        assert!(!verify_admin_password("correct horse battery", None));
    }
}
