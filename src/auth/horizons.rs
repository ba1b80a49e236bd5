//! Expiry horizons an operator must see coming: a client secret's end date
//! (`client_secret_expires`) and a refresh token left unused until the provider drops it
//! (Microsoft: 90 days without use; Google: 6 months).

use crate::config::{ProviderKind, ProviderSettings};
use crate::store::StoredToken;

/// Warn this many days before a client secret runs out.
pub const CLIENT_SECRET_WARN_DAYS: i64 = 30;

/// Days of inactivity after which the provider revokes a refresh token, by kind.
fn inactivity_limit_days(kind: ProviderKind) -> Option<i64> {
    match kind {
        ProviderKind::Office365 => Some(90),
        ProviderKind::Gmail => Some(180),
        ProviderKind::Oidc => None,
    }
}

/// The client secret's expiry as Unix seconds (end of the given day, UTC).
pub fn client_secret_expiry(provider: &ProviderSettings) -> Option<i64> {
    provider
        .client_secret_expires
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .map(|dt| dt.and_utc().timestamp())
}

/// Warnings for one source's credential, as sentences with the action to take.
pub fn warnings(provider: &ProviderSettings, token: Option<&StoredToken>, now: i64) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(date), Some(exp)) = (
        provider.client_secret_expires,
        client_secret_expiry(provider),
    ) {
        let days = (exp - now).div_euclid(86_400);
        if exp < now {
            out.push(format!(
                "client secret of provider {} expired on {date}: create a new secret for the app and configure it (client_secret_env/_file and client_secret_expires)",
                provider.name
            ));
        } else if days < CLIENT_SECRET_WARN_DAYS {
            out.push(format!(
                "client secret of provider {} expires on {date} (in {days} days): create a new secret for the app and configure it before then",
                provider.name
            ));
        }
    }
    if let (Some(limit), Some(last)) = (
        inactivity_limit_days(provider.kind),
        token.and_then(|t| t.refresh_token_last_used),
    ) {
        let idle = (now - last).div_euclid(86_400);
        if idle >= limit * 2 / 3 {
            out.push(format!(
                "refresh token unused for {idle} days; the provider revokes it after {limit} days without use: make sure the source collects (or re-authorize)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(kind: ProviderKind, expires: Option<&str>) -> ProviderSettings {
        ProviderSettings {
            name: "p".into(),
            kind,
            tenant: None,
            flow: crate::config::Flow::Delegated,
            client_id: "c".into(),
            client_secret: None,
            redirect_uri: None,
            issuer: None,
            token_url: None,
            authorization_url: None,
            device_authorization_url: None,
            scopes: None,
            client_secret_expires: expires.map(|d| d.parse().unwrap()),
        }
    }

    #[test]
    fn client_secret_warning_window() {
        let now = chrono::NaiveDate::from_ymd_opt(2027, 6, 1)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp();
        assert!(
            warnings(
                &provider(ProviderKind::Office365, Some("2027-09-01")),
                None,
                now
            )
            .is_empty()
        );
        let w = warnings(
            &provider(ProviderKind::Office365, Some("2027-06-15")),
            None,
            now,
        );
        assert!(w[0].contains("expires on 2027-06-15 (in 14 days)"), "{w:?}");
        let w = warnings(
            &provider(ProviderKind::Office365, Some("2027-05-01")),
            None,
            now,
        );
        assert!(w[0].contains("expired on 2027-05-01"), "{w:?}");
    }

    #[test]
    fn idle_refresh_token_warning() {
        let now = 1_900_000_000;
        let tok = |days: i64| StoredToken {
            refresh_token_last_used: Some(now - days * 86_400),
            ..Default::default()
        };
        assert!(
            warnings(
                &provider(ProviderKind::Office365, None),
                Some(&tok(10)),
                now
            )
            .is_empty()
        );
        let w = warnings(
            &provider(ProviderKind::Office365, None),
            Some(&tok(61)),
            now,
        );
        assert!(
            w[0].contains("unused for 61 days") && w[0].contains("after 90 days"),
            "{w:?}"
        );
        assert!(warnings(&provider(ProviderKind::Oidc, None), Some(&tok(400)), now).is_empty());
    }
}
