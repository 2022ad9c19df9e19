//! `portald udp-probe` (hidden): sends numbered datagrams to an address and prints each
//! reply, for the demo and the tests (no socat needed). Each query uses a fresh socket, so a
//! fresh source port (the proxy sees a new client flow each time and balances it), unless
//! `--source-port` pins them all to one flow.

use crate::args::UdpProbeArgs;
use anyhow::{Context, Result};
use std::net::UdpSocket;
use std::time::Duration;

pub fn run(args: UdpProbeArgs) -> Result<u8> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut answered = 0;
    for i in 1..=args.count {
        let payload = format!("{}-{i}", args.payload);
        let port = args.source_port.unwrap_or(0);
        let socket = UdpSocket::bind(("0.0.0.0", port)).context("binding a UDP socket")?;
        socket
            .set_read_timeout(Some(timeout))
            .context("setting the read timeout")?;
        // Not connect()ed: a reply from the wrong source address (a proxy that answers
        // from another address than the one asked, which a real resolver drops) is then
        // seen and reported instead of being a silent timeout.
        socket
            .send_to(payload.as_bytes(), args.to)
            .with_context(|| format!("sending to {}", args.to))?;
        let mut buf = [0u8; 65536];
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == args.to => {
                answered += 1;
                println!("{}", String::from_utf8_lossy(&buf[..n]));
            }
            Ok((n, from)) => println!(
                "reply to {payload} from {from}, not {}: {}",
                args.to,
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => println!("no reply to {payload}: {e}"),
        }
    }
    println!("{answered}/{} answered", args.count);
    Ok(if answered == args.count { 0 } else { 1 })
}
