//! What is submitted ([`AuditEvent`]), what is stored ([`AuditRecord`]), the chain position ([`Head`]),
//! and the canonical content encoding both hashes are computed over.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::key::AuditKey;

/// Domain tag that starts every record's canonical content (version 1 of the encoding).
const DOMAIN: &[u8] = b"palisade.audit.v1\0";

/// An event a caller submits to [`Audit::record`](super::Audit::record).
///
/// The writer turns it into an [`AuditRecord`] by giving it a sequence number, a timestamp and its
/// hashes.
///
/// ```
/// use palisade_core::audit::AuditEvent;
///
/// let event = AuditEvent::new("breaker.opened")
///     .tenant("acme")
///     .detail("failures", 5)
///     .detail("breaker", "payments");
/// assert_eq!(event.details["failures"], 5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// What happened, as a dotted name such as `"breaker.opened"` or `"gate.level_changed"`.
    pub kind: Cow<'static, str>,
    /// The tenant the event concerns, if any.
    pub tenant: Option<String>,
    /// Structured details, usually a JSON object. Starts as an empty object.
    pub details: Value,
}

impl AuditEvent {
    /// A new event of the given kind, with no tenant and empty details (`{}`).
    pub fn new(kind: impl Into<Cow<'static, str>>) -> Self {
        AuditEvent {
            kind: kind.into(),
            tenant: None,
            details: Value::Object(Map::new()),
        }
    }

    /// Sets the tenant the event concerns.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Adds one field to the details object, replacing a field of the same name.
    ///
    /// If `details` was set to something other than an object, the old value is kept under the
    /// field `"value"` of a new object.
    #[must_use]
    pub fn detail(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        if !self.details.is_object() {
            let old = std::mem::take(&mut self.details);
            let mut map = Map::new();
            if !old.is_null() {
                map.insert("value".to_owned(), old);
            }
            self.details = Value::Object(map);
        }
        if let Value::Object(map) = &mut self.details {
            map.insert(key.into(), value.into());
        }
        self
    }

    /// Replaces the details with the given value (usually a `serde_json::json!({...})` object).
    #[must_use]
    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

/// The position of a record in the chain: its sequence number and keyed hash.
///
/// [`Audit::head`](super::Audit::head) returns the head of the last appended record. Keep it
/// somewhere the log's storage cannot be edited from (another system, a ticket, a signed message) and
/// pass it to [`verify`](super::verify) later: that is the only way to notice that records were cut off
/// the end of the log.
///
/// Serializes as `{"seq": 42, "hash": "<64 hex digits>"}`; displays and parses as `42:<64 hex digits>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Sequence number of the record.
    pub seq: u64,
    /// Keyed hash of the record.
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

impl Head {
    /// The position before the first record of a fresh log: sequence 0, all-zero hash.
    ///
    /// [`verify_from(&Head::GENESIS, ..)`](super::verify_from) checks that a log is complete from its
    /// very first record.
    pub const GENESIS: Head = Head {
        seq: 0,
        hash: [0; 32],
    };
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, hex::encode(&self.hash))
    }
}

/// Error parsing a [`Head`] from its `seq:hash` text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseHeadError(());

impl fmt::Display for ParseHeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid audit head: expected `<seq>:<64 hex digits>`")
    }
}

impl std::error::Error for ParseHeadError {}

impl FromStr for Head {
    type Err = ParseHeadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (seq, hash) = s.trim().split_once(':').ok_or(ParseHeadError(()))?;
        Ok(Head {
            seq: seq.parse().map_err(|_| ParseHeadError(()))?,
            hash: hex::decode(hash).ok_or(ParseHeadError(()))?,
        })
    }
}

