//! Trusted proxy lists (`TrustedProxies::parse`) and the client address they let
//! `X-Forwarded-For` name: parsing accepts exactly lists of addresses and networks, and the
//! client is the peer itself unless the peer is trusted, and otherwise the peer or one of the
//! addresses the header lists.

use std::net::IpAddr;

use berth::client::TrustedProxies;
use http::{HeaderMap, HeaderValue};

use crate::input;

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    }
}

fn hop(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

pub fn run(data: &[u8]) {
    let parts = input::split(data, 4);
    let Some(list) = input::text(&parts, 0) else {
        return;
    };
    let parsed = TrustedProxies::parse(list);
    let items: Vec<&str> = list
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let valid = items
        .iter()
        .all(|s| s.parse::<ipnet::IpNet>().is_ok() || s.parse::<IpAddr>().is_ok());
    assert_eq!(parsed.is_ok(), valid, "{list:?}");
    let Ok(proxies) = parsed else {
        return;
    };
    assert_eq!(proxies.is_empty(), items.is_empty());

    let peer = input::text(&parts, 1).and_then(|p| p.trim().parse::<IpAddr>().ok());
    let mut headers = HeaderMap::new();
    for i in 2..4 {
        if let Some(value) = parts.get(i).and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.append("x-forwarded-for", value);
        }
    }
    let client = proxies.client(peer, &headers);
    let Some(peer) = peer else {
        assert_eq!(client, None);
        return;
    };
    let client = client.expect("a peer gives a client");
    // The walk the documentation describes: from the right of X-Forwarded-For, past trusted
    // proxies, to the first address that is not one (or the last that can be read).
    let networks: Vec<ipnet::IpNet> = items
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .unwrap_or_else(|_| ipnet::IpNet::from(s.parse::<IpAddr>().unwrap()))
        })
        .collect();
    let trusted = |a: IpAddr| networks.iter().any(|n| n.contains(&a));
    let raw: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut expected = canonical(peer);
    if trusted(expected) {
        for text in raw.iter().rev() {
            let Some(address) = hop(text) else { break };
            expected = address;
            if !trusted(address) {
                break;
            }
        }
    }
    assert_eq!(client, expected, "{list:?} {peer} {headers:?}");
    if !trusted(canonical(peer)) {
        assert_eq!(client, canonical(peer));
    }
    // The answer does not change when asked again.
    assert_eq!(proxies.client(Some(peer), &headers), Some(client));
}
