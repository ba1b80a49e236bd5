//! `[providers.NAME]`: an OAuth2 provider (office365, gmail or a generic oidc one), its flow,
//! client, endpoints and scopes. Endpoints a kind has built in are filled in here, so a valid
//! [`ProviderSettings`] always names a token endpoint or an issuer to discover it from.

use std::collections::BTreeMap;

use ::config::Value;

use super::url::{endpoint, redirect_uri};
use super::{check_name, file_names, orphan, secret_ref};
use crate::config::settings::*;
use crate::config::tree::{self, Ctx, Table, choice};

const PROVIDER_KEYS: &[&str] = &[
    "kind",
    "tenant",
    "cloud",
    "flow",
    "client_id",
    "client_secret_env",
    "client_secret_file",
    "redirect_uri",
    "issuer",
    "token_url",
    "authorization_url",
    "device_authorization_url",
    "scopes",
    "client_secret_expires",
];

const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const GOOGLE_AUTHORIZATION_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const OFFICE365_AUTHORITY: &str = "https://login.microsoftonline.com";
const OFFICE365_IMAP_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";
const OFFICE365_POP_SCOPE: &str = "https://outlook.office.com/POP.AccessAsUser.All";
const OFFICE365_APP_SCOPE: &str = "https://outlook.office365.com/.default";

pub(super) fn providers(
    ctx: &mut Ctx,
    v: Option<&Value>,
) -> (BTreeMap<String, ProviderSettings>, Vec<String>) {
    let entries = tree::named(ctx, "providers", v, "provider");
    let in_file = file_names(ctx, "providers", &entries);
    let mut valid = BTreeMap::new();
    let mut names = Vec::new();
    for (name, map) in &entries {
        let path = format!("providers.{name}");
        if orphan(ctx, "providers", name, map, "kind", &in_file) {
            continue;
        }
        names.push((*name).to_owned());
        check_name(ctx, &path, name, "provider");
        let t = Table::open(ctx, &path, map, PROVIDER_KEYS);
        if let Some(p) = provider(ctx, name, &t) {
            valid.insert((*name).to_owned(), p);
        }
    }
    (valid, names)
}

fn provider(ctx: &mut Ctx, name: &str, t: &Table) -> Option<ProviderSettings> {
    use ProviderKind::*;

    let kind = t
        .required(ctx, "kind", "kind = \"office365\", \"gmail\" or \"oidc\"")
        .and_then(|s| {
            choice(
                ctx,
                &t.key("kind"),
                &s,
                &[("office365", Office365), ("gmail", Gmail), ("oidc", Oidc)],
            )
        });
    let flow = match t.string(ctx, "flow") {
        Some(s) => choice(
            ctx,
            &t.key("flow"),
            &s,
            &[("delegated", Flow::Delegated), ("app_only", Flow::AppOnly)],
        ),
        None => Some(Flow::Delegated),
    };
    let client_id = t.required(
        ctx,
        "client_id",
        "the application (client) id registered with the provider",
    );
    let client_secret = secret_ref(ctx, t, "client_secret_env", "client_secret_file");
    let redirect_uri = redirect_uri(ctx, t);

    let tenant = match kind {
        Some(Office365) => {
            let tenant = t
                .non_empty(ctx, "tenant")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| "organizations".into());
            if !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            {
                ctx.error(
                    &t.key("tenant"),
                    format!(
                        "{tenant:?} is not a tenant: use \"common\", \"organizations\", \
                         \"consumers\", a tenant id (GUID) or a domain such as \"contoso.com\""
                    ),
                );
            }
            Some(tenant)
        }
        Some(_) => {
            t.refuse(ctx, "tenant", "applies only to kind = \"office365\"");
            None
        }
        None => None,
    };
    // Sovereign clouds have their own sign-in host; their Exchange resource differs too,
    // so scopes must be given explicitly there rather than guessed.
    let authority = match (kind, t.string(ctx, "cloud")) {
        (Some(Office365), None) => OFFICE365_AUTHORITY,
        (Some(Office365), Some(c)) => match c.as_str() {
            "global" => OFFICE365_AUTHORITY,
            "usgov" | "china" => {
                if !t.has("scopes") {
                    ctx.error(
                        &t.key("cloud"),
                        format!(
                            "cloud = \"{c}\" needs explicit scopes: the Exchange resource of that cloud \
                             (e.g. its IMAP.AccessAsUser.All scope URL and offline_access) differs from \
                             https://outlook.office.com"
                        ),
                    );
                }
                if c == "usgov" {
                    "https://login.microsoftonline.us"
                } else {
                    "https://login.chinacloudapi.cn"
                }
            }
            other => {
                ctx.error(
                    &t.key("cloud"),
                    format!("{other:?} is not a cloud: use \"global\", \"usgov\" or \"china\""),
                );
                OFFICE365_AUTHORITY
            }
        },
        (Some(_), Some(_)) => {
            t.refuse(ctx, "cloud", "applies only to kind = \"office365\"");
            OFFICE365_AUTHORITY
        }
        _ => OFFICE365_AUTHORITY,
    };
    let issuer = match kind {
        Some(Oidc) | None => endpoint(ctx, t, "issuer", "issuer"),
        Some(_) => {
            t.refuse(
                ctx,
                "issuer",
                "applies only to kind = \"oidc\" (office365 and gmail endpoints are built in)",
            );
            None
        }
    };
    // Explicit endpoints are the way for oidc without discovery, and override the built-in
    // ones for office365 and gmail (local test servers).
    let token_url = endpoint(ctx, t, "token_url", "token endpoint");
    let authorization_url = endpoint(ctx, t, "authorization_url", "authorization endpoint");
    let device_authorization_url = endpoint(
        ctx,
        t,
        "device_authorization_url",
        "device authorization endpoint",
    );
    let scopes = scopes(ctx, t, kind, flow);
    let client_secret_expires = t.non_empty(ctx, "client_secret_expires").and_then(|s| {
        chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
            .map_err(|_| {
                ctx.error(
                    &t.key("client_secret_expires"),
                    format!("{s:?} is not a date: write YYYY-MM-DD, e.g. \"2027-06-30\""),
                );
            })
            .ok()
    });

    if flow == Some(Flow::AppOnly) {
        if kind == Some(Office365)
            && tenant.as_deref().is_none_or(|t| {
                ["common", "organizations", "consumers"].contains(&t.to_ascii_lowercase().as_str())
            })
        {
            ctx.error(
                &t.key("tenant"),
                "flow = \"app_only\" signs in as the application of one tenant: set tenant to \
                 that tenant's id or domain (not common, organizations or consumers)",
            );
        }
        if kind == Some(Gmail) {
            ctx.error(
                &t.key("flow"),
                "gmail has no client-credentials flow for mailboxes; use flow = \"delegated\"",
            );
        } else if client_secret.is_none()
            && !t.has("client_secret_env")
            && !t.has("client_secret_file")
        {
            ctx.error(
                &t.key("flow"),
                "flow = \"app_only\" (client credentials) needs client_secret_env or \
                 client_secret_file",
            );
        }
    }

    let kind = kind?;
    let (token_url, authorization_url, device_authorization_url) = match kind {
        Office365 => {
            let base = format!(
                "{authority}/{}/oauth2/v2.0",
                tenant.as_deref().unwrap_or("organizations")
            );
            (
                token_url.or_else(|| Some(format!("{base}/token"))),
                authorization_url.or_else(|| Some(format!("{base}/authorize"))),
                device_authorization_url.or_else(|| Some(format!("{base}/devicecode"))),
            )
        }
        Gmail => (
            token_url.or_else(|| Some(GOOGLE_TOKEN_URL.into())),
            authorization_url.or_else(|| Some(GOOGLE_AUTHORIZATION_URL.into())),
            // Google's device flow does not grant the Gmail IMAP/POP scope.
            device_authorization_url,
        ),
        Oidc => {
            if issuer.is_none() && token_url.is_none() && !t.has("issuer") && !t.has("token_url") {
                ctx.error(
                    t.path(),
                    "kind = \"oidc\" needs issuer = \"https://...\" (endpoints found by \
                     discovery) or an explicit token_url",
                );
            }
            (token_url, authorization_url, device_authorization_url)
        }
    };

    Some(ProviderSettings {
        name: name.to_owned(),
        kind,
        tenant,
        flow: flow?,
        client_id: client_id?.trim().to_owned(),
        client_secret,
        redirect_uri,
        issuer,
        token_url,
        authorization_url,
        device_authorization_url,
        scopes,
        client_secret_expires,
    })
}

