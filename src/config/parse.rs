//! `#[serde(deserialize_with)]` helpers for values written as strings and parsed with `FromStr`
//! (levels, priorities, header names, methods), and the small newtypes the schema needs.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::de::{self, Deserialize, Deserializer, Visitor};

struct FromStrVisitor<T>(PhantomData<T>);

impl<T> Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        parse_str(v).map_err(E::custom)
    }
}

fn parse_str<T>(v: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    T::from_str(v).map_err(|e| {
        let shown: String = v.chars().take(64).flat_map(char::escape_debug).collect();
        format!("\"{shown}\": {e}")
    })
}

/// A required value parsed from a string.
pub(crate) fn required<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    d.deserialize_str(FromStrVisitor(PhantomData))
}

/// An optional value parsed from a string (use with `#[serde(default)]`).
pub(crate) fn optional<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    required(d).map(Some)
}

/// A list of strings, each parsed (use with `#[serde(default)]`).
pub(crate) fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .enumerate()
        .map(|(i, s)| parse_str(s).map_err(|e| de::Error::custom(format!("item {i}: {e}"))))
        .collect()
}

/// An optional list of strings, each parsed (use with `#[serde(default)]`).
pub(crate) fn optional_list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    list(d).map(Some)
}

/// A table of strings, each value parsed (use with `#[serde(default)]`).
pub(crate) fn map_values<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let parsed = parse_str(&v)
                .map_err(|e| de::Error::custom(format!("`{}`: {e}", k.escape_debug())))?;
            Ok((k, parsed))
        })
        .collect()
}

/// A table of header names to header values (use with `#[serde(default)]`).
pub(crate) fn headers<'de, D>(d: D) -> Result<Vec<(HeaderName, HeaderValue)>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let name: HeaderName = parse_str(&k).map_err(de::Error::custom)?;
            let value = HeaderValue::from_str(&v).map_err(|_| {
                de::Error::custom(format!(
                    "header `{name}`: the value must be visible ASCII or spaces"
                ))
            })?;
            Ok((name, value))
        })
        .collect()
}

/// An HTTP status code written as an integer.
pub(crate) fn status<'de, D>(d: D) -> Result<StatusCode, D::Error>
where
    D: Deserializer<'de>,
{
    let n = u16::deserialize(d)?;
    match StatusCode::from_u16(n) {
        Ok(s) => Ok(s),
        Err(_) => Err(de::Error::custom(format!(
            "{n} is not an HTTP status (100 to 999)"
        ))),
    }
}

/// A list of HTTP status codes written as integers (use with `#[serde(default)]`).
pub(crate) fn statuses<'de, D>(d: D) -> Result<Vec<StatusCode>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = Vec::<u16>::deserialize(d)?;
    raw.into_iter()
        .map(|n| {
            StatusCode::from_u16(n)
                .map_err(|_| de::Error::custom(format!("{n} is not an HTTP status (100 to 999)")))
        })
        .collect()
}

/// A tenant, as the tenant header carries it: visible ASCII, matched byte for byte.
///
/// Parsed from a config key such as `[server.rate_limit.tenants] acme = "gold"`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantId(HeaderValue);

impl TenantId {
    /// `id` as a tenant: 1 to 255 visible ASCII characters (what a tenant header can carry).
    ///
    /// # Errors
    ///
    /// `id` is empty, too long, or not visible ASCII.
    pub fn new(id: &str) -> Result<Self, String> {
        let ok =
            !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| (0x21..=0x7E).contains(&b));
        if !ok {
            return Err(format!(
                "tenant \"{}\" is not 1 to 255 visible ASCII characters",
                id.chars()
                    .take(64)
                    .flat_map(char::escape_debug)
                    .collect::<String>()
            ));
        }
        HeaderValue::from_str(id)
            .map(TenantId)
            .map_err(|e| format!("tenant \"{id}\": {e}"))
    }

    /// The tenant as the header value a request carries (the key the layers match by).
    pub fn as_header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The tenant as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is accepted by `new`.
        self.0.to_str().unwrap_or_default()
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialOrd for TenantId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TenantId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl FromStr for TenantId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TenantId::new(s)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::new(&s).map_err(de::Error::custom)
    }
}

/// A secret read from the config (e.g. the idempotency hashing secret). Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret, as written.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}
