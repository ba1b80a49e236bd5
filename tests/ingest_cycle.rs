//! The collection cycle called directly (no actors) against a real Dovecot: a session whose
//! access token is about to expire ends after the batch in hand and asks to be re-opened,
//! without losing or repeating a message.

mod node;
mod support;

use std::sync::Arc;

use mailsluice::ingest::{Credential, ReopenAt, run_cycle};
use mailsluice::net::Connector;
use mailsluice::secret::Secret;
use mailsluice::store::Store;
use support::{Dovecot, DovecotOptions};

fn setup(
    dovecot: &Dovecot,
    dir: &std::path::Path,
    protocol: &str,
    port: u16,
) -> (Arc<Store>, Connector, mailsluice::config::SourceSettings) {
    node::direct_source(&dovecot.ca_pem, dir, protocol, port, "")
}

#[tokio::test]
async fn imap_session_ends_between_batches_when_its_token_is_due() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed("alice@example.test", &node::corpus::many("ro", 600));
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, source) = setup(&dovecot, dir.path(), "imap", dovecot.imaps_port);
    let cred = Credential::Password(Secret::new("alice-password"));
    let due = Some(ReopenAt(0)); // already due: one batch per session
    let mut stored = Vec::new();
    loop {
        let r = run_cycle(&store, &connector, &source, &cred, due)
            .await
            .expect("cycle");
        stored.push(r.stored);
        assert_eq!(r.already, 0, "a message was fetched twice");
        if !r.more {
            break;
        }
    }
    assert_eq!(stored, vec![256, 256, 88]);
    // Without a deadline one session takes everything (nothing left).
    let r = run_cycle(&store, &connector, &source, &cred, None)
        .await
        .unwrap();
    assert_eq!((r.stored, r.more), (0, false));
    assert_eq!(store.counts().unwrap()["s"], 600);
}

#[tokio::test]
async fn pop3_session_ends_between_batches_when_its_token_is_due() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed("alice@example.test", &node::corpus::many("rp", 300));
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, source) = setup(&dovecot, dir.path(), "pop3", dovecot.pop3s_port);
    let cred = Credential::Password(Secret::new("alice-password"));
    let first = run_cycle(&store, &connector, &source, &cred, Some(ReopenAt(0)))
        .await
        .unwrap();
    assert_eq!((first.stored, first.more), (256, true));
    let second = run_cycle(&store, &connector, &source, &cred, Some(ReopenAt(0)))
        .await
        .unwrap();
    assert_eq!((second.stored, second.more), (44, false));
}
