//! Proves the test harness (tests/support) starts real servers that behave as the other
//! integration tests assume: Dovecot with password and OAuth2 logins over TLS, and the OIDC
//! server's flows, refresh-token rotation, statistics and fault injection. Raw sockets and
//! rustls only: nothing from the crate under test.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::oidc::jwt_payload;
use support::wire::{self, Conn};
use support::{Dovecot, DovecotOptions, Oidc, OidcOptions};

const ALICE: &str = "alice@example.test";
const ALICE_PASSWORD: &str = "alice-password";
const SHARED: &str = "shared@example.test";
const GRAPH: &str = "https://graph.microsoft.com";
const USER_SCOPE: &str = "openid offline_access email mail";

/// A CRLF message whose size grows with `n`, so sizes identify messages.
fn message(n: usize) -> Vec<u8> {
    format!(
        "From: bob@example.test\r\nTo: {ALICE}\r\nSubject: seed {n}\r\nMessage-ID: <seed-{n}@example.test>\r\n\r\n{}\r\n",
        "x".repeat(10 * n)
    )
    .into_bytes()
}

fn xoauth2(user: &str, token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or_default()
}

/// IMAPS `AUTHENTICATE XOAUTH2` as [`ALICE`] with an initial response (SASL-IR); returns the
/// final line.
fn imap_xoauth2<S: std::io::Read + std::io::Write>(
    imap: &mut Conn<S>,
    tag: &str,
    token: &str,
) -> String {
    imap_xoauth2_as(imap, tag, ALICE, token)
}

/// [`imap_xoauth2`] with SASL `user=<user>`.
fn imap_xoauth2_as<S: std::io::Read + std::io::Write>(
    imap: &mut Conn<S>,
    tag: &str,
    user: &str,
    token: &str,
) -> String {
    imap.send(&format!(
        "{tag} AUTHENTICATE XOAUTH2 {}",
        xoauth2(user, token)
    ));
    let line = imap.read_line();
    if let Some(challenge) = line.strip_prefix("+ ") {
        // Rejected token: the server explains in a continuation and waits for an empty line.
        let decoded = STANDARD.decode(challenge).expect("base64 challenge");
        let error: Value = serde_json::from_slice(&decoded).expect("JSON challenge");
        assert_eq!(error["status"], "401", "XOAUTH2 error challenge: {error}");
        imap.send("");
        return imap.read_line();
    }
    line
}

