//! Tier 3 for the userspace data plane: TCP half-close through a real VIP, with the real
//! daemon in private network namespaces (REDIRECT from another namespace, DNAT from the
//! node itself). Needs root, iproute2, iptables, curl, socat, ss (see `support`).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const VIP: &str = "10.11.0.40";
const TARGET_PORT: u16 = 9000;
/// What the endpoint answers after the request's EOF, besides the request's length.
const RESPONSE: usize = 1 << 20;
/// Sent before the client's `shutdown(SHUT_WR)`; larger than one copy buffer.
const REQUEST: usize = 300 * 1024;
/// Bound of every socket wait in this file.
const IO_BOUND: Duration = Duration::from_secs(10);

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// An endpoint like an HTTP/1.0 server that reads the request until EOF: it reads each
/// connection to its end, then answers with the request's length (8 bytes, big endian)
/// and `RESPONSE` bytes of pattern, then closes. Serves at most `connections`, each within
/// `IO_BOUND`, and reports every request's length on the returned channel.
fn read_to_eof_then_answer(
    listener: TcpListener,
    connections: usize,
) -> mpsc::Receiver<Result<usize, String>> {
    let (tx, rx) = mpsc::channel();
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    thread::spawn(move || {
        let deadline = Instant::now() + CONVERGE + IO_BOUND * connections as u32;
        let mut served = 0;
        while served < connections && Instant::now() < deadline {
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("accept: {e}")));
                    return;
                }
            };
            served += 1;
            let answer = (|| -> std::io::Result<usize> {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(IO_BOUND))?;
                stream.set_write_timeout(Some(IO_BOUND))?;
                let mut request = Vec::new();
                stream.read_to_end(&mut request)?;
                stream.write_all(&(request.len() as u64).to_be_bytes())?;
                stream.write_all(&pattern(RESPONSE, 0))?;
                stream.shutdown(Shutdown::Write)?;
                Ok(request.len())
            })();
            if tx.send(answer.map_err(|e| e.to_string())).is_err() {
                return;
            }
        }
    });
    rx
}

/// Sends the request, shuts the write side, then reads until the proxy closes.
fn ask_with_half_close(mut stream: TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(IO_BOUND)).unwrap();
    stream.set_write_timeout(Some(IO_BOUND)).unwrap();
    stream
        .write_all(&pattern(REQUEST, 0x5a))
        .expect("sending the request");
    stream
        .shutdown(Shutdown::Write)
        .expect("shutting the write side");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("reading the whole response after the half-close");
    response
}

#[test]
fn client_that_shuts_its_write_side_still_receives_the_whole_response_through_a_vip() {
    let mut c = Cluster::new("halfclose");
    let pod = c.client("pod1", POD1);
    let client = c.client("client", CLIENT);
    let endpoint = in_netns(&pod, || {
        TcpListener::bind(("0.0.0.0", TARGET_PORT)).expect("endpoint binds in the pod")
    });
    // One connection from another namespace (REDIRECT), one from the node (DNAT).
    let requests = read_to_eof_then_answer(endpoint, 2);
    c.write(
        "bulk.yaml",
        &service_yaml("bulk", Some(VIP), "bulk", "TCP", 80, TARGET_PORT),
    );
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "bulk")]));
    c.start_daemon(&[]);
    let proxy = proxy_port(&c.status(), "default/bulk", 80).unwrap();
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();

    let node = c.node();
    for from in [client.as_str(), node.as_str()] {
        let stream = in_netns(from, || {
            TcpStream::connect_timeout(&vip, IO_BOUND).expect("connecting to the VIP")
        });
        let response = ask_with_half_close(stream);

        let seen = requests
            .recv_timeout(IO_BOUND)
            .unwrap_or_else(|_| panic!("the endpoint never answered ({from})"))
            .unwrap_or_else(|e| panic!("the endpoint failed ({from}): {e}"));
        assert_eq!(
            seen, REQUEST,
            "the endpoint got the whole request before the EOF ({from})"
        );
        assert_eq!(
            response.len(),
            8 + RESPONSE,
            "the client got the whole response ({from}); daemon log:\n{}",
            c.daemon_logs()
        );
        assert_eq!(response[..8], (REQUEST as u64).to_be_bytes());
        assert!(
            response[8..] == pattern(RESPONSE, 0),
            "the response arrived altered ({from})"
        );
    }

    // Both connections ended cleanly: none is left open or counted as a failure.
    c.wait_status("both connections to end", |s| {
        let l = listener(s, proxy)?;
        if l.accepted == 2 && l.active == 0 {
            Ok(())
        } else {
            Err(format!("{l:?}"))
        }
    });
    let l = c.status();
    let l = listener(&l, proxy).unwrap();
    assert_eq!((l.failures, l.rejected), (0, 0), "{l:?}");
}
