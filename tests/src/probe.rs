//! The probe: a tiny network client/server that tests run inside the sandbox (as the test binary
//! re-executed with `probe ...` arguments) and whose one-line answers they assert on.
//!
//! Answers: `ok`, `error <ERRNO>` (e.g. `error EPERM`), `timeout`, plus `ready`, `connected`,
//! `listening`, `accepted` and `broken <ERRNO|EOF>` for the long-running modes.

#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "socket-API lengths, ICMP fields and rates here are small by construction"
)]

use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn errno_name(error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::TimedOut || error.kind() == io::ErrorKind::WouldBlock {
        return "timeout".into();
    }
    let name = match error.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(code) => return format!("error errno{code}"),
        None => return format!("error {error}"),
    };
    format!("error {name}")
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn address(host: &str, port: &str) -> SocketAddr {
    let ip: IpAddr = host.parse().expect("probe: bad address");
    SocketAddr::new(ip, port.parse().expect("probe: bad port"))
}

/// Entry point: `args` are the words after `probe`. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["serve", ports @ ..] => serve(ports),
        ["detach-link", path] => say(&detach_link(path)),
        ["dns", host, name, ip] => dns(address(host, "53"), name, ip.parse().expect("probe: bad IPv4 address")),
        ["connect", host, port] => say(&connect(address(host, port))),
        ["watch", host, port, interval_ms] => {
            watch(address(host, port), Duration::from_millis(interval_ms.parse().expect("probe: bad interval")));
        }
        ["http-status", host, port, path] => say(&http_status(address(host, port), path)),
        ["hold", host, port] => hold(address(host, port)),
        ["udp", host, port] => say(&udp(address(host, port))),
        ["ping", host] => say(&ping(host.parse().expect("probe: bad address"))),
        ["accept", port] => accept(port.parse().expect("probe: bad port")),
        ["loopback"] => say(&loopback()),
        ["port", host, port] => say(&port_open(address(host, port))),
        ["kafka-produce", brokers, topic, key, value_file] => {
            say(&kafka_produce(brokers, topic, key, value_file));
        }
        ["kafka-consume", brokers, topic] => kafka_consume(brokers, topic),
        ["kafka-flood", brokers, topic, key, count] => {
            say(&kafka_flood(brokers, topic, key, count.parse().expect("probe: bad count")));
        }
        ["kafka-count-refused", brokers, topic, key, seconds] => {
            let seconds = Duration::from_secs(seconds.parse().expect("probe: bad seconds"));
            say(&kafka_count_refused(brokers, topic, key, seconds).to_string());
        }
        ["sink", port] => sink(port.parse().expect("probe: bad port")),
        ["drain", port] => drain(port.parse().expect("probe: bad port")),
        ["respond", port] => respond(port.parse().expect("probe: bad port")),
        ["open", host, port, count] => open(address(host, port), count.parse().expect("probe: bad count")),
        ["until-refused", host, port] => until_refused(address(host, port)),
        ["kafka-pipe", brokers, topic] => kafka_pipe(brokers, topic),
        ["otlp", address, grpc_port, http_port] => crate::otlp::probe(address, grpc_port, http_port),
        ["connwindows", host, port, mode, windows, window_ms, cgroups @ ..] => connection_windows(
            address(host, port),
            mode,
            windows.parse().expect("probe: bad window count"),
            Duration::from_millis(window_ms.parse().expect("probe: bad window length")),
            cgroups,
        ),
        ["connrate", host, port, seconds] => {
            connection_rate(
                address(host, port),
                Duration::from_secs(seconds.parse().expect("probe: bad seconds")),
            );
        }
        _ => {
            eprintln!("probe: unknown arguments {words:?}");
            return 2;
        }
    }
    0
}

/// TCP servers that greet with `hi` and UDP servers that echo, on every port, IPv4 and IPv6.
fn serve(ports: &[&str]) {
    for port in ports {
        let port: u16 = port.parse().expect("probe: bad port");
        let listener = TcpListener::bind(("::", port)).expect("probe: bind tcp");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.write_all(b"hi\n");
                    let mut buffer = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buffer) {
                        if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let udp = UdpSocket::bind(("::", port)).expect("probe: bind udp");
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buffer) {
                let _ = udp.send_to(&buffer[..n], from);
            }
        });
    }
    say("ready");
    loop {
        std::thread::sleep(Duration::from_hours(1));
    }
}

/// Raises the open-file limit as far as allowed (for thousands of connections).
fn raise_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
        // Root may raise the hard limit too.
        limit.rlim_max = limit.rlim_max.max(65_536);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
    }
}

