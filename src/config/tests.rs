use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../config/mailsluice.toml");
const CONTRIB_EXAMPLE: &str = include_str!("../../contrib/mailsluice.toml");

/// A valid file with one provider and one source: tests add or break one thing at a time.
const BASE: &str = r#"
[providers.o365]
kind = "office365"
client_id = "app-id"

[sources.support]
protocol = "imap"
host = "outlook.office365.com"
username = "support@contoso.com"
auth = "oauth2"
provider = "o365"
"#;

fn load(text: &str) -> Result<Settings, ConfigErrors> {
    load_str(text, &HashMap::new())
}

fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    load_str(text, &env)
}

fn ok(text: &str) -> Settings {
    match load(text) {
        Ok(s) => s,
        Err(e) => panic!("expected the config to load, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(_) => panic!("expected errors, the config loaded"),
        Err(e) => e.0,
    }
}

/// The error at `path`, which must exist and be unique.
#[track_caller]
fn at<'e>(errors: &'e [ConfigError], path: &str) -> &'e ConfigError {
    let found: Vec<&ConfigError> = errors.iter().filter(|e| e.path == path).collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected exactly one error at {path}, got:\n{}",
            ConfigErrors(errors.to_vec())
        ),
    }
}

#[track_caller]
fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "{haystack:?} should contain {needle:?}"
    );
}

fn source<'s>(s: &'s Settings, name: &str) -> &'s SourceSettings {
    &s.sources[name]
}

#[test]
fn service_example_config_loads() {
    let s = ok(CONTRIB_EXAMPLE);
    assert!(!s.sources.is_empty());
    assert!(s.node.data_dir.starts_with("/var/lib/mailsluice"));
}

#[test]
fn example_config_loads() {
    let s = ok(EXAMPLE);
    assert_eq!(s.sources.len(), 3);
    assert_eq!(s.providers.len(), 2);

    let o365 = &s.providers["o365"];
    assert_eq!(o365.kind, ProviderKind::Office365);
    assert_eq!(
        o365.client_secret,
        Some(SecretRef::Env("O365_SECRET".into()))
    );
    assert_eq!(
        o365.token_url.as_deref(),
        Some("https://login.microsoftonline.com/organizations/oauth2/v2.0/token")
    );
    assert_eq!(
        o365.client_secret_expires,
        chrono::NaiveDate::from_ymd_opt(2027, 6, 30)
    );

    let google = &s.providers["google"];
    assert_eq!(google.kind, ProviderKind::Gmail);
    assert_eq!(
        google.client_secret,
        Some(SecretRef::File("secrets/google_client_secret".into()))
    );
    assert_eq!(google.device_authorization_url, None);

    let support = source(&s, "support");
    assert_eq!(support.protocol, Protocol::Imap);
    assert_eq!(support.after_ingest, AfterIngest::Move);
    assert_eq!(support.move_to.as_deref(), Some("Processed"));
    assert_eq!(
        support.auth,
        SourceAuth::OAuth2 {
            provider: "o365".into(),
            sasl: Sasl::Xoauth2
        }
    );

    let invoices = source(&s, "invoices");
    assert_eq!(invoices.protocol, Protocol::Pop3);
    assert!(invoices.folders.is_empty());
    assert!(!invoices.idle);

    let alerts = source(&s, "alerts");
    assert_eq!(alerts.security, Security::StartTls);
    assert_eq!(
        alerts.auth,
        SourceAuth::Password {
            secret: SecretRef::Env("ALERTS_IMAP_PASSWORD".into())
        }
    );
}

