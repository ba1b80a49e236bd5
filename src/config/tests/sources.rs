//! `[sources.NAME]`: protocols, ports, security, post-ingest actions and authentication;
//! options that do not apply to a source's protocol or authentication are errors.

use super::*;

#[test]
fn pop3_starttls_defaults_to_110() {
    let s = ok(&BASE.replace(
        "protocol = \"imap\"",
        "protocol = \"pop3\"\nsecurity = \"starttls\"",
    ));
    assert_eq!(source(&s, "support").port, 110);
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
fn source_naming_a_missing_provider() {
    let errs = errors(&BASE.replace("provider = \"o365\"", "provider = \"o365x\""));
    assert_contains(
        &at(&errs, "sources.support.provider").message,
        "no provider named \"o365x\"; did you mean \"o365\"?",
    );
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
fn office365_rejects_oauthbearer() {
    let errs = errors(&BASE.replace(
        "auth = \"oauth2\"",
        "auth = \"oauth2\"\nsasl = \"oauthbearer\"",
    ));
    assert_contains(&at(&errs, "sources.support.sasl").message, "XOAUTH2");
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

/// A source's message allowance is what a server may make the node buffer for one message:
/// capped at 1 GiB when the config is loaded, so a typo (or an extra digit) cannot hand a
/// hostile server the node's memory. Exactly 1 GiB passes; one byte more is refused.
#[test]
fn max_message_bytes_is_capped_at_one_gib() {
    let with = |n: u64| {
        BASE.replace(
            "auth = \"oauth2\"",
            &format!("auth = \"oauth2\"\nmax_message_bytes = {n}"),
        )
    };
    let s = ok(&with(1 << 30));
    assert_eq!(source(&s, "support").max_message_bytes, 1 << 30);
    let errs = errors(&with((1 << 30) + 1));
    let m = &at(&errs, "sources.support.max_message_bytes").message;
    assert_contains(m, "must be at most 1073741824 (1 GiB), found 1073741825");
}