/// One appended entry of the audit log.
///
/// Records are written by the single writer task of an [`Audit`](super::Audit), which gives them
/// consecutive sequence numbers and chains each to the one before through `prev`. They serialize to
/// JSON with the three hashes as lowercase hex strings and deserialize back to an equal record, so a
/// log kept as JSON lines still [verifies](super::verify).
///
/// ```
/// use palisade_core::audit::AuditRecord;
///
/// let line = r#"{"seq":1,"ts_ms":0,"tenant":null,"kind":"x","details":{},
///   "prev":"0000000000000000000000000000000000000000000000000000000000000000",
///   "checksum":"0000000000000000000000000000000000000000000000000000000000000000",
///   "hash":"0000000000000000000000000000000000000000000000000000000000000000"}"#;
/// let record: AuditRecord = serde_json::from_str(line).unwrap();
/// assert_eq!(serde_json::from_str::<AuditRecord>(&serde_json::to_string(&record).unwrap()).unwrap(), record);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Sequence number: 1 for the first record of a log, then consecutive.
    pub seq: u64,
    /// Wall-clock time of the [`record`](super::Audit::record) call, in milliseconds since the Unix
    /// epoch. Informational: records are ordered by `seq`, and clocks can step backwards.
    pub ts_ms: u64,
    /// The tenant the event concerns, if any.
    #[serde(default)]
    pub tenant: Option<String>,
    /// What happened, e.g. `"breaker.opened"`.
    pub kind: String,
    /// Structured details.
    pub details: Value,
    /// Keyed hash of the previous record ([`Head::hash`]); all zeros before the first record.
    #[serde(with = "hex32")]
    pub prev: [u8; 32],
    /// Unkeyed BLAKE3 hash of the [canonical content](Self::canonical_content): catches accidental
    /// corruption and edits made without recomputing it.
    #[serde(with = "hex32")]
    pub checksum: [u8; 32],
    /// BLAKE3 keyed with the [`AuditKey`] over the [canonical content](Self::canonical_content), which
    /// includes `prev`: the link of the chain. Only the key holder can compute it.
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// The canonical content both hashes are computed over (see the [module docs](super)):
    ///
    /// ```text
    /// "palisade.audit.v1\0"                       18 bytes, domain tag
    /// seq                                         u64 little-endian
    /// ts_ms                                       u64 little-endian
    /// tenant presence                             1 byte: 0 = none, 1 = some
    ///   (if some) tenant length, tenant bytes     u64 LE, UTF-8
    /// kind length, kind bytes                     u64 LE, UTF-8
    /// details length, details bytes               u64 LE, compact JSON (serde_json::to_vec)
    /// prev                                        32 bytes
    /// ```
    pub fn canonical_content(&self) -> Vec<u8> {
        canonical_content(
            self.seq,
            self.ts_ms,
            self.tenant.as_deref(),
            &self.kind,
            &self.details,
            &self.prev,
        )
    }

    /// This record's position in the chain (its `seq` and `hash`).
    pub fn head(&self) -> Head {
        Head {
            seq: self.seq,
            hash: self.hash,
        }
    }

    /// `ts_ms` as RFC 3339 in UTC, e.g. `2026-11-22T15:46:12.345Z`.
    pub fn timestamp(&self) -> String {
        crate::time::rfc3339_ms(self.ts_ms)
    }

    /// Builds a record and computes its checksum and keyed hash.
    pub(crate) fn seal(
        seq: u64,
        ts_ms: u64,
        tenant: Option<String>,
        kind: String,
        mut details: Value,
        prev: [u8; 32],
        key: &AuditKey,
    ) -> AuditRecord {
        normalize_floats(&mut details);
        let content = canonical_content(seq, ts_ms, tenant.as_deref(), &kind, &details, &prev);
        AuditRecord {
            seq,
            ts_ms,
            tenant,
            kind,
            details,
            prev,
            checksum: *blake3::hash(&content).as_bytes(),
            hash: *blake3::keyed_hash(key.as_bytes(), &content).as_bytes(),
        }
    }
}

