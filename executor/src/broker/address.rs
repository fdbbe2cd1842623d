//! Where the broker listens: an address compute nodes can reach. The
//! default is loopback for the local provider and the first non-loopback
//! interface otherwise; `engine.address` may name an IP or an interface
//! (`ib0`, `hsn0`) for clusters whose nodes reach the login node on one network,
//! or `unix` for a Unix socket in the endpoint directory ([`unix_socket`]).

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

/// Longest socket path a `sockaddr_un` holds (108 bytes with its NUL, on Linux).
const MAX_SOCKET_PATH: usize = 107;

/// The broker's socket path in `dir`, as text; an error names why it cannot
/// be one (not UTF-8, or longer than a Unix socket path may be).
pub fn socket_path(dir: &std::path::Path) -> Result<String, String> {
    let path = dir.join("broker.sock");
    let text = path
        .to_str()
        .ok_or_else(|| format!("the endpoint directory {} is not UTF-8", dir.display()))?;
    if text.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "engine.address = \"unix\": the socket path {text} is longer than a Unix socket \
             allows ({MAX_SOCKET_PATH} bytes); use a shorter $HPFAAS_HOME or a TCP address"
        ));
    }
    Ok(text.to_string())
}

/// `ipc://<dir>/broker.sock` for `engine.address = "unix"`, with `dir` made
/// private (0700): only the endpoint's owner can reach the socket, which is
/// what CurveZMQ's keys guarantee on TCP.
pub fn unix_socket(dir: &std::path::Path) -> Result<String, String> {
    let text = socket_path(dir)?;
    crate::private::dir(dir).map_err(|e| format!("{e:#}"))?;
    Ok(format!("ipc://{text}"))
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
