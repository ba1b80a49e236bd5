//! URL-valued keys: provider endpoints (https, or http on loopback only) and the consent
//! redirect URI (http on loopback only). A URL is never echoed in an error: it may carry
//! credentials (`user:pass@`).

use std::net::{IpAddr, Ipv6Addr};

use crate::config::tree::{Ctx, Table};

struct Url<'a> {
    /// Lowercased.
    scheme: String,
    /// Without the brackets of an IPv6 literal.
    host: &'a str,
}

/// Just enough of RFC 3986 to check scheme and host; the auth layer parses URLs for real.
fn split_url(s: &str) -> Result<Url<'_>, &'static str> {
    if s.chars().any(char::is_whitespace) {
        return Err("it contains whitespace");
    }
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("it is not an absolute URL (scheme://host/...)")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err("its scheme is not valid");
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Err("it must not contain user credentials");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, tail) = bracketed.split_once(']').ok_or("its '[' is not closed")?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err("its IPv6 address is not valid");
            }
            match tail {
                "" => (host, None),
                _ => (
                    host,
                    Some(tail.strip_prefix(':').ok_or("its port is not valid")?),
                ),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("it has no host");
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("its port is not valid");
    }
    Ok(Url {
        scheme: scheme.to_ascii_lowercase(),
        host,
    })
}

/// 127.0.0.0/8, ::1 and `localhost`: where a plain-http test server is acceptable.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An optional endpoint URL: https, or http on loopback only.
pub(super) fn endpoint(ctx: &mut Ctx, t: &Table, key: &str, noun: &str) -> Option<String> {
    let url = t.non_empty(ctx, key)?.trim().to_owned();
    let path = t.key(key);
    let problem = match split_url(&url) {
        // The URL is not echoed: it may carry credentials (user:pass@).
        Err(why) => format!("{noun} is not a valid URL: {why}"),
        Ok(u) if u.scheme == "https" => return Some(url),
        Ok(u) if u.scheme == "http" && is_loopback(u.host) => return Some(url),
        Ok(u) if u.scheme == "http" => {
            format!("{noun} must use https (http is allowed only on loopback)")
        }
        Ok(_) => format!("{noun} must be an https URL"),
    };
    ctx.error(&path, problem);
    None
}

/// `redirect_uri`: where `authorize` listens for the browser's redirect, so it must be plain
/// http on this machine.
pub(super) fn redirect_uri(ctx: &mut Ctx, t: &Table) -> Option<String> {
    let uri = t.non_empty(ctx, "redirect_uri")?.trim().to_owned();
    let ok = split_url(&uri).is_ok_and(|u| {
        u.scheme == "http"
            && matches!(
                u.host.to_ascii_lowercase().as_str(),
                "127.0.0.1" | "::1" | "localhost"
            )
    });
    if ok {
        return Some(uri);
    }
    ctx.error(
        &t.key("redirect_uri"),
        "must be an http loopback URL: http://127.0.0.1:PORT/..., http://[::1]:PORT/... or \
         http://localhost:PORT/... (`mailsluice authorize` receives the code on a local \
         listener); register the same URI with the provider",
    );
    None
}
