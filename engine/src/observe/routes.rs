//! Which networks are directly attached to this host: `/proc/net/route` (the main table).

use planners::Net;
use std::net::Ipv4Addr;

/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x1;
/// `RTF_GATEWAY`: the route goes through a router, so its network is not on a link here.
const RTF_GATEWAY: u32 = 0x2;

/// Parses `/proc/net/route`: networks of up, gateway-less routes, except the default route
/// and loopback. Fields are little-endian hex, as the kernel prints them.
pub fn parse_routes(text: &str) -> Vec<Net> {
    let mut nets: Vec<Net> = parse_attached(text).into_iter().map(|(_, n)| n).collect();
    nets.sort();
    nets.dedup();
    nets
}

/// The same networks, each with the interface its route goes out of, in table order.
pub fn parse_attached(text: &str) -> Vec<(String, Net)> {
    let hex = |field: &str| u32::from_str_radix(field, 16).ok();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [iface, destination, _gateway, flags, _, _, _, mask, ..] = fields.as_slice() else {
                return None;
            };
            let flags = hex(flags)?;
            if *iface == "lo" || flags & RTF_UP == 0 || flags & RTF_GATEWAY != 0 {
                return None;
            }
            let addr = Ipv4Addr::from(hex(destination)?.swap_bytes());
            let mask = hex(mask)?.swap_bytes();
            let len = u8::try_from(mask.count_ones()).ok()?;
            if len == 0 || addr.is_loopback() {
                return None;
            }
            Some((iface.to_string(), Net::new(addr, len).ok()?))
        })
        .collect()
}

/// This host's directly attached networks (none if the table cannot be read).
pub fn local_networks() -> Vec<Net> {
    std::fs::read_to_string("/proc/net/route")
        .map(|text| parse_routes(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_networks_only() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            br0\t0001F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t0000000A\t010200C0\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n\
            br1\t0002F40A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let nets: Vec<String> = parse_routes(text).iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.244.1.0/24", "192.0.2.0/24"]);
    }
}
