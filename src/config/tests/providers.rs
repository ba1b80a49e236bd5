//! `[providers.NAME]`: endpoints (https, or http on loopback), redirect URIs, scopes,
//! flows, clouds; URLs with credentials are never echoed.

use super::*;

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
