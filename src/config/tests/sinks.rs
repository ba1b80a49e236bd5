//! `[sinks.NAME]`: webhook and NATS targets, the delivery keys they share, their bounds,
//! and the secrets behind them (checked, never echoed).

use super::*;
use crate::sinks::address::Refusal;
use crate::sinks::backoff::Schedule;

/// BASE plus a second source, so patterns have something to match.
fn with_sink(sink: &str) -> String {
    format!(
        "{BASE}
[sources.sales-eu]
protocol = \"imap\"
host = \"outlook.office365.com\"
username = \"sales@contoso.com\"
auth = \"oauth2\"
provider = \"o365\"

{sink}"
    )
}

const WEBHOOK: &str = r#"
[sinks.hook]
kind = "webhook"
url = "https://helpdesk.example/hooks/mail"
secret_env = "HOOK_WHSEC"
"#;

const NATS: &str = r#"
[sinks.stream]
kind = "nats"
servers = ["nats://127.0.0.1:4222"]
"#;

/// WEBHOOK with `lines` added to its table.
fn webhook(lines: &str) -> String {
    with_sink(&format!("{WEBHOOK}{lines}\n"))
}

/// NATS with `lines` added to its table.
fn nats(lines: &str) -> String {
    with_sink(&format!("{NATS}{lines}\n"))
}

/// NATS with its `servers` replaced by `list` and `lines` added.
fn nats_servers(list: &str, lines: &str) -> String {
    let table = NATS.replace(
        "servers = [\"nats://127.0.0.1:4222\"]",
        &format!("servers = {list}"),
    );
    with_sink(&format!("{table}{lines}\n"))
}

fn the_webhook(s: &Settings) -> &WebhookSink {
    match &s.sinks["hook"].target {
        SinkTarget::Webhook(w) => w,
        other => panic!("expected a webhook, got {other:?}"),
    }
}

fn the_nats(s: &Settings) -> &NatsSink {
    match &s.sinks["stream"].target {
        SinkTarget::Nats(n) => n,
        other => panic!("expected nats, got {other:?}"),
    }
}

#[test]
fn the_example_sinks_load() {
    let s = ok(EXAMPLE);
    assert_eq!(s.sinks.len(), 2);
    let helpdesk = &s.sinks["helpdesk"];
    assert_eq!(
        helpdesk.target,
        SinkTarget::Webhook(WebhookSink {
            url: "https://helpdesk.example/hooks/mail".into(),
            secret: SecretRef::Env("HELPDESK_WEBHOOK_SECRET".into()),
            allow_private_addresses: false,
        })
    );
    assert_eq!(
        helpdesk.delivery.sources,
        SourceFilter::Only(vec!["support".into(), "alerts".into()])
    );
    assert_eq!(helpdesk.delivery.events, vec![SinkEvent::MessageStored]);
    assert_eq!(s.sinks["stream"].kind(), SinkKind::Nats);
    assert!(s.sinks["stream"].delivery.include_raw);
    assert!(warnings(&s).is_empty());
}

/// The service layout ships its sinks commented out (they need a receiver first); with the
/// comment marks removed they load.
#[test]
fn the_service_example_sinks_load_once_uncommented() {
    let block = CONTRIB_EXAMPLE
        .split_once("# --- Sinks")
        .expect("contrib/mailsluice.toml has a Sinks block")
        .1;
    let toml: String = block
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.starts_with("[sinks.")
                || l.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let base = CONTRIB_EXAMPLE.split_once("# --- Sinks").unwrap().0;
    let s = ok(&format!("{base}{toml}"));
    assert_eq!(s.sinks.len(), 2, "{toml}");
    assert_eq!(s.sinks["stream"].kind(), SinkKind::Nats);
}

