//! `[sources.NAME]`: one mailbox to collect (protocol, server, account, authentication,
//! folders, what happens to a message once stored). Options that do not apply to the source's
//! protocol or authentication are errors, not silently ignored, and an oauth2 source must name
//! a provider that exists.

use std::collections::BTreeMap;

use ::config::Value;

use super::{check_name, file_names, orphan, secret_ref, secs};
use crate::config::settings::*;
use crate::config::tree::{self, Ctx, Table, choice, closest, quoted_list};

const SOURCE_KEYS: &[&str] = &[
    "protocol",
    "host",
    "port",
    "security",
    "username",
    "auth",
    "password_env",
    "password_file",
    "provider",
    "sasl",
    "shared_mailbox",
    "folders",
    "idle",
    "poll_interval_secs",
    "after_ingest",
    "move_to",
    "delete_after_days",
    "max_message_bytes",
    "max_connections",
    "enabled",
];

const DEFAULT_MAX_MESSAGE_BYTES: u64 = 50 * 1024 * 1024;
/// The largest `max_message_bytes` accepted. Mail servers refuse messages far smaller (tens
/// of MiB); what a server sends is buffered whole, up to this plus a small envelope.
const MAX_MESSAGE_BYTES_CAP: u64 = 1024 * 1024 * 1024;

/// The valid sources, and the names of every source in the file, valid or not (so a sink
/// naming a source with an error is not also told that the source does not exist).
pub(super) fn sources(
    ctx: &mut Ctx,
    v: Option<&Value>,
    providers: &BTreeMap<String, ProviderSettings>,
    provider_names: &[String],
) -> (BTreeMap<String, SourceSettings>, Vec<String>) {
    let entries = tree::named(ctx, "sources", v, "source");
    let in_file = file_names(ctx, "sources", &entries);
    let mut out = BTreeMap::new();
    let mut names = Vec::new();
    for (name, map) in &entries {
        let path = format!("sources.{name}");
        if orphan(ctx, "sources", name, map, "protocol", &in_file) {
            continue;
        }
        names.push((*name).to_owned());
        check_name(ctx, &path, name, "source");
        let t = Table::open(ctx, &path, map, SOURCE_KEYS);
        if let Some(s) = source(ctx, name, &t, providers, provider_names) {
            out.insert((*name).to_owned(), s);
        }
    }
    (out, names)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    Password,
    OAuth2,
}

fn default_port(protocol: Protocol, security: Security) -> u16 {
    match (protocol, security) {
        (Protocol::Imap, Security::Tls) => 993,
        (Protocol::Imap, Security::StartTls) => 143,
        (Protocol::Pop3, Security::Tls) => 995,
        (Protocol::Pop3, Security::StartTls) => 110,
    }
}

