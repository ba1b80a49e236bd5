//! The OIDC test server (`tests/support/oidc/server.mjs`, oidc-provider 8.x) and a scripted
//! browser for its login flows.
//!
//! Fixed clients (see server.mjs for the full configuration):
//!
//! | client_id | auth | grants |
//! |---|---|---|
//! | `collector` | public (`none`), native | authorization_code (PKCE required), refresh_token, device_code |
//! | `collector-confidential` | `client_secret_post` `collector-secret`, native | the same + client_credentials |
//! | `svc` | `client_secret_basic`/`_post` `svc-secret` | client_credentials |
//! | `dovecot` | `client_secret_post` `dovecot-secret` | none (introspection only) |
//!
//! Redirect URI of the code-flow clients: `http://127.0.0.1/callback`; as native clients the
//! port is ignored, so a loopback listener on any port matches.
//!
//! Facts tests rely on: opaque access tokens carrying `email` (user grants: the user's email,
//! which is also `sub`, or its mailbox under [`OidcOptions::delegations`]; client credentials
//! of `svc`/`collector-confidential`: `app_mailbox`), or JWT user access tokens under
//! [`OidcOptions::jwt_access_token_audience`];
//! refresh tokens whenever `offline_access` is granted; every refresh rotates, and presenting a
//! spent refresh token is `invalid_grant` *and revokes the whole grant* (oidc-provider's reuse
//! detection; Microsoft does not do that). State is in memory only.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use reqwest::blocking::{Client, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use super::{START_TIMEOUT, manifest_dir, off_runtime, read_log, tail};

/// Redirect URI registered for `collector` and `collector-confidential`.
pub const REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// The grant type of the device flow.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Client secrets of the fixed clients (`None` for the public `collector`).
pub fn client_secret(client_id: &str) -> Option<&'static str> {
    match client_id {
        "collector-confidential" => Some("collector-secret"),
        "svc" => Some("svc-secret"),
        "dovecot" => Some("dovecot-secret"),
        _ => None,
    }
}

/// What the OIDC server is started with.
#[derive(Clone, Debug)]
pub struct OidcOptions {
    /// Lifetime of access tokens and client-credentials tokens.
    pub access_token_ttl_secs: u64,
    /// Lifetime of each refresh token (every refresh issues a new one).
    pub refresh_token_ttl_secs: u64,
    /// (email, password) of the accounts that can sign in.
    pub users: Vec<(String, String)>,
    /// The `email` claim of client-credentials tokens (the shared mailbox an app acts for).
    pub app_mailbox: String,
    /// (user email, mailbox email): the access tokens of such a user carry `email` = the
    /// mailbox (what Dovecot's introspection takes as the username, so they log in only with
    /// SASL `user=<mailbox>`), while its ID token, userinfo and `sub` keep the user's own
    /// address. A delegate signed in for a shared mailbox. Empty by default.
    pub delegations: Vec<(String, String)>,
    /// When set (e.g. `"https://graph.microsoft.com"`), user access tokens (authorization code,
    /// device code, refresh) are RS256 JWTs (`typ` `at+jwt`) bound to a resource of this
    /// identifier: `aud` = this value, `scope` and `scp` (the granted ones of `openid profile
    /// email mail`), `email` and `upn` (the user, or its delegated mailbox), `sub`, `exp`. The
    /// token response's `scope` is then the access token's. Introspection reports them
    /// `active: false`, so Dovecot refuses them: a token for the wrong audience. Refresh tokens
    /// stay opaque and rotate as usual; client-credentials tokens stay opaque. `None` by
    /// default (opaque access tokens).
    pub jwt_access_token_audience: Option<String>,
}

impl Default for OidcOptions {
    /// One user `alice@example.test` / `alice-password`, 1 h access tokens, 1 day refresh
    /// tokens, app mailbox `shared@example.test`, no delegations, opaque access tokens.
    fn default() -> Self {
        OidcOptions {
            access_token_ttl_secs: 3600,
            refresh_token_ttl_secs: 86_400,
            users: vec![("alice@example.test".into(), "alice-password".into())],
            app_mailbox: "shared@example.test".into(),
            delegations: Vec::new(),
            jwt_access_token_audience: None,
        }
    }
}

/// A successful token endpoint response.
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// Present when `offline_access` was granted.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Present when `openid` was granted.
    #[serde(default)]
    pub id_token: Option<String>,
    pub expires_in: u64,
    pub token_type: String,
    #[serde(default)]
    pub scope: Option<String>,
}