/// The README's sink example is what the loader accepts.
#[test]
fn the_readme_sink_example_loads() {
    let readme = include_str!("../../../README.md");
    let section = readme.split_once("\n## Sinks\n").unwrap().1;
    let toml = section
        .split_once("```toml\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    let s = ok(&format!("{BASE}{toml}"));
    assert_eq!(s.sinks.len(), 2);
    // "sales*" matches no source of BASE: loaded, with a warning.
    assert_eq!(warnings(&s).len(), 1);
}

#[test]
fn a_minimal_webhook_gets_every_default() {
    let s = ok(&webhook(""));
    let sink = &s.sinks["hook"];
    assert_eq!(sink.name, "hook");
    assert_eq!(sink.kind(), SinkKind::Webhook);
    assert_eq!(
        the_webhook(&s),
        &WebhookSink {
            url: "https://helpdesk.example/hooks/mail".into(),
            secret: SecretRef::Env("HOOK_WHSEC".into()),
            allow_private_addresses: false,
        }
    );
    assert_eq!(
        sink.delivery,
        SinkDelivery {
            sources: SourceFilter::All,
            events: vec![SinkEvent::MessageStored, SinkEvent::SourceStateChanged],
            include_raw: false,
            max_raw_bytes: 10 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            concurrency: 4,
            max_age: Duration::from_secs(86_400),
            max_backoff: Duration::from_secs(300),
        }
    );
    assert!(sink.delivery.wants(SinkEvent::MessageStored, "support"));
    assert_eq!(
        Schedule::from(&sink.delivery),
        Schedule {
            max_backoff: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400)
        }
    );
    let policy = sink.address_policy().unwrap();
    assert_eq!(policy.sink, "hook");
    assert!(!policy.allow_private_addresses);
}

#[test]
fn a_minimal_nats_sink_gets_every_default() {
    let s = ok(&nats(""));
    assert_eq!(s.sinks["stream"].kind(), SinkKind::Nats);
    assert_eq!(
        the_nats(&s),
        &NatsSink {
            servers: vec!["nats://127.0.0.1:4222".into()],
            stream: "MAILSLUICE".into(),
            subject: "mailsluice.msg.{source}".into(),
            duplicate_window: Duration::from_secs(3_600),
            object_bucket: "mailsluice-raw".into(),
            auth: NatsAuth::None,
            tls_ca_file: None,
        }
    );
    assert_eq!(s.sinks["stream"].address_policy(), None);
}

#[test]
fn every_key_is_read() {
    let s = ok(&webhook(
        "sources = [\"support\", \"sales*\"]\nevents = [\"source.state_changed\"]\n\
         include_raw = true\nmax_raw_bytes = 1048576\ntimeout_secs = 30\nconcurrency = 16\n\
         max_age_secs = 3600\nmax_backoff_secs = 60\nallow_private_addresses = true",
    ));
    let d = &s.sinks["hook"].delivery;
    assert_eq!(
        d.sources,
        SourceFilter::Only(vec!["support".into(), "sales*".into()])
    );
    assert_eq!(d.events, vec![SinkEvent::SourceStateChanged]);
    assert!(d.include_raw);
    assert_eq!(d.max_raw_bytes, 1_048_576);
    assert_eq!(d.timeout, Duration::from_secs(30));
    assert_eq!(d.concurrency, 16);
    assert_eq!(d.max_age, Duration::from_secs(3_600));
    assert_eq!(d.max_backoff, Duration::from_secs(60));
    assert!(the_webhook(&s).allow_private_addresses);
    assert!(d.wants(SinkEvent::SourceStateChanged, "sales-eu"));
    assert!(!d.wants(SinkEvent::MessageStored, "sales-eu"));
    assert!(!d.wants(SinkEvent::SourceStateChanged, "alerts"));

    let s = ok(&nats_servers(
        "[\"tls://nats-1.example.com:4222\", \"tls://nats-2.example.com\"]",
        "stream = \"MAIL_IN\"\nsubject = \"mailsluice.in.{source}.mail\"\n\
         duplicate_window_secs = 7200\nobject_bucket = \"raw-mail\"\n\
         creds_file = \"/etc/mailsluice/nats.creds\"\ntls_ca_file = \"/etc/mailsluice/ca.pem\"",
    ));
    let n = the_nats(&s);
    assert_eq!(n.servers.len(), 2);
    assert_eq!(n.stream, "MAIL_IN");
    assert_eq!(n.subject, "mailsluice.in.{source}.mail");
    assert_eq!(n.duplicate_window, Duration::from_secs(7_200));
    assert_eq!(n.object_bucket, "raw-mail");
    assert_eq!(
        n.auth,
        NatsAuth::CredsFile("/etc/mailsluice/nats.creds".into())
    );
    assert_eq!(n.tls_ca_file, Some(PathBuf::from("/etc/mailsluice/ca.pem")));
}

