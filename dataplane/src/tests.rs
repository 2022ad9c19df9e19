//! Tier-2 tests of the data plane: real sockets on loopback, ports bound by the tests.

use super::balancer::Balancer;
use super::*;
use std::net::{Ipv4Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A second loopback address, for a second client IP.
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Upper bound of every wait, so a hang fails the test instead of stalling the suite.
const BOUND: Duration = Duration::from_secs(3);
const NAME: &str = "default/web:http";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config() -> DataPlaneConfig {
    DataPlaneConfig {
        listen_addr: LOCAL,
        dial_timeouts: vec![ms(500)],
        max_attempts: 4,
        half_close_timeout: Duration::from_secs(10),
        udp_idle_timeout: Duration::from_secs(10),
        tcp_workers: 2,
        fd_reserve: DEFAULT_FD_RESERVE,
        max_connections: None,
        udp_max_flows: DEFAULT_UDP_MAX_FLOWS,
        udp_max_flows_per_client: DEFAULT_UDP_MAX_FLOWS_PER_CLIENT,
        keepalive: Some(Keepalive::default()),
        outlier: OutlierDetection::default(),
    }
}

fn spec(protocol: Protocol, endpoints: &[SocketAddr], affinity: Option<Duration>) -> ListenerSpec {
    ListenerSpec {
        protocol,
        port: 0,
        name: NAME.to_string(),
        backends: backends(endpoints, affinity),
    }
}

fn backends(endpoints: &[SocketAddr], affinity: Option<Duration>) -> Backends {
    Backends {
        endpoints: endpoints.to_vec(),
        affinity,
    }
}

async fn open(
    plane: &DataPlane,
    protocol: Protocol,
    endpoints: &[SocketAddr],
    affinity: Option<Duration>,
) -> u16 {
    plane
        .open(spec(protocol, endpoints, affinity))
        .await
        .expect("listener opens")
}

fn status_of(plane: &DataPlane, protocol: Protocol, port: u16) -> ListenerStatus {
    plane
        .status()
        .into_iter()
        .find(|s| s.protocol == protocol && s.port == port)
        .expect("listener is in status")
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(ms(10)).await;
    }
}

async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A TCP endpoint that greets every connection with its one-letter name, then echoes until
/// the client half-closes, then half-closes too.
async fn backend(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    serve_with(move |mut stream| async move {
        let _ = stream.write_all(name.as_bytes()).await;
        let (mut read, mut write) = stream.split();
        let _ = tokio::io::copy(&mut read, &mut write).await;
        let _ = write.shutdown().await;
    })
    .await
}

/// A TCP endpoint running `handler` on every accepted connection; aborting the handle closes
/// the listening socket, so later connects are refused.
async fn serve_with<F, Fut>(handler: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handler(stream));
        }
    });
    (addr, task)
}

async fn stop(task: JoinHandle<()>) {
    task.abort();
    let _ = task.await;
}

/// An address where nothing listens: connects to it are refused.
async fn refused_endpoint() -> SocketAddr {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    listener.local_addr().unwrap()
}

/// An endpoint whose connects hang: a listener with a full accept queue, which makes Linux
/// drop further SYNs. Checked by a connect that actually times out, so a kernel that answers
/// anyway fails the test rather than letting it pass without exercising the timeout.
struct Silent {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _queued: Vec<TcpStream>,
}

async fn silent_endpoint() -> Silent {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&SocketAddr::new(LOCAL, 0).into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match timeout(ms(100), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue of {addr}: {e}"),
            Err(_) => {
                return Silent {
                    addr,
                    _listener: listener,
                    _queued: queued,
                }
            }
        }
    }
    panic!("the accept queue of {addr} never filled; cannot make a silent endpoint");
}

/// Connects, half-closes, and returns all the endpoint sent: its name for [`backend`].
async fn ask(port: u16) -> String {
    ask_from(LOCAL, port).await
}

async fn ask_from(source: IpAddr, port: u16) -> String {
    bounded("ask", async {
        let mut stream = connect_from(source, port).await;
        stream.shutdown().await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    })
    .await
}

async fn connect_from(source: IpAddr, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(SocketAddr::new(LOCAL, port)).await.unwrap()
}

/// A proxied connection kept open to check it survives changes to its listener.
struct Session {
    stream: TcpStream,
    endpoint: String,
}

impl Session {
    async fn open(port: u16) -> Session {
        bounded("session open", async {
            let mut stream = TcpStream::connect((LOCAL, port)).await.unwrap();
            let mut name = [0u8; 1];
            stream.read_exact(&mut name).await.unwrap();
            Session {
                stream,
                endpoint: String::from_utf8_lossy(&name).into_owned(),
            }
        })
        .await
    }

    async fn echo(&mut self, text: &str) -> String {
        bounded("echo", async {
            self.stream.write_all(text.as_bytes()).await.unwrap();
            let mut reply = vec![0u8; text.len()];
            self.stream.read_exact(&mut reply).await.unwrap();
            String::from_utf8(reply).unwrap()
        })
        .await
    }
}

/// Reads until the connection ends; a reset counts as an end.
/// Connects and reads until the proxy closes or resets. A reset may land before the connect
/// is even seen complete (the proxy refuses within microseconds on loopback): then connect
/// itself reports it, and that is the same outcome.
async fn connect_and_read(port: u16) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect((LOCAL, port)).await?;
    read_until_closed(&mut stream).await
}

async fn read_until_closed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.map(|_| all)
}

#[tokio::test]
async fn round_robin_spreads_connections_over_endpoints() {
    let plane = DataPlane::new(config());
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let (c, _) = backend("c").await;
    let port = open(&plane, Protocol::Tcp, &[a, b, c], None).await;

    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(ask(port).await);
    }

    assert_eq!(seen, ["a", "b", "c", "a", "b", "c"]);
    let status = status_of(&plane, Protocol::Tcp, port);
    assert_eq!(
        status.per_endpoint,
        BTreeMap::from([(a, 2), (b, 2), (c, 2)])
    );
    assert_eq!(
        (status.accepted, status.failures, status.rejected),
        (6, 0, 0)
    );
    eventually("all connections are closed", || {
        status_of(&plane, Protocol::Tcp, port).active == 0
    })
    .await;
}

#[tokio::test]
async fn client_half_close_still_receives_whole_response() {
    const RESPONSE: usize = 4 << 20;
    let plane = DataPlane::new(config());
    let (endpoint, _) = serve_with(|mut stream| async move {
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        // Answer only after the client's EOF arrived, like an HTTP/1.0 server.
        let response: Vec<u8> = request.iter().copied().cycle().take(RESPONSE).collect();
        stream.write_all(&response).await.unwrap();
        stream.shutdown().await.unwrap();
    })
    .await;
    let port = open(&plane, Protocol::Tcp, &[endpoint], None).await;

    let response = bounded("whole response", async {
        let mut stream = TcpStream::connect((LOCAL, port)).await.unwrap();
        stream.write_all(b"GET /").await.unwrap();
        stream.shutdown().await.unwrap();
        read_until_closed(&mut stream).await.unwrap()
    })
    .await;

    assert_eq!(response.len(), RESPONSE);
    assert!(response.chunks(5).all(|chunk| b"GET /".starts_with(chunk)));
}

