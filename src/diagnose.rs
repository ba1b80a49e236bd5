//! `test-login`: walks every step of a source's session and says which one failed and why:
//! resolve → connect → TLS (version, cipher) → capabilities → token (cached or refreshed,
//! JWT claims with problems named) → SASL (the server's answer) → mailbox (SELECT/STAT) →
//! one header. Nothing is stored and nothing changes on the server; secrets are never shown.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::config::{
    Flow, Protocol, ProviderKind, ProviderSettings, Security, Settings, SourceAuth, SourceSettings,
};
use crate::ingest::{Credential, sasl_user};
use crate::net::imap::{ImapSession, Login};
use crate::net::pop3::Pop3Session;
use crate::net::{Connector, SessionError};
use crate::secret::Secret;
use crate::telemetry::ErrorKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub step: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub source: String,
    pub steps: Vec<Step>,
    /// True only when a mailbox was opened: the exit status of `test-login`.
    pub mailbox_opened: bool,
}

impl Report {
    fn push(&mut self, step: &str, ok: bool, detail: impl Into<String>) {
        self.steps.push(Step {
            step: step.into(),
            ok,
            detail: detail.into(),
        });
    }

    /// Human-readable lines, one per step.
    pub fn render(&self) -> String {
        let mut out = format!("test-login {}\n", self.source);
        for s in &self.steps {
            out.push_str(&format!(
                "  [{}] {:<12} {}\n",
                if s.ok { " ok " } else { "FAIL" },
                s.step,
                s.detail.replace('\n', "\n                      ")
            ));
        }
        out.push_str(if self.mailbox_opened {
            "result: mailbox opened\n"
        } else {
            "result: FAILED\n"
        });
        out
    }
}

/// What the token step got from the TokenManager or TokenService.
pub type TokenOutcome = Result<crate::auth::AccessToken, TokenStepError>;

/// Why the token step got no access token.
#[derive(Debug, thiserror::Error)]
pub enum TokenStepError {
    /// The token service's answer: the provider refused or could not be reached, or the
    /// store failed.
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    /// The running node's TokenManager did not answer (the node is stopping).
    #[error(transparent)]
    TokenManager(#[from] actix::MailboxError),
}

impl TokenStepError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TokenStepError::Token(e) => e.kind(),
            TokenStepError::TokenManager(_) => ErrorKind::Token,
        }
    }
}

/// Exchange Online's audiences and Microsoft Graph's, as they appear in `aud`.
const EXCHANGE_AUDIENCES: &[&str] = &[
    "https://outlook.office.com",
    "https://outlook.office365.com",
    "00000002-0000-0ff1-ce00-000000000000",
];
const GRAPH_AUDIENCES: &[&str] = &[
    "https://graph.microsoft.com",
    "00000003-0000-0000-c000-000000000000",
];

