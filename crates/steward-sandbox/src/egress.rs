//! The sandbox's only way out: an HTTP proxy outside it, reached through a Unix socket bound
//! into the sandbox, that checks every connection against the sandbox's allow-list. Inside,
//! the namespace's init relays `127.0.0.1:3128` to that socket and the command is given
//! `HTTP_PROXY`/`HTTPS_PROXY`; there is no other route (the network namespace has only
//! loopback). A name is resolved here, once, and every rule is checked against the address
//! actually connected to: whatever the list says, the proxy never connects to loopback,
//! link-local, unspecified, multicast or broadcast addresses, nor to any address of this host
//! (where Steward's own API listens), and reaches private ranges (RFC 1918, CGNAT, IPv6 ULA)
//! only when the server's `sandbox.egress_private` setting allows them. Every attempt, allowed,
//! denied or malformed, is reported to the caller (for the audit log).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// Where the relay listens inside the sandbox.
pub const INSIDE_PROXY: &str = "127.0.0.1:3128";
/// Where the proxy's socket is mounted inside the sandbox.
pub const INSIDE_SOCKET: &str = "/run/egress.sock";

/// One allow-list entry: `host:port` (`*` for any port; `*.example.com` for its subdomains),
/// or a CIDR block (`10.0.0.0/8`, optionally `:port`).
#[derive(Clone, Debug, PartialEq)]
enum Rule {
    Host {
        host: String,
        port: Option<u16>,
    },
    Net {
        net: IpAddr,
        bits: u8,
        port: Option<u16>,
    },
}

/// What a sandbox may connect to.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    rules: Vec<Rule>,
    /// Whether private ranges may be reached at all (a server setting, not the list's).
    pub private: bool,
}

/// Why an address may never be reached, whatever a list says; `None` when it may.
pub fn forbidden(ip: IpAddr, private_allowed: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            // NAT64 (64:ff9b::/96) carries an IPv4 address too.
            None if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
                let o = v6.octets();
                IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            }
            None => ip,
        },
        v4 => v4,
    };
    let private = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() || o[0] == 0 {
                return Some("loopback or unspecified");
            }
            if v4.is_link_local() {
                return Some("link-local");
            }
            if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                return Some("multicast, broadcast or reserved");
            }
            v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() || v6.is_unspecified() {
                return Some("loopback or unspecified");
            }
            if (s[0] & 0xffc0) == 0xfe80 {
                return Some("link-local");
            }
            if v6.is_multicast() {
                return Some("multicast");
            }
            (s[0] & 0xfe00) == 0xfc00
        }
    };
    if private && !private_allowed {
        return Some("a private range (sandbox.egress_private is off)");
    }
    // An address this host holds: where Steward itself (and every local service) listens.
    if std::net::UdpSocket::bind((ip, 0)).is_ok() {
        return Some("an address of this host");
    }
    None
}

fn port_of(p: &str) -> Result<Option<u16>, String> {
    if p == "*" {
        return Ok(None);
    }
    p.parse::<u16>()
        .map(Some)
        .map_err(|_| format!("{p:?} is not a port"))
}

impl AllowList {
    /// Parses entries, naming the first that is not one.
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let mut rules = Vec::new();
        for e in entries {
            let bad = |why: String| format!("egress entry {e:?}: {why}");
            let rule = if let Some((net, rest)) = e.split_once('/') {
                let (bits, port) = match rest.split_once(':') {
                    Some((b, p)) => (b, port_of(p).map_err(bad)?),
                    None => (rest, None),
                };
                let net: IpAddr = net.parse().map_err(|_| bad("not an address".into()))?;
                let bits: u8 = bits
                    .parse()
                    .map_err(|_| bad("not a prefix length".into()))?;
                if bits > if net.is_ipv4() { 32 } else { 128 } {
                    return Err(bad("prefix too long".into()));
                }
                Rule::Net { net, bits, port }
            } else {
                let (host, port) = e
                    .rsplit_once(':')
                    .ok_or_else(|| bad("host:port or a CIDR block".into()))?;
                if host.is_empty() || host.len() > 253 {
                    return Err(bad("no host".into()));
                }
                Rule::Host {
                    host: host.to_ascii_lowercase(),
                    port: port_of(port).map_err(bad)?,
                }
            };
            rules.push(rule);
        }
        Ok(AllowList {
            rules,
            private: false,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `host` (as asked) resolved to `addr` may be reached.
    fn allows(&self, host: &str, addr: &SocketAddr) -> bool {
        let host = host.to_ascii_lowercase();
        self.rules.iter().any(|r| match r {
            Rule::Host { host: h, port } => {
                let name = match h.strip_prefix("*.") {
                    Some(suffix) => host.ends_with(&format!(".{suffix}")),
                    None => *h == host || h.parse::<IpAddr>().is_ok_and(|ip| ip == addr.ip()),
                };
                name && port.is_none_or(|p| p == addr.port())
            }
            Rule::Net { net, bits, port } => {
                in_net(addr.ip(), *net, *bits) && port.is_none_or(|p| p == addr.port())
            }
        })
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// One connection the sandbox asked for.
#[derive(Clone, Debug)]
pub struct EgressEvent {
    /// `host:port` as asked.
    pub target: String,
    /// The address it resolved to, when it did.
    pub address: Option<SocketAddr>,
    pub allowed: bool,
    /// Why it was denied or failed.
    pub reason: Option<String>,
}

pub type Reporter = Arc<dyn Fn(EgressEvent) + Send + Sync>;

/// The proxy for one sandbox; stops (and removes its socket) when dropped.
pub struct EgressProxy {
    pub socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Longest request head read from the sandbox.
const MAX_HEAD: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request head may take to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

impl EgressProxy {
    pub fn start(socket: PathBuf, allow: AllowList, report: Reporter) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        let allow = Arc::new(allow);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (allow, report) = (allow.clone(), report.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &allow, &report).await;
                });
            }
        });
        Ok(EgressProxy { socket, task })
    }
}