#[test]
fn harness_smoke() {
    let t0 = Instant::now();
    let oidc = Oidc::start(OidcOptions::default());
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..Default::default()
    });
    eprintln!(
        "oidc ready in {:?}, dovecot ready in {:?}",
        oidc.startup, dovecot.startup
    );

    // (a) IMAPS password login; seeded messages visible, UIDs in seed order.
    let seeded: Vec<Vec<u8>> = (1..=3).map(message).collect();
    dovecot.seed(ALICE, &seeded);
    let mut imap = wire::tls(dovecot.imaps_port, &dovecot.ca);
    assert!(imap.read_line().starts_with("* OK"));
    let login = imap.imap("a1", &format!("LOGIN {ALICE} {ALICE_PASSWORD}"));
    assert!(last(&login).starts_with("a1 OK"), "{login:?}");
    let select = imap.imap("a2", "SELECT INBOX");
    assert!(select.iter().any(|l| l == "* 3 EXISTS"), "{select:?}");
    let fetch = imap.imap("a3", "UID FETCH 1:* (RFC822.SIZE)");
    let sizes: Vec<usize> = fetch
        .iter()
        .filter_map(|l| l.split("RFC822.SIZE ").nth(1))
        .map(|s| s.trim_end_matches(')').parse().expect("size"))
        .collect();
    let expected: Vec<usize> = seeded.iter().map(Vec::len).collect();
    assert_eq!(sizes, expected, "UIDs ascend in seed order: {fetch:?}");
    let uids: Vec<&str> = fetch
        .iter()
        .filter_map(|l| l.split("UID ").nth(1))
        .collect();
    assert!(
        uids[0].starts_with("1 ") && uids[2].starts_with("3 "),
        "{fetch:?}"
    );
    dovecot.seed_folder(ALICE, "Archive/2024", &[message(4), message(5)]);
    let select = imap.imap("a4", "SELECT \"Archive/2024\"");
    assert!(select.iter().any(|l| l == "* 2 EXISTS"), "{select:?}");
    imap.imap("a5", "LOGOUT");

    // (b) IMAPS XOAUTH2 with a token from the authorization-code flow; a garbage token is
    // refused after the error continuation.
    let tokens = oidc.login_auth_code("collector", ALICE, ALICE_PASSWORD, USER_SCOPE);
    let refresh0 = tokens
        .refresh_token
        .clone()
        .expect("offline_access gives a refresh token");
    let id_token = tokens
        .id_token
        .as_deref()
        .expect("openid gives an ID token");
    let claims = id_token.split('.').nth(1).expect("JWT payload");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url")).expect("JSON");
    assert_eq!(
        (&claims["sub"], &claims["email"]),
        (&json!(ALICE), &json!(ALICE)),
        "{claims}"
    );
    assert_eq!(oidc.introspect(&tokens.access_token)["email"], ALICE);
    let mut imap = wire::tls(dovecot.imaps_port, &dovecot.ca);
    imap.read_line();
    let bad = imap_xoauth2(&mut imap, "b1", "garbage-token");
    assert!(bad.starts_with("b1 NO"), "{bad}");
    let good = imap_xoauth2(&mut imap, "b2", &tokens.access_token);
    assert!(good.starts_with("b2 OK"), "{good}\n{}", dovecot.log());
    imap.imap("b3", "LOGOUT");

    // (c) Refresh rotates the refresh token; the refreshed access token works.
    let refreshed = oidc.refresh("collector", &refresh0).expect("refresh");
    let refresh1 = refreshed
        .refresh_token
        .clone()
        .expect("rotated refresh token");
    assert_ne!(refresh1, refresh0, "every refresh rotates");
    assert_ne!(refreshed.access_token, tokens.access_token);

    // (d) POP3S AUTH XOAUTH2, two-step.
    let mut pop = wire::tls(dovecot.pop3s_port, &dovecot.ca);
    assert!(pop.read_line().starts_with("+OK"));
    assert_eq!(pop.pop3("AUTH XOAUTH2"), "+ ");
    let reply = pop.pop3(&xoauth2(ALICE, &refreshed.access_token));
    assert!(reply.starts_with("+OK"), "{reply}\n{}", dovecot.log());
    let stat = pop.pop3("STAT");
    assert!(stat.starts_with("+OK 3 "), "{stat}");
    pop.pop3("QUIT");

    // (c, continued) The spent refresh token is invalid_grant, and oidc-provider's reuse
    // detection then revokes the whole grant: the rotated one dies too.
    let reuse = oidc
        .refresh("collector", &refresh0)
        .expect_err("spent refresh token");
    assert!(reuse.contains("invalid_grant"), "{reuse}");
    let after = oidc
        .refresh("collector", &refresh1)
        .expect_err("grant revoked by reuse");
    assert!(after.contains("invalid_grant"), "{after}");
    // Dovecot introspects at every login: the revoked access token no longer works.
    let mut imap = wire::tls(dovecot.imaps_port, &dovecot.ca);
    imap.read_line();
    let revoked = imap_xoauth2(&mut imap, "c1", &refreshed.access_token);
    assert!(revoked.starts_with("c1 NO"), "{revoked}");
    imap.imap("c2", "LOGOUT");

    // (e) The token endpoint counted it all.
    let stats = oidc.stats();
    assert_eq!(stats["token_requests"]["refresh_token"]["ok"], 1, "{stats}");
    assert_eq!(
        stats["token_requests"]["refresh_token"]["error"], 2,
        "{stats}"
    );
    assert_eq!(
        stats["token_errors"]["refresh_token"]["invalid_grant"], 2,
        "{stats}"
    );
    assert_eq!(
        stats["token_requests"]["authorization_code"]["ok"], 1,
        "{stats}"
    );

    // (f) Device flow; its token logs in to IMAP.
    let device = oidc.login_device("collector", ALICE, ALICE_PASSWORD, USER_SCOPE);
    assert!(device.refresh_token.is_some(), "{device:?}");
    let mut imap = wire::tls(dovecot.imaps_port, &dovecot.ca);
    imap.read_line();
    let ok = imap_xoauth2(&mut imap, "f1", &device.access_token);
    assert!(ok.starts_with("f1 OK"), "{ok}");
    imap.imap("f2", "LOGOUT");

    // Every login went over TLS.
    let logins = dovecot.wait_for_logins(4);
    assert_eq!(logins.len(), 4, "{logins:#?}");
    assert!(logins.iter().all(|l| l.contains(", TLS")), "{logins:#?}");
    eprintln!("harness_smoke took {:?}", t0.elapsed());
}

