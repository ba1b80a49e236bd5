//! `[node]` and `[tls]`: defaults, the listen address, TLS versions and backends.

use super::*;

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
fn listening_beyond_loopback_needs_tls_or_a_plaintext_opt_in() {
    let errs = errors(&format!("[node]\nhttp_listen = \"0.0.0.0:9898\"\n\n{BASE}"));
    let m = &at(&errs, "node.http_listen").message;
    assert_contains(m, "http_tls_cert_file");
    assert_contains(m, "http_allow_plaintext");
    let s = ok(&format!(
        "[node]\nhttp_listen = \"0.0.0.0:9898\"\nhttp_allow_plaintext = true\n\n{BASE}"
    ));
    assert!(s.node.http_allow_plaintext);
    let s = ok(&format!(
        "[node]\nhttp_listen = \"[::]:9898\"\nhttp_tls_cert_file = \"c.pem\"\nhttp_tls_key_file = \"k.pem\"\n\n{BASE}"
    ));
    assert_eq!(s.node.http_tls.unwrap().key_file, PathBuf::from("k.pem"));
    // Loopback needs neither.
    let s = ok(&format!("[node]\nhttp_listen = \"[::1]:9898\"\n\n{BASE}"));
    assert!(s.node.http_tls.is_none());
}

#[test]
fn a_certificate_without_its_key_is_an_error_not_plain_http() {
    let errs = errors(&format!("[node]\nhttp_tls_cert_file = \"c.pem\"\n\n{BASE}"));
    assert_contains(&at(&errs, "node.http_tls_key_file").message, "required");
    let errs = errors(&format!("[node]\nhttp_tls_key_file = \"k.pem\"\n\n{BASE}"));
    assert_contains(&at(&errs, "node.http_tls_cert_file").message, "required");
}

#[test]
fn allowed_hosts_are_host_names_as_a_host_header_carries_them() {
    let s = ok(&format!(
        "[node]\nhttp_allowed_hosts = [\"Ingest.Example.com\", \"10.0.0.5\"]\n\n{BASE}"
    ));
    assert_eq!(
        s.node.http_allowed_hosts,
        ["ingest.example.com", "10.0.0.5"]
    );
    for bad in [
        "https://x.example",
        "x.example:9898",
        "x.example/path",
        "",
        "a..b",
    ] {
        let errs = errors(&format!(
            "[node]\nhttp_allowed_hosts = [\"ok.example\", {bad:?}]\n\n{BASE}"
        ));
        assert_contains(
            &at(&errs, "node.http_allowed_hosts[1]").message,
            "not a host name",
        );
    }
}

#[test]
fn the_api_token_file_defaults_to_the_data_directory() {
    let s = ok(&format!("[node]\ndata_dir = \"/var/lib/ms\"\n\n{BASE}"));
    assert_eq!(
        s.node.api_token_file,
        PathBuf::from("/var/lib/ms/api.token")
    );
    let s = ok(&format!(
        "[node]\napi_token_file = \"/etc/ms/api.token\"\n\n{BASE}"
    ));
    assert_eq!(s.node.api_token_file, PathBuf::from("/etc/ms/api.token"));
}