impl fmt::Debug for TokenResponse {
    // Tokens are credentials: a failing assertion should not print them whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |t: &str| format!("<{} chars>", t.len());
        f.debug_struct("TokenResponse")
            .field("access_token", &redact(&self.access_token))
            .field("refresh_token", &self.refresh_token.as_deref().map(redact))
            .field("id_token", &self.id_token.as_deref().map(redact))
            .field("expires_in", &self.expires_in)
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A running OIDC server; stopped (SIGKILL) on drop.
pub struct Oidc {
    /// `http://127.0.0.1:<port>`: the issuer and the base of every endpoint.
    pub issuer: String,
    pub port: u16,
    /// How long the server took from spawn to its readiness line.
    pub startup: Duration,
    child: Child,
    /// Held open so the server exits on its own if this process dies without dropping us.
    stdin: Option<ChildStdin>,
    /// The server's stderr.
    log_path: PathBuf,
    /// Holds config.json and the log.
    dir: TempDir,
}

impl Oidc {
    /// Starts a server and waits for its readiness line; panics (with its log) if it does not
    /// come up within [`START_TIMEOUT`].
    pub fn start(opts: OidcOptions) -> Oidc {
        let support = manifest_dir().join("tests/support/oidc");
        let server_js = support.join("server.mjs");
        assert!(
            support.join("node_modules/oidc-provider").is_dir(),
            "{}/node_modules is missing: run scripts/install-deps (npm ci in tests/support/oidc)",
            support.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("mailsluice-oidc-")
            .tempdir()
            .expect("create a temporary directory for the OIDC server");
        let config = json!({
            "access_token_ttl_secs": opts.access_token_ttl_secs,
            "refresh_token_ttl_secs": opts.refresh_token_ttl_secs,
            "users": opts.users.iter()
                .map(|(email, password)| json!({ "email": email, "password": password }))
                .collect::<Vec<_>>(),
            "app_mailbox": opts.app_mailbox,
            "delegations": opts.delegations.iter()
                .map(|(user, mailbox)| json!({ "user": user, "mailbox": mailbox }))
                .collect::<Vec<_>>(),
            "jwt_access_token_audience": opts.jwt_access_token_audience,
        });
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, config.to_string()).expect("write the OIDC config");
        let log_path = dir.path().join("oidc.log");
        let log = std::fs::File::create(&log_path).expect("create the OIDC log");

        let node = std::env::var_os("MAILSLUICE_TEST_NODE").unwrap_or_else(|| "node".into());
        let spawned = Instant::now();
        let mut child = Command::new(&node)
            .arg(&server_js)
            .arg(&config_path)
            .arg("--exit-on-stdin-eof")
            .current_dir(&support)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {node:?} {}: {e}", server_js.display()));
        let stdin = child.stdin.take();

        // The readiness line is an event: read stdout on a thread and wait on a channel. The
        // thread keeps draining stdout until the server exits, so the pipe never fills.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let deadline = spawned + START_TIMEOUT;
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let parsed: Option<Value> = serde_json::from_str(&line).ok();
                    if let Some(v) = parsed.filter(|v| v["ready"] == true) {
                        let port = v["port"].as_u64().and_then(|p| u16::try_from(p).ok());
                        break port.unwrap_or_else(|| panic!("bad readiness line {line:?}"));
                    }
                }
                Err(e) => {
                    let status = child.try_wait().ok().flatten();
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "OIDC server did not become ready ({}; exit status {status:?})\n--- oidc log ---\n{}",
                        match e {
                            mpsc::RecvTimeoutError::Timeout => format!("timeout {START_TIMEOUT:?}"),
                            mpsc::RecvTimeoutError::Disconnected => "stdout closed".to_string(),
                        },
                        tail(&read_log(&log_path), 80),
                    );
                }
            }
        };

        Oidc {
            issuer: format!("http://127.0.0.1:{port}"),
            port,
            startup: spawned.elapsed(),
            child,
            stdin,
            log_path,
            dir,
        }
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn authorization_url(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn device_authorization_url(&self) -> String {
        format!("{}/device/auth", self.issuer)
    }

    pub fn introspection_url(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    pub fn revocation_url(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }

    pub fn userinfo_url(&self) -> String {
        format!("{}/me", self.issuer)
    }

    /// The server's log (stderr) so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Plays the browser through the authorization-code flow with PKCE (S256), `state` and
    /// `nonce`: authorization request, login form, automatic consent, redirect to
    /// [`REDIRECT_URI`]; then redeems the code. Panics (with the server log) on any failure.
    pub fn login_auth_code(
        &self,
        client_id: &str,
        email: &str,
        password: &str,
        scope: &str,
    ) -> TokenResponse {
        self.try_login_auth_code(client_id, email, password, scope)
            .unwrap_or_else(|e| self.fail(&format!("authorization-code login of {email}"), &e))
    }

    /// [`Self::login_auth_code`] returning the failure (e.g. `login rejected ...` for a wrong
    /// password, or the token endpoint's error) instead of panicking.
    pub fn try_login_auth_code(
        &self,
        client_id: &str,
        email: &str,
        password: &str,
        scope: &str,
    ) -> Result<TokenResponse, String> {
        let verifier = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let state = random_token();
        let nonce = random_token();
        let url = Url::parse_with_params(
            &self.authorization_url(),
            [
                ("client_id", client_id),
                ("response_type", "code"),
                ("redirect_uri", REDIRECT_URI),
                ("scope", scope),
                ("state", &state),
                ("nonce", &nonce),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|e| format!("authorization URL: {e}"))?;

        let redirect = self.authorize(url.as_str(), email, password)?;
        let redirect = Url::parse(&redirect).map_err(|e| format!("redirect {redirect:?}: {e}"))?;
        let params: BTreeMap<String, String> = redirect.query_pairs().into_owned().collect();
        if let Some(error) = params.get("error") {
            return Err(format!("authorization error {error}: {params:?}"));
        }
        if params.get("state") != Some(&state) {
            return Err(format!("state mismatch in the redirect: {params:?}"));
        }
        let code = params
            .get("code")
            .ok_or_else(|| format!("no code in the redirect: {params:?}"))?;

        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier.as_str()),
        ];
        form.extend(client_auth(client_id));
        parse_token_response(self.token_request(&form))
    }

    /// Plays the browser from an authorization URL built by someone else (e.g. the code under
    /// test): follows redirects, submits the login form once, and returns the final redirect
    /// to the client (the first `Location` outside the issuer), without requesting it.
    pub fn authorize(
        &self,
        authorization_url: &str,
        email: &str,
        password: &str,
    ) -> Result<String, String> {
        off_runtime(|| {
            let browser = Browser::new(&self.issuer);
            let login = Login::As { email, password };
            match browser.drive(browser.get(authorization_url)?, login)? {
                Outcome::Redirect(location) => Ok(location),
                Outcome::DeviceSuccess => Err("the flow ended on the device success page".into()),
            }
        })
    }

    /// Like [`Self::authorize`], but the user presses Cancel on the login form: returns the
    /// redirect to the client, which carries `error=access_denied`.
    pub fn decline(&self, authorization_url: &str) -> Result<String, String> {
        off_runtime(|| {
            let browser = Browser::new(&self.issuer);
            match browser.drive(browser.get(authorization_url)?, Login::Cancel)? {
                Outcome::Redirect(location) => Ok(location),
                Outcome::DeviceSuccess => Err("the flow ended on the device success page".into()),
            }
        })
    }

    /// Device authorization grant, driven without a human: device authorization request, then
    /// the verification page (user code, confirmation, login form) over HTTP, then polls the
    /// token endpoint. Panics (with the server log) on any failure.
    pub fn login_device(
        &self,
        client_id: &str,
        email: &str,
        password: &str,
        scope: &str,
    ) -> TokenResponse {
        self.try_login_device(client_id, email, password, scope)
            .unwrap_or_else(|e| self.fail(&format!("device login of {email}"), &e))
    }

    /// [`Self::login_device`] returning the failure instead of panicking.
    pub fn try_login_device(
        &self,
        client_id: &str,
        email: &str,
        password: &str,
        scope: &str,
    ) -> Result<TokenResponse, String> {
        let mut form = vec![("scope", scope)];
        form.extend(client_auth(client_id));
        let (status, body) = self.post_form(&self.device_authorization_url(), &form);
        if status != 200 {
            return Err(format!("device authorization: HTTP {status}: {body}"));
        }
        let device_code = body["device_code"]
            .as_str()
            .ok_or("no device_code")?
            .to_owned();
        let user_code = body["user_code"].as_str().ok_or("no user_code")?.to_owned();
        self.approve_device(&user_code, email, password)?;

        let mut form = vec![
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code.as_str()),
        ];
        form.extend(client_auth(client_id));
        // The user already approved, so the first poll should succeed; pending/slow_down are
        // still handled in case a test queued faults.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.token_request(&form);
            match body["error"].as_str() {
                Some("authorization_pending" | "slow_down") if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => return parse_token_response((status, body)),
            }
        }
    }

    /// Plays the user on the verification page: enters `user_code`, confirms, signs in.
    pub fn approve_device(
        &self,
        user_code: &str,
        email: &str,
        password: &str,
    ) -> Result<(), String> {
        let url = Url::parse_with_params(
            &format!("{}/device", self.issuer),
            [("user_code", user_code)],
        )
        .map_err(|e| e.to_string())?;
        off_runtime(|| {
            let browser = Browser::new(&self.issuer);
            match browser.drive(browser.get(url.as_str())?, Login::As { email, password })? {
                Outcome::DeviceSuccess => Ok(()),
                Outcome::Redirect(location) => Err(format!("unexpected redirect to {location}")),
            }
        })
    }

    /// POSTs a form to the token endpoint; returns the HTTP status and the JSON body.
    pub fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        self.post_form(&self.token_url(), form)
    }

    /// Refreshes with `refresh_token` as `client_id` (with its secret if it has one).
    pub fn refresh(&self, client_id: &str, refresh_token: &str) -> Result<TokenResponse, String> {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        form.extend(client_auth(client_id));
        parse_token_response(self.token_request(&form))
    }

    /// Client-credentials token for `client_id` (`svc` or `collector-confidential`).
    pub fn client_credentials(&self, client_id: &str, scope: &str) -> TokenResponse {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        form.extend(client_auth(client_id));
        parse_token_response(self.token_request(&form))
            .unwrap_or_else(|e| self.fail(&format!("client credentials for {client_id}"), &e))
    }

    /// RFC 7662 introspection as the `dovecot` client (what Dovecot sees).
    pub fn introspect(&self, token: &str) -> Value {
        let (status, body) = self.post_form(
            &self.introspection_url(),
            &[
                ("token", token),
                ("client_id", "dovecot"),
                ("client_secret", "dovecot-secret"),
            ],
        );
        assert_eq!(status, 200, "introspection failed: {body}");
        body
    }

    /// The userinfo endpoint (`GET /me` with the bearer token): HTTP status and JSON body. Only
    /// opaque access tokens without a resource work there (not the JWTs of
    /// [`OidcOptions::jwt_access_token_audience`]).
    pub fn userinfo(&self, access_token: &str) -> (u16, Value) {
        off_runtime(|| {
            let resp = http_client()
                .get(self.userinfo_url())
                .bearer_auth(access_token)
                .send()
                .unwrap_or_else(|e| self.fail("GET /me", &e.to_string()));
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, body)
        })
    }

    /// Token endpoint counters: `{"token_requests":{"<grant_type>":{"ok":n,"error":n,
    /// "injected":n}},"token_errors":{"<grant_type>":{"<error>":n}},"queued_token_faults":n}`.
    pub fn stats(&self) -> Value {
        off_runtime(|| {
            let resp = http_client()
                .get(format!("{}/test/stats", self.issuer))
                .send()
                .and_then(Response::error_for_status)
                .and_then(Response::json::<Value>);
            resp.unwrap_or_else(|e| self.fail("GET /test/stats", &e.to_string()))
        })
    }

    /// Every access, refresh and ID token the server issued at its token endpoint.
    pub fn issued_tokens(&self) -> Vec<String> {
        let v: Value = off_runtime(|| {
            http_client()
                .get(format!("{}/test/issued", self.issuer))
                .send()
                .and_then(Response::error_for_status)
                .and_then(Response::json::<Value>)
                .unwrap_or_else(|e| self.fail("GET /test/issued", &e.to_string()))
        });
        v["tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Successful and failed token requests of `grant_type` so far: `(ok, error)`.
    pub fn token_counts(&self, grant_type: &str) -> (u64, u64) {
        let stats = self.stats();
        let counts = &stats["token_requests"][grant_type];
        (
            counts["ok"].as_u64().unwrap_or(0),
            counts["error"].as_u64().unwrap_or(0),
        )
    }

    /// Queues replies that replace the next token endpoint replies, one per POST /token, in
    /// order. Accepts the array itself (`[{"status":500},{"status":400,"error":"slow_down"},
    /// {"delay_ms":3000}]`) or `{"token_endpoint":[...]}`. An entry with only `delay_ms`
    /// delays the real reply. Note: the harness' own login helpers use the token endpoint too.
    pub fn queue_token_faults(&self, faults: Value) {
        let body = if faults.is_array() {
            json!({ "token_endpoint": faults })
        } else {
            faults
        };
        self.post_test_hook("/test/faults", &body);
    }

    /// Revokes every grant, token and session of `email` (its refresh and access tokens die;
    /// its next login needs the password again).
    pub fn revoke_user(&self, email: &str) {
        self.post_test_hook("/test/revoke_user", &json!({ "email": email }));
    }

    /// Zeroes the token endpoint counters.
    pub fn reset_stats(&self) {
        self.post_test_hook("/test/reset_stats", &json!({}));
    }

    fn post_test_hook(&self, path: &str, body: &Value) -> Value {
        off_runtime(|| {
            let resp = http_client()
                .post(format!("{}{path}", self.issuer))
                .json(body)
                .send()
                .and_then(Response::error_for_status)
                .and_then(Response::json::<Value>);
            resp.unwrap_or_else(|e| self.fail(&format!("POST {path}"), &e.to_string()))
        })
    }

    fn post_form(&self, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
        off_runtime(|| {
            let resp = http_client()
                .post(url)
                .form(form)
                .send()
                .unwrap_or_else(|e| self.fail(&format!("POST {url}"), &e.to_string()));
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, body)
        })
    }

    fn fail(&self, what: &str, error: &str) -> ! {
        panic!(
            "{what} failed: {error}\n--- oidc log ({}) ---\n{}",
            self.issuer,
            tail(&self.log(), 60)
        )
    }
}