/// How a one-shot endpoint ends its connection right after answering.
#[derive(Clone, Copy)]
enum Ending {
    Fin,
    Reset,
}

/// An endpoint that reads a four-byte question, answers `answer` and ends the connection at
/// once, so that the answer and the FIN (or RST) reach the proxy together.
async fn one_shot(answer: &'static [u8], ending: Ending) -> SocketAddr {
    let (endpoint, _) = serve_with(move |mut stream| async move {
        let mut question = [0u8; 4];
        stream.read_exact(&mut question).await.unwrap();
        stream.write_all(answer).await.unwrap();
        match ending {
            Ending::Fin => stream.shutdown().await.unwrap(),
            Ending::Reset => super::sockopt::reset(stream),
        }
    })
    .await;
    endpoint
}

/// Asks a four-byte question through `port` and reads until the proxy ends the stream; the
/// client keeps its own side open throughout.
async fn one_question(port: u16) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect((LOCAL, port)).await.unwrap();
    stream.write_all(b"ask!").await.unwrap();
    read_until_closed(&mut stream).await
}

#[tokio::test]
async fn last_bytes_before_an_endpoint_close_arrive_at_once() {
    let plane = DataPlane::new(config());
    // Like an HTTP server with `Connection: close`: the proxy holds the answer back for the
    // FIN, and must still flush it and pass the EOF on.
    let endpoint = one_shot(b"done", Ending::Fin).await;
    let port = open(&plane, Protocol::Tcp, &[endpoint], None).await;

    for _ in 0..20 {
        let started = Instant::now();
        let reply = bounded("answer and close", one_question(port)).await;
        assert_eq!(reply.unwrap(), b"done");
        assert!(started.elapsed() < ms(500), "took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn endpoint_reset_right_after_its_answer_reaches_the_client_as_a_reset() {
    let plane = DataPlane::new(config());
    // The proxy must not take the end of the stream for a clean FIN, which would tell the
    // client the answer is complete.
    let endpoint = one_shot(b"part", Ending::Reset).await;
    let port = open(&plane, Protocol::Tcp, &[endpoint], None).await;

    for _ in 0..20 {
        let ended = bounded("answer and reset", one_question(port)).await;
        let error = ended.expect_err("the endpoint's reset must reach the client");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    }
}

#[tokio::test]
async fn proxied_connection_sets_tcp_nodelay_on_client_and_endpoint_sockets() {
    let plane = DataPlane::new(config());
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[a], None).await;

    assert_eq!(ask(port).await, "a");
    assert_eq!(ask(port).await, "a");

    let listeners = plane.listeners();
    let shared = &listeners[&(Protocol::Tcp, port)].shared;
    // (client side, endpoint side) per connection, read back with getsockopt.
    assert_eq!(*lock(&shared.nodelay), [(true, true), (true, true)]);
}

#[tokio::test]
async fn idle_connections_hold_no_copy_buffers() {
    const IDLE: usize = 50;
    let plane = DataPlane::new(config());
    // Keeps every connection open and silent, reading only once told to.
    let (drain_tx, drain_rx) = watch::channel(false);
    let (endpoint, _) = serve_with(move |mut stream| {
        let mut drain_rx = drain_rx.clone();
        async move {
            let _ = drain_rx.wait_for(|drain| *drain).await;
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        }
    })
    .await;
    let port = open(&plane, Protocol::Tcp, &[endpoint], None).await;
    let buffers = || {
        let listeners = plane.listeners();
        listeners[&(Protocol::Tcp, port)]
            .shared
            .buffers
            .load(Ordering::Relaxed)
    };

    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect((LOCAL, port)).await.unwrap());
    }
    eventually("every idle connection is proxied", || {
        status_of(&plane, Protocol::Tcp, port)
            .per_endpoint
            .get(&endpoint)
            == Some(&(IDLE as u64))
    })
    .await;
    // Give every direction the chance to take a buffer it should not keep.
    sleep(ms(100)).await;
    assert_eq!(buffers(), 0, "idle connections hold copy buffers");

    // The counter is live: a direction whose endpoint does not read keeps its buffer while
    // bytes are stuck in flight...
    let mut busy = TcpStream::connect((LOCAL, port)).await.unwrap();
    let upload = vec![1u8; 64 << 20];
    let writer = tokio::spawn(async move {
        busy.write_all(&upload).await.unwrap();
        busy.shutdown().await.unwrap();
        busy
    });
    eventually("the stuck direction holds a buffer", || buffers() == 1).await;
    // ...and gives it back once they are delivered.
    drain_tx.send_replace(true);
    let _busy = bounded("upload delivered", writer).await.unwrap();
    eventually("the buffer is given back", || buffers() == 0).await;
    drop(idle);
}

#[tokio::test]
async fn endpoint_half_close_still_receives_client_data() {
    const UPLOAD: usize = 1 << 20;
    let plane = DataPlane::new(config());
    let (received_tx, received_rx) = tokio::sync::mpsc::channel(1);
    let (endpoint, _) = serve_with(move |mut stream| {
        let received_tx = received_tx.clone();
        async move {
            stream.write_all(b"ready").await.unwrap();
            stream.shutdown().await.unwrap();
            let mut upload = Vec::new();
            stream.read_to_end(&mut upload).await.unwrap();
            received_tx.send(upload.len()).await.unwrap();
        }
    })
    .await;
    let port = open(&plane, Protocol::Tcp, &[endpoint], None).await;

    let mut received_rx = received_rx;
    let received = bounded("upload after endpoint half-close", async {
        let mut stream = TcpStream::connect((LOCAL, port)).await.unwrap();
        let mut greeting = Vec::new();
        stream.read_to_end(&mut greeting).await.unwrap();
        assert_eq!(greeting, b"ready");
        stream.write_all(&vec![7u8; UPLOAD]).await.unwrap();
        stream.shutdown().await.unwrap();
        received_rx.recv().await.unwrap()
    })
    .await;

    assert_eq!(received, UPLOAD);
}

#[tokio::test]
async fn refused_endpoint_is_retried_on_next() {
    let plane = DataPlane::new(config());
    let refused = refused_endpoint().await;
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[refused, a], None).await;

    assert_eq!(ask(port).await, "a");

    let status = status_of(&plane, Protocol::Tcp, port);
    assert_eq!(status.per_endpoint, BTreeMap::from([(a, 1)]));
    assert_eq!((status.failures, status.rejected), (1, 0));
}