#[test]
fn api_clients_have_a_role_and_exactly_one_token_reference() {
    let sha = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    let s = ok(&format!(
        "{BASE}\n[api_clients.grafana]\nrole = \"read\"\ntoken_sha256 = \"{sha}\"\n\
         [api_clients.ops]\nrole = \"admin\"\ntoken_file = \"/etc/ops.token\"\n"
    ));
    assert_eq!(s.api_clients["grafana"].role, Role::Read);
    assert_eq!(
        s.api_clients["ops"].token,
        ApiTokenRef::File(PathBuf::from("/etc/ops.token"))
    );
    let cases = [
        ("role = \"read\"\n", "api_clients.x", "needs token_file"),
        (
            "role = \"read\"\ntoken_file = \"f\"\ntoken_sha256 = \"00\"\n",
            "api_clients.x",
            "both set",
        ),
        ("token_file = \"f\"\n", "api_clients.x.role", "required"),
        (
            "role = \"root\"\ntoken_file = \"f\"\n",
            "api_clients.x.role",
            "root",
        ),
        (
            "role = \"read\"\ntoken_sha256 = \"my-secret-token\"\n",
            "api_clients.x.token_sha256",
            "64 hexadecimal",
        ),
        (
            "role = \"read\"\ntoken = \"abc\"\n",
            "api_clients.x.token",
            "never inline",
        ),
    ];
    for (body, key, needle) in cases {
        let errs = errors(&format!("{BASE}\n[api_clients.x]\n{body}"));
        let m = &at(&errs, key).message;
        assert_contains(m, needle);
        assert!(!m.contains("my-secret-token"), "{m}");
    }
}

#[test]
fn native_tls_with_a_1_3_minimum_is_refused_not_weakened() {
    let errs = errors(&format!(
        "{BASE}\n[tls]\nbackend = \"native\"\nmin_version = \"1.3\"\n"
    ));
    let m = &at(&errs, "tls.min_version").message;
    assert_contains(m, "cannot be enforced");
    assert_contains(m, "rustls");
    // rustls enforces it.
    let s = ok(&format!(
        "{BASE}\n[tls]\nbackend = \"rustls\"\nmin_version = \"1.3\"\n"
    ));
    assert_eq!(s.tls.min_version, TlsVersion::V1_3);
}

/// `events_retention_secs` defaults to a day and may be 0; `http_public_url` is a base URL
/// (trailing slash dropped) and refuses what a base cannot carry.
#[test]
fn event_retention_and_the_public_url() {
    let s = ok(BASE);
    assert_eq!(
        s.node.events_retention,
        std::time::Duration::from_secs(86_400)
    );
    assert_eq!(s.node.http_public_url, None);
    let s = ok(&format!(
        "[node]\nevents_retention_secs = 0\nhttp_public_url = \"https://ingest.example.com/mail/\"\n\n{BASE}"
    ));
    assert_eq!(s.node.events_retention, std::time::Duration::ZERO);
    assert_eq!(
        s.node.http_public_url.as_deref(),
        Some("https://ingest.example.com/mail")
    );
    for (url, message) in [
        ("ftp://ingest.example.com", "must start with https://"),
        ("ingest.example.com", "is not an absolute URL"),
        ("https://u:p@ingest.example.com", "user name or password"),
        ("https://ingest.example.com/?a=1", "query or fragment"),
    ] {
        let errs = errors(&format!("[node]\nhttp_public_url = \"{url}\"\n\n{BASE}"));
        assert_contains(&at(&errs, "node.http_public_url").message, message);
    }
    let errs = errors(&format!("[node]\nevents_retention_secs = -1\n\n{BASE}"));
    at(&errs, "node.events_retention_secs");
}

/// Listening on every address with sinks and no public URL: a warning, since the raw_url
/// receivers get would name 0.0.0.0.
#[test]
fn sinks_without_a_reachable_api_address_are_warned_about() {
    let sink = "[sinks.hook]\nkind = \"webhook\"\nurl = \"https://hooks.example/in\"\nsecret_env = \"HOOK_SECRET\"\n";
    let text = format!(
        "[node]\nhttp_listen = \"0.0.0.0:9898\"\nhttp_allow_plaintext = true\n\n{BASE}\n{sink}"
    );
    let w = crate::config::warnings(&ok(&text));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].path, "node.http_public_url");
    assert_contains(&w[0].message, "0.0.0.0:9898");
    let text = text.replace(
        "http_allow_plaintext = true",
        "http_allow_plaintext = true\nhttp_public_url = \"https://ingest.example.com\"",
    );
    assert!(crate::config::warnings(&ok(&text)).is_empty());
}
