//! Front ends of the benchmark tools: argument parsing, the progress line, summaries, the
//! sink's stats port. The io_uring loops live in `sluice_netio::tools`.

use clap::Args;
use sluice_config::units::{parse_duration, parse_size};
use sluice_engine::smtp::sink::parse_rule;
use sluice_netio::tools::loadgen::{run_loadgen, LoadgenOptions};
use sluice_netio::tools::sink::{run_sink, SinkOptions, SinkStats};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct LoadgenArgs {
    /// Where to inject: IP:PORT.
    #[arg(long)]
    target: SocketAddr,
    /// Messages to send (with --duration: whichever ends first).
    #[arg(long)]
    messages: Option<u64>,
    /// How long to send, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 20)]
    connections: u32,
    /// Messages per connection before reconnecting (0: no limit).
    #[arg(long, default_value_t = 0)]
    per_connection: u32,
    /// Message size: fixed (`1K`) or weighted (`1K:70,10K:25,100K:5`).
    #[arg(long, default_value = "1K")]
    size: String,
    /// Recipient domains (d0.SUFFIX, d1.SUFFIX, ...; one domain is SUFFIX itself).
    #[arg(long, default_value_t = 1)]
    domains: u32,
    /// Skew of the domain mix: 0 sends to every domain in turn; with s > 0 the k-th domain
    /// gets 1/k^s of the first's share (Zipf; 1 is a typical campaign).
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// A bulk campaign's shape: 200 domains (unless --domains says otherwise), Zipf 1, sizes
    /// 2K:50,20K:40,100K:10 (unless --size says otherwise).
    #[arg(long)]
    campaign: bool,
    #[arg(long, default_value = "sink.test")]
    domain_suffix: String,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    rcpts: u32,
    /// Do not pipeline even if the server offers PIPELINING.
    #[arg(long)]
    no_pipelining: bool,
    /// Open-loop target rate in messages per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Extra header line, e.g. 'x-virtual-mta: mta1' (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long, default_value = "loadgen@src.test")]
    from: String,
    /// Connect from this local address, e.g. 127.0.0.2 (a `<source>` of its own).
    #[arg(long)]
    source: Option<std::net::IpAddr>,
    /// Write the summary as JSON to this file ('-' for standard output).
    #[arg(long)]
    json: Option<String>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

fn parse_sizes(spec: &str) -> Result<Vec<(usize, u32)>, String> {
    spec.split(',')
        .map(|part| {
            let (size, weight) = part.split_once(':').unwrap_or((part, "1"));
            let size = parse_size(size.trim())? as usize;
            let weight: u32 = weight.trim().parse().map_err(|_| format!("`{weight}` is not a weight"))?;
            if size == 0 || weight == 0 {
                return Err(format!("`{part}`: size and weight must be positive"));
            }
            Ok((size, weight))
        })
        .collect()
}

pub fn loadgen(args: LoadgenArgs) -> ExitCode {
    if args.messages.is_none() && args.duration.is_none() {
        eprintln!("sluice loadgen: give --messages N or --duration D (every load is bounded)");
        return ExitCode::from(2);
    }
    let (domains, zipf, size) = match args.campaign {
        true => (
            if args.domains == 1 { 200 } else { args.domains },
            if args.zipf == 0.0 { 1.0 } else { args.zipf },
            if args.size == "1K" { "2K:50,20K:40,100K:10".to_string() } else { args.size.clone() },
        ),
        false => (args.domains, args.zipf, args.size.clone()),
    };
    let sizes = match parse_sizes(&size) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice loadgen: --size: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = LoadgenOptions {
        target: args.target,
        messages: args.messages,
        duration: args.duration,
        connections: args.connections.max(1),
        per_connection: args.per_connection,
        sizes,
        domains: domains.max(1),
        zipf,
        domain_suffix: args.domain_suffix,
        rcpts: args.rcpts.max(1),
        pipelining: !args.no_pipelining,
        rate: args.rate,
        headers: args.headers,
        from: args.from,
        source: args.source,
        ehlo: "loadgen.sluice".into(),
    };
    let quiet = args.quiet;
    let mut last = 0;
    let report = match run_loadgen(opts, |done, elapsed| {
        if !quiet {
            let rate = (done - last) as f64;
            last = done;
            eprint!("\r{:>8.1}s  {done:>10} messages  {rate:>9.0} msg/s   ", elapsed.as_secs_f64());
        }
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice loadgen: {e}");
            return ExitCode::from(1);
        }
    };
    if !quiet {
        eprintln!();
    }
    let h = |name: &str, hist: &hdrhistogram::Histogram<u64>| {
        println!(
            "{name:<9} p50 {:>7}us  p90 {:>7}us  p99 {:>7}us  p99.9 {:>7}us  max {:>7}us  (n={})",
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.9),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max(),
            hist.len()
        );
    };
    println!(
        "messages  ok {}  failed {}  in {:.3}s  = {:.0} msg/s, {:.1} MB/s",
        report.messages_ok,
        report.messages_failed,
        report.elapsed.as_secs_f64(),
        report.messages_per_second(),
        report.bytes as f64 / report.elapsed.as_secs_f64().max(1e-9) / 1e6
    );
    h("connect", &report.connect_us);
    h("data-ack", &report.ack_us);
    let codes: Vec<String> = report.replies.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    println!("replies   {}  (connect errors: {})", codes.join(", "), report.connect_errors);
    if let Some(path) = args.json {
        let json = report.to_json();
        if path == "-" {
            println!("{json}");
        } else if let Err(e) = std::fs::write(&path, json + "\n") {
            eprintln!("sluice loadgen: cannot write {path}: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

#[derive(Args)]
pub struct SinkArgs {
    /// Where to listen: IP:PORT (port 0 picks one and prints it).
    #[arg(long, default_value = "127.0.0.1:2526")]
    listen: SocketAddr,
    /// Scripted reply 'DOMAIN[/CLIENT-IP]:REPLY:PERCENT%[@FROM-TO]' at RCPT (repeatable; DOMAIN may be '*').
    #[arg(long = "reply")]
    replies: Vec<String>,
    /// Delay before answering the end of data, e.g. 5ms.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    latency: Duration,
    /// A random extra delay, up to this, on each delayed reply (end of data, and with
    /// --reply-latency every reply).
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    jitter: Duration,
    /// Delay before every other reply (greeting, EHLO, MAIL, RCPT, DATA's 354), e.g. 2ms.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    reply_latency: Duration,
    /// A receiver on a bulk campaign's far side: 20 ms at the end of data with 10 ms of
    /// jitter, 1 ms before other replies (unless given otherwise).
    #[arg(long)]
    campaign: bool,
    /// Connections beyond this are answered 421 (0: no cap).
    #[arg(long, default_value_t = 0)]
    max_connections: u32,
    /// Offer CHUNKING (RFC 3030) and take messages in BDAT chunks, as Gmail, Outlook,
    /// Postfix and Exim do.
    #[arg(long)]
    chunking: bool,
    /// Play a receiver that accepts at most this rate, e.g. 40/s, with 100 ms worth of burst
    /// (beyond: 451 4.7.1).
    #[arg(long, value_parser = sluice_config::units::parse_rate)]
    accept_rate: Option<sluice_config::Rate>,
    /// Serve the totals as JSON over HTTP on this address.
    #[arg(long)]
    stats: Option<SocketAddr>,
    /// Exit once this many messages have arrived.
    #[arg(long)]
    exit_after: Option<u64>,
    /// Exit once this many final outcomes were seen: messages arrived plus recipients refused
    /// with a scripted 5xx (a load of one recipient a message, with --reply rules).
    #[arg(long, conflicts_with = "exit_after")]
    exit_after_final: Option<u64>,
    #[arg(long, default_value = "sink.sluice")]
    host_name: String,
    /// Write the totals as JSON to this file on exit.
    #[arg(long)]
    json: Option<String>,
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

fn serve_stats(addr: SocketAddr, stats: Arc<SinkStats>) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    std::thread::Builder::new().name("sink-stats".into()).spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = stream.read(&mut buf);
            let body = stats.to_json();
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(())
}

pub fn sink(args: SinkArgs) -> ExitCode {
    let rules: Result<Vec<_>, _> = args.replies.iter().map(|r| parse_rule(r)).collect();
    let rules = match rules {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice sink: --reply: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let stats = Arc::new(SinkStats::default());
    if let Some(addr) = args.stats {
        if let Err(e) = serve_stats(addr, stats.clone()) {
            eprintln!("sluice sink: stats port {addr}: {e}");
            return ExitCode::from(1);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let opts = SinkOptions {
        listen: args.listen,
        host_name: args.host_name,
        rules,
        latency: if args.campaign && args.latency.is_zero() { Duration::from_millis(20) } else { args.latency },
        jitter: if args.campaign && args.jitter.is_zero() { Duration::from_millis(10) } else { args.jitter },
        reply_latency: if args.campaign && args.reply_latency.is_zero() {
            Duration::from_millis(1)
        } else {
            args.reply_latency
        },
        max_connections: args.max_connections,
        chunking: args.chunking,
        // A receiver tolerates a little burst: 100 ms worth of its rate.
        accept_rate: args.accept_rate.map(|r| {
            let burst = (r.count as u128 * 100 / r.period.as_millis().max(1)).max(1) as u32;
            sluice_engine::shape::gcra::Limit::new(r.count, r.period, burst)
        }),
    };
    let (loop_stats, loop_stop) = (stats.clone(), stop.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || run_sink(opts, loop_stats, loop_stop, move |addr| tx.send(addr).expect("main waits")))
        .expect("spawn sink thread");
    match rx.recv() {
        Ok(addr) => eprintln!("sluice sink listening on {addr}"),
        Err(_) => {
            let err = worker.join().ok().and_then(Result::err).map(|e| e.to_string()).unwrap_or_default();
            eprintln!("sluice sink: cannot listen on {}: {err}", args.listen);
            return ExitCode::from(1);
        }
    }
    let done = || {
        let messages = stats.messages.load(Ordering::SeqCst);
        args.exit_after.is_some_and(|n| messages >= n)
            || args.exit_after_final.is_some_and(|n| messages + stats.scripted_5xx.load(Ordering::SeqCst) >= n)
    };
    while !SIGNALLED.load(Ordering::SeqCst) && !done() {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let _ = worker.join();
    let json = stats.to_json();
    println!("{json}");
    if let Some(path) = args.json {
        if let Err(e) = std::fs::write(&path, json + "\n") {
            eprintln!("sluice sink: cannot write {path}: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

/// `sluice sign-speed`: DKIM signatures per second on one core with `key` (a 10 KiB message,
/// relaxed/relaxed, the default header set), what the signing rate of a host cannot pass.
pub fn sign_speed(key: &std::path::Path, seconds: u64) -> ExitCode {
    let text = format!("smtp-listener 127.0.0.1:25\ndomain-key speed,speed.test,{}\n", key.display());
    let config = match sluice_config::load("sign-speed", &text, &mut |_| Err("no includes".into())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice sign-speed: {e}");
            return ExitCode::from(2);
        }
    };
    let keys = match sluice_engine::dkim::Keys::load(&config, &mut |p| std::fs::read(p)) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("sluice sign-speed: {e}");
            return ExitCode::from(2);
        }
    };
    let mut message = b"From: News <news@speed.test>\r\nTo: r@dest.test\r\nSubject: speed\r\nDate: Sat, 28 Nov 2026 00:00:00 +0000\r\nMessage-ID: <1@speed.test>\r\n\r\n".to_vec();
    while message.len() < 10 * 1024 {
        message
            .extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n");
    }
    let opts = sluice_config::DkimOptions::default();
    let started = std::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds.max(1)) {
        match keys.sign("", &message, &opts) {
            Ok(Some(_)) => n += 1,
            other => {
                eprintln!("sluice sign-speed: no signature: {other:?}");
                return ExitCode::from(1);
            }
        }
    }
    let sluice = n as f64 / started.elapsed().as_secs_f64();
    match raw_rsa_speeds(key, seconds) {
        Some((aws, ring)) => println!(
            "{sluice:.0} signatures/s on one core (a 10 KiB message, body hash included); \
             raw RSA-2048 signatures/s: aws-lc-rs {aws:.0} (sluice's), ring {ring:.0}"
        ),
        None => println!("{sluice:.0} signatures/s on one core (a 10 KiB message, body hash included)"),
    }
    ExitCode::SUCCESS
}

/// Bare RSA-2048 signatures a second, aws-lc-rs then ring, over a DKIM-sized header block;
/// None for a key that is not RSA.
fn raw_rsa_speeds(key: &std::path::Path, seconds: u64) -> Option<(f64, f64)> {
    use mail_auth::common::crypto::SigningKey;
    use rustls_pki_types::pem::PemObject;
    // aws-lc-rs: the key as the engine loads it for signing.
    let sluice_engine::dkim::DkimKey::Rsa(aws) = sluice_engine::dkim::read_key(&std::fs::read(key).ok()?).ok()? else {
        return None;
    };
    let der = rustls_pki_types::PrivateKeyDer::from_pem_file(key).ok()?;
    let ring = mail_auth::common::crypto::RsaKey::<mail_auth::common::crypto::Sha256>::from_key_der(der).ok()?;
    let input = [b'h'; 400];
    let rate = |sign: &mut dyn FnMut()| {
        let started = std::time::Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(seconds.max(1)) {
            sign();
            n += 1;
        }
        n as f64 / started.elapsed().as_secs_f64()
    };
    let mut signature = vec![0; aws.public_modulus_len()];
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let aws_rate =
        rate(&mut || aws.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, &input, &mut signature).expect("sign"));
    let ring_rate = rate(&mut || {
        ring.sign(&input[..]).expect("sign");
    });
    Some((aws_rate, ring_rate))
}
