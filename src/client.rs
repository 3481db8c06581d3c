//! Who a request comes from: its peer address, or, behind load balancers the operator trusts,
//! the client they name in `X-Forwarded-For` (anyone else could write any address there).
//! The access log, rate limits and address-based access rules all ask the same question, so
//! it is answered once, here, below both the HTTP layer and access control.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use http::HeaderMap;

const FORWARDED_FOR_HEADER: &str = "x-forwarded-for";

/// Networks whose `X-Forwarded-For` and `X-Request-Id` are believed: the load balancers and
/// ingress controllers in front of Berth.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Arc<Vec<ipnet::IpNet>>);

/// A network in [`TrustedProxies::parse`]'s list that is not an address or CIDR range.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IP address or network (CIDR, like 10.0.0.0/8)")]
pub struct InvalidNetwork(String);

impl TrustedProxies {
    /// The networks in a comma- or space-separated list of addresses and CIDR ranges.
    pub fn parse(list: &str) -> Result<TrustedProxies, InvalidNetwork> {
        let networks = list
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| InvalidNetwork(s.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies(Arc::new(networks)))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client a request comes from: its peer, or, when the peer is a trusted proxy, the
    /// last address in `X-Forwarded-For` that is not (proxies append the address they
    /// received from, so the addresses to the right of the client's were written by proxies).
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer.map(canonical)?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut client = peer;
        let hops = headers
            .get_all(FORWARDED_FOR_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Some(address) = parse_hop(hop) else {
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        Some(client)
    }
}

/// An address of `X-Forwarded-For`, which some proxies write with a port or brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

/// IPv4 addresses seen through an IPv6 socket (`::ffff:a.b.c.d`) as the IPv4 they are.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The client address the HTTP layer resolved ([`crate::http::observed`]), in the request's
/// extensions.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub IpAddr);

/// The peer address of a request served by [`crate::http::serve_with`], if it has one.
pub fn peer_address<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// The client address a request comes from: as the HTTP layer resolved it (the client behind
/// trusted proxies, in [`ClientAddress`]), else its peer address.
pub fn client_address<B>(request: &http::Request<B>) -> Option<IpAddr> {
    match request.extensions().get::<ClientAddress>() {
        Some(client) => Some(client.0),
        None => peer_address(request).map(|a| a.ip()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(FORWARDED_FOR_HEADER, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let headers = forwarded("1.2.3.4");
        assert_eq!(
            proxies.client(Some(ip("192.0.2.7")), &headers),
            Some(ip("192.0.2.7"))
        );
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(Some(ip("10.0.0.1")), &headers),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn the_client_is_the_last_untrusted_hop() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        let headers = forwarded("6.6.6.6, 203.0.113.9, 192.168.1.1");
        assert_eq!(
            proxies.client(Some(ip("10.1.2.3")), &headers),
            Some(ip("203.0.113.9"))
        );
        // Ports and brackets, as some proxies write them; mapped IPv4 peers.
        let headers = forwarded("[2001:db8::1]:4711");
        assert_eq!(
            proxies.client(Some(ip("::ffff:10.0.0.5")), &headers),
            Some(ip("2001:db8::1"))
        );
        // Only proxies: the leftmost.
        let headers = forwarded("10.9.9.9");
        assert_eq!(
            proxies.client(Some(ip("10.0.0.1")), &headers),
            Some(ip("10.9.9.9"))
        );
        // Garbage stops the walk at the last good address.
        let headers = forwarded("not-an-address, 198.51.100.1");
        assert_eq!(
            proxies.client(Some(ip("10.0.0.1")), &headers),
            Some(ip("198.51.100.1"))
        );
        let headers = forwarded("198.51.100.1, garbage");
        assert_eq!(
            proxies.client(Some(ip("10.0.0.1")), &headers),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn networks_must_parse() {
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/8,fd00::/8 127.0.0.1").is_ok());
        let e = TrustedProxies::parse("10.0.0.0/8,example.com").unwrap_err();
        assert!(e.to_string().contains("example.com"), "{e}");
    }
}
