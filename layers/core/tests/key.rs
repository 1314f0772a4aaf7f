//! Key extraction: every extractor returns the right key or a clear error, and never panics.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderName, HeaderValue, Request};
use palisade_core::error::Rejection;
use palisade_core::key::{
    key_fn, ClientIp, ExtensionKey, HeaderKey, IpNet, KeyError, KeyErrorKind, KeyExtractor,
    PeerAddr, PeerIp,
};

fn req_from(peer: &str, xff: &[&str]) -> Request<()> {
    let mut b = Request::get("/");
    for v in xff {
        b = b.header("x-forwarded-for", *v);
    }
    let mut req = b.body(()).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(PeerAddr(peer));
    req
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn header_key_reads_the_value() {
    let k = HeaderKey::from_static("x-tenant-id");
    let req = Request::get("/")
        .header("x-tenant-id", "acme-42")
        .body(())
        .unwrap();
    assert_eq!(
        k.extract(&req).unwrap(),
        HeaderValue::from_static("acme-42")
    );
}

#[test]
fn header_key_missing_is_a_clear_error() {
    let k = HeaderKey::from_static("x-tenant-id");
    let err = k.extract(&Request::get("/").body(()).unwrap()).unwrap_err();
    assert_eq!(err.kind(), &KeyErrorKind::Missing);
    assert_eq!(
        err.to_string(),
        "missing key: header `x-tenant-id` is not present"
    );
    // A key error is a rejection the rescue layer answers with 400.
    let boxed: palisade_core::BoxError = err.into();
    assert_eq!(Rejection::find(&*boxed).unwrap().http_status(), 400);
}

#[test]
fn header_key_oversized_is_refused() {
    let k = HeaderKey::from_static("x-tenant-id").max_len(8);
    let ok = Request::get("/")
        .header("x-tenant-id", "12345678")
        .body(())
        .unwrap();
    assert!(k.extract(&ok).is_ok());
    let long = Request::get("/")
        .header("x-tenant-id", "123456789")
        .body(())
        .unwrap();
    let err = k.extract(&long).unwrap_err();
    assert_eq!(err.kind(), &KeyErrorKind::TooLong { len: 9, max: 8 });
    assert!(
        err.to_string().contains("9 bytes, over the limit of 8"),
        "{err}"
    );

    // The default limit holds too: a 10 KiB key is refused, not stored.
    let huge = "a".repeat(10 * 1024);
    let req = Request::get("/")
        .header("x-tenant-id", huge.as_str())
        .body(())
        .unwrap();
    let err = HeaderKey::from_static("x-tenant-id")
        .extract(&req)
        .unwrap_err();
    assert!(matches!(err.kind(), KeyErrorKind::TooLong { max: 128, .. }));
}

#[test]
fn header_key_non_ascii_and_invisible_bytes_are_refused() {
    let k = HeaderKey::from_static("x-tenant-id");
    for bad in [&b"caf\xc3\xa9"[..], b"a b", b"tab\there", b"\xff\xfe"] {
        let mut req = Request::get("/").body(()).unwrap();
        req.headers_mut().insert(
            HeaderName::from_static("x-tenant-id"),
            HeaderValue::from_bytes(bad).unwrap(),
        );
        let err = k.extract(&req).unwrap_err();
        assert!(
            matches!(err.kind(), KeyErrorKind::Invalid(r) if r.contains("visible ASCII")),
            "{bad:?}: {err}"
        );
    }
    let mut req = Request::get("/").body(()).unwrap();
    req.headers_mut()
        .insert("x-tenant-id", HeaderValue::from_static(""));
    assert!(
        matches!(k.extract(&req).unwrap_err().kind(), KeyErrorKind::Invalid(r) if r == "is empty")
    );
}

#[test]
fn header_key_refuses_duplicates() {
    let k = HeaderKey::from_static("x-tenant-id");
    let req = Request::get("/")
        .header("x-tenant-id", "acme")
        .header("x-tenant-id", "globex")
        .body(())
        .unwrap();
    let err = k.extract(&req).unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UserId(u64);

#[test]
fn extension_key() {
    let k = ExtensionKey::<UserId>::new();
    let mut req = Request::get("/").body(()).unwrap();
    let err = k.extract(&req).unwrap_err();
    assert_eq!(err.kind(), &KeyErrorKind::Missing);
    assert!(err.to_string().contains("UserId"), "{err}");
    req.extensions_mut().insert(UserId(7));
    assert_eq!(k.extract(&req).unwrap(), UserId(7));
}

#[test]
fn peer_ip_from_extensions() {
    let req = req_from("192.0.2.10:4000", &[]);
    assert_eq!(PeerIp.extract(&req).unwrap(), ip("192.0.2.10"));

    // A bare SocketAddr extension works too.
    let mut req = Request::get("/").body(()).unwrap();
    req.extensions_mut()
        .insert("[2001:db8::5]:443".parse::<SocketAddr>().unwrap());
    assert_eq!(PeerIp.extract(&req).unwrap(), ip("2001:db8::5"));

    // IPv4-mapped IPv6 (a dual-stack listener) is the IPv4 client.
    let req = req_from("[::ffff:198.51.100.1]:80", &[]);
    assert_eq!(PeerIp.extract(&req).unwrap(), ip("198.51.100.1"));

    let err = PeerIp
        .extract(&Request::get("/").body(()).unwrap())
        .unwrap_err();
    assert_eq!(err.to_string(), "missing key: peer address is not present");
}

#[cfg(feature = "axum")]
#[test]
fn peer_ip_from_axum_connect_info() {
    let mut req = Request::get("/").body(()).unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(
        "203.0.113.9:1234".parse::<SocketAddr>().unwrap(),
    ));
    assert_eq!(PeerIp.extract(&req).unwrap(), ip("203.0.113.9"));
}

#[test]
fn spoofed_xff_from_an_untrusted_peer_is_ignored() {
    let k = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
    // The client connects directly and claims to be someone else.
    let req = req_from("198.51.100.7:5555", &["1.2.3.4"]);
    assert_eq!(k.extract(&req).unwrap(), ip("198.51.100.7"));
    // Even garbage in the header does not matter when the peer is not trusted.
    let req = req_from("198.51.100.7:5555", &["not an ip, <script>"]);
    assert_eq!(k.extract(&req).unwrap(), ip("198.51.100.7"));
}

#[test]
fn walks_a_chain_of_trusted_proxies_from_the_right() {
    let k = ClientIp::trusting(["10.0.0.0/8", "192.168.1.1"]).unwrap();
    // client 203.0.113.5 -> 192.168.1.1 -> 10.1.1.1 -> us (peer 10.0.0.2).
    // The client prepended a spoofed hop; it is left of the real client and never reached.
    let req = req_from(
        "10.0.0.2:1",
        &["6.6.6.6, 203.0.113.5, 192.168.1.1", "10.1.1.1"],
    );
    assert_eq!(k.extract(&req).unwrap(), ip("203.0.113.5"));

    // A trusted peer without the header: the peer is the client.
    let req = req_from("10.0.0.2:1", &[]);
    assert_eq!(k.extract(&req).unwrap(), ip("10.0.0.2"));

    // Every hop trusted: the leftmost.
    let req = req_from("10.0.0.2:1", &["10.9.9.9, 10.1.1.1"]);
    assert_eq!(k.extract(&req).unwrap(), ip("10.9.9.9"));

    // Hops with ports and spaces.
    let req = req_from("10.0.0.2:1", &[" 203.0.113.5:6000 ,10.1.1.1:443 "]);
    assert_eq!(k.extract(&req).unwrap(), ip("203.0.113.5"));
}

#[test]
fn ipv6_proxies_and_clients() {
    let k = ClientIp::trusting(["fd00::/8", "::1"]).unwrap();
    let req = req_from("[::1]:8080", &["2001:db8::42, fd00::1"]);
    assert_eq!(k.extract(&req).unwrap(), ip("2001:db8::42"));
    let req = req_from("[fd12::3]:8080", &["[2001:db8::43]:9000"]);
    assert_eq!(k.extract(&req).unwrap(), ip("2001:db8::43"));
    // Mapped addresses are compared as IPv4.
    let k4 = ClientIp::trusting(["127.0.0.1"]).unwrap();
    let req = req_from("[::ffff:127.0.0.1]:80", &["2001:db8::44"]);
    assert_eq!(k4.extract(&req).unwrap(), ip("2001:db8::44"));
}

#[test]
fn malformed_and_overlong_chains_are_errors() {
    let k = ClientIp::trusting(["10.0.0.0/8"]).unwrap().max_hops(4);
    let req = req_from("10.0.0.2:1", &["unknown"]);
    let err = k.extract(&req).unwrap_err();
    assert!(err.to_string().contains("not an IP address"), "{err}");

    let req = req_from("10.0.0.2:1", &["1.2.3.4:99999"]);
    assert!(k.extract(&req).is_err());

    let long = ["10.0.0.9"; 5].join(",");
    let req = req_from("10.0.0.2:1", &[long.as_str()]);
    let err = k.extract(&req).unwrap_err();
    assert!(err.to_string().contains("more than 4 hops"), "{err}");

    let mut req = req_from("10.0.0.2:1", &[]);
    req.headers_mut().insert(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"\xff1.2.3.4").unwrap(),
    );
    assert!(k.extract(&req).is_err());

    // No peer address at all.
    assert_eq!(
        k.extract(&Request::get("/").body(()).unwrap())
            .unwrap_err()
            .kind(),
        &KeyErrorKind::Missing
    );
}

