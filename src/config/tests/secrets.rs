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
