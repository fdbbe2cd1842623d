//! Where the broker listens: an address compute nodes can reach. The
//! default is loopback for the local provider and the first non-loopback
//! interface otherwise; `engine.address` may name an IP or an interface
//! (`ib0`, `hsn0`) for clusters whose nodes reach the login node on one network.

use std::net::{IpAddr, Ipv4Addr};

/// The IPv4 addresses of this machine's interfaces, by interface name.
fn interfaces() -> Vec<(String, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only read
    // entries whose address family is AF_INET, as sockaddr_in.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                    .to_string_lossy()
                    .into_owned();
                out.push((name, ip));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Resolves `engine.address` (an IP, an interface name, or unset) to an IP.
pub fn resolve(configured: Option<&str>, local_provider: bool) -> Result<String, String> {
    match configured {
        Some(text) if text.parse::<IpAddr>().is_ok() => Ok(text.to_string()),
        Some(name) => interfaces()
            .into_iter()
            .find(|(iface, _)| iface == name)
            .map(|(_, ip)| ip.to_string())
            .ok_or_else(|| {
                let known: Vec<String> = interfaces().into_iter().map(|(n, ip)| format!("{n} ({ip})")).collect();
                format!(
                    "engine.address = {name:?} is neither an IP address nor an interface of this machine; interfaces: {}",
                    known.join(", ")
                )
            }),
        None if local_provider => Ok("127.0.0.1".into()),
        None => Ok(interfaces()
            .into_iter()
            .map(|(_, ip)| ip)
            .find(|ip| !ip.is_loopback())
            .unwrap_or(Ipv4Addr::LOCALHOST)
            .to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_ips_interfaces_and_defaults() {
        assert_eq!(resolve(Some("10.1.2.3"), false).unwrap(), "10.1.2.3");
        assert_eq!(resolve(None, true).unwrap(), "127.0.0.1");
        assert_eq!(resolve(Some("lo"), false).unwrap(), "127.0.0.1");
        let err = resolve(Some("no-such-if0"), false).unwrap_err();
        assert!(
            err.contains("no-such-if0") && err.contains("lo (127.0.0.1)"),
            "{err}"
        );
        let default = resolve(None, false).unwrap();
        assert!(default.parse::<Ipv4Addr>().is_ok(), "{default}");
    }
}