#[test]
fn kind_is_required_and_keys_of_the_other_kind_are_refused() {
    let errs = errors(&with_sink("[sinks.x]\nurl = \"https://a.example/\"\n"));
    assert_contains(&at(&errs, "sinks.x.kind").message, "required");
    let errs = errors(&with_sink("[sinks.x]\nkind = \"webhok\"\n"));
    assert_contains(
        &at(&errs, "sinks.x.kind").message,
        "did you mean \"webhook\"?",
    );

    let errs = errors(&webhook("servers = [\"nats://127.0.0.1\"]\nstream = \"S\""));
    for key in ["servers", "stream"] {
        assert_eq!(
            at(&errs, &format!("sinks.hook.{key}")).message,
            "applies only to kind = \"nats\""
        );
    }
    let errs = errors(&nats(
        "url = \"https://a.example/\"\nallow_private_addresses = true",
    ));
    for key in ["url", "allow_private_addresses"] {
        assert_eq!(
            at(&errs, &format!("sinks.stream.{key}")).message,
            "applies only to kind = \"webhook\""
        );
    }
}

#[test]
fn unknown_and_inline_secret_keys_are_named() {
    let errs = errors(&webhook(
        "secret_fle = \"x\"\ntimout_secs = 5\nsecret = \"whsec_hunter2hunter2hunter2hunter2\"",
    ));
    assert_contains(
        &at(&errs, "sinks.hook.secret_fle").message,
        "unknown key; did you mean \"secret_file\"?",
    );
    assert_contains(
        &at(&errs, "sinks.hook.timout_secs").message,
        "did you mean \"timeout_secs\"?",
    );
    assert_contains(
        &at(&errs, "sinks.hook.secret").message,
        "secrets are never inline: name the variable or file that holds it",
    );
    let errs = errors(&nats("password = \"hunter2\"\ntoken = \"hunter2\""));
    assert_contains(
        &at(&errs, "sinks.stream.password").message,
        "secrets are never inline",
    );
    assert_contains(
        &at(&errs, "sinks.stream.token").message,
        "secrets are never inline",
    );
    for e in &errs {
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}

#[test]
fn sink_names_are_lowercase() {
    let errs = errors(&with_sink(
        &WEBHOOK.replace("[sinks.hook]", "[sinks.HelpDesk]"),
    ));
    assert_contains(&at(&errs, "sinks.HelpDesk").message, "lowercase");
}

#[test]
fn webhook_urls_are_https_or_loopback_http_without_credentials() {
    let with_url =
        |url: &str| with_sink(&WEBHOOK.replace("https://helpdesk.example/hooks/mail", url));
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://[::1]:9000/",
        "https://10.1.2.3/hook",
        "https://192.168.1.20:8443/hook",
    ] {
        assert_eq!(the_webhook(&ok(&with_url(url))).url, url);
    }
    let errs = errors(&with_url("http://helpdesk.example/hook"));
    assert_eq!(
        at(&errs, "sinks.hook.url").message,
        "webhook URL must use https (http is allowed only on loopback)"
    );
    let errs = errors(&with_url("https://user:s3cretpw@helpdesk.example/hook"));
    let e = at(&errs, "sinks.hook.url");
    assert_contains(&e.message, "must not contain user credentials");
    assert!(!e.message.contains("s3cretpw"));
    let long = format!("https://helpdesk.example/{}", "a".repeat(2_100));
    let errs = errors(&with_url(&long));
    assert_contains(&at(&errs, "sinks.hook.url").message, "longer than 2048");

    let errs = errors(&with_sink(
        "[sinks.hook]\nkind = \"webhook\"\nsecret_env = \"HOOK_WHSEC\"\n",
    ));
    assert_contains(&at(&errs, "sinks.hook.url").message, "required");
}