/// PROTOCOLS §9: Dovecot counts 127.0.0.1 -> 127.0.0.1 as secured (plaintext login allowed on
/// the STARTTLS port); from 127.0.0.2 it does not, and STARTTLS then works.
#[test]
fn dovecot_loopback_peer_is_secured_but_127_0_0_2_is_not() {
    let dovecot = Dovecot::start(DovecotOptions::default());

    let mut same = wire::plain(dovecot.imap_port);
    let greeting = same.read_line();
    assert!(!greeting.contains("LOGINDISABLED"), "{greeting}");
    let login = same.imap("s1", &format!("LOGIN {ALICE} {ALICE_PASSWORD}"));
    assert!(last(&login).starts_with("s1 OK"), "{login:?}");
    same.imap("s2", "LOGOUT");

    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut plain = wire::plain_from(other, dovecot.imap_port);
    let greeting = plain.read_line();
    assert!(greeting.contains("LOGINDISABLED"), "{greeting}");
    let starttls = plain.imap("t1", "STARTTLS");
    assert!(last(&starttls).starts_with("t1 OK"), "{starttls:?}");
    let mut tls = plain.starttls(&dovecot.ca);
    let login = tls.imap("t2", &format!("LOGIN {ALICE} {ALICE_PASSWORD}"));
    assert!(last(&login).starts_with("t2 OK"), "{login:?}");
    tls.imap("t3", "LOGOUT");

    let mut pop = wire::plain_from(other, dovecot.pop3_port);
    pop.read_line();
    let user = pop.pop3(&format!("USER {ALICE}"));
    assert!(user.starts_with("-ERR"), "{user}");
    assert_eq!(pop.pop3("STLS"), "+OK Begin TLS negotiation now.");
    let mut pop = pop.starttls(&dovecot.ca);
    assert!(pop.pop3(&format!("USER {ALICE}")).starts_with("+OK"));
    assert!(
        pop.pop3(&format!("PASS {ALICE_PASSWORD}"))
            .starts_with("+OK")
    );
    pop.pop3("QUIT");

    let logins = dovecot.wait_for_logins(3);
    assert!(
        logins[0].contains("secured") && !logins[0].contains("TLS"),
        "{logins:#?}"
    );
    assert!(logins[1..].iter().all(|l| l.contains("TLS")), "{logins:#?}");
}

/// The OIDC server's wrong-password page, injected faults and user revocation.
#[test]
fn oidc_rejects_wrong_password_injects_faults_and_revokes_users() {
    let oidc = Oidc::start(OidcOptions::default());

    let err = oidc
        .try_login_auth_code("collector", ALICE, "wrong", USER_SCOPE)
        .expect_err("wrong password");
    assert!(err.starts_with("login rejected (HTTP 401)"), "{err}");

    let tokens = oidc.login_auth_code("collector-confidential", ALICE, ALICE_PASSWORD, USER_SCOPE);
    let refresh = tokens.refresh_token.clone().expect("refresh token");
    oidc.queue_token_faults(json!([
        {"status": 500},
        {"status": 400, "error": "slow_down"},
    ]));
    let first = oidc
        .refresh("collector-confidential", &refresh)
        .expect_err("injected 500");
    assert!(
        first.contains("HTTP 500") && first.contains("server_error"),
        "{first}"
    );
    let second = oidc
        .refresh("collector-confidential", &refresh)
        .expect_err("injected 400");
    assert!(second.contains("slow_down"), "{second}");
    // Injected replies never reached the provider: the refresh token is still unspent.
    let third = oidc
        .refresh("collector-confidential", &refresh)
        .expect("real reply");
    let stats = oidc.stats();
    assert_eq!(
        stats["token_requests"]["refresh_token"],
        json!({"ok": 1, "error": 2, "injected": 2}),
        "{stats}"
    );

    // A delay-only entry delays the real reply.
    oidc.queue_token_faults(json!([{"delay_ms": 300}]));
    let started = Instant::now();
    let third = oidc
        .refresh(
            "collector-confidential",
            third.refresh_token.as_deref().expect("rotated"),
        )
        .expect("delayed real reply");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));

    let app = oidc.client_credentials("svc", "mail");
    assert_eq!(
        oidc.introspect(&app.access_token)["email"],
        "shared@example.test"
    );

    oidc.revoke_user(ALICE);
    assert_eq!(oidc.introspect(&third.access_token)["active"], false);
    let revoked = oidc
        .refresh(
            "collector-confidential",
            third.refresh_token.as_deref().expect("rotated"),
        )
        .expect_err("revoked user");
    assert!(revoked.contains("invalid_grant"), "{revoked}");
    assert_eq!(
        oidc.introspect(&app.access_token)["active"],
        true,
        "app tokens survive"
    );
}

