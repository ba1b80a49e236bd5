//! Which addresses a webhook may be sent to.
//!
//! A webhook URL is configuration, but the address its name resolves to is not: whoever
//! controls that DNS name can point it, between one request and the next, at the cloud
//! metadata service (which hands out the machine's credentials to any local caller) or at
//! a link-local device. So the policy is applied to every resolved address at connect time
//! (the engine's resolver calls [`AddressPolicy::check_all`]), and to an IP literal in the
//! URL when the config is loaded.
//!
//! Refused unless `allow_private_addresses = true`: the unspecified addresses (0.0.0.0/8,
//! `::`; connecting to them reaches this machine), link-local (169.254.0.0/16, which holds
//! the common metadata address 169.254.169.254, and fe80::/10), and the metadata services
//! that live elsewhere: fd00:ec2::254 (AWS, IPv6) and 100.100.100.200 (Alibaba Cloud). An
//! IPv4 address written as IPv6 (`::ffff:a.b.c.d`, or NAT64's `64:ff9b::a.b.c.d`) is judged
//! as the IPv4 address it reaches. Loopback and private (RFC 1918, ULA) addresses are
//! allowed: a help desk on the LAN, or a receiver on the same machine, is normal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// AWS's metadata service over IPv6.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
/// Alibaba Cloud's metadata service.
const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);

/// Why an address is refused. Fixed labels, usable in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 0.0.0.0/8 or `::`.
    Unspecified,
    /// 169.254.0.0/16 or fe80::/10.
    LinkLocal,
    /// A cloud metadata service outside the link-local ranges.
    CloudMetadata,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unspecified => "unspecified",
            Refusal::LinkLocal => "link_local",
            Refusal::CloudMetadata => "cloud_metadata",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Refusal::Unspecified => "an unspecified address (it reaches this machine)",
            Refusal::LinkLocal => "a link-local address (where cloud metadata services answer)",
            Refusal::CloudMetadata => "a cloud metadata service address",
        }
    }
}

/// A webhook address the policy refuses: the address, why, and the key that allows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{addr} is {}; webhooks are not sent there unless sinks.{sink}.allow_private_addresses = true",
    reason.describe()
)]
pub struct RefusedAddress {
    /// The sink, so the message names the key to set.
    pub sink: String,
    pub addr: IpAddr,
    pub reason: Refusal,
}

/// One sink's address policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPolicy {
    /// The NAME in `[sinks.NAME]`.
    pub sink: String,
    /// `allow_private_addresses`: when true, every address is allowed.
    pub allow_private_addresses: bool,
}

impl AddressPolicy {
    /// `Ok` when a request may go to `addr`.
    pub fn check(&self, addr: IpAddr) -> Result<(), RefusedAddress> {
        if self.allow_private_addresses {
            return Ok(());
        }
        match refusal(addr) {
            None => Ok(()),
            Some(reason) => Err(RefusedAddress {
                sink: self.sink.clone(),
                addr,
                reason,
            }),
        }
    }

    /// Every address a name resolved to. One refused address refuses the name: a name that
    /// resolves to a metadata address is not trusted for its other addresses either, and the
    /// refusal is seen at once instead of surfacing only when the other addresses fail.
    pub fn check_all(&self, addrs: &[IpAddr]) -> Result<(), RefusedAddress> {
        addrs.iter().try_for_each(|a| self.check(*a))
    }
}

/// Why `addr` is refused without `allow_private_addresses`, if it is.
pub fn refusal(addr: IpAddr) -> Option<Refusal> {
    match addr {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => refusal_v4(v4),
            None => refusal_v6(v6),
        },
    }
}

fn refusal_v4(v4: Ipv4Addr) -> Option<Refusal> {
    if v4.octets()[0] == 0 {
        Some(Refusal::Unspecified)
    } else if v4.is_link_local() {
        Some(Refusal::LinkLocal)
    } else if v4 == ALIBABA_METADATA {
        Some(Refusal::CloudMetadata)
    } else {
        None
    }
}

fn refusal_v6(v6: Ipv6Addr) -> Option<Refusal> {
    if v6.is_unspecified() {
        Some(Refusal::Unspecified)
    } else if v6.segments()[0] & 0xffc0 == 0xfe80 {
        Some(Refusal::LinkLocal)
    } else if v6 == AWS_METADATA_V6 {
        Some(Refusal::CloudMetadata)
    } else {
        None
    }
}

/// The IPv4 address an IPv6 one reaches: IPv4-mapped (`::ffff:a.b.c.d`) or NAT64's
/// well-known prefix (`64:ff9b::a.b.c.d`, RFC 6052).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: bool) -> AddressPolicy {
        AddressPolicy {
            sink: "helpdesk".into(),
            allow_private_addresses: allow,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_metadata_link_local_and_unspecified_in_every_spelling() {
        for (addr, reason) in [
            ("169.254.169.254", Refusal::LinkLocal),
            ("169.254.0.1", Refusal::LinkLocal),
            ("169.254.255.255", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("febf:ffff::1", Refusal::LinkLocal),
            ("fd00:ec2::254", Refusal::CloudMetadata),
            ("100.100.100.200", Refusal::CloudMetadata),
            ("0.0.0.0", Refusal::Unspecified),
            ("0.1.2.3", Refusal::Unspecified),
            ("::", Refusal::Unspecified),
            // IPv4 written as IPv6 reaches the IPv4 address.
            ("::ffff:169.254.169.254", Refusal::LinkLocal),
            ("::ffff:100.100.100.200", Refusal::CloudMetadata),
            ("::ffff:0.0.0.0", Refusal::Unspecified),
            ("64:ff9b::169.254.169.254", Refusal::LinkLocal),
            ("64:ff9b::100.100.100.200", Refusal::CloudMetadata),
        ] {
            let err = policy(false).check(ip(addr)).unwrap_err();
            assert_eq!(err.reason, reason, "{addr}");
            assert_eq!(err.addr, ip(addr));
            assert!(policy(true).check(ip(addr)).is_ok(), "{addr}");
        }
    }

    #[test]
    fn allows_loopback_private_and_public_addresses() {
        for addr in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.10",
            "fd12:3456::1",
            "fd00:ec2::253",
            "fec0::1",
            "100.100.100.201",
            "100.64.0.1",
            "93.184.215.14",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "64:ff9b::93.184.215.14",
        ] {
            assert_eq!(policy(false).check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn one_refused_address_refuses_the_name() {
        let p = policy(false);
        assert_eq!(p.check_all(&[ip("10.0.0.1"), ip("192.168.0.1")]), Ok(()));
        let err = p
            .check_all(&[ip("10.0.0.1"), ip("169.254.169.254")])
            .unwrap_err();
        assert_eq!(err.addr, ip("169.254.169.254"));
        assert_eq!(policy(true).check_all(&[ip("169.254.169.254")]), Ok(()));
    }

    #[test]
    fn the_error_names_the_address_and_the_key_to_set() {
        let err = policy(false).check(ip("fd00:ec2::254")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "fd00:ec2::254 is a cloud metadata service address; webhooks are not sent there \
             unless sinks.helpdesk.allow_private_addresses = true"
        );
        assert_eq!(err.reason.as_str(), "cloud_metadata");
    }
}