#[tokio::test]
async fn no_endpoints_resets_connection_at_once() {
    let plane = DataPlane::new(config());
    let port = open(&plane, Protocol::Tcp, &[], None).await;

    let started = Instant::now();
    let result = bounded("reset", connect_and_read(port)).await;

    assert_eq!(
        result.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    assert!(started.elapsed() < ms(200), "took {:?}", started.elapsed());
    assert_eq!(status_of(&plane, Protocol::Tcp, port).rejected, 1);
}

#[tokio::test]
async fn all_endpoints_failing_resets_connection_at_once() {
    let plane = DataPlane::new(config());
    let endpoints = [refused_endpoint().await, refused_endpoint().await];
    let port = open(&plane, Protocol::Tcp, &endpoints, None).await;

    let started = Instant::now();
    let result = bounded("reset", connect_and_read(port)).await;

    assert_eq!(
        result.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    assert!(started.elapsed() < ms(200), "took {:?}", started.elapsed());
    let status = status_of(&plane, Protocol::Tcp, port);
    assert_eq!((status.failures, status.rejected), (2, 1));
}

#[tokio::test]
async fn attempts_are_bounded_by_max_attempts() {
    let plane = DataPlane::new(DataPlaneConfig {
        max_attempts: 2,
        ..config()
    });
    let (a, _) = backend("a").await;
    let endpoints = [refused_endpoint().await, refused_endpoint().await, a];
    let port = open(&plane, Protocol::Tcp, &endpoints, None).await;

    let result = bounded("reset", connect_and_read(port)).await;

    assert_eq!(
        result.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    let status = status_of(&plane, Protocol::Tcp, port);
    assert_eq!((status.failures, status.rejected), (2, 1));
    assert!(status.per_endpoint.is_empty());
}

#[tokio::test]
async fn silent_endpoint_times_out_and_next_is_used() {
    let plane = DataPlane::new(DataPlaneConfig {
        dial_timeouts: vec![ms(150), ms(2000)],
        ..config()
    });
    let silent = silent_endpoint().await;
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[silent.addr, a], None).await;

    let started = Instant::now();
    assert_eq!(ask(port).await, "a");
    let took = started.elapsed();

    // The first attempt waited out its own timeout, not the next one's.
    assert!(took >= ms(140) && took < ms(1000), "took {took:?}");
    let status = status_of(&plane, Protocol::Tcp, port);
    assert_eq!(status.per_endpoint, BTreeMap::from([(a, 1)]));
    assert_eq!((status.failures, status.rejected), (1, 0));
}

/// A data plane with one TCP listener over endpoints `a` then `b`, with client-IP affinity
/// for `affinity`: the plane, the listener's port and `a`'s task (to stop it).
async fn affine_a_then_b(affinity: Duration) -> (DataPlane, u16, JoinHandle<()>) {
    let plane = DataPlane::new(config());
    let (a, a_task) = backend("a").await;
    let (b, _) = backend("b").await;
    let port = open(&plane, Protocol::Tcp, &[a, b], Some(affinity)).await;
    (plane, port, a_task)
}

#[tokio::test]
async fn affinity_keeps_client_on_one_endpoint() {
    let (_plane, port, _) = affine_a_then_b(Duration::from_secs(60)).await;

    let mut seen = Vec::new();
    for source in [LOCAL, LOCAL, LOCAL, OTHER, LOCAL, OTHER] {
        seen.push(ask_from(source, port).await);
    }

    assert_eq!(seen, ["a", "a", "a", "b", "a", "b"]);
}

#[tokio::test]
async fn affinity_expires_after_timeout() {
    let (_plane, port, _) = affine_a_then_b(ms(300)).await;

    assert_eq!(ask(port).await, "a");
    assert_eq!(ask(port).await, "a");
    sleep(ms(400)).await;
    assert_eq!(ask(port).await, "b", "affinity outlived its timeout");
    assert_eq!(ask(port).await, "b", "the new endpoint is pinned in turn");
}

#[tokio::test]
async fn affinity_moves_when_its_endpoint_fails() {
    let (plane, port, a_task) = affine_a_then_b(Duration::from_secs(60)).await;
    assert_eq!(ask(port).await, "a");

    stop(a_task).await;
    assert_eq!(ask(port).await, "b");
    assert_eq!(ask(port).await, "b");

    // Only the first connection after the failure tried the dead endpoint.
    assert_eq!(status_of(&plane, Protocol::Tcp, port).failures, 1);
}

#[tokio::test]
async fn half_closed_connection_is_reaped_after_timeout() {
    let plane = DataPlane::new(DataPlaneConfig {
        half_close_timeout: ms(300),
        ..config()
    });
    let (endpoint_tx, mut endpoint_rx) = tokio::sync::mpsc::channel(1);
    let (endpoint, _) = serve_with(move |mut stream| {
        let endpoint_tx = endpoint_tx.clone();
        async move {
            // Takes the request, then goes silent without ever answering or closing.
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await.unwrap();
            endpoint_tx.send(stream).await.unwrap();
        }
    })
    .await;
    let port = open(&plane, Protocol::Tcp, &[endpoint], None).await;

    let mut client = TcpStream::connect((LOCAL, port)).await.unwrap();
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let started = Instant::now();
    let mut silent = bounded("endpoint got the request", endpoint_rx.recv())
        .await
        .unwrap();
    let _ = bounded("client connection closed", read_until_closed(&mut client)).await;
    let took = started.elapsed();

    assert!(took >= ms(250) && took < ms(2000), "reaped after {took:?}");
    eventually("the connection is no longer active", || {
        status_of(&plane, Protocol::Tcp, port).active == 0
    })
    .await;
    // The endpoint's side is gone too: it was reset, so writing fails.
    let mut write_failed = false;
    for _ in 0..20 {
        if silent.write_all(b"late").await.is_err() {
            write_failed = true;
            break;
        }
        sleep(ms(50)).await;
    }
    assert!(
        write_failed,
        "the endpoint's side of a reaped connection stayed open"
    );
}

#[tokio::test]
async fn half_closed_connection_with_traffic_is_not_reaped() {
    let plane = DataPlane::new(DataPlaneConfig {
        half_close_timeout: ms(300),
        ..config()
    });
    let (endpoint, _) = serve_with(|mut stream| async move {
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        // Answers slowly: 8 chunks over 800 ms, far longer than the timeout in total.
        for chunk in 0..8u8 {
            stream.write_all(&[chunk]).await.unwrap();
            sleep(ms(100)).await;
        }
        stream.shutdown().await.unwrap();
    })
    .await;
    let port = open(&plane, Protocol::Tcp, &[endpoint], None).await;

    let mut client = TcpStream::connect((LOCAL, port)).await.unwrap();
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let response = bounded("slow response", read_until_closed(&mut client))
        .await
        .unwrap();

    assert_eq!(response, [0, 1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn update_keeps_established_connections() {
    let plane = DataPlane::new(config());
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let port = open(&plane, Protocol::Tcp, &[a], None).await;
    let mut old = Session::open(port).await;
    assert_eq!(old.endpoint, "a");

    plane
        .update(Protocol::Tcp, port, backends(&[b], None))
        .unwrap();
    let mut new = Session::open(port).await;

    assert_eq!(new.endpoint, "b");
    assert_eq!(old.echo("still here").await, "still here");
    assert_eq!(new.echo("hello").await, "hello");
    let status = status_of(&plane, Protocol::Tcp, port);
    assert_eq!(status.endpoints, [b]);
    assert_eq!(status.active, 2);
    assert_eq!(status.per_endpoint, BTreeMap::from([(a, 1), (b, 1)]));
}

#[tokio::test]
async fn close_stops_new_connections_only() {
    let plane = DataPlane::new(config());
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[a], None).await;
    let mut session = Session::open(port).await;

    plane.close(Protocol::Tcp, port).await.unwrap();

    let refused = TcpStream::connect((LOCAL, port)).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(session.echo("still here").await, "still here");
    assert!(plane.status().is_empty());
    // The port is free again: the listener can be reopened on it.
    let reopened = plane
        .open(ListenerSpec {
            port,
            ..spec(Protocol::Tcp, &[a], None)
        })
        .await
        .unwrap();
    assert_eq!(reopened, port);
}

#[tokio::test]
async fn opening_an_open_listener_is_an_error_naming_it() {
    let plane = DataPlane::new(config());
    let port = open(&plane, Protocol::Tcp, &[], None).await;

    let again = plane
        .open(ListenerSpec {
            port,
            ..spec(Protocol::Tcp, &[], None)
        })
        .await
        .unwrap_err();

    assert!(matches!(again, DataPlaneError::AlreadyOpen(_)));
    assert_eq!(
        again.to_string(),
        format!("listener `tcp/{port} ({NAME})` is already open")
    );
}

#[tokio::test]
async fn opening_a_port_in_use_is_an_error_naming_port_and_protocol() {
    let plane = DataPlane::new(config());
    let taken = UdpSocket::bind((LOCAL, 0)).await.unwrap();
    let port = taken.local_addr().unwrap().port();

    let error = plane
        .open(ListenerSpec {
            port,
            ..spec(Protocol::Udp, &[], None)
        })
        .await
        .unwrap_err();

    assert!(matches!(error, DataPlaneError::PortInUse(..)), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("listener `udp/{port} ({NAME})` cannot bind: the port is in use")
    );
    assert!(plane.status().is_empty());
}

#[tokio::test]
async fn update_or_close_of_a_listener_not_open_is_an_error() {
    let plane = DataPlane::new(config());

    let update = plane
        .update(Protocol::Udp, 9, Backends::default())
        .unwrap_err();
    let close = plane.close(Protocol::Tcp, 9).await.unwrap_err();

    assert_eq!(update.to_string(), "listener `udp/9` is not open");
    assert_eq!(close.to_string(), "listener `tcp/9` is not open");
}

#[tokio::test]
async fn status_lists_listeners_by_protocol_then_port() {
    let plane = DataPlane::new(config());
    let (a, _) = backend("a").await;
    let udp = open(&plane, Protocol::Udp, &[a], Some(ms(500))).await;
    let tcp_1 = open(&plane, Protocol::Tcp, &[a], None).await;
    let tcp_2 = open(&plane, Protocol::Tcp, &[], None).await;

    let listed: Vec<_> = plane
        .status()
        .into_iter()
        .map(|s| (s.protocol, s.port, s.name, s.endpoints, s.affinity))
        .collect();

    let (low, high) = (tcp_1.min(tcp_2), tcp_1.max(tcp_2));
    let endpoints_of = |port| if port == tcp_1 { vec![a] } else { vec![] };
    assert_eq!(
        listed,
        [
            (
                Protocol::Tcp,
                low,
                NAME.to_string(),
                endpoints_of(low),
                None
            ),
            (
                Protocol::Tcp,
                high,
                NAME.to_string(),
                endpoints_of(high),
                None
            ),
            (Protocol::Udp, udp, NAME.to_string(), vec![a], Some(ms(500))),
        ]
    );
}

#[tokio::test]
async fn shutdown_closes_listeners_and_connections() {
    let plane = DataPlane::new(config());
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[a], None).await;
    let mut session = Session::open(port).await;

    bounded("shutdown", plane.shutdown()).await;

    // Ended either way (FIN or reset), but ended.
    let _ = bounded("session end", read_until_closed(&mut session.stream)).await;
    assert!(plane.status().is_empty());
    assert!(TcpStream::connect((LOCAL, port)).await.is_err());
    let late = plane
        .open(spec(Protocol::Tcp, &[a], None))
        .await
        .unwrap_err();
    assert!(matches!(late, DataPlaneError::ShutDown(_)), "{late:?}");
}

#[tokio::test]
async fn original_dst_without_nat_is_none_or_the_local_address() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();

    // Without conntrack there is nothing to ask; with it, an un-NATed connection's original
    // destination is simply the address it reached.
    match original_dst(&accepted) {
        None => {}
        Some(original) => assert_eq!(SocketAddr::V4(original), addr),
    }
}

/// A UDP endpoint answering every datagram with `name:payload`.
async fn udp_backend(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind((LOCAL, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let reply = format!("{name}:{}", String::from_utf8_lossy(&buf[..len]));
            let _ = socket.send_to(reply.as_bytes(), from).await;
        }
    });
    (addr, task)
}

async fn udp_client() -> UdpSocket {
    UdpSocket::bind((LOCAL, 0)).await.unwrap()
}

/// Sends `payload` to the listener and returns the reply and the address it came from.
async fn udp_ask(client: &UdpSocket, port: u16, payload: &str) -> (String, SocketAddr) {
    client
        .send_to(payload.as_bytes(), (LOCAL, port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let (len, from) = bounded("udp reply", client.recv_from(&mut buf))
        .await
        .unwrap();
    (String::from_utf8_lossy(&buf[..len]).into_owned(), from)
}

#[tokio::test]
async fn udp_flow_gets_replies_from_listener_port() {
    let plane = DataPlane::new(config());
    let (a, _) = udp_backend("a").await;
    let port = open(&plane, Protocol::Udp, &[a], None).await;
    let client = udp_client().await;

    let first = udp_ask(&client, port, "ping").await;
    let second = udp_ask(&client, port, "pong").await;

    let listener = SocketAddr::new(LOCAL, port);
    assert_eq!(first, ("a:ping".to_string(), listener));
    assert_eq!(second, ("a:pong".to_string(), listener));
    let status = status_of(&plane, Protocol::Udp, port);
    assert_eq!((status.active, status.accepted), (1, 1));
    assert_eq!(status.per_endpoint, BTreeMap::from([(a, 1)]));
}

#[tokio::test]
async fn udp_round_robin_gives_each_client_flow_its_own_endpoint() {
    let plane = DataPlane::new(config());
    let (a, _) = udp_backend("a").await;
    let (b, _) = udp_backend("b").await;
    let port = open(&plane, Protocol::Udp, &[a, b], None).await;
    let (one, two) = (udp_client().await, udp_client().await);

    let replies = [
        udp_ask(&one, port, "1").await.0,
        udp_ask(&two, port, "2").await.0,
        udp_ask(&one, port, "3").await.0,
        udp_ask(&two, port, "4").await.0,
    ];

    assert_eq!(replies, ["a:1", "b:2", "a:3", "b:4"]);
    assert_eq!(status_of(&plane, Protocol::Udp, port).active, 2);
}

#[tokio::test]
async fn udp_flow_expires_when_idle() {
    let plane = DataPlane::new(DataPlaneConfig {
        udp_idle_timeout: ms(200),
        ..config()
    });
    let (a, _) = udp_backend("a").await;
    let (b, _) = udp_backend("b").await;
    let port = open(&plane, Protocol::Udp, &[a, b], None).await;
    let client = udp_client().await;

    assert_eq!(udp_ask(&client, port, "1").await.0, "a:1");
    assert_eq!(status_of(&plane, Protocol::Udp, port).active, 1);
    let started = Instant::now();
    eventually("the idle flow is removed", || {
        status_of(&plane, Protocol::Udp, port).active == 0
    })
    .await;
    assert!(
        started.elapsed() >= ms(150),
        "expired after {:?}",
        started.elapsed()
    );

    // The next datagram starts a new flow, balanced afresh.
    assert_eq!(udp_ask(&client, port, "2").await.0, "b:2");
    assert_eq!(status_of(&plane, Protocol::Udp, port).accepted, 2);
}

#[tokio::test]
async fn udp_without_endpoints_drops_datagrams_and_counts_them() {
    let plane = DataPlane::new(config());
    let port = open(&plane, Protocol::Udp, &[], None).await;
    let client = udp_client().await;

    for payload in ["1", "2"] {
        client
            .send_to(payload.as_bytes(), (LOCAL, port))
            .await
            .unwrap();
    }

    eventually("both datagrams are counted", || {
        status_of(&plane, Protocol::Udp, port).rejected == 2
    })
    .await;
    let mut buf = [0u8; 64];
    assert!(timeout(ms(100), client.recv_from(&mut buf)).await.is_err());
    assert_eq!(status_of(&plane, Protocol::Udp, port).active, 0);
}

#[tokio::test]
async fn udp_flow_moves_when_its_endpoint_is_removed() {
    let plane = DataPlane::new(config());
    let (a, _) = udp_backend("a").await;
    let (b, _) = udp_backend("b").await;
    let port = open(&plane, Protocol::Udp, &[a], None).await;
    let client = udp_client().await;
    assert_eq!(udp_ask(&client, port, "1").await.0, "a:1");

    plane
        .update(Protocol::Udp, port, backends(&[b], None))
        .unwrap();

    assert_eq!(udp_ask(&client, port, "2").await.0, "b:2");
    eventually("the old flow is gone", || {
        status_of(&plane, Protocol::Udp, port).active == 1
    })
    .await;
}

#[tokio::test]
async fn udp_close_frees_the_port() {
    let plane = DataPlane::new(config());
    let (a, _) = udp_backend("a").await;
    let port = open(&plane, Protocol::Udp, &[a], None).await;
    let client = udp_client().await;
    assert_eq!(udp_ask(&client, port, "1").await.0, "a:1");

    plane.close(Protocol::Udp, port).await.unwrap();

    assert!(plane.status().is_empty());
    UdpSocket::bind((LOCAL, port))
        .await
        .expect("the closed listener's port is free");
}

#[test]
fn balancer_tries_endpoints_after_the_chosen_one_in_order() {
    let [a, b, c] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].map(|s| s.parse().unwrap());
    let mut balancer = Balancer::new(&backends(&[a, b, c], None));
    let now = Instant::now();

    assert_eq!(balancer.plan(LOCAL, now, 4), [a, b, c]);
    assert_eq!(balancer.plan(LOCAL, now, 2), [b, c]);
    assert_eq!(balancer.plan(LOCAL, now, 0), [c], "at least one attempt");
    assert_eq!(balancer.plan(LOCAL, now, 3), [a, b, c]);
}

#[test]
fn balancer_update_keeps_pins_to_remaining_endpoints_only() {
    let [a, b, c] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].map(|s| s.parse().unwrap());
    let affinity = Some(Duration::from_secs(60));
    let mut balancer = Balancer::new(&backends(&[a, b], affinity));
    let now = Instant::now();
    balancer.established(LOCAL, b, now);
    balancer.established(OTHER, a, now);

    balancer.update(&backends(&[c, b, b], affinity));

    assert_eq!(balancer.endpoints(), [c, b], "duplicates are dropped");
    assert_eq!(balancer.pinned_clients(), 1);
    assert_eq!(balancer.plan(LOCAL, now, 1), [b]);
}

#[test]
fn balancer_drops_expired_pins() {
    let [a, b] = ["10.0.0.1:80", "10.0.0.2:80"].map(|s| s.parse().unwrap());
    let affinity = Duration::from_secs(60);
    let mut balancer = Balancer::new(&backends(&[a, b], Some(affinity)));
    let start = Instant::now();
    for last in 0..100u8 {
        balancer.established(IpAddr::V4(Ipv4Addr::new(10, 1, 0, last)), a, start);
    }

    balancer.plan(LOCAL, start + affinity, 1);

    assert_eq!(
        balancer.pinned_clients(),
        0,
        "pins of gone clients are not kept"
    );
}

#[test]
fn data_plane_is_cheap_to_share_across_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<DataPlane>();
}