fn put_len(buf: &mut Vec<u8>, len: usize) {
    buf.extend_from_slice(&(len as u64).to_le_bytes());
}

fn canonical_content(
    seq: u64,
    ts_ms: u64,
    tenant: Option<&str>,
    kind: &str,
    details: &Value,
    prev: &[u8; 32],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        DOMAIN.len() + 8 * 5 + 1 + 32 + tenant.map_or(0, str::len) + kind.len() + 64,
    );
    buf.extend_from_slice(DOMAIN);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&ts_ms.to_le_bytes());
    match tenant {
        None => buf.push(0),
        Some(t) => {
            buf.push(1);
            put_len(&mut buf, t.len());
            buf.extend_from_slice(t.as_bytes());
        }
    }
    put_len(&mut buf, kind.len());
    buf.extend_from_slice(kind.as_bytes());
    // Reserve the length prefix, write the JSON in place, then patch the length.
    let at = buf.len();
    put_len(&mut buf, 0);
    // Serializing a `Value` into a Vec cannot fail: its map keys are strings and the writer is
    // infallible. Were it ever to, writer and verifier would still encode the same bytes.
    let _ = serde_json::to_writer(&mut buf, details);
    let len = (buf.len() - at - 8) as u64;
    buf[at..at + 8].copy_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(prev);
    buf
}

/// Replaces every float in `value` that does not survive a print/parse round trip through this build
/// of `serde_json` by its JSON text, as a string.
///
/// Without serde_json's `float_roundtrip` feature, parsing may land one ULP away from the printed
/// float (about a third of arbitrary `f64`s, none of the short decimals seen in practice), which would
/// make a record read back from JSON fail its checksum. Ordinary values are left untouched.
fn normalize_floats(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let text = n.to_string();
            let survives = match (n.as_f64(), serde_json::from_str::<Value>(&text)) {
                (Some(f), Ok(Value::Number(back))) => {
                    back.is_f64() && back.as_f64().map(f64::to_bits) == Some(f.to_bits())
                }
                _ => false,
            };
            if !survives {
                *value = Value::String(text);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_floats),
        Value::Object(map) => map.values_mut().for_each(normalize_floats),
        _ => {}
    }
}

/// Lowercase hex for 32-byte hashes.
pub(crate) mod hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    /// 64 lowercase hex digits.
    pub(crate) fn encode(bytes: &[u8; 32]) -> String {
        let mut s = String::with_capacity(64);
        for b in bytes {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 0xf)] as char);
        }
        s
    }

    /// Exactly 64 hex digits (either case) to bytes.
    pub(crate) fn decode(s: &str) -> Option<[u8; 32]> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(out)
    }
}

/// `#[serde(with)]` adapter: `[u8; 32]` as a hex string.
pub(crate) mod hex32 {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        super::hex::decode(&s).ok_or_else(|| D::Error::custom("expected 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> AuditKey {
        AuditKey::from_bytes([7; 32])
    }

    #[test]
    fn hex_round_trip() {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(37);
        }
        let s = hex::encode(&b);
        assert_eq!(s.len(), 64);
        assert_eq!(s, s.to_lowercase());
        assert_eq!(hex::decode(&s), Some(b));
        assert_eq!(hex::decode(&s.to_uppercase()), Some(b));
        assert_eq!(hex::decode(&s[..62]), None);
        assert_eq!(hex::decode(&format!("{}zz", &s[..62])), None);
        assert_eq!(hex::encode(&[0xab; 32]), "ab".repeat(32));
    }

