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