#[tokio::test]
async fn proxied_connection_sets_keepalive_and_user_timeout_on_client_and_endpoint_sockets() {
    let keepalive = Keepalive {
        idle: Duration::from_secs(7),
        interval: Duration::from_secs(3),
        count: 4,
        user_timeout: Duration::from_millis(19_500),
    };
    let plane = DataPlane::new(DataPlaneConfig {
        keepalive: Some(keepalive),
        ..config()
    });
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[a], None).await;

    assert_eq!(ask(port).await, "a");

    let listeners = plane.listeners();
    let shared = &listeners[&(Protocol::Tcp, port)].shared;
    // (client side, endpoint side), read back with getsockopt: the client side inherits
    // them from the listening socket.
    assert_eq!(
        *lock(&shared.keepalive),
        [(Some(keepalive), Some(keepalive))]
    );
}

#[tokio::test]
async fn connections_past_max_connections_wait_in_the_backlog_until_one_ends() {
    let plane = DataPlane::new(DataPlaneConfig {
        max_connections: Some(2),
        ..config()
    });
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[a], None).await;
    let first = Session::open(port).await;
    let _second = Session::open(port).await;

    // The kernel completes the handshake from the backlog, but the proxy does not take it.
    let mut third = TcpStream::connect((LOCAL, port)).await.unwrap();
    let mut greeting = [0u8; 1];
    let early = timeout(ms(300), third.read_exact(&mut greeting)).await;
    assert!(early.is_err(), "a third connection was served: {early:?}");
    assert_eq!(status_of(&plane, Protocol::Tcp, port).active, 2);

    drop(first);
    bounded(
        "the waiting connection is served",
        third.read_exact(&mut greeting),
    )
    .await
    .unwrap();
    assert_eq!(&greeting, b"a");
    let status = status_of(&plane, Protocol::Tcp, port);
    assert_eq!((status.accepted, status.rejected), (3, 0));
}