    #[test]
    fn canonical_content_layout() {
        let r = AuditRecord::seal(
            3,
            1000,
            Some("t".into()),
            "k.x".into(),
            json!({"b": 1, "a": [true]}),
            [9; 32],
            &key(),
        );
        let c = r.canonical_content();
        let mut expect = b"palisade.audit.v1\0".to_vec();
        expect.extend_from_slice(&3u64.to_le_bytes());
        expect.extend_from_slice(&1000u64.to_le_bytes());
        expect.push(1);
        expect.extend_from_slice(&1u64.to_le_bytes());
        expect.extend_from_slice(b"t");
        expect.extend_from_slice(&3u64.to_le_bytes());
        expect.extend_from_slice(b"k.x");
        let details = br#"{"a":[true],"b":1}"#;
        expect.extend_from_slice(&(details.len() as u64).to_le_bytes());
        expect.extend_from_slice(details);
        expect.extend_from_slice(&[9; 32]);
        assert_eq!(c, expect);
        assert_eq!(r.checksum, *blake3::hash(&expect).as_bytes());
        assert_eq!(r.hash, *blake3::keyed_hash(&[7; 32], &expect).as_bytes());
    }

    #[test]
    fn tenant_presence_is_encoded() {
        let a = AuditRecord::seal(1, 0, None, "k".into(), Value::Null, [0; 32], &key());
        let b = AuditRecord::seal(
            1,
            0,
            Some(String::new()),
            "k".into(),
            Value::Null,
            [0; 32],
            &key(),
        );
        assert_ne!(a.hash, b.hash);
        // Moving bytes between adjacent fields changes the encoding (length prefixes).
        let c = AuditRecord::seal(
            1,
            0,
            Some("ab".into()),
            "c".into(),
            Value::Null,
            [0; 32],
            &key(),
        );
        let d = AuditRecord::seal(
            1,
            0,
            Some("a".into()),
            "bc".into(),
            Value::Null,
            [0; 32],
            &key(),
        );
        assert_ne!(c.hash, d.hash);
    }

    #[test]
    fn hash_is_pinned() {
        // Guards the encoding: changing it breaks every stored log.
        let r = AuditRecord::seal(
            1,
            1_795_362_372_345,
            Some("acme".into()),
            "breaker.opened".into(),
            json!({"failures": 5}),
            [0; 32],
            &key(),
        );
        assert_eq!(hex::encode(&r.hash), PINNED_HASH);
    }

    const PINNED_HASH: &str = "917f00f7a75ec519b3bde7cd74474dcc65a90b700cb42a4a5245ed04087aa3a6";

    #[test]
    fn floats_survive_json() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut floats = vec![Value::from(0.1), Value::from(12.345), Value::from(-0.0)];
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if f.is_finite() {
                floats.push(Value::from(f));
            }
        }
        let r = AuditRecord::seal(
            1,
            0,
            None,
            "k".into(),
            json!({"floats": floats, "plain": 0.5}),
            [0; 32],
            &key(),
        );
        assert_eq!(
            r.details["plain"], 0.5,
            "round-tripping floats are kept as numbers"
        );
        let back: AuditRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            *blake3::hash(&back.canonical_content()).as_bytes(),
            r.checksum
        );
    }

    #[test]
    fn head_text_form() {
        let h = Head {
            seq: 42,
            hash: [0xcd; 32],
        };
        let s = h.to_string();
        assert_eq!(s, format!("42:{}", "cd".repeat(32)));
        assert_eq!(s.parse::<Head>(), Ok(h));
        assert!("42".parse::<Head>().is_err());
        assert!("x:00".parse::<Head>().is_err());
        let j = serde_json::to_value(h).unwrap();
        assert_eq!(j, json!({"seq": 42, "hash": "cd".repeat(32)}));
        assert_eq!(serde_json::from_value::<Head>(j).unwrap(), h);
    }

    #[test]
    fn detail_builds_an_object() {
        let e = AuditEvent::new("k").details(json!(3)).detail("a", 1);
        assert_eq!(e.details, json!({"value": 3, "a": 1}));
        let e = AuditEvent::new("k").details(Value::Null).detail("a", "x");
        assert_eq!(e.details, json!({"a": "x"}));
        assert_eq!(AuditEvent::new("k").details, json!({}));
    }
}