#[test]
fn metadata_and_link_local_url_literals_need_allow_private_addresses() {
    for (host, reason) in [
        ("169.254.169.254", Refusal::LinkLocal),
        ("[fe80::1]", Refusal::LinkLocal),
        ("[fd00:ec2::254]", Refusal::CloudMetadata),
        ("100.100.100.200", Refusal::CloudMetadata),
        ("[::ffff:169.254.169.254]", Refusal::LinkLocal),
        ("0.0.0.0", Refusal::Unspecified),
    ] {
        let url = format!("https://{host}/latest/meta-data");
        let text = with_sink(&WEBHOOK.replace("https://helpdesk.example/hooks/mail", &url));
        let errs = errors(&text);
        let m = &at(&errs, "sinks.hook.url").message;
        assert_contains(m, "sinks.hook.allow_private_addresses = true");
        assert_eq!(
            crate::sinks::address::refusal(host.trim_matches(['[', ']']).parse().unwrap()),
            Some(reason)
        );
        ok(&text.replace(
            "secret_env = \"HOOK_WHSEC\"",
            "secret_env = \"HOOK_WHSEC\"\nallow_private_addresses = true",
        ));
    }
}

#[test]
fn webhook_needs_exactly_one_secret_reference() {
    let no_secret = WEBHOOK.replace("secret_env = \"HOOK_WHSEC\"\n", "");
    let errs = errors(&with_sink(&no_secret));
    assert_contains(&at(&errs, "sinks.hook").message, "needs secret_file");
    let errs = errors(&webhook("secret_file = \"/etc/mailsluice/hook.whsec\""));
    assert_contains(&at(&errs, "sinks.hook").message, "both set");
    let s = ok(&with_sink(&no_secret.replace(
        "url =",
        "secret_file = \"/etc/mailsluice/hook.whsec\"\nurl =",
    )));
    assert_eq!(
        the_webhook(&s).secret,
        SecretRef::File("/etc/mailsluice/hook.whsec".into())
    );
    // A secret pasted where the variable's name belongs is refused without being echoed.
    let errs = errors(&with_sink(&WEBHOOK.replace(
        "\"HOOK_WHSEC\"",
        "\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
    )));
    let e = at(&errs, "sinks.hook.secret_env");
    assert_contains(&e.message, "name of an environment variable");
    assert!(!e.message.contains("MfKQ9r8G"));
}

#[test]
fn sources_name_existing_sources_or_patterns() {
    let with_sources = |list: &str| webhook(&format!("sources = {list}"));
    let s = ok(&with_sources("[\"support\", \"sales-*\", \"*-eu\"]"));
    let filter = &s.sinks["hook"].delivery.sources;
    assert!(filter.matches("support"));
    assert!(filter.matches("sales-eu"));
    assert!(filter.matches("billing-eu"));
    assert!(!filter.matches("supports"));
    assert!(!filter.matches("alerts"));
    assert!(warnings(&s).is_empty());

    let errs = errors(&with_sources("[\"suport\"]"));
    assert_contains(
        &at(&errs, "sinks.hook.sources[0]").message,
        "no source named \"suport\"; did you mean \"support\"?",
    );
    let errs = errors(&with_sources("[\"nobody\"]"));
    assert_contains(
        &at(&errs, "sinks.hook.sources[0]").message,
        "the sources are \"sales-eu\" or \"support\"",
    );
    let errs = errors(&with_sources("[]"));
    assert_contains(&at(&errs, "sinks.hook.sources").message, "lists no source");
    let errs = errors(&with_sources("[\"support\", \"support\"]"));
    assert_contains(&at(&errs, "sinks.hook.sources[1]").message, "listed twice");
    let errs = errors(&with_sources("[\"Support\", \"sales?\", \" \"]"));
    assert_contains(
        &at(&errs, "sinks.hook.sources[0]").message,
        "can match no source",
    );
    at(&errs, "sinks.hook.sources[1]");
    assert_contains(&at(&errs, "sinks.hook.sources[2]").message, "empty");
}