#[test]
fn defaults_fill_everything_not_given() {
    let s = ok(&format!(
        "{BASE}
[sources.mail]
protocol = \"pop3\"
host = \"pop.example.com\"
username = \"u\"
auth = \"password\"
password_file = \"secrets/pw\"

[sources.plainport]
protocol = \"imap\"
security = \"starttls\"
host = \"imap.example.com\"
username = \"u\"
auth = \"password\"
password_env = \"PW\"
"
    ));
    let n = &s.node;
    assert_eq!(n.data_dir, PathBuf::from("data"));
    assert_eq!(n.http_listen, "127.0.0.1:9898".parse().unwrap());
    assert_eq!(n.http_listen_file, None);
    assert_eq!(n.max_sessions, 256);
    assert_eq!(n.log_format, LogFormat::Text);
    assert_eq!(n.store_compression, crate::store::Compression::Zstd);
    assert_eq!(n.secret_key_file, PathBuf::from("data/secret.key"));
    assert_eq!(n.token_refresh_margin, Duration::from_secs(120));
    assert_eq!(n.connect_timeout, Duration::from_secs(15));
    assert_eq!(n.read_timeout, Duration::from_secs(120));
    assert_eq!(s.tls.min_version, TlsVersion::V1_2);
    assert_eq!(s.tls.extra_ca_file, None);
    assert_eq!(s.tls.backend, TlsBackend::Rustls);

    let p = &s.providers["o365"];
    assert_eq!(p.tenant.as_deref(), Some("organizations"));
    assert_eq!(p.flow, Flow::Delegated);
    assert_eq!(p.client_secret, None);
    assert_eq!(p.scopes, None);
    assert_eq!(
        p.authorization_url.as_deref(),
        Some("https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize")
    );
    assert_eq!(
        p.device_authorization_url.as_deref(),
        Some("https://login.microsoftonline.com/organizations/oauth2/v2.0/devicecode")
    );

    let imap = source(&s, "support");
    assert_eq!(imap.port, 993);
    assert_eq!(imap.security, Security::Tls);
    assert_eq!(imap.folders, vec!["INBOX".to_owned()]);
    assert!(imap.idle);
    assert_eq!(imap.poll_interval, Duration::from_secs(60));
    assert_eq!(imap.after_ingest, AfterIngest::Keep);
    assert_eq!(imap.move_to, None);
    assert_eq!(imap.max_message_bytes, 52_428_800);
    assert_eq!(imap.max_connections, 2);
    assert!(imap.enabled);
    assert_eq!(imap.shared_mailbox, None);

    let pop3 = source(&s, "mail");
    assert_eq!(pop3.port, 995);
    assert!(!pop3.idle);
    assert!(pop3.folders.is_empty());
    assert_eq!(source(&s, "plainport").port, 143);
}

#[test]
fn pop3_starttls_defaults_to_110() {
    let s = ok(&BASE.replace(
        "protocol = \"imap\"",
        "protocol = \"pop3\"\nsecurity = \"starttls\"",
    ));
    assert_eq!(source(&s, "support").port, 110);
}

/// Port 0 lets the system pick the port; `run` writes the one it got to http_listen_file.
#[test]
fn http_listen_may_ask_for_any_port_and_name_a_file_for_it() {
    let s = ok(&format!(
        "[node]\nhttp_listen = \"127.0.0.1:0\"\nhttp_listen_file = \"run/http.addr\"\n\n{BASE}"
    ));
    assert_eq!(s.node.http_listen, "127.0.0.1:0".parse().unwrap());
    assert_eq!(
        s.node.http_listen_file,
        Some(PathBuf::from("run/http.addr"))
    );
}