fn source(
    ctx: &mut Ctx,
    name: &str,
    t: &Table,
    providers: &BTreeMap<String, ProviderSettings>,
    provider_names: &[String],
) -> Option<SourceSettings> {
    let protocol = t
        .required(ctx, "protocol", "protocol = \"imap\" or \"pop3\"")
        .and_then(|s| parse_protocol(ctx, &t.key("protocol"), &s));
    let host = t
        .required(
            ctx,
            "host",
            "the IMAP or POP3 server, e.g. host = \"outlook.office365.com\"",
        )
        .and_then(|h| parse_host(ctx, &t.key("host"), &h));
    let security = match t.string(ctx, "security") {
        Some(s) => parse_security(ctx, &t.key("security"), &s),
        None => Some(Security::Tls),
    };
    let port = t.uint(
        ctx,
        "port",
        1,
        u64::from(u16::MAX),
        u64::from(default_port(
            protocol.unwrap_or(Protocol::Imap),
            security.unwrap_or(Security::Tls),
        )),
    );
    let username = t.required(
        ctx,
        "username",
        "the account that signs in, e.g. username = \"support@contoso.com\"",
    );
    let auth_kind = t
        .required(ctx, "auth", "auth = \"oauth2\" or \"password\"")
        .and_then(|s| {
            choice(
                ctx,
                &t.key("auth"),
                &s,
                &[
                    ("oauth2", AuthKind::OAuth2),
                    ("password", AuthKind::Password),
                ],
            )
        });
    let auth = source_auth(ctx, t, auth_kind, providers, provider_names);
    let shared_mailbox = if auth_kind == Some(AuthKind::Password) {
        t.refuse(ctx, "shared_mailbox", "applies only with auth = \"oauth2\"");
        None
    } else {
        t.non_empty(ctx, "shared_mailbox")
            .map(|s| s.trim().to_owned())
    };

    let imap = protocol != Some(Protocol::Pop3);
    if !imap {
        for key in ["folders", "idle", "move_to"] {
            t.refuse(
                ctx,
                key,
                "applies only to protocol = \"imap\" (POP3 has a single mailbox and no push)",
            );
        }
    }
    let folders = if imap { folders(ctx, t) } else { Vec::new() };
    let idle = imap && t.bool(ctx, "idle", true);
    let poll_interval = secs(ctx, t, "poll_interval_secs", 60);
    let after_ingest = match t.string(ctx, "after_ingest") {
        Some(s) => parse_after_ingest(ctx, &t.key("after_ingest"), &s, imap),
        None => Some(AfterIngest::Keep),
    };
    let move_to = if imap {
        t.non_empty(ctx, "move_to").map(|s| s.trim().to_owned())
    } else {
        None
    };
    match (after_ingest, &move_to) {
        (Some(AfterIngest::Move), None) if !t.has("move_to") => ctx.error(
            &t.key("move_to"),
            "required with after_ingest = \"move\": the folder ingested messages are moved to",
        ),
        (Some(AfterIngest::Move), Some(target)) if folders.contains(target) => ctx.error(
            &t.key("move_to"),
            format!("{target:?} is also in folders: moved messages would be collected again"),
        ),
        (Some(other), Some(_)) if other != AfterIngest::Move => ctx.error(
            &t.key("move_to"),
            "is set but after_ingest is not \"move\"; set after_ingest = \"move\" or remove \
             move_to",
        ),
        _ => {}
    }
    // POP3 only: with after_ingest = "delete", keep messages on the server this many days
    // after they were stored (0 = delete at the end of the session that stored them).
    let delete_after_days = if t.has("delete_after_days") {
        if imap || after_ingest != Some(AfterIngest::Delete) {
            ctx.error(
                &t.key("delete_after_days"),
                "applies only to protocol = \"pop3\" with after_ingest = \"delete\"",
            );
        }
        t.uint(ctx, "delete_after_days", 0, 36_500, 0)
    } else {
        0
    };
    let mut max_message_bytes = t.uint(
        ctx,
        "max_message_bytes",
        1,
        u64::MAX,
        DEFAULT_MAX_MESSAGE_BYTES,
    );
    if max_message_bytes > MAX_MESSAGE_BYTES_CAP {
        ctx.error(
            &t.key("max_message_bytes"),
            format!(
                "must be at most {MAX_MESSAGE_BYTES_CAP} (1 GiB), found {max_message_bytes}: a \
                 message is held in memory whole while it is read and stored, so a larger \
                 allowance only lets a server exhaust the node's memory"
            ),
        );
        max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES;
    }
    let max_connections = t.uint(ctx, "max_connections", 1, u64::from(u32::MAX), 2);
    let enabled = t.bool(ctx, "enabled", true);

    Some(SourceSettings {
        name: name.to_owned(),
        protocol: protocol?,
        host: host?,
        port: u16::try_from(port).ok()?,
        security: security?,
        username: username?.trim().to_owned(),
        auth: auth?,
        shared_mailbox,
        folders,
        idle,
        poll_interval,
        after_ingest: after_ingest?,
        move_to,
        delete_after_days,
        max_message_bytes,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        enabled,
    })
}

fn parse_protocol(ctx: &mut Ctx, path: &str, s: &str) -> Option<Protocol> {
    let fix = match s.to_ascii_lowercase().as_str() {
        "imaps" => Some("imap"),
        "pop3s" | "pops" => Some("pop3"),
        _ => None,
    };
    if let Some(fix) = fix {
        ctx.error(
            path,
            format!("{s:?} is not a protocol: write protocol = \"{fix}\" with security = \"tls\""),
        );
        return None;
    }
    choice(
        ctx,
        path,
        s,
        &[("imap", Protocol::Imap), ("pop3", Protocol::Pop3)],
    )
}

fn parse_host(ctx: &mut Ctx, path: &str, host: &str) -> Option<String> {
    let host = host.trim();
    let problem = if host.contains("://") {
        "is a URL: write the host name alone, e.g. host = \"imap.example.com\""
    } else if host.contains(char::is_whitespace) {
        "must not contain spaces"
    } else if host.matches(':').count() == 1
        && host
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        "contains a port: put it in port = N"
    } else {
        return Some(host.to_owned());
    };
    ctx.error(path, problem);
    None
}

fn parse_security(ctx: &mut Ctx, path: &str, s: &str) -> Option<Security> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "plain" | "plaintext" | "none" | "clear" | "cleartext" | "insecure" | "off" => {
            ctx.error(
                path,
                format!(
                    "{s:?} is refused: mailsluice never connects in plaintext (passwords, tokens \
                     and mail would cross the network in clear); use \"tls\" (implicit TLS, ports \
                     993/995) or \"starttls\""
                ),
            );
            None
        }
        "ssl" => {
            ctx.error(
                path,
                "\"ssl\" is not valid; write security = \"tls\" (implicit TLS, what \"ssl\" \
                 usually means)",
            );
            None
        }
        _ => choice(
            ctx,
            path,
            s,
            &[("tls", Security::Tls), ("starttls", Security::StartTls)],
        ),
    }
}