#[tokio::test]
async fn a_listener_past_the_descriptor_budget_is_refused_by_name_and_opens_once_fds_free() {
    // Listeners may hold half of it: room for one TCP listener of two workers, not two.
    let plane = DataPlane::with_budget(config(), |_| limits::Budget::new(6, usize::MAX));
    let (a, _) = backend("a").await;
    let first = open(&plane, Protocol::Tcp, &[a], None).await;
    assert_eq!(plane.fds(), (2, 6));

    let refused = plane
        .open(spec(Protocol::Tcp, &[a], None))
        .await
        .expect_err("no descriptors are left for a second listener");
    let message = refused.to_string();
    assert!(
        matches!(
            refused,
            DataPlaneError::NoFileDescriptors {
                needs: 2,
                held: 2,
                budget: 3,
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains(NAME) && message.contains("RLIMIT_NOFILE"),
        "{message}"
    );
    assert_eq!(plane.fds(), (2, 6), "a refused open holds nothing");

    plane.close(Protocol::Tcp, first).await.unwrap();
    assert_eq!(plane.fds(), (0, 6));
    let second = open(&plane, Protocol::Tcp, &[a], None).await;
    assert_eq!(ask(second).await, "a");
}

#[tokio::test]
async fn connections_past_the_descriptor_budget_wait_until_one_ends() {
    // The listener's two descriptors and one connection's two.
    let plane = DataPlane::with_budget(config(), |_| limits::Budget::new(4, usize::MAX));
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[a], None).await;
    let first = Session::open(port).await;
    assert_eq!(plane.fds(), (4, 4));

    let mut second = TcpStream::connect((LOCAL, port)).await.unwrap();
    let mut greeting = [0u8; 1];
    let early = timeout(ms(300), second.read_exact(&mut greeting)).await;
    assert!(
        early.is_err(),
        "a connection past the budget was served: {early:?}"
    );

    drop(first);
    bounded(
        "the waiting connection is served",
        second.read_exact(&mut greeting),
    )
    .await
    .unwrap();
    assert_eq!(&greeting, b"a");
}

#[tokio::test]
async fn a_client_spraying_source_ports_keeps_only_its_newest_flows_and_others_are_still_served() {
    let plane = DataPlane::new(DataPlaneConfig {
        udp_max_flows_per_client: 4,
        udp_max_flows: 16,
        ..config()
    });
    let (a, _) = udp_backend("a").await;
    let port = open(&plane, Protocol::Udp, &[a], None).await;
    let (listener_fds, _) = plane.fds();
    let mut sprayer = Vec::new();
    for n in 0..40 {
        let socket = udp_client().await;
        assert_eq!(
            udp_ask(&socket, port, &n.to_string()).await.0,
            format!("a:{n}")
        );
        sprayer.push(socket);
    }
    assert_eq!(status_of(&plane, Protocol::Udp, port).active, 4);
    eventually("evicted flows close their sockets", || {
        plane.fds().0 == listener_fds + 4
    })
    .await;

    // Another client is served, and the sprayer's newest flow is still there while its
    // oldest was evicted.
    let other = UdpSocket::bind((OTHER, 0)).await.unwrap();
    assert_eq!(udp_ask(&other, port, "x").await.0, "a:x");
    assert_eq!(status_of(&plane, Protocol::Udp, port).accepted, 41);
    udp_ask(&sprayer[39], port, "newest").await;
    assert_eq!(status_of(&plane, Protocol::Udp, port).accepted, 41);
    udp_ask(&sprayer[0], port, "oldest").await;
    assert_eq!(status_of(&plane, Protocol::Udp, port).accepted, 42);
    assert_eq!(status_of(&plane, Protocol::Udp, port).active, 5);
}

#[tokio::test]
async fn a_full_udp_listener_evicts_its_least_recently_used_flow() {
    let plane = DataPlane::new(DataPlaneConfig {
        udp_max_flows: 3,
        ..config()
    });
    let (a, _) = udp_backend("a").await;
    let port = open(&plane, Protocol::Udp, &[a], None).await;
    let clients = [
        udp_client().await,
        udp_client().await,
        udp_client().await,
        udp_client().await,
    ];
    for client in &clients[..3] {
        udp_ask(client, port, "1").await;
    }
    // The first client is used again: the second becomes the least recently used.
    udp_ask(&clients[0], port, "2").await;
    udp_ask(&clients[3], port, "1").await;
    let status = status_of(&plane, Protocol::Udp, port);
    assert_eq!((status.active, status.accepted), (3, 4));

    for kept in [&clients[0], &clients[2], &clients[3]] {
        udp_ask(kept, port, "3").await;
    }
    assert_eq!(status_of(&plane, Protocol::Udp, port).accepted, 4);
    udp_ask(&clients[1], port, "3").await;
    assert_eq!(status_of(&plane, Protocol::Udp, port).accepted, 5);
}

#[tokio::test]
async fn udp_flows_past_the_descriptor_budget_evict_the_oldest_and_new_clients_are_served() {
    // The listener's one socket and two flows.
    let plane = DataPlane::with_budget(config(), |_| limits::Budget::new(3, usize::MAX));
    let (a, _) = udp_backend("a").await;
    let port = open(&plane, Protocol::Udp, &[a], None).await;
    for n in 0..5 {
        let client = udp_client().await;
        assert_eq!(udp_ask(&client, port, "q").await.0, "a:q", "client {n}");
    }
    assert_eq!(status_of(&plane, Protocol::Udp, port).active, 2);
    eventually("evicted flows close their sockets", || plane.fds().0 == 3).await;
}

#[tokio::test]
async fn bytes_are_counted_each_way_through_copy_and_splice() {
    let plane = DataPlane::new(config());
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[a], None).await;
    // Past the copy buffer, so the client → endpoint direction turns to splice(2).
    let payload = vec![7u8; 4 * super::copy::BUFFER + 123];
    let echoed = bounded("bulk echo", async {
        let mut stream = TcpStream::connect((LOCAL, port)).await.unwrap();
        let (mut read, mut write) = stream.split();
        let send = async {
            write.write_all(&payload).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let mut all = Vec::new();
        let receive = read.read_to_end(&mut all);
        let ((), received) = tokio::join!(send, receive);
        received.unwrap();
        all
    })
    .await;
    assert_eq!(echoed.len(), 1 + payload.len(), "greeting and echo");
    let sent = payload.len() as u64;
    eventually("both directions are counted", || {
        let status = status_of(&plane, Protocol::Tcp, port);
        (status.bytes_to_endpoints, status.bytes_to_clients) == (sent, sent + 1)
    })
    .await;
}

#[tokio::test]
async fn udp_payload_bytes_are_counted_each_way() {
    let plane = DataPlane::new(config());
    let (a, _) = udp_backend("a").await;
    let port = open(&plane, Protocol::Udp, &[a], None).await;
    let client = udp_client().await;

    udp_ask(&client, port, "ping").await;
    udp_ask(&client, port, "hello").await;

    let status = status_of(&plane, Protocol::Udp, port);
    assert_eq!(status.bytes_to_endpoints, 4 + 5);
    assert_eq!(
        status.bytes_to_clients,
        "a:ping".len() as u64 + "a:hello".len() as u64
    );
}

fn health_of(plane: &DataPlane, protocol: Protocol, port: u16) -> ListenerHealth {
    plane
        .endpoint_health()
        .into_iter()
        .find(|h| h.protocol == protocol && h.port == port)
        .expect("listener is in the health snapshot")
}

fn record_of(
    plane: &DataPlane,
    protocol: Protocol,
    port: u16,
    endpoint: SocketAddr,
) -> EndpointHealth {
    health_of(plane, protocol, port)
        .endpoints
        .into_iter()
        .find(|e| e.endpoint == endpoint)
        .unwrap_or_else(|| panic!("{endpoint} has an outlier record"))
}

/// Asks `port` once and returns how long the whole exchange took.
async fn timed_ask(port: u16, expected: &str) -> Duration {
    let started = Instant::now();
    assert_eq!(ask(port).await, expected);
    started.elapsed()
}

fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / u32::try_from(times.len().max(1)).unwrap_or(1)
}