/// A source with its own error is still a source: a sink naming it is not told otherwise.
#[test]
fn a_sink_naming_a_broken_source_gets_no_second_error() {
    let errs = errors(&webhook("sources = [\"support\"]").replace(
        "provider = \"o365\"\n\n[sources.sales-eu]",
        "provider = \"missing\"\n\n[sources.sales-eu]",
    ));
    at(&errs, "sources.support.provider");
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
}

#[test]
fn a_pattern_matching_no_source_is_a_warning_not_an_error() {
    let s = ok(&webhook("sources = [\"support\", \"billing-*\"]"));
    let warnings = warnings(&s);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].path, "sinks.hook.sources[1]");
    assert_eq!(
        warnings[0].to_string(),
        "sinks.hook.sources[1]: \"billing-*\" matches no source; this sink gets no events \
         through it"
    );
}

#[test]
fn events_are_a_subset_of_the_two_kinds() {
    let with_events = |list: &str| webhook(&format!("events = {list}"));
    let s = ok(&with_events("[\"message.stored\"]"));
    assert_eq!(
        s.sinks["hook"].delivery.events,
        vec![SinkEvent::MessageStored]
    );
    let errs = errors(&with_events("[\"message.store\"]"));
    assert_contains(
        &at(&errs, "sinks.hook.events[0]").message,
        "did you mean \"message.stored\"?",
    );
    let errs = errors(&with_events("[\"message.stored\", \"message.stored\"]"));
    assert_contains(&at(&errs, "sinks.hook.events[1]").message, "listed twice");
    let errs = errors(&with_events("[]"));
    assert_contains(&at(&errs, "sinks.hook.events").message, "lists no event");
}

#[test]
fn delivery_bounds_are_enforced_at_their_keys() {
    let s = ok(&webhook(
        "max_raw_bytes = 67108864\ntimeout_secs = 300\nconcurrency = 256\nmax_age_secs = 60\n\
         max_backoff_secs = 86400",
    ));
    let d = &s.sinks["hook"].delivery;
    assert_eq!(d.max_raw_bytes, 64 * 1024 * 1024);
    assert_eq!(d.concurrency, 256);
    for (line, key, message) in [
        (
            "max_raw_bytes = 67108865",
            "max_raw_bytes",
            "must be at most 67108864 (64 MiB), found 67108865",
        ),
        ("max_raw_bytes = 0", "max_raw_bytes", "at least 1"),
        ("timeout_secs = 0", "timeout_secs", "at least 1"),
        ("timeout_secs = 301", "timeout_secs", "at most 300"),
        ("concurrency = 0", "concurrency", "at least 1"),
        ("concurrency = 257", "concurrency", "at most 256"),
        ("max_age_secs = 0", "max_age_secs", "at least 1"),
        ("max_backoff_secs = 0", "max_backoff_secs", "at least 1"),
        (
            "max_backoff_secs = 86401",
            "max_backoff_secs",
            "at most 86400",
        ),
        (
            "include_raw = \"yes\"",
            "include_raw",
            "expected true or false",
        ),
    ] {
        let errs = errors(&webhook(line));
        assert_contains(&at(&errs, &format!("sinks.hook.{key}")).message, message);
    }
}