/// Accepts connections and keeps them open without a thread each (for the severing benchmark).
fn sink(port: u16) {
    raise_file_limit();
    let listener = listen(port);
    say("ready");
    let mut held = Vec::new();
    for stream in listener.incoming().flatten() {
        held.push(stream);
    }
}

/// A DNS server on UDP `at` that answers `A` queries for `name` with `ip`, and every other
/// question with NXDOMAIN (the tests' brokers by name).
fn dns(at: SocketAddr, name: &str, ip: std::net::Ipv4Addr) {
    let socket = std::net::UdpSocket::bind(at).expect("probe: cannot bind the DNS port");
    say("ready");
    let mut buffer = [0u8; 512];
    loop {
        let Ok((length, from)) = socket.recv_from(&mut buffer) else { continue };
        if let Some(answer) = dns_answer(&buffer[..length], name, ip) {
            let _ = socket.send_to(&answer, from);
        }
    }
}

/// The answer to one DNS query (RFC 1035): the header and question echoed, one A record when
/// the question is `name` IN A, NXDOMAIN otherwise (NOERROR with no answer for `name` AAAA).
fn dns_answer(query: &[u8], name: &str, ip: std::net::Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the zero byte, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    while *query.get(at)? != 0 {
        let length = usize::from(query[at]);
        labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + length)?).to_lowercase());
        at += 1 + length;
    }
    let question_end = at + 5;
    let record_type = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
    let asked = labels.join(".");
    let known = asked == name.to_lowercase();
    let mut answer = query.get(..question_end)?.to_vec();
    answer[2] = 0x81 | (query[2] & 0x01); // response, recursion desired as asked
    answer[3] = if known { 0x80 } else { 0x83 }; // recursion available; NOERROR or NXDOMAIN
    answer[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
    if known && record_type == 1 {
        answer[7] = 1;
        answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        answer.extend_from_slice(&ip.octets());
    }
    Some(answer)
}

/// Detaches the pinned BPF link at `path` (`BPF_LINK_DETACH`), leaving its pin: what root on a
/// host could do to an isolation.
fn detach_link(path: &str) -> String {
    let name = std::ffi::CString::new(path).expect("probe: a path without NUL");
    let mut get = [0u64; 3];
    get[0] = name.as_ptr() as u64;
    // SAFETY: bpf(2) BPF_OBJ_GET with an attr of the size given, pointing at a live C string.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 7, get.as_mut_ptr(), std::mem::size_of_val(&get)) };
    if fd < 0 {
        return format!("error {}", io::Error::last_os_error());
    }
    let mut detach = [0u32; 2];
    detach[0] = u32::try_from(fd).unwrap_or(0);
    // SAFETY: bpf(2) BPF_LINK_DETACH (34) on the descriptor just opened.
    let done = unsafe { libc::syscall(libc::SYS_bpf, 34, detach.as_mut_ptr(), std::mem::size_of_val(&detach)) };
    let answer = if done < 0 { format!("error {}", io::Error::last_os_error()) } else { "ok".to_owned() };
    // SAFETY: closing the descriptor opened above, once.
    unsafe { libc::close(i32::try_from(fd).unwrap_or(-1)) };
    answer
}

/// Waits up to 10 s for something to listen at `target`.
fn port_open(target: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
            Ok(_) => return "ok".into(),
            Err(error) if Instant::now() >= deadline => return errno_name(&error),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Produces the bytes of `value_file` with `key`, partitioned as Kafka's Java client does.
/// A Kafka client configuration; over mutual TLS when `CORDON_PROBE_KAFKA_TLS` is
/// `CA;CERT;KEY` (PEM files).
fn kafka_client() -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    if let Ok(tls) = std::env::var("CORDON_PROBE_KAFKA_TLS") {
        let parts: Vec<&str> = tls.split(';').collect();
        if let [ca, cert, key] = parts.as_slice() {
            config
                .set("security.protocol", "ssl")
                .set("ssl.ca.location", *ca)
                .set("ssl.certificate.location", *cert)
                .set("ssl.key.location", *key);
        }
    }
    config
}

fn kafka_produce(brokers: &str, topic: &str, key: &str, value_file: &str) -> String {
    let value = std::fs::read(value_file).expect("probe: read value file");
    produce_all(brokers, topic, std::iter::once((key.to_owned(), value)))
}