fn source_auth(
    ctx: &mut Ctx,
    t: &Table,
    kind: Option<AuthKind>,
    providers: &BTreeMap<String, ProviderSettings>,
    provider_names: &[String],
) -> Option<SourceAuth> {
    match kind {
        Some(AuthKind::Password) => {
            for key in ["provider", "sasl"] {
                t.refuse(ctx, key, "applies only with auth = \"oauth2\"");
            }
            let given = t.has("password_env") || t.has("password_file");
            let secret = secret_ref(ctx, t, "password_env", "password_file");
            if !given {
                ctx.error(
                    t.path(),
                    "auth = \"password\" needs password_env (name of an environment variable \
                     holding the password) or password_file",
                );
            }
            secret.map(|secret| SourceAuth::Password { secret })
        }
        Some(AuthKind::OAuth2) => {
            for key in ["password_env", "password_file"] {
                t.refuse(
                    ctx,
                    key,
                    "applies only with auth = \"password\"; an oauth2 source signs in with a \
                     token from its provider",
                );
            }
            let provider = t
                .required(
                    ctx,
                    "provider",
                    "auth = \"oauth2\" needs provider = \"NAME\" naming a [providers.NAME] section",
                )
                .map(|p| p.trim().to_owned());
            let provider_path = t.key("provider");
            if let Some(p) = &provider
                && !provider_names.contains(p)
            {
                let hint = match closest(p, provider_names.iter().map(String::as_str)) {
                    Some(near) => format!("did you mean \"{near}\"?"),
                    None if provider_names.is_empty() => {
                        format!("add a [providers.{p}] section")
                    }
                    None => {
                        let names: Vec<&str> = provider_names.iter().map(String::as_str).collect();
                        format!("the providers are {}", quoted_list(&names))
                    }
                };
                ctx.error(&provider_path, format!("no provider named {p:?}; {hint}"));
            }
            let sasl = match t.string(ctx, "sasl") {
                Some(s) => choice(
                    ctx,
                    &t.key("sasl"),
                    &s,
                    &[
                        ("xoauth2", Sasl::Xoauth2),
                        ("oauthbearer", Sasl::OAuthBearer),
                    ],
                ),
                None => Some(Sasl::Xoauth2),
            };
            let office365 = provider
                .as_ref()
                .and_then(|p| providers.get(p))
                .is_some_and(|p| p.kind == ProviderKind::Office365);
            if office365 && sasl == Some(Sasl::OAuthBearer) {
                ctx.error(
                    &t.key("sasl"),
                    "Office 365 accepts only SASL XOAUTH2; use sasl = \"xoauth2\"",
                );
            }
            Some(SourceAuth::OAuth2 {
                provider: provider?,
                sasl: sasl?,
            })
        }
        None => {
            // Still check the secret references, so their errors show up in this run too.
            let _ = secret_ref(ctx, t, "password_env", "password_file");
            None
        }
    }
}

fn folders(ctx: &mut Ctx, t: &Table) -> Vec<String> {
    let Some(list) = t.list(ctx, "folders") else {
        return vec!["INBOX".to_owned()];
    };
    let path = t.key("folders");
    if list.is_empty() {
        ctx.error(
            &path,
            "lists no folder; remove folders to collect [\"INBOX\"]",
        );
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, folder) in list.iter().enumerate() {
        let item = format!("{path}[{i}]");
        if folder.trim().is_empty() {
            ctx.error(&item, "must not be empty");
        } else if seen.contains(&folder.as_str()) {
            ctx.error(&item, format!("{folder:?} is listed twice"));
        }
        seen.push(folder);
    }
    list
}

fn parse_after_ingest(ctx: &mut Ctx, path: &str, s: &str, imap: bool) -> Option<AfterIngest> {
    if imap {
        return choice(
            ctx,
            path,
            s,
            &[
                ("keep", AfterIngest::Keep),
                ("seen", AfterIngest::Seen),
                ("delete", AfterIngest::Delete),
                ("move", AfterIngest::Move),
            ],
        );
    }
    if matches!(s, "seen" | "move") {
        ctx.error(
            path,
            format!(
                "{s:?} is not possible with pop3 (POP3 has no flags and no folders); use \
                 \"keep\" or \"delete\""
            ),
        );
        return None;
    }
    choice(
        ctx,
        path,
        s,
        &[("keep", AfterIngest::Keep), ("delete", AfterIngest::Delete)],
    )
}