#[test]
fn nats_servers_are_tls_or_loopback_nats() {
    let with_servers = |list: &str| nats_servers(list, "");
    let s = ok(&with_servers(
        "[\"nats://localhost:4222\", \"nats://[::1]:4222\", \"tls://nats.example.com\", \
         \"tls://10.0.0.5:4222\"]",
    ));
    assert_eq!(the_nats(&s).servers.len(), 4);
    for (server, message) in [
        ("nats://nats.example.com:4222", "must use tls://"),
        ("nats://10.0.0.5:4222", "must use tls://"),
        ("ws://127.0.0.1:8080", "must start with tls:// or nats://"),
        ("127.0.0.1:4222", "is not a server URL"),
        ("tls://nats.example.com/stream", "host and port only"),
        ("tls://", "has no host"),
        ("tls://nats.example.com:99999", "is not a server URL"),
        ("tls://nats .example.com", "whitespace"),
        ("", "must not be empty"),
    ] {
        let errs = errors(&with_servers(&format!("[{server:?}]")));
        assert_contains(&at(&errs, "sinks.stream.servers[0]").message, message);
    }
    let errs = errors(&with_servers("[\"tls://alice:s3cretpw@nats.example.com\"]"));
    let e = at(&errs, "sinks.stream.servers[0]");
    assert_contains(&e.message, "must not contain credentials");
    assert!(!e.message.contains("s3cretpw"));
    let errs = errors(&with_servers("[\"tls://a.example\", \"tls://a.example\"]"));
    assert_contains(&at(&errs, "sinks.stream.servers[1]").message, "twice");
    let errs = errors(&with_servers("[]"));
    assert_contains(&at(&errs, "sinks.stream.servers").message, "no server");
    let errs = errors(&with_sink("[sinks.stream]\nkind = \"nats\"\n"));
    assert_contains(&at(&errs, "sinks.stream.servers").message, "required");
}

#[test]
fn stream_and_bucket_names_follow_jetstream_rules() {
    for name in [
        "MAIL.IN",
        "MAIL*",
        "MAIL>",
        "MAIL IN",
        "a/b",
        "x".repeat(65).as_str(),
    ] {
        let errs = errors(&nats(&format!("stream = {name:?}")));
        assert_contains(
            &at(&errs, "sinks.stream.stream").message,
            "is not a stream name",
        );
        let errs = errors(&nats(&format!("object_bucket = {name:?}")));
        assert_contains(
            &at(&errs, "sinks.stream.object_bucket").message,
            "is not an object store bucket name",
        );
    }
}

#[test]
fn subjects_fall_under_the_stream_and_use_only_the_source_placeholder() {
    for good in [
        "mailsluice.msg",
        "mailsluice.msg.{source}",
        "mailsluice.{source}",
        "mailsluice.in-{source}.mail_v1",
    ] {
        assert_eq!(
            the_nats(&ok(&nats(&format!("subject = {good:?}")))).subject,
            good
        );
    }
    for (bad, message) in [
        ("mail.{source}", "must start with \"mailsluice.\""),
        ("mailsluice", "must start with \"mailsluice.\""),
        ("mailsluice.", "is not a subject"),
        ("mailsluice..x", "is not a subject"),
        ("mailsluice.msg.{folder}", "uses the placeholder {folder}"),
        ("mailsluice.msg.{source", "'{' without its '}'"),
        ("mailsluice.msg.source}", "'}' without its '{'"),
        ("mailsluice.msg.*", "wildcard"),
        ("mailsluice.>", "wildcard"),
        ("mailsluice.a b", "is not a subject"),
    ] {
        let errs = errors(&nats(&format!("subject = {bad:?}")));
        assert_contains(&at(&errs, "sinks.stream.subject").message, message);
    }
}

#[test]
fn duplicate_window_covers_twice_the_longest_backoff() {
    ok(&nats("max_backoff_secs = 1800"));
    let errs = errors(&nats("max_backoff_secs = 1801"));
    assert_contains(
        &at(&errs, "sinks.stream.duplicate_window_secs").message,
        "must be at least twice max_backoff_secs (3602), found the default 3600",
    );
    let errs = errors(&nats(
        "max_backoff_secs = 600\nduplicate_window_secs = 1000",
    ));
    assert_contains(
        &at(&errs, "sinks.stream.duplicate_window_secs").message,
        "(1200), found 1000",
    );
    let s = ok(&nats(
        "max_backoff_secs = 3600\nduplicate_window_secs = 7200",
    ));
    assert_eq!(the_nats(&s).duplicate_window, Duration::from_secs(7_200));
}