impl Drop for Oidc {
    fn drop(&mut self) {
        // The server keeps nothing worth a graceful shutdown.
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `client_id`, plus `client_secret` for the confidential clients (client_secret_post).
fn client_auth(client_id: &str) -> Vec<(&'static str, &str)> {
    let mut form = vec![("client_id", client_id)];
    if let Some(secret) = client_secret(client_id) {
        form.push(("client_secret", secret));
    }
    form
}

fn parse_token_response((status, body): (u16, Value)) -> Result<TokenResponse, String> {
    if status != 200 {
        return Err(format!("token endpoint: HTTP {status}: {body}"));
    }
    serde_json::from_value(body.clone()).map_err(|e| format!("token response {body}: {e}"))
}

/// The payload of a JWT (ID token, JWT access token), decoded without verifying anything;
/// `Err` when `token` is not three base64url parts with a JSON object in the middle (e.g. an
/// opaque token).
pub fn jwt_payload(token: &str) -> Result<Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [_, payload, _] = parts[..] else {
        return Err(format!("not a JWT: {} part(s)", parts.len()));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| format!("JWT payload is not base64url: {e}"))?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("JWT payload is not JSON: {e}"))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(format!("JWT payload is not an object: {value}"))
    }
}

/// 32 random bytes, base64url: PKCE verifier, state, nonce.
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn http_client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build an HTTP client")
}