/// Produces `count` messages that are no command (unsigned envelopes) to `topic`, keyed `key`
/// with `{i}` replaced by the message's number: a flood, from anyone who can write to Kafka.
fn kafka_flood(brokers: &str, topic: &str, key: &str, count: usize) -> String {
    let payload = br#"{"payload":"{\"not\":\"a command\"}","signature":""}"#;
    produce_all(brokers, topic, (0..count).map(|i| (key.replace("{i}", &i.to_string()), payload.to_vec())))
}

/// Produces every (key, value) to `topic`, waiting while the producer's queue is full; "ok" once
/// the broker has them all.
fn produce_all(brokers: &str, topic: &str, messages: impl Iterator<Item = (String, Vec<u8>)>) -> String {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = kafka_client()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("probe: producer");
    for (key, value) in messages {
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => return format!("error {error}"),
            }
        }
    }
    match producer.flush(Duration::from_mins(1)) {
        Ok(()) => "ok".into(),
        Err(error) => format!("error {error}"),
    }
}

/// How many status reports keyed `key` on `topic` say a command was refused (read from the
/// start for `seconds`).
fn kafka_count_refused(brokers: &str, topic: &str, key: &str, seconds: Duration) -> usize {
    use rdkafka::message::Message;
    let consumer = subscriber(brokers, topic);
    let deadline = std::time::Instant::now() + seconds;
    let mut refused = 0;
    while std::time::Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else { continue };
        if message.key() != Some(key.as_bytes()) {
            continue;
        }
        let kind = serde_json::from_slice::<serde_json::Value>(message.payload().unwrap_or_default())
            .ok()
            .and_then(|envelope| envelope["payload"].as_str().map(str::to_owned))
            .and_then(|payload| serde_json::from_str::<serde_json::Value>(&payload).ok())
            .and_then(|status| status["kind"].as_str().map(str::to_owned));
        if kind.as_deref() == Some("refused") {
            refused += 1;
        }
    }
    refused
}

/// A consumer of `topic` (all partitions, from the start) in a group of its own.
fn subscriber(brokers: &str, topic: &str) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = kafka_client()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("probe-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("probe: consumer");
    consumer.subscribe(&[topic]).expect("probe: subscribe");
    consumer
}

/// Prints every message value of `topic` (all partitions, from the start), one per line.
fn kafka_consume(brokers: &str, topic: &str) {
    use rdkafka::message::Message;
    let consumer = subscriber(brokers, topic);
    say("consuming");
    loop {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            say(&String::from_utf8_lossy(message.payload().unwrap_or_default()));
        }
    }
}

/// Accepts connections and closes them at once (for the connection-rate benchmark).
fn drain(port: u16) {
    let listener = listen(port);
    say("ready");
    for stream in listener.incoming() {
        drop(stream);
    }
}

/// Answers each connection's one-byte request with one byte and closes it, one connection at
/// a time (the server side of [`request_response`]).
fn respond(port: u16) {
    let listener = listen(port);
    say("ready");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = [0u8; 1];
        if stream.read_exact(&mut request).is_ok() {
            let _ = stream.write_all(b"a");
        }
    }
}

/// Opens `count` connections, reports `open <count>`, then holds them until killed.
fn open(target: SocketAddr, count: usize) {
    raise_file_limit();
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(stream) => streams.push(stream),
            Err(error) => return say(&errno_name(&error)),
        }
    }
    say(&format!("open {}", streams.len()));
    loop {
        std::thread::sleep(Duration::from_hours(1));
    }
}

/// Binds a dual-stack listener with a deep accept queue, so a burst of connections is not
/// dropped while the accepting thread waits for a core.
fn listen(port: u16) -> TcpListener {
    let listener = TcpListener::bind(("::", port)).expect("probe: bind");
    // SAFETY: listen(2) again on a listening socket only changes its backlog.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    listener
}

/// Connects and closes as fast as one thread can for `duration`; reports connections per second.
fn connection_rate(target: SocketAddr, duration: Duration) {
    match count_connections(target, "reset", duration) {
        Ok((count, took)) => say(&format!("rate {:.0}", count as f64 / took.as_secs_f64())),
        Err(error) => say(&errno_name(&error)),
    }
}

/// Makes connections of the `mode` workload one after another for `duration`; how many, in how
/// long. Stops at the first that fails.
fn count_connections(target: SocketAddr, mode: &str, duration: Duration) -> io::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < duration {
        one_connection(target, mode)?;
        count += 1;
    }
    Ok((count, started.elapsed()))
}