#[test]
fn env_overrides_nested_keys() {
    let s = load_env(
        BASE,
        &[
            ("MAILSLUICE__SOURCES__SUPPORT__PORT", "10993"),
            (
                "MAILSLUICE__SOURCES__SUPPORT__FOLDERS",
                "INBOX, Escalations",
            ),
            ("MAILSLUICE__SOURCES__SUPPORT__IDLE", "false"),
            ("MAILSLUICE__NODE__HTTP_LISTEN", "0.0.0.0:9000"),
            // try_parsing turns these into numbers; they must stay the exact text.
            ("MAILSLUICE__TLS__MIN_VERSION", "1.3"),
            ("MAILSLUICE__PROVIDERS__O365__CLIENT_ID", "12345"),
            ("MAILSLUICE_CONFIG", "ignored.toml"),
            ("HOME", "/ignored"),
        ],
    )
    .unwrap();
    let support = source(&s, "support");
    assert_eq!(support.port, 10993);
    assert_eq!(support.folders, vec!["INBOX", "Escalations"]);
    assert!(!support.idle);
    assert_eq!(s.node.http_listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(s.tls.min_version, TlsVersion::V1_3);
    assert_eq!(s.providers["o365"].client_id, "12345");
}

#[test]
fn env_errors_name_the_variable() {
    let err = load_env(BASE, &[("MAILSLUICE__SOURCES__SUPPORT__PORT", "imaps")]).unwrap_err();
    let e = at(&err.0, "sources.support.port");
    assert_contains(&e.message, "expected an integer");
    assert_contains(&e.message, "MAILSLUICE__SOURCES__SUPPORT__PORT");
}

#[test]
fn env_override_of_a_missing_source_is_one_clear_error() {
    let err = load_env(BASE, &[("MAILSLUICE__SOURCES__SUPORT__PORT", "10993")]).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    let e = at(&err.0, "sources.suport");
    assert_contains(&e.message, "MAILSLUICE__SOURCES__SUPORT__PORT");
    assert_contains(&e.message, "did you mean [sources.support]?");
}

#[test]
fn every_error_is_reported_at_once() {
    let errs = errors(
        r#"
[node]
http_listen = "localhost:9898"
max_sessions = 0
log_format = "yaml"
store_compression = "lz4"

[tls]
min_version = "1.0"

[providers.o365]
kind = "office365"

[sources.support]
protocol = "imap"
host = "outlook.office365.com"
port = "993x"
username = "support@contoso.com"
auth = "oauth2"
provider = "o365x"
poll_interval_secs = 0
"#,
    );
    for path in [
        "node.http_listen",
        "node.max_sessions",
        "node.log_format",
        "node.store_compression",
        "tls.min_version",
        "providers.o365.client_id",
        "sources.support.port",
        "sources.support.provider",
        "sources.support.poll_interval_secs",
    ] {
        at(&errs, path);
    }
    assert_eq!(errs.len(), 9, "{}", ConfigErrors(errs.clone()));
    assert_contains(
        &at(&errs, "node.store_compression").message,
        "expected \"zstd\" or \"none\"",
    );
    assert_contains(
        &at(&errs, "node.log_format").message,
        "expected \"text\" or \"json\"",
    );
    assert_contains(
        &at(&errs, "sources.support.port").message,
        "expected an integer, found a string",
    );
    // Display: one "path: message" line per error, in key order.
    let shown = ConfigErrors(errs.clone()).to_string();
    assert_eq!(shown.lines().count(), 9);
    assert!(
        shown
            .lines()
            .next()
            .unwrap()
            .starts_with("node.http_listen: ")
    );
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let errs = errors(&BASE.replace(
        "auth = \"oauth2\"",
        "auth = \"oauth2\"\npasword_env = \"X\"\ncolour = \"blue\"",
    ));
    assert_contains(
        &at(&errs, "sources.support.pasword_env").message,
        "unknown key; did you mean \"password_env\"?",
    );
    let far = &at(&errs, "sources.support.colour").message;
    assert_contains(far, "unknown key");
    assert_contains(far, "poll_interval_secs");

    let errs = errors(&format!("{BASE}\n[nodes]\ndata_dir = \"x\"\n"));
    assert_contains(&at(&errs, "nodes").message, "did you mean \"node\"?");
}

#[test]
fn tls_below_1_2_is_refused() {
    let errs = errors(&format!("{BASE}\n[tls]\nmin_version = \"1.1\"\n"));
    let m = &at(&errs, "tls.min_version").message;
    assert_contains(m, "\"1.1\"");
    assert_contains(m, "TLS below 1.2");

    let errs = errors(&format!("{BASE}\n[tls]\nmin_version = 1.2\n"));
    assert_contains(&at(&errs, "tls.min_version").message, "(quoted)");

    let s = ok(&format!("{BASE}\n[tls]\nmin_version = \"1.3\"\n"));
    assert_eq!(s.tls.min_version, TlsVersion::V1_3);
}

#[test]
fn native_backend_needs_the_feature() {
    let result = load(&format!("{BASE}\n[tls]\nbackend = \"native\"\n"));
    if cfg!(feature = "native-tls") {
        assert_eq!(result.unwrap().tls.backend, TlsBackend::Native);
    } else {
        let errs = result.unwrap_err().0;
        assert_contains(&at(&errs, "tls.backend").message, "--features native-tls");
    }
}

#[test]
fn plaintext_is_refused() {
    for value in ["plain", "none", "plaintext"] {
        let errs = errors(&BASE.replace(
            "auth = \"oauth2\"",
            &format!("auth = \"oauth2\"\nsecurity = \"{value}\""),
        ));
        let m = &at(&errs, "sources.support.security").message;
        assert_contains(m, "never connects in plaintext");
    }
}

#[test]
fn inline_secrets_are_refused_without_echoing_them() {
    let text = format!(
        "{BASE}password = \"hunter2-source\"\n\
         [providers.o365.extra]\nrefresh_token = \"hunter2-nested\"\n\
         [providers.g]\nkind = \"gmail\"\nclient_id = \"x\"\nclient_secret = \"hunter2-client\"\n"
    );
    let err = load(&text).unwrap_err();
    let shown = err.to_string();
    assert!(!shown.contains("hunter2"), "a secret leaked:\n{shown}");
    assert_contains(
        &at(&err.0, "sources.support.password").message,
        "secrets are never inline: use password_env or password_file",
    );
    assert_contains(
        &at(&err.0, "providers.g.client_secret").message,
        "use client_secret_env or client_secret_file",
    );
    assert_contains(
        &at(&err.0, "providers.o365.extra.refresh_token").message,
        "secrets are never inline",
    );
}

#[test]
fn a_secret_pasted_into_an_env_key_is_not_echoed() {
    let err = load(&BASE.replace(
        "auth = \"oauth2\"",
        "auth = \"password\"\npassword_env = \"s3cret pass!\"",
    ))
    .unwrap_err();
    assert!(!err.to_string().contains("s3cret"));
    assert_contains(
        &at(&err.0, "sources.support.password_env").message,
        "name of an environment variable",
    );
}

#[test]
fn source_naming_a_missing_provider() {
    let errs = errors(&BASE.replace("provider = \"o365\"", "provider = \"o365x\""));
    assert_contains(
        &at(&errs, "sources.support.provider").message,
        "no provider named \"o365x\"; did you mean \"o365\"?",
    );
}

#[test]
fn http_token_endpoint_only_on_loopback() {
    let oidc = |url: &str| {
        format!(
            "{BASE}\n[providers.corp]\nkind = \"oidc\"\nclient_id = \"c\"\ntoken_url = \"{url}\"\n"
        )
    };
    let errs = errors(&oidc("http://idp.example.com/token"));
    assert_eq!(
        at(&errs, "providers.corp.token_url").message,
        "token endpoint must use https (http is allowed only on loopback)"
    );
    for url in [
        "http://127.0.0.1:8080/token",
        "http://127.0.0.2/token",
        "http://[::1]:8080/token",
        "http://localhost/token",
        "https://idp.example.com/token",
    ] {
        let s = ok(&oidc(url));
        assert_eq!(s.providers["corp"].token_url.as_deref(), Some(url));
    }
    let errs = errors(&oidc("ftp://idp.example.com/token"));
    assert_contains(&at(&errs, "providers.corp.token_url").message, "https");
}

#[test]
fn oidc_needs_issuer_or_token_url() {
    let errs = errors(&format!(
        "{BASE}\n[providers.corp]\nkind = \"oidc\"\nclient_id = \"c\"\n"
    ));
    assert_contains(&at(&errs, "providers.corp").message, "issuer");
    let s = ok(&format!(
        "{BASE}\n[providers.corp]\nkind = \"oidc\"\nclient_id = \"c\"\nissuer = \"https://idp.example.com\"\n"
    ));
    assert_eq!(s.providers["corp"].token_url, None);
}

#[test]
fn redirect_uri_must_be_http_loopback() {
    let with = |uri: &str| {
        BASE.replace(
            "client_id = \"app-id\"",
            &format!("client_id = \"app-id\"\nredirect_uri = \"{uri}\""),
        )
    };
    ok(&with("http://localhost:8765/callback"));
    ok(&with("http://[::1]:8765/"));
    for bad in [
        "https://127.0.0.1:8765/",
        "http://example.com/cb",
        "http://10.0.0.1/",
    ] {
        let errs = errors(&with(bad));
        assert_contains(
            &at(&errs, "providers.o365.redirect_uri").message,
            "loopback",
        );
    }
}

#[test]
fn pop3_cannot_mark_seen_or_use_folders() {
    let errs = errors(&BASE.replace(
        "protocol = \"imap\"",
        "protocol = \"pop3\"\nafter_ingest = \"seen\"\nfolders = [\"INBOX\"]",
    ));
    assert_contains(
        &at(&errs, "sources.support.after_ingest").message,
        "not possible with pop3",
    );
    assert_contains(
        &at(&errs, "sources.support.folders").message,
        "only to protocol = \"imap\"",
    );
}

#[test]
fn move_needs_move_to_and_move_to_needs_move() {
    let errs = errors(&BASE.replace(
        "auth = \"oauth2\"",
        "auth = \"oauth2\"\nafter_ingest = \"move\"",
    ));
    assert_contains(&at(&errs, "sources.support.move_to").message, "required");

    let errs = errors(&BASE.replace("auth = \"oauth2\"", "auth = \"oauth2\"\nmove_to = \"Done\""));
    assert_contains(
        &at(&errs, "sources.support.move_to").message,
        "after_ingest",
    );

    let errs = errors(&BASE.replace(
        "auth = \"oauth2\"",
        "auth = \"oauth2\"\nafter_ingest = \"move\"\nmove_to = \"INBOX\"",
    ));
    assert_contains(
        &at(&errs, "sources.support.move_to").message,
        "collected again",
    );
}

#[test]
fn graph_scopes_are_refused_for_office365() {
    let with = |scopes: &str| {
        BASE.replace(
            "client_id = \"app-id\"",
            &format!("client_id = \"app-id\"\nscopes = {scopes}"),
        )
    };
    let errs = errors(&with(
        "[\"offline_access\", \"IMAP.AccessAsUser.All\", \"https://graph.microsoft.com/POP.AccessAsUser.All\"]",
    ));
    let bare = &at(&errs, "providers.o365.scopes[1]").message;
    assert_contains(bare, "Microsoft Graph token");
    assert_contains(bare, "https://outlook.office.com/IMAP.AccessAsUser.All");
    assert_contains(
        &at(&errs, "providers.o365.scopes[2]").message,
        "https://outlook.office.com/POP.AccessAsUser.All",
    );
    assert_eq!(errs.len(), 2);

    let s = ok(&with(
        "[\"https://outlook.office.com/IMAP.AccessAsUser.All\", \"offline_access\"]",
    ));
    assert_eq!(s.providers["o365"].scopes.as_ref().map(Vec::len), Some(2));
}

#[test]
fn app_only_needs_a_client_secret() {
    let errs = errors(&BASE.replace(
        "client_id = \"app-id\"",
        "client_id = \"app-id\"\nflow = \"app_only\"",
    ));
    assert_contains(
        &at(&errs, "providers.o365.flow").message,
        "client_secret_env",
    );
    // One tenant, named: `common` and friends cannot issue an app-only token for a mailbox.
    let errs = errors(&BASE.replace(
        "client_id = \"app-id\"",
        "client_id = \"app-id\"\nflow = \"app_only\"\nclient_secret_env = \"S\"",
    ));
    assert_contains(&at(&errs, "providers.o365.tenant").message, "tenant's id");
    ok(&BASE.replace(
        "client_id = \"app-id\"",
        "client_id = \"app-id\"\nflow = \"app_only\"\nclient_secret_env = \"S\"\ntenant = \"contoso.com\"",
    ));
}

#[test]
fn password_auth_needs_exactly_one_secret_reference() {
    let pw = |lines: &str| {
        BASE.replace(
            "auth = \"oauth2\"\nprovider = \"o365\"",
            &format!("auth = \"password\"\n{lines}"),
        )
    };
    let errs = errors(&pw(""));
    assert_contains(&at(&errs, "sources.support").message, "password_env");
    let errs = errors(&pw("password_env = \"A\"\npassword_file = \"b\""));
    assert_contains(&at(&errs, "sources.support").message, "both set");
    let errs = errors(&pw("password_env = \"A\"\nprovider = \"o365\""));
    assert_contains(&at(&errs, "sources.support.provider").message, "oauth2");
}

#[test]
fn wrong_types_name_the_expected_type() {
    let errs = errors(&BASE.replace(
        "auth = \"oauth2\"",
        "auth = \"oauth2\"\nidle = \"yes\"\nfolders = \"INBOX\"\nenabled = 1",
    ));
    assert_contains(
        &at(&errs, "sources.support.idle").message,
        "expected true or false, found a string",
    );
    assert_contains(
        &at(&errs, "sources.support.folders").message,
        "expected an array of strings",
    );
    assert_contains(
        &at(&errs, "sources.support.enabled").message,
        "found an integer",
    );
}

#[test]
fn an_unquoted_toml_date_is_accepted() {
    let s = ok(&BASE.replace(
        "client_id = \"app-id\"",
        "client_id = \"app-id\"\nclient_secret_expires = 2027-06-30",
    ));
    assert_eq!(
        s.providers["o365"].client_secret_expires,
        chrono::NaiveDate::from_ymd_opt(2027, 6, 30)
    );
}

#[test]
fn url_credentials_are_not_echoed() {
    let errs = errors(&BASE.replace(
        "client_id = \"app-id\"",
        "client_id = \"app-id\"\ntoken_url = \"https://user:pa55word@idp.example.com/t\"",
    ));
    let m = &at(&errs, "providers.o365.token_url").message;
    assert!(!m.contains("pa55word"), "{m}");
    assert_contains(m, "credentials");
}

#[test]
fn names_must_be_lowercase() {
    let errs = errors(&BASE.replace("[sources.support]", "[sources.Support]"));
    assert_contains(&at(&errs, "sources.Support").message, "lowercase");
}

#[test]
fn office365_rejects_oauthbearer() {
    let errs = errors(&BASE.replace(
        "auth = \"oauth2\"",
        "auth = \"oauth2\"\nsasl = \"oauthbearer\"",
    ));
    assert_contains(&at(&errs, "sources.support.sasl").message, "XOAUTH2");
}

#[test]
fn toml_syntax_errors_do_not_echo_the_line() {
    let err = load("[sources.x]\npassword = hunter2\n").unwrap_err();
    assert_eq!(err.len(), 1);
    let shown = err.to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_contains(&shown, "line 2");
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailsluice.toml");
    std::fs::write(&path, BASE).unwrap();
    let s = super::load(&path).unwrap();
    assert_eq!(source(&s, "support").host, "outlook.office365.com");

    let missing = dir.path().join("nope.toml");
    let err = super::load(&missing).unwrap_err();
    assert_eq!(err.0[0].path, missing.display().to_string());
    assert_contains(&err.0[0].message, "not found");
}

#[test]
fn resolve_path_prefers_the_explicit_path() {
    assert_eq!(
        resolve_path(Some(Path::new("/etc/mailsluice.toml"))),
        PathBuf::from("/etc/mailsluice.toml")
    );
}

#[test]
fn check_secrets_reports_missing_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let present = dir.path().join("present");
    std::fs::write(&present, "s3cret-value\n").unwrap();
    let missing = dir.path().join("missing");
    let text = format!(
        "{BASE}
[sources.a]
protocol = \"imap\"
host = \"h\"
username = \"u\"
auth = \"password\"
password_env = \"MAILSLUICE_TEST_SURELY_UNSET_7F3A\"

[sources.b]
protocol = \"imap\"
host = \"h\"
username = \"u\"
auth = \"password\"
password_file = {missing:?}

[sources.c]
protocol = \"imap\"
host = \"h\"
username = \"u\"
auth = \"password\"
password_file = {present:?}

[sources.off]
protocol = \"imap\"
host = \"h\"
username = \"u\"
auth = \"password\"
password_env = \"MAILSLUICE_TEST_SURELY_UNSET_7F3A\"
enabled = false
"
    );
    let s = ok(&text);
    let errs = check_secrets(&s);
    assert_eq!(errs.len(), 2, "{}", ConfigErrors(errs.clone()));
    assert_contains(
        &at(&errs, "sources.a.password_env").message,
        "environment variable MAILSLUICE_TEST_SURELY_UNSET_7F3A is not set",
    );
    let file = &at(&errs, "sources.b.password_file").message;
    assert_contains(file, &missing.display().to_string());
    assert_contains(file, "does not exist");

    assert_eq!(
        read_secret(&SecretRef::File(present.clone())).as_deref(),
        Ok("s3cret-value")
    );
}