/// A scripted browser: one cookie jar, manual redirects, tolerant of the few pages the test
/// server renders (its own login form, oidc-provider's device pages and form_post pages).
struct Browser {
    issuer: String,
    client: Client,
}

enum Page {
    Redirect(String),
    Html {
        url: String,
        status: u16,
        body: String,
    },
}

enum Outcome {
    /// A redirect leaving the issuer (to the client's redirect URI).
    Redirect(String),
    /// The device flow's success page.
    DeviceSuccess,
}

impl Browser {
    /// Must be called on the thread that uses it (blocking reqwest; see `off_runtime`).
    fn new(issuer: &str) -> Browser {
        let client = Client::builder()
            .no_proxy()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build the browser's HTTP client");
        Browser {
            issuer: issuer.to_owned(),
            client,
        }
    }

    fn get(&self, url: &str) -> Result<Page, String> {
        let resp = self
            .client
            .get(url)
            .send()
            .map_err(|e| format!("GET {url}: {e}"))?;
        Self::page(url, resp)
    }

    fn post(&self, url: &str, form: &[(String, String)]) -> Result<Page, String> {
        let resp = self
            .client
            .post(url)
            .form(form)
            .send()
            .map_err(|e| format!("POST {url}: {e}"))?;
        Self::page(url, resp)
    }