#[tokio::test]
async fn a_dead_endpoint_stops_costing_a_failed_dial_after_the_threshold() {
    let plane = DataPlane::new(config());
    let dead = refused_endpoint().await;
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[dead, a], None).await;

    // Round robin starts every other connection at the dead endpoint: connections 1, 3, 5,
    // 7 and 9 each pay one refused dial, the fifth of which ejects it.
    let mut paid = Vec::new();
    let mut clean = Vec::new();
    for n in 0..10 {
        let took = timed_ask(port, "a").await;
        if n % 2 == 0 {
            paid.push(took);
        } else {
            clean.push(took);
        }
    }
    assert_eq!(status_of(&plane, Protocol::Tcp, port).failures, 5);
    let record = record_of(&plane, Protocol::Tcp, port, dead);
    assert!(record.ejected, "{record:?}");
    assert_eq!(record.consecutive_failures, 5);
    assert!(
        record.last_error.contains("refused"),
        "{}",
        record.last_error
    );

    let mut after = Vec::new();
    for _ in 0..50 {
        after.push(timed_ask(port, "a").await);
    }

    let status = status_of(&plane, Protocol::Tcp, port);
    assert_eq!(status.failures, 5, "the ejected endpoint is not dialled");
    assert_eq!(status.per_endpoint, BTreeMap::from([(a, 60)]));
    assert_eq!(health_of(&plane, Protocol::Tcp, port).ejections, 1);
    eprintln!(
        "closed port: mean request {:?} with a refused dial first, {:?} without (same run), \
         {:?} once ejected",
        mean(&paid),
        mean(&clean),
        mean(&after)
    );
}