/// Decodes a JWT access token's claims (no signature check: this is for diagnosis, the
/// mail server is the judge) and names the problems a collector sees most.
pub fn describe_access_token(
    token: &str,
    source: &SourceSettings,
    provider: &ProviderSettings,
) -> (String, Vec<String>) {
    let Some(payload) = token.split('.').nth(1) else {
        return (
            "opaque token (not a JWT; only the server can judge it)".into(),
            Vec::new(),
        );
    };
    let Ok(claims) = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .ok_or(())
    else {
        return (
            "opaque token (not a JWT; only the server can judge it)".into(),
            Vec::new(),
        );
    };
    let auds: Vec<String> = match &claims["aud"] {
        serde_json::Value::String(a) => vec![a.clone()],
        serde_json::Value::Array(l) => l
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let scopes = claims["scp"]
        .as_str()
        .or_else(|| claims["scope"].as_str())
        .unwrap_or("")
        .to_string();
    let roles: Vec<String> = claims["roles"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let who = ["upn", "email", "preferred_username", "unique_name"]
        .iter()
        .find_map(|k| claims[*k].as_str().map(str::to_string));
    let exp = claims["exp"].as_i64();
    let mut problems = Vec::new();
    let base = |a: &str| a.trim_end_matches('/').to_string();
    if auds
        .iter()
        .any(|a| GRAPH_AUDIENCES.contains(&base(a).as_str()))
    {
        problems.push(format!(
            "audience is Microsoft Graph; IMAP/POP need https://outlook.office.com (use the scope https://outlook.office.com/{}.AccessAsUser.All)",
            if source.protocol == Protocol::Pop3 { "POP" } else { "IMAP" }
        ));
    } else if provider.kind == ProviderKind::Office365
        && !auds
            .iter()
            .any(|a| EXCHANGE_AUDIENCES.contains(&base(a).as_str()))
    {
        problems.push(format!(
            "audience {} is not Exchange Online (https://outlook.office.com)",
            auds.join(", ")
        ));
    }
    if provider.kind == ProviderKind::Office365 {
        let (needed_scope, needed_role) = match source.protocol {
            Protocol::Imap => ("IMAP.AccessAsUser.All", "IMAP.AccessAsApp"),
            Protocol::Pop3 => ("POP.AccessAsUser.All", "POP.AccessAsApp"),
        };
        if provider.flow == Flow::AppOnly && !roles.iter().any(|r| r == needed_role) {
            problems.push(format!("app-only token lacks the role {needed_role} (admin consent, then New-ServicePrincipal and Add-MailboxPermission)"));
        }
        if provider.flow == Flow::Delegated && !scopes.split(' ').any(|s| s == needed_scope) {
            problems.push(format!("token lacks the scope {needed_scope}"));
        }
    }
    if provider.flow == Flow::Delegated
        && let Some(w) = &who
        && !w.eq_ignore_ascii_case(&source.username)
    {
        problems.push(format!(
            "token belongs to {w}, but sources.{}.username is {} (consent given by the wrong account?)",
            source.name, source.username
        ));
    }
    if let Some(e) = exp
        && e < chrono::Utc::now().timestamp()
    {
        problems.push("token has expired".into());
    }
    let summary = format!(
        "JWT: aud={} scopes=[{}]{} user={} expires={}",
        auds.join(","),
        scopes,
        if roles.is_empty() {
            String::new()
        } else {
            format!(" roles=[{}]", roles.join(" "))
        },
        who.unwrap_or_else(|| "-".into()),
        exp.and_then(|e| chrono::DateTime::from_timestamp(e, 0))
            .map(|d| d.to_rfc3339())
            .unwrap_or_else(|| "-".into())
    );
    (summary, problems)
}

/// `host:port (implicit TLS | STARTTLS)`.
fn connect_detail(source: &SourceSettings) -> String {
    let security = match source.security {
        Security::Tls => "implicit TLS",
        Security::StartTls => "STARTTLS",
    };
    format!("{}:{} ({security})", source.host, source.port)
}

/// Runs every step for `source`. `token` is what the token step got (for OAuth2 sources).
pub async fn test_login(
    settings: &Settings,
    connector: &Connector,
    source_name: &str,
    token: Option<TokenOutcome>,
) -> Report {
    let mut report = Report {
        source: source_name.to_string(),
        steps: Vec::new(),
        mailbox_opened: false,
    };
    let Some(source) = settings.sources.get(source_name) else {
        report.push("config", false, format!("no source named {source_name:?}"));
        return report;
    };
    let addr = format!("{}:{}", source.host, source.port);
    match tokio::net::lookup_host(addr.as_str()).await {
        Ok(addrs) => {
            let list: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            report.push(
                "resolve",
                true,
                format!("{} → {}", source.host, list.join(", ")),
            );
        }
        Err(e) => {
            report.push("resolve", false, format!("{}: {e}", source.host));
            return report;
        }
    }
    // Credential first (a token problem is reported in its own step below).
    let (credential, token_step): (Option<Credential>, Option<Step>) = match &source.auth {
        SourceAuth::Password { secret } => match crate::config::read_secret(secret) {
            Ok(p) => (Some(Credential::Password(Secret::new(p))), None),
            Err(e) => (
                None,
                Some(Step {
                    step: "password".into(),
                    ok: false,
                    detail: e.to_string(),
                }),
            ),
        },
        SourceAuth::OAuth2 { provider, .. } => {
            let provider = &settings.providers[provider];
            match token {
                Some(Ok(t)) => {
                    let (summary, problems) =
                        describe_access_token(t.token.expose(), source, provider);
                    let origin = if t.refreshed {
                        "refreshed at the provider"
                    } else {
                        "cached"
                    };
                    let mut detail = format!("{origin}; {summary}");
                    for p in &problems {
                        detail.push_str(&format!("\nproblem: {p}"));
                    }
                    (
                        Some(Credential::AccessToken(t.token)),
                        Some(Step {
                            step: "token".into(),
                            ok: problems.is_empty(),
                            detail,
                        }),
                    )
                }
                Some(Err(e)) => (
                    None,
                    Some(Step {
                        step: "token".into(),
                        ok: false,
                        detail: e.to_string(),
                    }),
                ),
                None => (
                    None,
                    Some(Step {
                        step: "token".into(),
                        ok: false,
                        detail: "no token source".into(),
                    }),
                ),
            }
        }
    };
    match source.protocol {
        Protocol::Imap => imap_steps(connector, source, credential, token_step, &mut report).await,
        Protocol::Pop3 => pop3_steps(connector, source, credential, token_step, &mut report).await,
    }
    report
}

fn connect_failure(report: &mut Report, source: &SourceSettings, e: &SessionError) {
    if e.kind() == ErrorKind::Tls {
        report.push("connect", true, connect_detail(source));
        report.push("tls", false, e.to_string());
    } else {
        report.push("connect", false, e.to_string());
    }
}

/// The steps every opened session reports: connect, TLS, capabilities, then the token.
fn connected(
    report: &mut Report,
    source: &SourceSettings,
    tls: Option<&crate::net::TlsInfo>,
    capabilities: &std::collections::BTreeSet<String>,
    token_step: Option<Step>,
) {
    report.push("connect", true, connect_detail(source));
    if let Some(t) = tls {
        report.push("tls", true, format!("{} {}", t.version, t.cipher));
    }
    report.push("capabilities", true, capabilities_line(capabilities));
    if let Some(step) = token_step {
        report.steps.push(step);
    }
}

/// The capabilities as one line, each named once with its arguments. A POP3 session keeps
/// the CAPA line `SASL PLAIN XOAUTH2` as `SASL`, `SASL PLAIN` and `SASL XOAUTH2` (so asking
/// for one mechanism is one set lookup); printed as they are, the name would repeat before
/// every argument. IMAP capabilities are single atoms and come out unchanged.
fn capabilities_line(capabilities: &std::collections::BTreeSet<String>) -> String {
    let mut by_name: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for cap in capabilities {
        match cap.split_once(' ') {
            Some((name, arg)) => by_name.entry(name).or_default().push(arg),
            None => {
                by_name.entry(cap).or_default();
            }
        }
    }
    let shown: Vec<String> = by_name
        .into_iter()
        .map(|(name, args)| {
            if args.is_empty() {
                name.to_string()
            } else {
                format!("{name} {}", args.join(" "))
            }
        })
        .collect();
    shown.join(" ")
}

fn login_of<'a>(source: &'a SourceSettings, cred: &'a Credential) -> Login<'a> {
    match (cred, &source.auth) {
        (Credential::Password(p), _) => Login::Password {
            user: &source.username,
            password: p,
        },
        (
            Credential::AccessToken(t),
            SourceAuth::OAuth2 {
                sasl: crate::config::Sasl::OAuthBearer,
                ..
            },
        ) => Login::OAuthBearer {
            user: sasl_user(source),
            token: t,
            host: &source.host,
            port: source.port,
        },
        (Credential::AccessToken(t), _) => Login::XOAuth2 {
            user: sasl_user(source),
            token: t,
        },
    }
}

fn sasl_detail(source: &SourceSettings) -> String {
    match &source.auth {
        SourceAuth::Password { .. } => format!("password login as {}", source.username),
        SourceAuth::OAuth2 { sasl, .. } => format!(
            "{} as user={}",
            match sasl {
                crate::config::Sasl::Xoauth2 => "XOAUTH2",
                crate::config::Sasl::OAuthBearer => "OAUTHBEARER",
            },
            sasl_user(source)
        ),
    }
}

/// A tagged reply without a long response code: `A0001 OK [CAPABILITY ...] Logged in`
/// becomes `A0001 OK Logged in`.
fn short_reply(line: &str) -> String {
    match (line.find(" ["), line.find("] ")) {
        (Some(a), Some(b)) if b > a && line.len() > 100 => {
            format!("{}{}", &line[..a], &line[b + 1..])
        }
        _ => line.to_string(),
    }
}

fn header_summary(header: &[u8]) -> String {
    let text = String::from_utf8_lossy(header);
    let pick = |name: &str| {
        text.lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            })
            .map(|l| l.trim().to_string())
    };
    [pick("Subject"), pick("From"), pick("Date")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" | ")
}

