//! `--addr`: where a client command calls, parsed once at the edge. `host:port`,
//! `[v6]:port`, `http://…` and `https://…` are accepted (no scheme means `http://`);
//! `https://` means TLS, always: never plaintext to an address the user marked as TLS.

use std::fmt;
use std::net::Ipv6Addr;

/// A server address the CLI can reach: HTTP/2 to `host:port`, over TLS or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// A name, an IPv4 address, or an IPv6 address in brackets.
    host: String,
    port: u16,
    /// `https://`.
    pub tls: bool,
}

/// The longest DNS name.
const MAX_HOST: usize = 253;

/// Quotes of longer values are cut to this many characters, so one line stays one line.
const QUOTE_MAX: usize = 64;

impl Addr {
    /// Parses `--addr`; the error is one line naming `--addr` and quoting the value.
    pub fn parse(value: &str) -> Result<Addr, String> {
        let refuse = |why: String| format!("--addr {}: {why}", quote(value));
        let (rest, tls) = match value.split_once("://") {
            None => (value, false),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (rest, false),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (rest, true),
            Some((scheme, _)) => {
                return Err(refuse(format!(
                    "unsupported scheme {}; use host:port, http://host:port or https://host:port",
                    quote(scheme)
                )));
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(i) = authority.find(['/', '?', '#']) {
            return Err(refuse(format!(
                "unexpected path {}; give only host:port",
                quote(&authority[i..])
            )));
        }
        if authority.contains('@') {
            return Err(refuse("user names are not supported; give only host:port".into()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (ip, after) = v6
                .split_once(']')
                .ok_or_else(|| refuse("unclosed '[' in an IPv6 address".into()))?;
            ip.parse::<Ipv6Addr>()
                .map_err(|_| refuse(format!("invalid IPv6 address {}", quote(ip))))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| refuse("missing port, e.g. [::1]:50051".into()))?;
            (&authority[..ip.len() + 2], port)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| refuse("missing port, e.g. 127.0.0.1:50051".into()))?;
            if host.contains(':') {
                return Err(refuse("an IPv6 address needs brackets, e.g. [::1]:50051".into()));
            }
            if host.is_empty() {
                return Err(refuse("empty host".into()));
            }
            if host.len() > MAX_HOST {
                return Err(refuse(format!("host longer than {MAX_HOST} characters")));
            }
            if !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
                return Err(refuse(format!("invalid host {}", quote(host))));
            }
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ if port.is_empty() => return Err(refuse("missing port, e.g. 127.0.0.1:50051".into())),
            _ => return Err(refuse(format!("invalid port {} (1 to 65535)", quote(port)))),
        };
        Ok(Addr {
            host: host.to_string(),
            port,
            tls,
        })
    }

    /// The URI to connect to.
    pub fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{self}")
    }

    /// The host, as TLS checks the server's certificate against it (no brackets).
    pub fn host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `value` in double quotes (escaped), cut to [`QUOTE_MAX`] characters.
fn quote(value: &str) -> String {
    if value.chars().count() <= QUOTE_MAX {
        return format!("{value:?}");
    }
    let cut: String = value.chars().take(QUOTE_MAX - 1).collect();
    format!("{:?}", cut + "…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn ok(value: &str, uri: &str) {
        assert_eq!(Addr::parse(value).map(|a| a.uri()), Ok(uri.to_string()), "{value}");
    }

    #[track_caller]
    fn refused(value: &str, why: &str) -> String {
        let e = Addr::parse(value).expect_err(value);
        assert!(e.starts_with("--addr \""), "{e}");
        assert!(e.contains(why), "{value}: {e}");
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn no_scheme_means_http() {
        ok("127.0.0.1:50051", "http://127.0.0.1:50051");
        ok("localhost:7", "http://localhost:7");
        ok("baton-1.internal:443", "http://baton-1.internal:443");
        ok("[::1]:50051", "http://[::1]:50051");
    }

    #[test]
    fn http_is_accepted_with_or_without_a_slash() {
        ok("http://127.0.0.1:50051", "http://127.0.0.1:50051");
        ok("HTTP://127.0.0.1:50051/", "http://127.0.0.1:50051");
        ok("http://[::1]:1", "http://[::1]:1");
    }

    #[test]
    fn https_means_tls() {
        ok("https://baton.example.com:443", "https://baton.example.com:443");
        ok("HTTPS://127.0.0.1:50051/", "https://127.0.0.1:50051");
        assert!(Addr::parse("https://[::1]:1").unwrap().tls);
        assert_eq!(Addr::parse("https://[::1]:1").unwrap().host(), "::1");
        assert!(!Addr::parse("127.0.0.1:1").unwrap().tls);
    }

    #[test]
    fn other_schemes_hosts_and_ports_are_refused_with_a_reason() {
        refused("grpc://127.0.0.1:1", "unsupported scheme \"grpc\"");
        refused("://127.0.0.1:1", "unsupported scheme \"\"");
        refused("http://:50051", "empty host");
        refused(":50051", "empty host");
        refused("localhost", "missing port");
        refused("http://localhost", "missing port");
        refused("localhost:", "missing port");
        refused("[::1]", "missing port");
        refused("localhost:99999", "invalid port \"99999\"");
        refused("localhost:0", "invalid port \"0\"");
        refused("localhost:http", "invalid port \"http\"");
        refused("::1:50051", "needs brackets");
        refused("[::1:50051", "unclosed");
        refused("[nope]:1", "invalid IPv6 address");
        refused("http://h:1/v1", "unexpected path \"/v1\"");
        refused("user@h:1", "user names");
        refused("bad host:1", "invalid host \"bad host\"");
        refused(&format!("{}:1", "h".repeat(254)), "host longer than 253");
        refused("", "missing port");
    }

    #[test]
    fn long_values_are_quoted_short() {
        let e = refused(&format!("ftp://{}:1", "h".repeat(500)), "unsupported scheme");
        assert!(e.chars().count() < 160, "{e}");
        assert!(e.contains('…'), "{e}");
        assert_eq!(quote(&"a".repeat(QUOTE_MAX)), format!("\"{}\"", "a".repeat(QUOTE_MAX)));
    }
}