/// Connect + reset-close (`mode` "reset") or request/response ("crr") in a loop, counted in
/// `windows` windows of `window` each. With cgroups given, each window runs in one of them in
/// turn: the probe moves itself there first (a socket belongs to the cgroup of the process
/// that created it), so the cgroups' costs are compared a fraction of a second apart and the
/// machine's drift hits them alike. Says, per window,
/// `window <i> <cgroup index> <connections> <nanoseconds>`, then `done`.
fn connection_windows(target: SocketAddr, mode: &str, windows: usize, window: Duration, cgroups: &[&str]) {
    for index in 0..windows {
        // With two cgroups the order is A B B A A B B A ...: each half gets as many windows
        // right after a move as not, and a steady drift cancels within every four windows.
        let cgroup = match cgroups.len() {
            0 => 0,
            2 => usize::from(matches!(index % 4, 1 | 2)),
            n => index % n,
        };
        if let Some(path) = cgroups.get(cgroup) {
            // "0" moves the writing process.
            std::fs::write(format!("{path}/cgroup.procs"), "0").expect("probe: join cgroup");
        }
        match count_connections(target, mode, window) {
            Ok((count, took)) => say(&format!("window {index} {cgroup} {count} {}", took.as_nanos())),
            Err(error) => return say(&errno_name(&error)),
        }
    }
    say("done");
}

/// One connection of the `mode` workload: "reset" (connect, reset-close) or "crr".
fn one_connection(target: SocketAddr, mode: &str) -> io::Result<()> {
    match mode {
        "reset" => TcpStream::connect_timeout(&target, Duration::from_secs(2)).map(|s| reset_on_close(&s)),
        _ => request_response(target),
    }
}

/// One short-lived request/response connection (netperf's `TCP_CRR`): connect, send a byte,
/// read the one-byte answer and the server's close, close.
fn request_response(target: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"q")?;
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer[..1])?;
    match stream.read(&mut answer)? {
        0 => Ok(()),
        _ => Err(io::Error::other("the server said more than one byte")),
    }
}

/// Makes dropping `stream` send a reset, so no `TIME_WAIT` state piles up and exhausts the ports.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on our own socket with a local struct.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
}

fn greet(stream: &mut TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut greeting = [0u8; 3];
    stream.read_exact(&mut greeting)?;
    Ok(())
}

fn connect(target: SocketAddr) -> String {
    connect_within(target, Duration::from_secs(2))
}

/// A new connection to `target` that greets its server, given up after `timeout`: `ok` or the
/// error.
fn connect_within(target: SocketAddr, timeout: Duration) -> String {
    match TcpStream::connect_timeout(&target, timeout).and_then(|mut s| greet(&mut s)) {
        Ok(()) => "ok".into(),
        Err(error) => errno_name(&error),
    }
}

/// Tries a new connection every `interval`, forever: one line `<EPOCH_MS> <ANSWER>` per try
/// (the answers of `connect`), the kernel's view of this process's network over time.
fn watch(target: SocketAddr, interval: Duration) {
    loop {
        let started = Instant::now();
        let answer = connect_within(target, Duration::from_millis(500));
        say(&format!("{} {answer}", epoch_micros() / 1_000));
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

/// `GET path` over HTTP/1.0: the response's status code (`200`, `503`, ...) and its body on one
/// line, or the error.
fn http_status(target: SocketAddr, path: &str) -> String {
    let answer = (|| -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response);
        let code = response.get(9..12).unwrap_or("???");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        Ok(format!("{code} {}", body.replace('\n', " ")))
    })();
    answer.unwrap_or_else(|error| errno_name(&error))
}

/// How often `until-refused` connects: often enough to time an isolation to a fifth of a
/// millisecond, not so often that it takes a core from the service, the broker and the agent it
/// is timing, which share the machine with it here (a connect loop without a pause doubled the
/// latency bench's p50 on a 2-core machine, 11.5 ms -> 25.4 ms).
const UNTIL_REFUSED_EVERY: Duration = Duration::from_micros(200);

/// Microseconds since the epoch, on the machine's wall clock (shared by every namespace).
fn epoch_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

/// Connects again and again, every [`UNTIL_REFUSED_EVERY`]; reports `ready` once connected,
/// then `refused <EPOCH_US> <ERRNO>` at the first connect that fails (for measuring when an
/// isolation starts to bite, to within that interval).
fn until_refused(target: SocketAddr) {
    let mut ready = false;
    loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(stream) => {
                drop(stream);
                if !ready {
                    ready = true;
                    say("ready");
                }
                std::thread::sleep(UNTIL_REFUSED_EVERY);
            }
            Err(error) => {
                let at = epoch_micros();
                if ready {
                    return say(&format!("refused {at} {}", errno_name(&error).trim_start_matches("error ")));
                }
                return say(&errno_name(&error));
            }
        }
    }
}