async fn imap_steps(
    connector: &Connector,
    source: &SourceSettings,
    credential: Option<Credential>,
    token_step: Option<Step>,
    report: &mut Report,
) {
    let mut session = match ImapSession::open(
        connector,
        &source.host,
        source.port,
        source.security.into(),
        1 << 20,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return connect_failure(report, source, &e),
    };
    connected(
        report,
        source,
        session.tls_info(),
        &session.capabilities,
        token_step,
    );
    let Some(cred) = credential else { return };
    match session.login(&login_of(source, &cred)).await {
        Ok(line) => report.push(
            "sasl",
            true,
            format!("{}: {}", sasl_detail(source), short_reply(&line)),
        ),
        Err(e) => {
            let mut detail = format!("{}: {e}", sasl_detail(source));
            if e.to_string().contains("not connected") {
                detail.push_str("\nhint: \"authenticated but not connected\": the token has no mailbox access (app-only: New-ServicePrincipal / Add-MailboxPermission; delegated: IMAP disabled for the mailbox or wrong account)");
            }
            report.push("sasl", false, detail);
            return;
        }
    }
    let folder = source
        .folders
        .first()
        .map(String::as_str)
        .unwrap_or("INBOX");
    match session.select(folder, true).await {
        Ok(sel) => {
            report.mailbox_opened = true;
            report.push(
                "mailbox",
                true,
                format!(
                    "EXAMINE {folder}: {} messages, UIDVALIDITY {}",
                    sel.exists, sel.uidvalidity
                ),
            );
            match session.last_header(&sel).await {
                Ok(Some(h)) => report.push("header", true, header_summary(&h)),
                Ok(None) => report.push("header", true, "folder is empty"),
                Err(e) => report.push("header", false, e.to_string()),
            }
        }
        Err(e) => report.push("mailbox", false, format!("EXAMINE {folder}: {e}")),
    }
    session.logout().await;
}

