//! `portald backend` (hidden): a tiny named server used as a "pod" by the demo and the
//! tests. TCP ports answer any HTTP/1.x request with `200 OK` and body `NAME\n`; UDP ports
//! reply to each datagram with `NAME:` + the payload. Runs until SIGTERM or Ctrl-C.

use crate::args::BackendArgs;
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Most bytes of request head read; a larger head gets `431` rather than unbounded memory.
const MAX_HEAD: usize = 16 * 1024;
/// A client that sends nothing for this long is dropped, so idle sockets cannot pile up.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: BackendArgs) -> Result<u8> {
    if args.tcp.is_empty() && args.udp.is_empty() {
        bail!("give at least one --tcp or --udp port");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: BackendArgs) -> Result<u8> {
    let name: Arc<str> = Arc::from(args.name.as_str());
    let mut tasks = tokio::task::JoinSet::new();
    // Bind everything before announcing readiness: spawners wait for the "ready" line.
    for port in &args.tcp {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port));
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding tcp/{port}"))?;
        tasks.spawn(accept_loop(listener, name.clone()));
    }
    for port in &args.udp {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port));
        let socket = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding udp/{port}"))?;
        tasks.spawn(udp_loop(socket, name.clone()));
    }
    let ports: Vec<String> = (args.tcp.iter().map(|p| format!("tcp/{p}")))
        .chain(args.udp.iter().map(|p| format!("udp/{p}")))
        .collect();
    println!("backend {} ready on {}", args.name, ports.join(" "));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        Some(res) = tasks.join_next() => {
            // A serving loop only ends on a socket error; report it instead of idling.
            res.context("a serving task panicked")?.context("serving")?;
        }
    }
    println!("backend {} stopping", args.name);
    Ok(0)
}

async fn accept_loop(listener: TcpListener, name: Arc<str>) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        let name = name.clone();
        tokio::spawn(async move {
            // A client that misbehaves only loses its own connection.
            let _ = answer_http(stream, &name).await;
        });
    }
}

async fn answer_http(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let complete = loop {
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            break false;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
    };
    if head.is_empty() {
        return Ok(());
    }
    let (status, body) = if complete {
        ("200 OK", format!("{name}\n"))
    } else {
        (
            "431 Request Header Fields Too Large",
            "bad request\n".into(),
        )
    };
    // X-Client lets tests see which source address the backend saw (lost in userspace mode).
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         X-Backend: {name}\r\nX-Client: {peer}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn udp_loop(socket: UdpSocket, name: Arc<str>) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await.context("receiving")?;
        let mut reply = Vec::with_capacity(name.len() + 1 + n);
        reply.extend_from_slice(name.as_bytes());
        reply.push(b':');
        reply.extend_from_slice(&buf[..n]);
        // A failed send (e.g. ICMP-refused peer) is that client's problem only.
        let _ = socket.send_to(&reply, from).await;
    }
}