#[test]
fn check_secrets_covers_provider_client_secrets_in_use() {
    let s = ok(&BASE.replace(
        "client_id = \"app-id\"",
        "client_id = \"app-id\"\nclient_secret_env = \"MAILSLUICE_TEST_SURELY_UNSET_7F3B\"",
    ));
    let errs = check_secrets(&s);
    assert_contains(
        &at(&errs, "providers.o365.client_secret_env").message,
        "MAILSLUICE_TEST_SURELY_UNSET_7F3B",
    );
}

#[test]
fn read_secret_never_returns_the_value_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let err = read_secret(&SecretRef::File(empty)).unwrap_err();
    assert_contains(&err, "is empty");
}

#[test]
fn sovereign_cloud_changes_the_authority_and_needs_explicit_scopes() {
    let needs_scopes = errors(&BASE.replace(
        "client_id = \"app-id\"",
        "client_id = \"app-id\"\ncloud = \"usgov\"",
    ));
    assert_contains(
        &at(&needs_scopes, "providers.o365.cloud").message,
        "needs explicit scopes",
    );
    let s = ok(&BASE.replace(
        "client_id = \"app-id\"",
        "client_id = \"app-id\"\ncloud = \"usgov\"\nscopes = [\"https://outlook.office365.us/IMAP.AccessAsUser.All\", \"offline_access\"]",
    ));
    let p = &s.providers["o365"];
    assert_contains(
        p.token_url.as_deref().unwrap(),
        "https://login.microsoftonline.us/organizations/oauth2/v2.0/token",
    );
    let bad = errors(&BASE.replace(
        "client_id = \"app-id\"",
        "client_id = \"app-id\"\ncloud = \"mars\"",
    ));
    assert_contains(&at(&bad, "providers.o365.cloud").message, "is not a cloud");
    let global = ok(BASE);
    assert_contains(
        global.providers["o365"].token_url.as_deref().unwrap(),
        "https://login.microsoftonline.com/",
    );
}

#[test]
fn delete_after_days_only_for_pop3_delete() {
    let pop = BASE
        .replace("protocol = \"imap\"", "protocol = \"pop3\"")
        .replace(
            "provider = \"o365\"",
            "provider = \"o365\"\nafter_ingest = \"delete\"\ndelete_after_days = 7",
        );
    assert_eq!(source(&ok(&pop), "support").delete_after_days, 7);
    let imap = BASE.replace(
        "provider = \"o365\"",
        "provider = \"o365\"\nafter_ingest = \"delete\"\ndelete_after_days = 7",
    );
    let e = errors(&imap);
    assert_contains(
        &at(&e, "sources.support.delete_after_days").message,
        "applies only to protocol = \"pop3\"",
    );
}
