//! The store's disk fills up during a backfill (the data directory on a small tmpfs): the
//! collector stops taking mail, changes nothing on the server for what it could not store,
//! reports `degraded` with store errors, and resumes once writes succeed again.
//! Needs root (mount), as the test environment has.

mod node;
mod support;

use std::process::Command;
use std::time::Duration;

use node::{Node, sha256};
use support::{Dovecot, DovecotOptions};

const ALICE: &str = "alice@example.test";

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount (this test needs root)")
            .success();
        assert!(
            ok,
            "mount tmpfs at {} failed (this test needs root)",
            path.display()
        );
        Tmpfs(path.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_degrades_without_touching_the_server_then_resumes() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let messages: Vec<Vec<u8>> = (0..120)
        .map(|i| format!("Subject: big {i}\r\n\r\n{}\r\n", "d".repeat(100_000 + i)).into_bytes())
        .collect();
    dovecot.seed(ALICE, &messages);
    let body = format!(
        "[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\nafter_ingest = \"delete\"\npoll_interval_secs = 1\n",
        dovecot.imaps_port
    );
    let mut node = Node::new(&dovecot.ca_pem, &body);
    node.env.push(("PW".into(), "alice-password".into()));
    let cfg = std::fs::read_to_string(&node.config).unwrap().replace(
        "read_timeout_secs = 20",
        "read_timeout_secs = 20\nmin_free_disk_bytes = 2097152",
    );
    std::fs::write(&node.config, cfg).unwrap();
    let data = node.dir.path().join("data");
    let fs = Tmpfs::mount(&data, "8m");
    node.start();
    let s = node.wait_state("mail", "degraded", Duration::from_secs(60));
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("disk almost full"),
        "{s}"
    );
    let metrics = node.get("/metrics");
    assert!(
        !metrics.contains("mailsluice_errors_total{source=\"mail\",kind=\"store\"} 0"),
        "{metrics}"
    );
    // Nothing the store could not keep was deleted from the server.
    let stored_now = Node::source(&node.sources(), "mail")["stored_total"]
        .as_u64()
        .unwrap();
    let on_server = dovecot.message_files(ALICE, "INBOX").len() as u64;
    assert!(
        stored_now + on_server >= 120,
        "stored {stored_now} + on server {on_server} < 120"
    );
    fs.resize("200m");
    node.wait_stored("mail", 120, Duration::from_secs(60));
    node.wait("server emptied", Duration::from_secs(60), |_| {
        dovecot
            .message_files(ALICE, "INBOX")
            .is_empty()
            .then_some(())
    });
    node.stop();
    let mut got = node.stored_hashes();
    got.sort();
    let mut expected: Vec<String> = messages.iter().map(|m| sha256(m)).collect();
    expected.sort();
    assert_eq!(
        got, expected,
        "every message exactly once after the disk came back"
    );
}