    fn page(url: &str, resp: Response) -> Result<Page, String> {
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("HTTP {status} without Location from {url}"))?;
            let absolute = Url::parse(url)
                .and_then(|base| base.join(location))
                .map_err(|e| format!("bad Location {location:?}: {e}"))?;
            return Ok(Page::Redirect(absolute.to_string()));
        }
        let body = resp.text().map_err(|e| format!("reading {url}: {e}"))?;
        Ok(Page::Html {
            url: url.to_owned(),
            status: status.as_u16(),
            body,
        })
    }

    fn is_issuer(&self, url: &str) -> bool {
        url == self.issuer
            || url
                .strip_prefix(&self.issuer)
                .is_some_and(|rest| rest.starts_with(['/', '?']))
    }

    fn drive(&self, mut page: Page, login: Login<'_>) -> Result<Outcome, String> {
        let mut signed_in = false;
        for _ in 0..30 {
            page = match page {
                Page::Redirect(location) if !self.is_issuer(&location) => {
                    return Ok(Outcome::Redirect(location));
                }
                Page::Redirect(location) => self.get(&location)?,
                Page::Html { url, status, body } => {
                    if body.contains("id=\"success\"") {
                        return Ok(Outcome::DeviceSuccess);
                    }
                    let form = first_form(&body).ok_or_else(|| {
                        format!("HTTP {status} page without a form at {url}:\n{body}")
                    })?;
                    let action = Url::parse(&url)
                        .and_then(|base| base.join(&form.action))
                        .map_err(|e| format!("bad form action {:?}: {e}", form.action))?;
                    if form.id == "login" {
                        if signed_in {
                            let reason = extract_error(&body).unwrap_or_default();
                            return Err(format!("login rejected (HTTP {status}): {reason}"));
                        }
                        signed_in = true;
                        let fields = match login {
                            Login::As { email, password } => vec![
                                ("email".to_owned(), email.to_owned()),
                                ("password".to_owned(), password.to_owned()),
                            ],
                            Login::Cancel => vec![("abort".to_owned(), "1".to_owned())],
                        };
                        self.post(action.as_str(), &fields)?
                    } else if status == 200 {
                        // oidc-provider's device pages and form_post pages: submit the
                        // hidden fields as a user clicking "Continue" would.
                        self.post(action.as_str(), &form.fields)?
                    } else {
                        return Err(format!("HTTP {status} at {url}:\n{body}"));
                    }
                }
            };
        }
        Err("too many steps in the browser flow".into())
    }
}

