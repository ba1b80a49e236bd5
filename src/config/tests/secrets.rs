//! Secret references: a secret pasted where a reference belongs is refused without being
//! echoed, [`check_secrets`] names the variable or file that is missing, and
//! [`read_secret`]'s errors never hold the value.

use super::*;

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
        read_secret(&SecretRef::File(present.clone())).unwrap(),
        "s3cret-value"
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
    let err = read_secret(&SecretRef::File(empty.clone())).unwrap_err();
    assert!(
        matches!(&err, SecretError::FileEmpty { path } if *path == empty),
        "{err:?}"
    );
    assert_contains(&err.to_string(), "is empty");
    assert_contains(&err.to_string(), &empty.display().to_string());

    // Not UTF-8, so unreadable as text; the bytes around the bad one are the secret.
    let binary = dir.path().join("binary");
    std::fs::write(&binary, b"s3cret-\xff-value").unwrap();
    let err = read_secret(&SecretRef::File(binary)).unwrap_err();
    assert!(matches!(err, SecretError::FileUnreadable { .. }), "{err:?}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_contains(&shown, "binary");
    }
    assert_eq!(err.kind(), crate::telemetry::ErrorKind::Auth);
}

/// Another local user reading the node's key or a secret file: every file that holds one is
/// named with the key that configures it, and the ones group or others may open are reported
/// with `chmod 600`. Missing files are not this check's business.
#[cfg(unix)]
#[test]
fn secret_files_open_to_group_or_others_are_reported_with_their_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, "s3cret-value\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let key = file("key", 0o644);
    let client = file("client", 0o600);
    let password = file("password", 0o640);
    let disabled = file("disabled", 0o604);
    let api = file("api", 0o600);
    let metrics = file("metrics", 0o400);
    let grafana = file("grafana", 0o620);
    let text = format!(
        "[node]\nsecret_key_file = {key:?}\napi_token_file = {api:?}\nmetrics_token_file = {metrics:?}\n
[api_clients.grafana]
role = \"read\"
token_file = {grafana:?}

[providers.o365]
kind = \"office365\"
client_id = \"app-id\"
client_secret_file = {client:?}

[sources.a]
protocol = \"imap\"
host = \"h\"
username = \"u\"
auth = \"password\"
password_file = {password:?}

[sources.b]
protocol = \"imap\"
host = \"h\"
username = \"u\"
auth = \"password\"
password_file = {disabled:?}
enabled = false

[sources.c]
protocol = \"imap\"
host = \"h\"
username = \"u\"
auth = \"oauth2\"
provider = \"o365\"
"
    );
    let s = ok(&text);
    let files = secret_files(&s);
    assert_eq!(
        files,
        vec![
            ("node.secret_key_file".to_owned(), key.clone()),
            ("providers.o365.client_secret_file".to_owned(), client),
            ("sources.a.password_file".to_owned(), password.clone()),
            ("sources.b.password_file".to_owned(), disabled.clone()),
            ("node.api_token_file".to_owned(), api.clone()),
            ("node.metrics_token_file".to_owned(), metrics.clone()),
            ("api_clients.grafana.token_file".to_owned(), grafana.clone()),
        ]
    );
    let loose = loose_secret_files(&files);
    let named: Vec<(&str, u32)> = loose.iter().map(|l| (l.key.as_str(), l.mode)).collect();
    assert_eq!(
        named,
        [
            ("node.secret_key_file", 0o644),
            ("sources.a.password_file", 0o640),
            ("sources.b.password_file", 0o604),
            ("api_clients.grafana.token_file", 0o620),
        ]
    );
    let shown = loose[0].to_string();
    assert_contains(&shown, "node.secret_key_file");
    assert_contains(&shown, &key.display().to_string());
    assert_contains(&shown, "mode 0644");
    assert_contains(&shown, &format!("chmod 600 {}", key.display()));
    assert!(!shown.contains("s3cret"), "{shown}");

    // A missing file is not reported (check_secrets says it is missing).
    let absent = [("node.api_token_file".to_owned(), dir.path().join("absent"))];
    assert!(loose_secret_files(&absent).is_empty());
}