async fn pop3_steps(
    connector: &Connector,
    source: &SourceSettings,
    credential: Option<Credential>,
    token_step: Option<Step>,
    report: &mut Report,
) {
    let mut session =
        match Pop3Session::open(connector, &source.host, source.port, source.security.into()).await
        {
            Ok(s) => s,
            Err(e) => return connect_failure(report, source, &e),
        };
    connected(
        report,
        source,
        session.tls_info(),
        &session.capabilities,
        token_step,
    );
    let Some(cred) = credential else { return };
    match session.login(&login_of(source, &cred)).await {
        Ok(line) => report.push("sasl", true, format!("{}: {line}", sasl_detail(source))),
        Err(e) => {
            report.push("sasl", false, format!("{}: {e}", sasl_detail(source)));
            return;
        }
    }
    match session.list().await {
        Ok(list) => {
            report.mailbox_opened = true;
            let bytes: u64 = list.iter().map(|(_, s)| s).sum();
            report.push(
                "mailbox",
                true,
                format!("{} messages, {bytes} bytes", list.len()),
            );
            match list.last() {
                Some((n, _)) => match session.top_header(*n).await {
                    Ok(h) => report.push("header", true, header_summary(&h)),
                    Err(e) => report.push("header", false, e.to_string()),
                },
                None => report.push("header", true, "maildrop is empty"),
            }
        }
        Err(e) => report.push("mailbox", false, e.to_string()),
    }
    session.quit().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    fn o365() -> (SourceSettings, ProviderSettings) {
        let settings = crate::config::load_str(
            "[providers.o365]\nkind = \"office365\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"x\"\n\n[sources.s]\nprotocol = \"imap\"\nhost = \"outlook.office365.com\"\nusername = \"support@contoso.com\"\nauth = \"oauth2\"\nprovider = \"o365\"\n",
            &Default::default(),
        )
        .unwrap();
        (
            settings.sources["s"].clone(),
            settings.providers["o365"].clone(),
        )
    }

    /// The token step shows what the token service or the node said, as it said it.
    #[test]
    fn a_token_step_error_reads_as_its_cause() {
        let refused = crate::auth::TokenError::NeedsReauth {
            source_name: "s".into(),
            reason: "invalid_grant".into(),
        };
        let e = TokenStepError::from(refused.clone());
        assert_eq!(e.to_string(), refused.to_string());
        assert_eq!(e.kind(), ErrorKind::Token);
        let store = crate::auth::TokenError::Store("store: disk gone".into());
        assert_eq!(TokenStepError::from(store).kind(), ErrorKind::Store);
        let gone = TokenStepError::from(actix::MailboxError::Closed);
        assert_eq!(gone.to_string(), actix::MailboxError::Closed.to_string());
        assert_eq!(gone.kind(), ErrorKind::Token);
    }

    #[test]
    fn pop3_capabilities_name_each_capability_once() {
        let caps = crate::protocol::pop3::parse_capa(
            b"TOP\r\nUIDL\r\nSASL LOGIN OAUTHBEARER PLAIN XOAUTH2\r\nSTLS\r\nUSER\r\n",
        );
        assert_eq!(
            capabilities_line(&caps),
            "SASL LOGIN OAUTHBEARER PLAIN XOAUTH2 STLS TOP UIDL USER"
        );
    }

    #[test]
    fn imap_capabilities_are_shown_as_they_are() {
        let caps = ["AUTH=PLAIN", "IDLE", "IMAP4REV1", "SASL-IR"]
            .map(String::from)
            .into_iter()
            .collect();
        assert_eq!(
            capabilities_line(&caps),
            "AUTH=PLAIN IDLE IMAP4REV1 SASL-IR"
        );
    }

    #[test]
    fn graph_audience_is_named() {
        let (s, p) = o365();
        let t = jwt(
            serde_json::json!({"aud":"https://graph.microsoft.com","scp":"IMAP.AccessAsUser.All","upn":"support@contoso.com","exp": 4102444800i64}),
        );
        let (summary, problems) = describe_access_token(&t, &s, &p);
        assert!(
            summary.contains("aud=https://graph.microsoft.com"),
            "{summary}"
        );
        assert!(
            problems[0].starts_with(
                "audience is Microsoft Graph; IMAP/POP need https://outlook.office.com"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn good_exchange_token_has_no_problem_and_wrong_user_is_named() {
        let (s, p) = o365();
        let good = jwt(
            serde_json::json!({"aud":"https://outlook.office.com","scp":"IMAP.AccessAsUser.All offline_access","upn":"support@contoso.com","exp": 4102444800i64}),
        );
        assert!(describe_access_token(&good, &s, &p).1.is_empty());
        let other = jwt(
            serde_json::json!({"aud":"https://outlook.office.com","scp":"IMAP.AccessAsUser.All","upn":"mallory@contoso.com","exp": 4102444800i64}),
        );
        let problems = describe_access_token(&other, &s, &p).1;
        assert!(
            problems[0].contains("token belongs to mallory@contoso.com"),
            "{problems:?}"
        );
        let (summary, problems) = describe_access_token("opaque-token", &s, &p);
        assert!(summary.starts_with("opaque") && problems.is_empty());
    }
}