#[tokio::test]
async fn a_silent_endpoint_stops_costing_a_dial_timeout_after_the_threshold() {
    let plane = DataPlane::new(DataPlaneConfig {
        dial_timeouts: vec![ms(100)],
        ..config()
    });
    let silent = silent_endpoint().await;
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[silent.addr, a], None).await;

    let mut before = Vec::new();
    for _ in 0..10 {
        before.push(timed_ask(port, "a").await);
    }
    let mut after = Vec::new();
    for _ in 0..20 {
        after.push(timed_ask(port, "a").await);
    }

    let paid: Vec<_> = before.iter().step_by(2).copied().collect();
    assert!(
        paid.iter().all(|t| *t >= ms(95)),
        "each of the first five waited out a dial timeout: {paid:?}"
    );
    let slowest = after.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < ms(90),
        "once ejected no request waits for it: slowest {slowest:?} of {after:?}"
    );
    assert_eq!(status_of(&plane, Protocol::Tcp, port).failures, 5);
    eprintln!(
        "silent endpoint (100 ms dial timeout): mean request {:?} before ejection (every \
         other one waits), {:?} once ejected, slowest {slowest:?}",
        mean(&before),
        mean(&after)
    );
}

#[tokio::test]
async fn after_its_back_off_an_ejected_endpoint_costs_one_dial_and_is_ejected_for_longer() {
    let plane = DataPlane::new(DataPlaneConfig {
        outlier: OutlierDetection {
            base_ejection: ms(300),
            ..OutlierDetection::default()
        },
        ..config()
    });
    let dead = refused_endpoint().await;
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[dead, a], None).await;
    for _ in 0..10 {
        ask(port).await;
    }
    let first = record_of(&plane, Protocol::Tcp, port, dead);
    assert!(first.ejected && first.ejections == 1, "{first:?}");
    let until = first.ejected_until.expect("ejected until");
    let lasts = until.duration_since(first.since).unwrap_or_default();
    assert_eq!(lasts, ms(300));

    sleep(ms(350)).await;
    let back = record_of(&plane, Protocol::Tcp, port, dead);
    assert!(!back.ejected && back.returns == 1, "{back:?}");
    assert_eq!(back.next_ejection, ms(600));
    for _ in 0..10 {
        assert_eq!(ask(port).await, "a");
    }

    assert_eq!(
        status_of(&plane, Protocol::Tcp, port).failures,
        6,
        "one probe dial after the back-off"
    );
    let second = record_of(&plane, Protocol::Tcp, port, dead);
    assert!(second.ejected && second.ejections == 2, "{second:?}");
    let lasts = second
        .ejected_until
        .expect("ejected until")
        .duration_since(second.since)
        .unwrap_or_default();
    assert_eq!(lasts, ms(600), "twice the base");
}