async fn serve(mut conn: UnixStream, allow: &AllowList, report: &Reporter) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    // A malformed attempt is audited too, under what it asked for as far as it could be read.
    let malformed = |target: String, why: &str| EgressEvent {
        target,
        address: None,
        allowed: false,
        reason: Some(format!("malformed: {why}")),
    };
    let end = loop {
        let n = match tokio::time::timeout(HEAD_TIMEOUT, conn.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                report(malformed(String::new(), "no request head in time"));
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEAD {
            report(malformed(String::new(), "request head too large"));
            return refuse(&mut conn, 431, "request head too large").await;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_string();
    let first = text.lines().next().unwrap_or_default().to_string();
    let mut parts = first.split_whitespace();
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let asked: String = target.chars().take(300).collect();
    // CONNECT host:port, or a plain-HTTP request in absolute form.
    let (authority, rewritten) = if method.eq_ignore_ascii_case("CONNECT") {
        (target.to_string(), None)
    } else if let Some(rest) = target.strip_prefix("http://") {
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let auth = if auth.contains(':') && !auth.ends_with(']') {
            auth.to_string()
        } else {
            format!("{auth}:80")
        };
        let line = format!("{method} {path} {version}");
        let mut h = text.replacen(&first, &line, 1).into_bytes();
        h.extend_from_slice(&head[end..]);
        (auth, Some(h))
    } else {
        report(malformed(
            asked,
            "only CONNECT and absolute http:// requests",
        ));
        return refuse(&mut conn, 400, "only CONNECT and absolute http:// requests").await;
    };
    let Some((host, port)) = authority.rsplit_once(':') else {
        report(malformed(asked, "no port"));
        return refuse(&mut conn, 400, "no port").await;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let Ok(port) = port.parse::<u16>() else {
        report(malformed(asked, "bad port"));
        return refuse(&mut conn, 400, "bad port").await;
    };
    if host.is_empty() || host.len() > 253 || host.contains(['@', '/', ' ', '%']) {
        report(malformed(asked, "bad host"));
        return refuse(&mut conn, 400, "bad host").await;
    }
    let event = |address, allowed, reason: Option<String>| EgressEvent {
        target: authority.clone(),
        address,
        allowed,
        reason,
    };
    let addresses: Vec<SocketAddr> = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => Vec::new(),
    };
    if addresses.is_empty() {
        report(event(None, false, Some("does not resolve".into())));
        return refuse(&mut conn, 502, "the name does not resolve").await;
    }
    // The first address the list allows and that may be reached at all: the one connected to.
    let mut why = "not on the sandbox's egress allow-list".to_string();
    let mut chosen = None;
    for a in &addresses {
        if !allow.allows(&host, a) {
            continue;
        }
        match forbidden(a.ip(), allow.private) {
            Some(w) => why = format!("{w}: never reachable from a sandbox"),
            None => {
                chosen = Some(*a);
                break;
            }
        }
    }
    let Some(address) = chosen else {
        report(event(Some(addresses[0]), false, Some(why.clone())));
        return refuse(&mut conn, 403, &why).await;
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            report(event(Some(address), true, Some(format!("connect: {e}"))));
            return refuse(&mut conn, 502, "cannot connect").await;
        }
        Err(_) => {
            report(event(Some(address), true, Some("connect timed out".into())));
            return refuse(&mut conn, 504, "connect timed out").await;
        }
    };
    report(event(Some(address), true, None));
    let mut upstream = upstream;
    match rewritten {
        None => {
            conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await?;
            // Bytes the client sent after the CONNECT head belong to the tunnel.
            if head.len() > end {
                upstream.write_all(&head[end..]).await?;
            }
        }
        Some(h) => upstream.write_all(&h).await?,
    }
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
    Ok(())
}

async fn refuse(conn: &mut UnixStream, status: u16, why: &str) -> std::io::Result<()> {
    let body = format!("steward egress: {why}\n");
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        _ => "Gateway Timeout",
    };
    conn.write_all(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn some_addresses_are_never_reachable() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for never in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.169.254",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(forbidden(ip(never), true).is_some(), "{never}");
        }
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(forbidden(ip(private), false).is_some(), "{private}");
        }
        // Public addresses are left to the list (an address this host holds aside).
        assert_eq!(forbidden(ip("93.184.216.34"), false), None);
        assert_eq!(forbidden(ip("2606:4700::1111"), false), None);
    }

    #[test]
    fn entries_match_hosts_ports_and_blocks() {
        let a = AllowList::parse(&[
            "api.example.com:443".into(),
            "*.pypi.org:*".into(),
            "10.0.0.0/8".into(),
            "192.168.1.0/24:22".into(),
        ])
        .unwrap();
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(a.allows("api.example.com", &at("1.2.3.4:443")));
        assert!(!a.allows("api.example.com", &at("1.2.3.4:80")));
        assert!(a.allows("files.pypi.org", &at("5.6.7.8:80")));
        assert!(!a.allows("pypi.org.evil.com", &at("5.6.7.8:80")));
        assert!(a.allows("anything", &at("10.9.8.7:1234")));
        assert!(a.allows("x", &at("192.168.1.9:22")));
        assert!(!a.allows("x", &at("192.168.1.9:23")));
        assert!(!a.allows("x", &at("127.0.0.1:443")));
        for bad in ["nope", "host:99999", "1.2.3.4/33", "x/8"] {
            assert!(AllowList::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