/// `min_tls` reaches Dovecot's `ssl_min_protocol`.
#[test]
fn dovecot_min_tls_is_enforced() {
    let dovecot = Dovecot::start(DovecotOptions {
        min_tls: "TLSv1.3",
        ..Default::default()
    });
    let tls12_only = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(dovecot.ca.root_store())
        .with_no_client_auth(),
    );
    let refused = wire::try_tls_with(
        dovecot.imaps_port,
        tls12_only,
        support::certs::loopback_name(),
    );
    // Observed: Dovecot (OpenSSL) just closes the connection, without a TLS alert.
    assert!(refused.is_err(), "a TLS 1.2 client must be refused");
    dovecot.wait_for_log("the refusal", |log| {
        log.contains("unsupported protocol").then_some(())
    });
    let conn = wire::tls(dovecot.pop3s_port, &dovecot.ca);
    assert_eq!(conn.tls_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

/// `OidcOptions::delegations`: alice's access tokens name the shared mailbox (so Dovecot takes
/// them only with `user=shared@...`), while her ID token, userinfo and `sub` stay hers.
#[test]
fn oidc_delegation_puts_the_mailbox_into_access_tokens_only() {
    let oidc = Oidc::start(OidcOptions {
        delegations: vec![(ALICE.into(), SHARED.into())],
        ..OidcOptions::default()
    });
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..Default::default()
    });
    dovecot.seed(SHARED, &[message(1), message(2)]);

    let tokens = oidc.login_auth_code("collector", ALICE, ALICE_PASSWORD, USER_SCOPE);
    let id_token = jwt_payload(tokens.id_token.as_deref().expect("ID token")).expect("ID token");
    assert_eq!(
        (&id_token["sub"], &id_token["email"]),
        (&json!(ALICE), &json!(ALICE)),
        "{id_token}"
    );
    let (status, userinfo) = oidc.userinfo(&tokens.access_token);
    assert_eq!(status, 200, "{userinfo}");
    assert_eq!(userinfo["email"], ALICE, "{userinfo}");
    let introspected = oidc.introspect(&tokens.access_token);
    assert_eq!(
        (&introspected["sub"], &introspected["email"]),
        (&json!(ALICE), &json!(SHARED)),
        "{introspected}"
    );
    assert!(
        jwt_payload(&tokens.access_token).is_err(),
        "access tokens stay opaque"
    );

    let mut imap = wire::tls(dovecot.imaps_port, &dovecot.ca);
    imap.read_line();
    let own = imap_xoauth2_as(&mut imap, "d1", ALICE, &tokens.access_token);
    assert!(own.starts_with("d1 NO"), "{own}");
    let shared = imap_xoauth2_as(&mut imap, "d2", SHARED, &tokens.access_token);
    assert!(shared.starts_with("d2 OK"), "{shared}\n{}", dovecot.log());
    let select = imap.imap("d3", "SELECT INBOX");
    assert!(select.iter().any(|l| l == "* 2 EXISTS"), "{select:?}");
    imap.imap("d4", "LOGOUT");

    // Refreshed access tokens keep the delegation.
    let refreshed = oidc
        .refresh(
            "collector",
            tokens.refresh_token.as_deref().expect("refresh token"),
        )
        .expect("refresh");
    assert_eq!(oidc.introspect(&refreshed.access_token)["email"], SHARED);
    let id_token = jwt_payload(refreshed.id_token.as_deref().expect("ID token")).expect("JWT");
    assert_eq!(id_token["email"], ALICE, "{id_token}");

    let logins = dovecot.wait_for_logins(1);
    assert!(logins[0].contains(SHARED), "{logins:#?}");
}

