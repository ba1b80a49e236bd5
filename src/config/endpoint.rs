//! Where tokens and client secrets may be sent: an endpoint URL is https, or plain http to
//! this machine only (local test servers). Parsed with a real URL parser (WHATWG, as HTTP
//! clients parse it), so `http://localhost:1@evil.example/` is a URL to `evil.example` with
//! credentials, not one to `localhost`. Used for configured endpoints and for the ones a
//! discovery document names.

use std::net::IpAddr;

/// Why an endpoint URL is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointProblem {
    /// Not an absolute URL (with why).
    NotUrl(String),
    /// It carries `user:password@`.
    Credentials,
    /// http to a host that is not this machine.
    HttpOffLoopback,
    /// Neither https nor http.
    NotHttps,
}

impl std::fmt::Display for EndpointProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointProblem::NotUrl(why) => write!(f, "is not a valid URL: {why}"),
            EndpointProblem::Credentials => f.write_str("must not contain user credentials"),
            EndpointProblem::HttpOffLoopback => {
                f.write_str("must use https (http is allowed only on loopback)")
            }
            EndpointProblem::NotHttps => f.write_str("must be an https URL"),
        }
    }
}

/// `localhost`, 127.0.0.0/8 and ::1.
pub fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

/// The parsed URL when `s` may receive tokens.
pub fn check_endpoint(s: &str) -> Result<url::Url, EndpointProblem> {
    if s.chars().any(char::is_whitespace) {
        return Err(EndpointProblem::NotUrl("it contains whitespace".into()));
    }
    let u = url::Url::parse(s).map_err(|e| EndpointProblem::NotUrl(e.to_string()))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(EndpointProblem::Credentials);
    }
    let Some(host) = u.host() else {
        return Err(EndpointProblem::NotUrl("it has no host".into()));
    };
    match u.scheme() {
        "https" => Ok(u),
        "http" if is_loopback(&host) => Ok(u),
        "http" => Err(EndpointProblem::HttpOffLoopback),
        _ => Err(EndpointProblem::NotHttps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_https_or_loopback_http() {
        for ok in [
            "https://idp.example.com/token",
            "HTTPS://idp.example.com/token",
            "http://127.0.0.1:8080/token",
            "http://127.1.2.3/token",
            "http://localhost:9000/token",
            "http://LOCALHOST:9000/token",
            "http://[::1]:9000/token",
            "http://[::1]/token",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for (bad, problem) in [
            (
                "http://idp.example.com/token",
                EndpointProblem::HttpOffLoopback,
            ),
            (
                "http://127.0.0.1.example.com/token",
                EndpointProblem::HttpOffLoopback,
            ),
            // What a hand-written check took for localhost: the host is evil.example.
            (
                "http://localhost:1@evil.example/",
                EndpointProblem::Credentials,
            ),
            (
                "http://localhost@evil.example/",
                EndpointProblem::Credentials,
            ),
            (
                "https://user:pw@idp.example.com/",
                EndpointProblem::Credentials,
            ),
            (
                "http://[::1].evil.example/",
                EndpointProblem::NotUrl(String::new()),
            ),
            ("ftp://idp.example.com/token", EndpointProblem::NotHttps),
            ("file:///etc/passwd", EndpointProblem::NotUrl(String::new())),
            (
                "idp.example.com/token",
                EndpointProblem::NotUrl(String::new()),
            ),
            (
                "https://idp.example.com/to ken",
                EndpointProblem::NotUrl(String::new()),
            ),
            (
                "http://localhost:99999/",
                EndpointProblem::NotUrl(String::new()),
            ),
        ] {
            let got = check_endpoint(bad).unwrap_err();
            let same = match (&got, &problem) {
                (EndpointProblem::NotUrl(_), EndpointProblem::NotUrl(_)) => true,
                (a, b) => a == b,
            };
            assert!(same, "{bad}: {got:?}");
        }
    }
}