#[test]
fn cidr_parsing() {
    let net: IpNet = "10.1.2.3/8".parse().unwrap();
    assert!(net.contains(ip("10.255.0.1")));
    assert!(!net.contains(ip("11.0.0.1")));
    assert!(!net.contains(ip("::1")));
    let any: IpNet = "0.0.0.0/0".parse().unwrap();
    assert!(any.contains(ip("8.8.8.8")));
    let v6: IpNet = "2001:db8::/32".parse().unwrap();
    assert!(v6.contains(ip("2001:db8:ffff::1")));
    assert!(!v6.contains(ip("2001:db9::1")));
    for bad in [
        "10.0.0.0/33",
        "::/129",
        "banana",
        "10.0.0.0/x",
        "",
        "10.0.0/8",
    ] {
        let err = ClientIp::trusting([bad]).unwrap_err();
        assert!(!err.to_string().is_empty(), "{bad}");
    }
}

#[test]
fn closures_are_extractors() {
    let k = key_fn(|req: &Request<()>| {
        req.uri()
            .query()
            .and_then(|q| q.strip_prefix("tenant="))
            .map(str::to_owned)
            .ok_or_else(|| KeyError::invalid("query", "has no tenant"))
    });
    let req = Request::get("/x?tenant=acme").body(()).unwrap();
    assert_eq!(k.extract(&req).unwrap(), "acme");
    let err = k
        .extract(&Request::get("/x").body(()).unwrap())
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid key: query has no tenant");
}

