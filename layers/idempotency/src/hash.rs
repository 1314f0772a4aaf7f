//! Keyed BLAKE3 hashes: the record's scope (tenant + client key) and the request's fingerprint
//! (method + path and query + configured headers + body and trailers).

use std::fmt;
use std::hash::{Hash, Hasher};

use http::{HeaderMap, HeaderName, Method};

// v2: the scope is tenant + key (v1 also hashed the method and the path, which belong to the
// fingerprint). A new context keeps v1 scopes in a shared store from ever matching v2 ones.
const SCOPE_CONTEXT: &str = "palisade-idempotency 2026 scope v2";
const FINGERPRINT_CONTEXT: &str = "palisade-idempotency 2026 fingerprint v1";

macro_rules! digest_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps a digest (e.g. read back from a store).
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }

            /// The digest.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The digest as 64 lowercase hex digits (e.g. a Redis key suffix).
            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({}…)", stringify!($name), &hex(&self.0)[..16])
            }
        }
    };
}

digest_type!(
    /// Which record a request belongs to: a keyed BLAKE3 hash of the tenant and the client's
    /// `Idempotency-Key`.
    ///
    /// Stores key their records by it and audit records name it; the raw key never leaves the request.
    /// The same client key from another tenant is another scope. The same key on another method or
    /// path is the *same* scope with another [`Fingerprint`]: refused with `422`, because a key names
    /// one request (draft-ietf-httpapi-idempotency-key-header §2.2; Stripe refuses a key reused on
    /// another endpoint).
    Scope
);

digest_type!(
    /// What a request was: a keyed BLAKE3 hash of its method, path and query, the configured
    /// [`fingerprint_headers`](crate::Builder::fingerprint_header), its body and its trailers. A key
    /// reused with a different fingerprint — another body, query, method or path — is refused (`422`).
    Fingerprint
);

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The two hash keys, derived from the layer's secret.
#[derive(Clone)]
pub(crate) struct Keys {
    scope: [u8; 32],
    fingerprint: [u8; 32],
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub(crate) fn derive(secret: &[u8]) -> Self {
        Keys {
            scope: blake3::derive_key(SCOPE_CONTEXT, secret),
            fingerprint: blake3::derive_key(FINGERPRINT_CONTEXT, secret),
        }
    }

    /// A fresh random secret's keys: records are meaningful to this process only.
    pub(crate) fn random() -> Self {
        Self::derive(&random_secret())
    }

    pub(crate) fn scope<T: Hash>(&self, tenant: Option<&T>, key: &[u8]) -> Scope {
        let mut h = blake3::Hasher::new_keyed(&self.scope);
        match tenant {
            Some(t) => {
                h.update(&[1]);
                // `Hash` implementations feed prefix-free data (std's contract), so the tenant cannot
                // run into the fields after it.
                t.hash(&mut HashInto(&mut h));
            }
            None => {
                h.update(&[0]);
            }
        }
        field(&mut h, key);
        Scope(*h.finalize().as_bytes())
    }

    pub(crate) fn fingerprint(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        names: &[HeaderName],
        body: &[u8],
        trailers: Option<&HeaderMap>,
    ) -> Fingerprint {
        let mut h = blake3::Hasher::new_keyed(&self.fingerprint);
        field(&mut h, method.as_str().as_bytes());
        field(&mut h, path_and_query.as_bytes());
        for name in names {
            let values = headers.get_all(name);
            h.update(&(values.iter().count() as u64).to_le_bytes());
            for v in values {
                field(&mut h, v.as_bytes());
            }
        }
        field(&mut h, body);
        match trailers {
            None => {
                h.update(&[0]);
            }
            Some(t) => {
                h.update(&[1]);
                h.update(&(t.len() as u64).to_le_bytes());
                let mut pairs: Vec<(&str, &[u8])> =
                    t.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
                pairs.sort_unstable();
                for (k, v) in pairs {
                    field(&mut h, k.as_bytes());
                    field(&mut h, v);
                }
            }
        }
        Fingerprint(*h.finalize().as_bytes())
    }
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Feeds a `Hash` implementation into BLAKE3.
struct HashInto<'a>(&'a mut blake3::Hasher);

impl Hasher for HashInto<'_> {
    fn finish(&self) -> u64 {
        let mut out = [0u8; 8];
        self.0.finalize_xof().fill(&mut out);
        u64::from_le_bytes(out)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// 32 random bytes: the OS's random device where there is one, mixed with the process's random hasher
/// keys, the clock and a counter.
fn random_secret() -> [u8; 32] {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new_derive_key("palisade-idempotency 2026 secret");
    #[cfg(unix)]
    {
        use std::io::Read;
        let mut buf = [0u8; 32];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            if f.read_exact(&mut buf).is_ok() {
                h.update(&buf);
            }
        }
    }
    for i in 0..4u64 {
        let mut s = RandomState::new().build_hasher();
        s.write_u64(i);
        h.update(&s.finish().to_le_bytes());
    }
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_separates_tenant_and_key_only() {
        let k = Keys::derive(b"secret");
        let base = k.scope(Some(&"acme"), b"k1");
        assert_eq!(base, k.scope(Some(&"acme"), b"k1"));
        assert_ne!(base, k.scope(Some(&"globex"), b"k1"));
        assert_ne!(base, k.scope(None::<&&str>, b"k1"));
        assert_ne!(base, k.scope(Some(&"acme"), b"k2"));
        // Field boundaries are length-prefixed: the tenant cannot run into the key.
        assert_ne!(k.scope(Some(&"ab"), b"c"), k.scope(Some(&"a"), b"bc"));
        // Another secret, another hash.
        let other = Keys::derive(b"other secret");
        assert_ne!(base, other.scope(Some(&"acme"), b"k1"));
        assert_ne!(
            Keys::random().scope.as_slice(),
            Keys::random().scope.as_slice()
        );
    }

    #[test]
    fn fingerprint_covers_body_query_and_chosen_headers() {
        let k = Keys::derive(b"secret");
        let mut h = HeaderMap::new();
        h.insert("x-account", "1".parse().unwrap());
        h.insert("user-agent", "a".parse().unwrap());
        let names = [HeaderName::from_static("x-account")];
        let fp =
            |m: &Method, p: &str, h: &HeaderMap, b: &[u8]| k.fingerprint(m, p, h, &names, b, None);
        let base = fp(&Method::POST, "/o?x=1", &h, b"{}");
        assert_eq!(base, fp(&Method::POST, "/o?x=1", &h, b"{}"));
        assert_ne!(base, fp(&Method::POST, "/o?x=2", &h, b"{}"));
        assert_ne!(base, fp(&Method::POST, "/o?x=1", &h, b"{ }"));
        assert_ne!(base, fp(&Method::PATCH, "/o?x=1", &h, b"{}"), "method");
        assert_ne!(base, fp(&Method::POST, "/p?x=1", &h, b"{}"), "path");
        let mut ua = h.clone();
        ua.insert("user-agent", "b".parse().unwrap());
        assert_eq!(
            base,
            fp(&Method::POST, "/o?x=1", &ua, b"{}"),
            "unlisted header"
        );
        let mut acct = h.clone();
        acct.insert("x-account", "2".parse().unwrap());
        assert_ne!(
            base,
            fp(&Method::POST, "/o?x=1", &acct, b"{}"),
            "listed header"
        );
        assert!(format!("{base:?}").starts_with("Fingerprint("));
        assert_eq!(base.to_hex().len(), 64);
    }
}