/// `OidcOptions::jwt_access_token_audience`: user access tokens become JWTs for that audience
/// (code, refresh and device grants alike), which Dovecot's introspection refuses; refresh
/// tokens still rotate and client-credentials tokens stay opaque.
#[test]
fn oidc_jwt_access_tokens_carry_the_configured_audience() {
    let oidc = Oidc::start(OidcOptions {
        jwt_access_token_audience: Some(GRAPH.into()),
        ..OidcOptions::default()
    });
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..Default::default()
    });

    let assert_graph_jwt = |token: &str| -> Value {
        let header = token.split('.').next().expect("JWT header");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url"))
                .expect("JSON header");
        assert_eq!(
            (&header["typ"], &header["alg"]),
            (&json!("at+jwt"), &json!("RS256")),
            "{header}"
        );
        let claims = jwt_payload(token).expect("a JWT access token");
        let aud = &claims["aud"];
        assert!(
            aud == GRAPH || aud.as_array().is_some_and(|a| a.contains(&json!(GRAPH))),
            "{claims}"
        );
        assert_eq!(claims["iss"], oidc.issuer.as_str(), "{claims}");
        assert_eq!(claims["sub"], ALICE, "{claims}");
        assert_eq!(
            (&claims["email"], &claims["upn"]),
            (&json!(ALICE), &json!(ALICE)),
            "{claims}"
        );
        for key in ["scp", "scope"] {
            let scopes = claims[key].as_str().unwrap_or_default();
            assert!(scopes.split(' ').any(|s| s == "mail"), "{key}: {claims}");
        }
        let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
        assert!(
            iat.zip(exp).is_some_and(|(iat, exp)| exp == iat + 3600),
            "{claims}"
        );
        claims
    };

    let tokens = oidc.login_auth_code("collector", ALICE, ALICE_PASSWORD, USER_SCOPE);
    let claims = assert_graph_jwt(&tokens.access_token);
    eprintln!("JWT access token claims: {claims}");
    let id_token = jwt_payload(tokens.id_token.as_deref().expect("ID token")).expect("JWT");
    assert_eq!(
        (&id_token["aud"], &id_token["email"]),
        (&json!("collector"), &json!(ALICE)),
        "{id_token}"
    );
    assert_eq!(oidc.introspect(&tokens.access_token)["active"], false);
    let mut imap = wire::tls(dovecot.imaps_port, &dovecot.ca);
    imap.read_line();
    let refused = imap_xoauth2(&mut imap, "j1", &tokens.access_token);
    assert!(refused.starts_with("j1 NO"), "{refused}");
    imap.imap("j2", "LOGOUT");

    // Refresh: another JWT, and the refresh token (opaque) rotates as before.
    let refresh0 = tokens.refresh_token.clone().expect("refresh token");
    assert!(
        jwt_payload(&refresh0).is_err(),
        "refresh tokens stay opaque"
    );
    let refreshed = oidc.refresh("collector", &refresh0).expect("refresh");
    assert_graph_jwt(&refreshed.access_token);
    assert_ne!(refreshed.access_token, tokens.access_token);
    let refresh1 = refreshed.refresh_token.clone().expect("rotated");
    assert_ne!(refresh1, refresh0);
    let again = oidc
        .refresh("collector", &refresh1)
        .expect("second refresh");
    assert_graph_jwt(&again.access_token);

    // The device flow too; client credentials stay opaque for the app mailbox.
    let device = oidc.login_device("collector", ALICE, ALICE_PASSWORD, USER_SCOPE);
    assert_graph_jwt(&device.access_token);
    let app = oidc.client_credentials("svc", "mail");
    assert!(jwt_payload(&app.access_token).is_err(), "opaque");
    assert_eq!(oidc.introspect(&app.access_token)["email"], SHARED);
}