fn with_raw_xff(peer: &str, values: &[&[u8]]) -> Request<()> {
    let mut req = req_from(peer, &[]);
    for v in values {
        req.headers_mut()
            .append("x-forwarded-for", HeaderValue::from_bytes(v).unwrap());
    }
    req
}

#[test]
fn bytes_left_of_the_client_hop_never_decide_the_key() {
    // Issue 12, item 1: the client's own part of the header (left of the hop the walk stops at) may hold
    // anything; the key is still the first untrusted hop from the right.
    let k = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
    for raw in [
        &b"\xff, 203.0.113.7"[..],
        b"\tgarbage\x80, 203.0.113.7",
        b"not-an-ip, also bad, 203.0.113.7",
        b"\xc3\xa9\xff\xfe,203.0.113.7, 10.1.2.3",
    ] {
        let req = with_raw_xff("10.0.0.1:5000", &[raw]);
        assert_eq!(
            k.extract(&req).unwrap(),
            ip("203.0.113.7"),
            "{}",
            raw.escape_ascii()
        );
    }
    // Also across several header lines: an unreadable earlier line is never reached.
    let req = with_raw_xff("10.0.0.1:5000", &[b"\xff\xfe", b"203.0.113.7"]);
    assert_eq!(k.extract(&req).unwrap(), ip("203.0.113.7"));
    // Hops beyond the client's do not count toward max_hops either.
    let k2 = ClientIp::trusting(["10.0.0.0/8"]).unwrap().max_hops(2);
    let many = format!("{}203.0.113.7, 10.9.9.9", "1.1.1.1, ".repeat(20));
    let req = with_raw_xff("10.0.0.1:5000", &[many.as_bytes()]);
    assert_eq!(k2.extract(&req).unwrap(), ip("203.0.113.7"));
}

#[test]
fn a_malformed_hop_the_walk_reaches_is_still_an_invalid_key() {
    let k = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
    // The hop the trusted proxy appended is unreadable: refused as malformed, never guessed past.
    for raw in [
        &b"203.0.113.7, \xff"[..],
        b"203.0.113.7, 10.0.0.5, 1.2.3\x80.4",
    ] {
        let req = with_raw_xff("10.0.0.1:5000", &[raw]);
        let err = k.extract(&req).unwrap_err();
        assert!(!err.is_missing(), "{err}");
        assert!(err.to_string().contains("not an IP address"), "{err}");
    }
}

#[test]
fn missing_and_malformed_are_told_apart() {
    use palisade_core::key::MalformedKey;
    let tenant = HeaderKey::from_static("x-tenant-id").max_len(8);
    let missing = tenant
        .extract(&Request::get("/").body(()).unwrap())
        .unwrap_err();
    assert!(missing.is_missing());
    let twice = Request::get("/")
        .header("x-tenant-id", "a")
        .header("x-tenant-id", "b")
        .body(())
        .unwrap();
    let long = Request::get("/")
        .header("x-tenant-id", "abcdefghi")
        .body(())
        .unwrap();
    let empty = Request::get("/")
        .header("x-tenant-id", "")
        .body(())
        .unwrap();
    for req in [twice, long, empty] {
        let err = tenant.extract(&req).unwrap_err();
        assert!(!err.is_missing(), "{err}");
        assert!(!MalformedKey::default().as_missing(&err));
        assert!(MalformedKey::AsMissing.as_missing(&err));
    }
    assert!(MalformedKey::Reject.as_missing(&missing));
}