/// Produces each line `KEY<TAB>VALUE` of standard input; says `ready` once connected, then
/// `sent <EPOCH_US>` taken just before each message is handed to the client.
fn kafka_pipe(brokers: &str, topic: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .create()
        .expect("probe: producer");
    producer.client().fetch_metadata(Some(topic), Duration::from_secs(10)).expect("probe: broker metadata");
    say("ready");
    for line in io::stdin().lines().map_while(Result::ok) {
        let Some((key, value)) = line.split_once('\t') else { continue };
        let at = epoch_micros();
        if let Err((error, _)) = producer.send(BaseRecord::to(topic).key(key).payload(value)) {
            say(&format!("error {error}"));
            continue;
        }
        producer.poll(Duration::ZERO);
        say(&format!("sent {at}"));
    }
    let _ = producer.flush(Duration::from_secs(10));
}

/// Connects, reports `connected`, then reports how the connection ends.
fn hold(target: SocketAddr) {
    let mut stream = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(stream) => stream,
        Err(error) => return say(&errno_name(&error)),
    };
    if let Err(error) = greet(&mut stream) {
        return say(&errno_name(&error));
    }
    say("connected");
    let _ = stream.set_read_timeout(None);
    let mut buffer = [0u8; 64];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return say("broken EOF"),
            Ok(_) => {}
            Err(error) => return say(&format!("broken {}", errno_name(&error).trim_start_matches("error "))),
        }
    }
}

fn udp(target: SocketAddr) -> String {
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = match UdpSocket::bind(bind) {
        Ok(socket) => socket,
        Err(error) => return errno_name(&error),
    };
    if let Err(error) = socket.send_to(b"ping", target) {
        return errno_name(&error);
    }
    let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buffer = [0u8; 16];
    match socket.recv_from(&mut buffer) {
        Ok(_) => "ok".into(),
        Err(error) => errno_name(&error),
    }
}

fn accept(port: u16) {
    let listener = TcpListener::bind(("::", port)).expect("probe: bind");
    listener.set_nonblocking(true).expect("nonblocking");
    say("listening");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let greeted = stream.write_all(b"hi\n");
                return say(if greeted.is_ok() { "accepted" } else { "error write" });
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => return say(&errno_name(&error)),
        }
    }
    say("timeout");
}

fn loopback() -> String {
    for host in ["127.0.0.1", "::1"] {
        let listener = match TcpListener::bind((host, 0)) {
            Ok(listener) => listener,
            Err(error) => return errno_name(&error),
        };
        let target = listener.local_addr().expect("local addr");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.write_all(b"hi\n");
            }
        });
        let answer = connect(target);
        if answer != "ok" {
            return format!("{answer} ({host})");
        }
    }
    "ok".into()
}

/// ICMP / `ICMPv6` echo over a raw socket (refused with EPERM while the host is isolated).
fn ping(target: IpAddr) -> String {
    let (domain, protocol, request_type, reply_type) = match target {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return errno_name(&io::Error::last_os_error());
    }
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&socket);
    let identifier = u16::try_from(std::process::id() & 0xffff).unwrap_or(1);
    let mut packet =
        [request_type, 0, 0, 0, (identifier >> 8) as u8, identifier as u8, 0, 1, b'c', b'o', b'r', b'd'];
    if target.is_ipv4() {
        let checksum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    let sent = match target {
        IpAddr::V4(v4) => {
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(v4).to_be();
            // SAFETY: sendto with a local buffer and a sockaddr_in of the given size.
            unsafe {
                libc::sendto(
                    raw,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const sin).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            }
        }
        IpAddr::V6(v6) => {
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
            // SAFETY: as above with a sockaddr_in6.
            unsafe {
                libc::sendto(
                    raw,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const sin6).cast(),
                    size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        }
    };
    if sent < 0 {
        return errno_name(&io::Error::last_os_error());
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buffer = [0u8; 1500];
    while Instant::now() < deadline {
        let mut poll = libc::pollfd { fd: raw, events: libc::POLLIN, revents: 0 };
        // SAFETY: polling our own descriptor.
        if unsafe { libc::poll(&raw mut poll, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: receiving into a local buffer.
        let n = unsafe { libc::recv(raw, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
        let icmp =
            if target.is_ipv4() { &buffer[usize::from(buffer[0] & 0x0f) * 4..n] } else { &buffer[..n] };
        if icmp.len() >= 8 && icmp[0] == reply_type && icmp[4..6] == packet[4..6] {
            return "ok".into();
        }
    }
    "timeout".into()
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
