//! The secret key of the hash chain.

use std::fmt;

/// The 32-byte secret key the chain's [`hash`](super::AuditRecord::hash)es are computed with
/// (BLAKE3 keyed mode).
///
/// Whoever holds the key can write records that verify; whoever does not cannot. Give it to the process
/// that writes the log and to whoever verifies it, and to no one who can edit the log's storage. Its
/// `Debug` output shows only a [`fingerprint`](Self::fingerprint), never the key.
///
/// ```
/// use palisade_core::audit::AuditKey;
///
/// // From key material kept in your secret store, bound to a context string of your application.
/// let key = AuditKey::derive("acme.example 2026 palisade audit", b"material from the vault");
/// assert!(!format!("{key:?}").contains("vault"));
/// ```
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl AuditKey {
    /// A key from raw bytes (for example 32 random bytes from your secret store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        AuditKey(bytes)
    }

    /// Derives a key from key material with `blake3::derive_key`.
    ///
    /// `context` should be a hard-coded, globally unique, application-specific string such as
    /// `"acme.example 2026-01-01 audit log"`; `material` is the secret (of any length, with enough
    /// entropy: a password is not enough).
    pub fn derive(context: &str, material: &[u8]) -> Self {
        AuditKey(blake3::derive_key(context, material))
    }

    /// A fresh random key, for logs verified by the same process (tests, demos, the in-memory ring).
    ///
    /// The key cannot be read back out, so a log written with it can only be verified through
    /// [`Audit::verify`](super::Audit::verify) on the same handle. For a log that must be verified
    /// later or elsewhere (a file), use [`from_bytes`](Self::from_bytes) or [`derive`](Self::derive)
    /// with material from your secret store.
    ///
    /// Entropy comes from the operating system without an extra dependency: `/dev/urandom` on Unix,
    /// mixed with the OS-seeded keys of std's `RandomState`, the clock, the process id and a counter.
    pub fn generate() -> Self {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};

        static COUNTER: AtomicU64 = AtomicU64::new(0);

        let mut material = Vec::with_capacity(128);
        #[cfg(unix)]
        {
            use std::io::Read;
            let mut buf = [0u8; 32];
            if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
                if f.read_exact(&mut buf).is_ok() {
                    material.extend_from_slice(&buf);
                }
            }
        }
        for i in 0u64..4 {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(i);
            material.extend_from_slice(&h.finish().to_le_bytes());
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        material.extend_from_slice(&nanos.to_le_bytes());
        material.extend_from_slice(&std::process::id().to_le_bytes());
        material.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        material.extend_from_slice(format!("{:?}", std::thread::current().id()).as_bytes());
        AuditKey(blake3::derive_key(
            "palisade audit generated key v1",
            &material,
        ))
    }

    /// A short, non-secret identifier of the key (16 hex digits), to tell keys apart in logs and
    /// configuration without revealing them.
    pub fn fingerprint(&self) -> String {
        let id = blake3::derive_key("palisade audit key fingerprint v1", &self.0);
        let mut short = [0u8; 32];
        short[..8].copy_from_slice(&id[..8]);
        super::record::hex::encode(&short)[..16].to_owned()
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let key = AuditKey::from_bytes([0xab; 32]);
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("abab"), "{dbg}");
        assert!(!dbg.contains("171"), "{dbg}");
        assert!(dbg.contains(&key.fingerprint()));
        assert_eq!(key.fingerprint().len(), 16);
    }

    #[test]
    fn derive_and_generate() {
        let a = AuditKey::derive("ctx", b"m");
        assert_eq!(a.as_bytes(), AuditKey::derive("ctx", b"m").as_bytes());
        assert_ne!(a.as_bytes(), AuditKey::derive("ctx2", b"m").as_bytes());
        assert_ne!(a.as_bytes(), AuditKey::derive("ctx", b"n").as_bytes());
        let g1 = AuditKey::generate();
        let g2 = AuditKey::generate();
        assert_ne!(g1.as_bytes(), g2.as_bytes());
        assert_ne!(g1.fingerprint(), g2.fingerprint());
    }
}
