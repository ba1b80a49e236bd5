//! URL-valued keys: provider endpoints (https, or http on loopback only) and the consent
//! redirect URI (http on loopback only). A URL is never echoed in an error: it may carry
//! credentials (`user:pass@`).

use crate::config::endpoint::{check_endpoint, is_loopback};
use crate::config::tree::{Ctx, Table};

/// An optional endpoint URL: https, or http on loopback only.
pub(super) fn endpoint(ctx: &mut Ctx, t: &Table, key: &str, noun: &str) -> Option<String> {
    let url = t.non_empty(ctx, key)?.trim().to_owned();
    match check_endpoint(&url) {
        Ok(_) => Some(url),
        // The URL is not echoed: it may carry credentials (user:pass@).
        Err(problem) => {
            ctx.error(&t.key(key), format!("{noun} {problem}"));
            None
        }
    }
}

/// `redirect_uri`: where `authorize` listens for the browser's redirect, so it must be plain
/// http on this machine.
pub(super) fn redirect_uri(ctx: &mut Ctx, t: &Table) -> Option<String> {
    let uri = t.non_empty(ctx, "redirect_uri")?.trim().to_owned();
    let ok = url::Url::parse(&uri).is_ok_and(|u| {
        u.scheme() == "http"
            && u.username().is_empty()
            && u.password().is_none()
            && u.host().is_some_and(|h| {
                is_loopback(&h)
                    && matches!(
                        h,
                        url::Host::Domain(_)
                            | url::Host::Ipv6(_)
                            | url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST)
                    )
            })
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