#[test]
fn nats_signs_in_one_way_at_most() {
    let s = ok(&nats("token_env = \"NATS_TOKEN\""));
    assert_eq!(
        the_nats(&s).auth,
        NatsAuth::Token(SecretRef::Env("NATS_TOKEN".into()))
    );
    let s = ok(&nats(
        "user = \"mailsluice\"\npassword_env = \"NATS_PASSWORD\"",
    ));
    assert_eq!(
        the_nats(&s).auth,
        NatsAuth::UserPassword {
            user: "mailsluice".into(),
            password: SecretRef::Env("NATS_PASSWORD".into())
        }
    );
    let errs = errors(&nats("token_env = \"T\"\ncreds_file = \"c\""));
    assert_contains(
        &at(&errs, "sinks.stream").message,
        "creds_file and token_env are each a way to sign in to NATS; give at most one",
    );
    let errs = errors(&nats(
        "token_env = \"T\"\nuser = \"u\"\npassword_env = \"P\"",
    ));
    assert_contains(&at(&errs, "sinks.stream").message, "user + password_env");
    let errs = errors(&nats("user = \"u\""));
    assert_contains(
        &at(&errs, "sinks.stream.password_env").message,
        "required with user",
    );
    let errs = errors(&nats("password_env = \"P\""));
    assert_contains(
        &at(&errs, "sinks.stream.user").message,
        "required with password_env",
    );
    let errs = errors(&nats("token_env = \"s3cret token\""));
    let e = at(&errs, "sinks.stream.token_env");
    assert_contains(&e.message, "name of an environment variable");
    assert!(!e.message.contains("s3cret"));
}

#[test]
fn sink_keys_take_environment_overrides() {
    let s = load_env(
        &webhook(""),
        &[
            ("MAILSLUICE__SINKS__HOOK__TIMEOUT_SECS", "30"),
            ("MAILSLUICE__SINKS__HOOK__EVENTS", "message.stored"),
            ("MAILSLUICE__SINKS__HOOK__URL", "https://other.example/hook"),
        ],
    )
    .unwrap();
    let sink = &s.sinks["hook"];
    assert_eq!(sink.delivery.timeout, Duration::from_secs(30));
    assert_eq!(sink.delivery.events, vec![SinkEvent::MessageStored]);
    assert_eq!(the_webhook(&s).url, "https://other.example/hook");

    let err = load_env(
        &webhook(""),
        &[("MAILSLUICE__SINKS__HOOKS__TIMEOUT_SECS", "30")],
    )
    .unwrap_err();
    assert_contains(
        &at(&err.0, "sinks.hooks").message,
        "did you mean [sinks.hook]?",
    );
}

#[test]
fn glob_patterns_match_whole_names() {
    for (pattern, name, expected) in [
        ("support", "support", true),
        ("support", "support2", false),
        ("*", "anything", true),
        ("*", "", true),
        ("sales*", "sales", true),
        ("sales*", "sales-eu", true),
        ("sales*", "presales", false),
        ("*-eu", "sales-eu", true),
        ("*-eu", "sales-eu-2", false),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "abcbc", true),
        ("a*b*c", "acb", false),
        ("**x", "yx", true),
        ("a*", "", false),
    ] {
        assert_eq!(glob_matches(pattern, name), expected, "{pattern} ~ {name}");
    }
    // Linear, not exponential, on a pattern built to make naive backtracking explode.
    let name = "a".repeat(200);
    assert!(!glob_matches(&format!("{}b", "a*".repeat(50)), &name));
}

// ---------------------------------------------------------------------------------------------
// Secrets behind the references