#[tokio::test]
async fn a_single_dead_endpoint_is_never_ejected_and_clients_are_refused_as_before() {
    let plane = DataPlane::new(config());
    let dead = refused_endpoint().await;
    let port = open(&plane, Protocol::Tcp, &[dead], None).await;

    for _ in 0..10 {
        let result = bounded("reset", connect_and_read(port)).await;
        assert_eq!(
            result.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }

    let status = status_of(&plane, Protocol::Tcp, port);
    assert_eq!((status.failures, status.rejected), (10, 10));
    let record = record_of(&plane, Protocol::Tcp, port, dead);
    assert!(!record.ejected && record.held, "{record:?}");
    assert_eq!(record.consecutive_failures, 10);
    assert_eq!(health_of(&plane, Protocol::Tcp, port).ejections, 0);
}

#[tokio::test]
async fn an_update_keeps_the_ejection_of_an_endpoint_that_stays_and_drops_a_removed_ones() {
    let plane = DataPlane::new(config());
    let dead = refused_endpoint().await;
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let port = open(&plane, Protocol::Tcp, &[dead, a], None).await;
    for _ in 0..10 {
        ask(port).await;
    }
    assert!(record_of(&plane, Protocol::Tcp, port, dead).ejected);

    plane
        .update(Protocol::Tcp, port, backends(&[dead, a, b], None))
        .unwrap();
    for _ in 0..10 {
        ask(port).await;
    }
    assert!(record_of(&plane, Protocol::Tcp, port, dead).ejected);
    assert_eq!(status_of(&plane, Protocol::Tcp, port).failures, 5);

    plane
        .update(Protocol::Tcp, port, backends(&[a, b], None))
        .unwrap();
    let health = health_of(&plane, Protocol::Tcp, port);
    assert!(health.endpoints.is_empty(), "{health:?}");
    assert_eq!(health.ejections, 1, "the listener's count stays");
}

#[tokio::test]
async fn a_udp_endpoint_that_answers_with_port_unreachable_is_ejected_after_the_threshold() {
    let plane = DataPlane::new(config());
    // Bound then dropped: datagrams to it draw an ICMP port unreachable.
    let dead = UdpSocket::bind((LOCAL, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (b, _) = udp_backend("b").await;
    let port = open(&plane, Protocol::Udp, &[dead, b], None).await;

    let mut answered = 0;
    for n in 0..30 {
        // A new client each time: a new flow, balanced afresh.
        let client = udp_client().await;
        client.send_to(b"q", (LOCAL, port)).await.unwrap();
        let mut buf = [0u8; 64];
        match timeout(ms(200), client.recv_from(&mut buf)).await {
            Ok(Ok((len, _))) => {
                assert_eq!(&buf[..len], b"b:q", "datagram {n}");
                answered += 1;
            }
            _ => {
                let failures = status_of(&plane, Protocol::Udp, port).failures;
                assert!(failures > 0, "datagram {n} went unanswered with no failure");
            }
        }
    }

    let status = status_of(&plane, Protocol::Udp, port);
    assert_eq!(status.failures, 5, "{status:?}");
    assert_eq!(answered, 25);
    assert!(record_of(&plane, Protocol::Udp, port, dead).ejected);
}

#[test]
fn balancer_skips_ejected_endpoints_and_shares_the_rest_evenly() {
    let [a, b, c] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].map(|s| s.parse().unwrap());
    let mut balancer = Balancer::new(&backends(&[a, b, c], None));
    let now = Instant::now();
    for _ in 0..5 {
        balancer.dial_failed(a, "refused", now);
    }

    let firsts: Vec<SocketAddr> = (0..6).map(|_| balancer.plan(LOCAL, now, 4)[0]).collect();

    assert_eq!(firsts, [b, c, b, c, b, c]);
    assert_eq!(
        balancer.plan(LOCAL, now, 4),
        [b, c],
        "never the ejected one"
    );
}

#[test]
fn balancer_moves_a_client_pinned_to_an_ejected_endpoint() {
    let [a, b] = ["10.0.0.1:80", "10.0.0.2:80"].map(|s| s.parse().unwrap());
    let mut balancer = Balancer::new(&backends(&[a, b], Some(Duration::from_secs(60))));
    let now = Instant::now();
    balancer.established(LOCAL, a, now);
    for _ in 0..5 {
        balancer.dial_failed(a, "refused", now);
    }

    assert_eq!(balancer.plan(LOCAL, now, 4), [b]);
}

#[test]
fn balancer_uses_every_endpoint_when_all_left_are_ejected() {
    let [a, b] = ["10.0.0.1:80", "10.0.0.2:80"].map(|s| s.parse().unwrap());
    let mut balancer = Balancer::new(&backends(&[a, b], None));
    let now = Instant::now();
    for _ in 0..5 {
        balancer.dial_failed(a, "refused", now);
    }

    balancer.update(&backends(&[a], None));

    assert_eq!(
        balancer.plan(LOCAL, now, 4),
        [a],
        "panic: the last one is used"
    );
}

#[tokio::test]
async fn a_successful_dial_starts_the_count_of_failed_dials_again() {
    let plane = DataPlane::new(config());
    let flaky = refused_endpoint().await;
    let (a, _) = backend("a").await;
    let port = open(&plane, Protocol::Tcp, &[flaky, a], None).await;
    // Four refusals: one short of an ejection.
    for _ in 0..8 {
        assert_eq!(ask(port).await, "a");
    }
    assert_eq!(status_of(&plane, Protocol::Tcp, port).failures, 4);

    // It answers once (a listener on its port again), then dies again.
    let listener = TcpListener::bind(flaky).await.expect("rebinding the port");
    let accept = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"f").await.unwrap();
    });
    let answers = [ask(port).await, ask(port).await];
    assert!(answers.contains(&"f".to_string()), "{answers:?}");
    bounded("the flaky endpoint's one answer", accept)
        .await
        .unwrap();
    for _ in 0..8 {
        assert_eq!(ask(port).await, "a");
    }

    assert_eq!(status_of(&plane, Protocol::Tcp, port).failures, 8);
    let record = record_of(&plane, Protocol::Tcp, port, flaky);
    assert!(
        !record.ejected,
        "4 + 4 failures with a success between: {record:?}"
    );
    assert_eq!(record.consecutive_failures, 4);
}
