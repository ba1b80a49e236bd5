//! `[api_clients.NAME]`: callers of `/api/` besides the admin token, each with a role and a
//! token given by file or by its SHA-256 (never inline).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ::config::Value;

use super::{check_name, file_names, orphan};
use crate::config::settings::*;
use crate::config::tree::{self, Ctx, Table};

const CLIENT_KEYS: &[&str] = &["role", "token_file", "token_sha256"];

pub(super) fn api_clients(ctx: &mut Ctx, v: Option<&Value>) -> BTreeMap<String, ApiClientSettings> {
    let entries = tree::named(ctx, "api_clients", v, "caller of the API");
    let in_file = file_names(ctx, "api_clients", &entries);
    let mut valid = BTreeMap::new();
    for (name, map) in &entries {
        let path = format!("api_clients.{name}");
        if orphan(ctx, "api_clients", name, map, "role", &in_file) {
            continue;
        }
        check_name(ctx, &path, name, "API client");
        let t = Table::open(ctx, &path, map, CLIENT_KEYS);
        let role = t.choice(
            ctx,
            "role",
            &[
                ("read", Role::Read),
                ("mail", Role::Mail),
                ("admin", Role::Admin),
            ],
        );
        if role.is_none() && !t.has("role") {
            ctx.error(
                &t.key("role"),
                "required: read (sources, tokens status), mail (read + messages) or admin",
            );
        }
        let file = t.non_empty(ctx, "token_file");
        let sha = t.non_empty(ctx, "token_sha256");
        let token = match (file, sha) {
            (Some(file), None) => Some(ApiTokenRef::File(PathBuf::from(file))),
            (None, Some(hex)) => match sha256_hex(&hex) {
                Some(digest) => Some(ApiTokenRef::Sha256(digest)),
                None => {
                    // The value is not echoed: a token pasted here by mistake would leak.
                    ctx.error(
                        &t.key("token_sha256"),
                        "expected 64 hexadecimal digits, the SHA-256 of the token (e.g. \
                         `printf %s TOKEN | sha256sum`)",
                    );
                    None
                }
            },
            (Some(_), Some(_)) => {
                ctx.error(
                    &path,
                    "token_file and token_sha256 are both set: give exactly one",
                );
                None
            }
            (None, None) => {
                ctx.error(
                    &path,
                    "needs token_file (a file holding the token) or token_sha256 (its SHA-256)",
                );
                None
            }
        };
        if let (Some(role), Some(token)) = (role, token) {
            valid.insert(
                (*name).to_owned(),
                ApiClientSettings {
                    name: (*name).to_owned(),
                    role,
                    token,
                },
            );
        }
    }
    valid
}

fn sha256_hex(s: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(s.trim()).ok()?;
    bytes.try_into().ok()
}