fn scopes(
    ctx: &mut Ctx,
    t: &Table,
    kind: Option<ProviderKind>,
    flow: Option<Flow>,
) -> Option<Vec<String>> {
    let list = t.list(ctx, "scopes")?;
    let path = t.key("scopes");
    if list.is_empty() {
        ctx.error(
            &path,
            "lists no scope; remove scopes to use the defaults for this kind",
        );
        return None;
    }
    for (i, scope) in list.iter().enumerate() {
        let item = format!("{path}[{i}]");
        if scope.trim().is_empty() {
            ctx.error(&item, "must not be empty");
        } else if scope.trim().contains(char::is_whitespace) {
            ctx.error(
                &item,
                "one scope per entry: write scopes = [\"a\", \"b\"], not [\"a b\"]",
            );
        } else if kind == Some(ProviderKind::Office365)
            && let Some(message) = graph_scope(scope.trim(), flow)
        {
            ctx.error(&item, message);
        }
    }
    Some(list.into_iter().map(|s| s.trim().to_owned()).collect())
}

/// Scopes that Entra ID resolves to Microsoft Graph: the token it returns has Graph as its
/// audience and Exchange IMAP/POP reject it ("AUTHENTICATE failed") even though the sign-in
/// worked. This is the most common Office 365 setup mistake, so it is caught at load.
fn graph_scope(scope: &str, flow: Option<Flow>) -> Option<String> {
    let lower = scope.to_ascii_lowercase();
    let fix = if lower == "imap.accessasuser.all" {
        OFFICE365_IMAP_SCOPE
    } else if lower == "pop.accessasuser.all" {
        OFFICE365_POP_SCOPE
    } else if lower.starts_with("https://graph.microsoft.com/") {
        if flow == Some(Flow::AppOnly) || lower.ends_with("/.default") {
            OFFICE365_APP_SCOPE
        } else if lower.contains("/pop.") {
            OFFICE365_POP_SCOPE
        } else {
            OFFICE365_IMAP_SCOPE
        }
    } else {
        return None;
    };
    Some(format!(
        "{scope:?} yields a Microsoft Graph token, which IMAP and POP reject (the login fails \
         although sign-in worked); use {fix:?}"
    ))
}
