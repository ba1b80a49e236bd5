//! Configuration tests. Helpers and whole-file behaviour (the example files, defaults,
//! environment overrides, collecting every error at once, unknown keys, TOML syntax) live
//! here; each section's rules are tested in the file named after it, as in `validate/`.
//!
//! Every test that expects an error names the key path it expects it at ([`at`]), so an
//! error reported at the wrong key fails the test.

mod node;
mod providers;
mod secrets;
mod sinks;
mod sources;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../../config/mailsluice.toml");
const CONTRIB_EXAMPLE: &str = include_str!("../../../contrib/mailsluice.toml");

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
            ("MAILSLUICE__NODE__HTTP_ALLOW_PLAINTEXT", "true"),
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
fn names_must_be_lowercase() {
    let errs = errors(&BASE.replace("[sources.support]", "[sources.Support]"));
    assert_contains(&at(&errs, "sources.Support").message, "lowercase");
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