/// A valid file with a webhook reading its secret from `file`, a NATS sink signing in with
/// a token from an unset variable, and a NATS sink with a credentials file.
fn secret_config(secret_file: &Path, creds: &Path) -> String {
    format!(
        "{BASE}
[sinks.hook]
kind = \"webhook\"
url = \"https://helpdesk.example/hooks/mail\"
secret_file = {secret_file:?}

[sinks.stream]
kind = \"nats\"
servers = [\"nats://127.0.0.1:4222\"]
token_env = \"MAILSLUICE_TEST_SURELY_UNSET_7F3C\"

[sinks.creds]
kind = \"nats\"
servers = [\"nats://127.0.0.1:4222\"]
creds_file = {creds:?}
"
    )
}

#[test]
fn check_secrets_reads_and_checks_sink_secrets_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.whsec");
    let creds = dir.path().join("nats.creds");
    std::fs::write(&creds, "-----BEGIN NATS USER JWT-----\n").unwrap();
    let s = ok(&secret_config(&secret, &creds));

    // Missing file, unset variable.
    let errs = check_secrets(&s);
    assert_eq!(errs.len(), 2, "{}", ConfigErrors(errs.clone()));
    assert_contains(
        &at(&errs, "sinks.hook.secret_file").message,
        "does not exist",
    );
    assert_contains(
        &at(&errs, "sinks.stream.token_env").message,
        "MAILSLUICE_TEST_SURELY_UNSET_7F3C is not set",
    );

    // Two secrets during a rotation: fine.
    std::fs::write(
        &secret,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nwhsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let errs = check_secrets(&s);
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    at(&errs, "sinks.stream.token_env");

    // Malformed ones are named by position, the value never shown.
    for (content, expected) in [
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "secret 2 does not start with \"whsec_\"",
        ),
        ("whsec_MfKQ9r8GKYqrTwjU", "secret 1 is a key of 12 bytes"),
        (
            "whsec_MfKQ9r8GKYqrTw!!PD8ILPZIo2LaLaSw",
            "secret 1 is not base64",
        ),
    ] {
        std::fs::write(&secret, content).unwrap();
        let errs = check_secrets(&s);
        let m = &at(&errs, "sinks.hook.secret_file").message;
        assert_contains(m, &format!("secret file {}: ", secret.display()));
        assert_contains(m, expected);
        for e in &errs {
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        }
    }
    // Nothing secret is in the settings themselves: only where to find it.
    let shown = format!("{s:?}");
    assert!(!shown.contains("MfKQ9r8G"));
    assert_contains(&shown, "MAILSLUICE_TEST_SURELY_UNSET_7F3C");
}

#[cfg(unix)]
#[test]
fn sink_secret_and_creds_files_are_checked_for_loose_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.whsec");
    let creds = dir.path().join("nats.creds");
    for (path, mode) in [(&secret, 0o644), (&creds, 0o640)] {
        std::fs::write(path, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let s = ok(&secret_config(&secret, &creds));
    let files = secret_files(&s);
    assert!(files.contains(&("sinks.hook.secret_file".to_owned(), secret.clone())));
    assert!(files.contains(&("sinks.creds.creds_file".to_owned(), creds.clone())));
    let loose: Vec<(String, u32)> = loose_secret_files(&files)
        .into_iter()
        .filter(|l| l.key.starts_with("sinks."))
        .map(|l| (l.key, l.mode))
        .collect();
    assert_eq!(
        loose,
        [
            ("sinks.creds.creds_file".to_owned(), 0o640),
            ("sinks.hook.secret_file".to_owned(), 0o644),
        ]
    );
}

/// A max_age_secs under a minute loads (failure handling can be seen at work in a drill)
/// with a warning naming the key.
#[test]
fn a_max_age_under_a_minute_is_a_warning() {
    let s = ok(&webhook("max_age_secs = 5"));
    assert_eq!(s.sinks["hook"].delivery.max_age, Duration::from_secs(5));
    let w = warnings(&s);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].path, "sinks.hook.max_age_secs");
    assert_contains(&w[0].message, "shorter than a minute");
    assert!(warnings(&ok(&webhook("max_age_secs = 60"))).is_empty());
}