/// What the user does at the login form.
#[derive(Clone, Copy)]
enum Login<'a> {
    As {
        email: &'a str,
        password: &'a str,
    },
    /// Presses Cancel (the test server then denies the request).
    Cancel,
}

struct Form {
    id: String,
    action: String,
    /// `name`/`value` of the inputs that carry a value (hidden ones, prefilled ones).
    fields: Vec<(String, String)>,
}

/// The first `<form>` of a page, parsed just enough for the pages the test server renders.
fn first_form(html: &str) -> Option<Form> {
    let start = html.find("<form")?;
    let rest = &html[start..];
    let end = rest.find("</form>").unwrap_or(rest.len());
    let form_html = &rest[..end];
    let tag_end = form_html.find('>')?;
    let tag = &form_html[..tag_end];
    let mut fields = Vec::new();
    let mut inputs = &form_html[tag_end..];
    while let Some(i) = inputs.find("<input") {
        let after = &inputs[i..];
        let close = after.find('>').unwrap_or(after.len());
        let input = &after[..close];
        if let (Some(name), Some(value)) = (attr(input, "name"), attr(input, "value")) {
            fields.push((name, value));
        }
        inputs = &after[close..];
    }
    Some(Form {
        id: attr(tag, "id").unwrap_or_default(),
        action: attr(tag, "action").unwrap_or_default(),
        fields,
    })
}

/// The value of attribute `name` in an HTML tag (double-quoted), entity-decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(decode_entities(&tag[start..start + len]))
}

fn extract_error(html: &str) -> Option<String> {
    let start = html.find("id=\"error\">")? + "id=\"error\">".len();
    let len = html[start..].find('<')?;
    Some(decode_entities(&html[start..start + len]))
}

fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(semi) = after.find(';').filter(|&n| n <= 10) else {
            out.push('&');
            rest = &after[1..];
            continue;
        };
        let entity = &after[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
