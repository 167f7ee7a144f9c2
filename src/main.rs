//! sluice: the binary. CLI, daemon wiring and the control-plane thread; the data plane is
//! `sluice-netio`'s shards.

mod acct;
mod authcheck;
mod cli;
mod clock;
mod cluster;
mod control;
mod dns;
mod drain;
mod logfile;
mod mgmt;
mod pickup;
mod redis_link;
mod reload;
mod takeover;
mod tools;

use clap::{Parser, Subcommand};
use sluice_config::{Config, ConfigError, DEFAULT_CONFIG};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sluice", version, about = "High-volume mail transfer agent with PowerMTA-style configuration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the embedded default configuration when no -c is given).
    Run {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file: prints its errors and warnings, or "ok".
    CheckConfig {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Print the table of PowerMTA directives: read, accepted and ignored, sluice's own.
    Directives,
    /// Inject load over SMTP (io_uring, or epoll where refused) and report rates and latencies.
    Loadgen(tools::LoadgenArgs),
    /// Accept and count mail over SMTP (io_uring, or epoll where refused), verifying loadgen's checksums.
    Sink(tools::SinkArgs),
    /// DKIM signatures per second on one core with a key (what signing can give at most).
    SignSpeed {
        /// The private key (PEM: RSA or Ed25519).
        #[arg(long)]
        key: PathBuf,
        /// How long to sign, in seconds.
        #[arg(long, default_value_t = 2)]
        seconds: u64,
    },
    /// Suppression-list helpers.
    #[command(subcommand)]
    Suppress(Suppress),
    #[command(flatten)]
    Operate(cli::Verb),
}

#[derive(Subcommand)]
enum Suppress {
    /// Print the hash of an address for an `address-hash-file` (SHA-256 of the lower-cased
    /// address), or with --hmac for an `address-hmac-file`.
    Hash {
        address: String,
        #[arg(long)]
        hmac: Option<String>,
    },
}

/// Loads a configuration file, following includes relative to its directory.
pub(crate) fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    let checked = check_config_file(path);
    if let Some(e) = checked.errors.into_iter().next() {
        return Err(e);
    }
    let mut config = checked.config.expect("no errors: a configuration");
    // Proxy hosts given by name (`smtp-proxy-source-host`, `<proxy>`'s `server`) are looked
    // up once, here: the shards connect to addresses.
    for p in config.proxies_mut().filter(|p| p.server_addr.is_none()) {
        use std::net::ToSocketAddrs;
        let found = (p.server.as_str(), p.port).to_socket_addrs().map(|mut a| a.next());
        p.server_addr = match found {
            Ok(Some(addr)) => Some(addr),
            Ok(None) | Err(_) => {
                return Err(ConfigError {
                    file: path.map_or("<embedded default>".into(), |p| p.display().to_string()),
                    line: 0,
                    message: format!("proxy `{}`: its server `{}` has no address", p.name, p.server),
                    hint: "give the proxy host's address, or a name this host resolves".into(),
                })
            }
        };
    }
    Ok(config)
}

/// Reads and checks a configuration file (or the embedded default), reporting every problem.
fn check_config_file(path: Option<&Path>) -> sluice_config::Checked {
    let Some(path) = path else {
        return sluice_config::check("<embedded default>", DEFAULT_CONFIG, &mut |_| {
            Err("the default has no includes".into())
        });
    };
    let display = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let error = ConfigError {
                file: display,
                line: 0,
                message: format!("cannot read: {e}"),
                hint: "check the path given to -c".into(),
            };
            return sluice_config::Checked { config: None, errors: vec![error], warnings: Vec::new() };
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    sluice_config::check(&display, &text, &mut |name| include(&base, name))
}

/// `include NAME`: a file next to the including one (or an absolute path); with `*`, `?` or
/// `[` in it, every file the pattern matches, in name order (none is not an error).
fn include(base: &Path, name: &str) -> Result<Vec<(String, String)>, String> {
    let pattern = base.join(name);
    let read = |p: &Path| std::fs::read_to_string(p).map(|t| (p.display().to_string(), t)).map_err(|e| e.to_string());
    if !name.contains(['*', '?', '[']) {
        return read(&pattern).map(|f| vec![f]);
    }
    let paths = glob::glob(&pattern.to_string_lossy()).map_err(|e| format!("bad pattern: {e}"))?;
    let mut paths: Vec<PathBuf> = paths.filter_map(Result::ok).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.iter().map(|p| read(p)).collect()
}

/// Everything a configuration refers to, read and checked: keys, certificates, lists.
pub(crate) fn load_settings(config: Arc<Config>) -> Result<sluice_netio::Settings, ConfigError> {
    let dkim = sluice_engine::dkim::Keys::load(&config, &mut |p| std::fs::read(p))?;
    let tls = sluice_netio::tls::server_config(&config)?;
    sluice_engine::dkim::ArcKey::load(&config, &mut |p| std::fs::read(p))?;
    let lists = sluice_netio::suppress::load_lists(&config)?;
    let feedback = sluice_netio::suppress::load_feedback(&config)?;
    let bounces = sluice_netio::suppress::load_bounces(&config)?;
    Ok(sluice_netio::Settings { config, dkim, tls, lists, feedback, bounces })
}

/// The spool must fit its filesystem: each shard preallocates segments and a journal, and a
/// spool too small for them refuses every message (452) without saying why.
fn check_spool_room(config: &Config, file: &str) -> Result<(), ConfigError> {
    let shards = config.shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())) as u64;
    let segment = config.spool_segment_bytes;
    let need = sluice_netio::spool_files::spool_bytes_min(segment, shards);
    let Some(room) = sluice_netio::spool_files::filesystem_bytes(&config.spool_dir) else { return Ok(()) };
    if room >= need {
        return Ok(());
    }
    let mib = |b: u64| b.div_ceil(1 << 20);
    Err(ConfigError {
        file: file.to_string(),
        line: 0,
        message: format!(
            "the spool {} is on a filesystem of {} MiB, but {shards} shard(s) need at least {} MiB \
             (each: a {} MiB segment and a {} MiB journal, made when it starts)",
            config.spool_dir.display(),
            mib(room),
            mib(need),
            mib(segment),
            mib(sluice_netio::spool_files::journal_bytes(segment)),
        ),
        hint: format!(
            "lower spool-segment-size (at most {} MiB fits here, with room to spare for new segments), \
             use fewer shards, or give the spool more room",
            (room / shards * 4 / 5) >> 20
        ),
    })
}

/// What `<smtp-user>`s get: where AUTH is offered (the `<source>` rules with `allow-auth`,
/// on by default) and whether each user may relay once logged in.
fn auth_summary(config: &sluice_config::Config) {
    if config.smtp_users.is_empty() {
        return;
    }
    let (offered, not): (Vec<_>, Vec<_>) = config.source_rules().iter().partition(|r| r.policy.allow_auth);
    let cidrs = |rules: &[&sluice_config::SourceRule]| {
        rules.iter().map(|r| format!("{}/{}", r.cidr.addr, r.cidr.prefix)).collect::<Vec<_>>().join(", ")
    };
    // Clients no rule covers get the defaults (allow-auth on).
    let everyone = config.source_rules().iter().any(|r| r.cidr.prefix == 0);
    let others = match (sluice_config::SourcePolicy::default().allow_auth && !everyone, offered.is_empty()) {
        (false, _) => "",
        (true, true) => "any address",
        (true, false) => " and any address no <source> rule covers",
    };
    let refused = if not.is_empty() { String::new() } else { format!("; not to: {}", cidrs(&not)) };
    println!("AUTH offered to clients of: {}{others}{refused}", cidrs(&offered));
    let mut users: Vec<_> = config.smtp_users.values().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    for u in users {
        let relays = config.user_policy(&u.source).always_allow_relaying;
        println!(
            "smtp-user {}: {} once authenticated (source {})",
            u.name,
            if relays { "relays" } else { "may not relay" },
            u.source
        );
    }
}

/// `sluice check-config`: every error and warning with its file:line, then the count; the
/// exit status is 2 when there is an error, 0 otherwise (warnings alone are fine).
fn check_config(path: Option<&Path>) -> ExitCode {
    let checked = check_config_file(path);
    let mut errors = checked.errors;
    let summary = checked.config.clone();
    // Key files, certificates and lists are read too: a `domain-key` whose file is missing
    // fails here, not at start.
    if let Some(config) = checked.config {
        let file = path.map_or("<embedded default>".to_string(), |p| p.display().to_string());
        if let Err(e) = check_spool_room(&config, &file) {
            errors.push(e);
        }
        if let Err(e) = load_settings(Arc::new(config)) {
            errors.push(e);
        }
    }
    for e in &errors {
        println!("{e}");
    }
    if let Some(config) = &summary {
        auth_summary(config);
    }
    for w in &checked.warnings {
        println!("warning: {w}");
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    println!("{}, {}", plural(errors.len(), "error"), plural(checked.warnings.len(), "warning"));
    if errors.is_empty() {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn run(path: Option<&Path>) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logfile::open(config.log_file.as_deref()) {
        eprintln!("sluice: cannot open the log file (log-file): {e}");
        return ExitCode::from(2);
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let arc_key = match sluice_engine::dkim::ArcKey::load(&config, &mut |p| std::fs::read(p)) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    let file = path.map_or("<embedded default>".to_string(), |p| p.display().to_string());
    if let Err(e) = check_spool_room(&config, &file) {
        eprintln!("sluice: {e}");
        return ExitCode::from(2);
    }
    let settings = match load_settings(config.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    for (name, list) in &settings.lists {
        let hashed: usize = list.hashed.iter().map(|h| h.len()).sum();
        tracing::info!(list = %name, addresses = list.addresses.len(), hashed, "suppression list loaded");
    }
    // The management API's port is taken before anything starts: a clash is a clear error.
    let mgmt = match config.mgmt.as_ref().map(|m| (m.listen, std::net::TcpListener::bind(m.listen))) {
        None => None,
        Some((_, Ok(l))) => Some(l),
        Some((addr, Err(e))) => {
            eprintln!("sluice: cannot listen on {addr} for the management API (http-mgmt-port): {e}");
            return ExitCode::from(1);
        }
    };
    // The Transmissions API's listeners, likewise, with their certificates read now.
    let mut transmissions = Vec::new();
    for l in &config.transmissions_api.listeners {
        let tls = match sluice_netio::tls::server_config_of(&l.certificate) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("sluice: {e}");
                return ExitCode::from(2);
            }
        };
        match std::net::TcpListener::bind(l.addr) {
            Ok(listener) => transmissions.push((listener, tls)),
            Err(e) => {
                eprintln!("sluice: cannot listen on {} for the Transmissions API: {e}", l.addr);
                return ExitCode::from(1);
            }
        }
    }
    let acct = match acct::AcctWriter::open(&config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(1);
        }
    };
    let (tx, rx) = crossbeam_channel::bounded(sluice_netio::CONTROL_CHANNEL_CAPACITY);
    // The spool is recovered inside `start`: meanwhile the management port reports progress.
    let recovered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let interim = mgmt.map(|l| mgmt::serve_recovery(l, config.clone(), recovered.clone()));
    // With `spool-takeover`, the spool is this host's only once claimed in Redis (meanwhile
    // the management port says the spool is not recovered yet).
    let takeover = match config.cluster.as_ref().map(takeover::start).transpose() {
        Ok(t) => t.flatten(),
        Err(takeover::ClaimError::Stopped) => {
            tracing::info!("signal received while waiting for the spool: stopping");
            return ExitCode::SUCCESS;
        }
        Err(takeover::ClaimError::Bad(e)) => {
            eprintln!("sluice: spool-takeover: {e}");
            return ExitCode::from(2);
        }
    };
    let started = sluice_netio::Runtime::start(settings, tx);
    recovered.store(true, std::sync::atomic::Ordering::SeqCst);
    let mgmt = interim.map(|t| t.join().expect("the recovery status thread does not panic"));
    let (runtime, responder) = match started {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        shards = runtime.shards,
        backend = runtime.backend.name(),
        listeners = ?config.listeners,
        spool = %config.spool_dir.display(),
        recovered = runtime.recovered_messages,
        "sluice running"
    );
    if config.spool_deliver_only {
        tracing::warn!(spool = %config.spool_dir.display(), "the spool is deliver-only: its mail is delivered, new mail is refused (452)");
    }
    drain::start(config.drain_spools.clone(), responder.clone());
    if let Some(t) = &takeover {
        t.attach(responder.clone());
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(p) = config.pickup.clone() {
        tracing::info!(dir = %p.dir.display(), bad = %p.bad_dir.display(), "taking message files from the pickup directory");
        pickup::start(p, responder.clone(), stop.clone());
    }
    let (acct_tx, acct_rx) = crossbeam_channel::unbounded();
    let reloader = Arc::new(reload::Reloader::new(path.map(Path::to_path_buf), responder.clone(), acct_tx));
    let plane = control::Plane {
        config: config.clone(),
        requests: rx,
        responder: responder.clone(),
        acct,
        acct_cmds: acct_rx,
        arc_key,
        stop: stop.clone(),
        reloader: reloader.clone(),
        mgmt,
        transmissions,
        recovered_messages: runtime.recovered_messages,
        takeover: takeover.as_ref().map(|t| t.status.clone()),
    };
    let control = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || control::run(plane))
        .expect("spawn control thread");
    while wait_for_signal() == libc::SIGHUP {
        tracing::info!("SIGHUP: reloading the configuration");
        if let Err(e) = reloader.reload() {
            tracing::error!("reload refused, the old configuration stays: {e}");
        }
        // logrotate moved the file away: write a new one.
        if let Err(e) = logfile::open(responder.config().log_file.as_deref()) {
            tracing::error!("cannot reopen the log file: {e}");
        }
    }
    tracing::info!("signal received: stopping");
    runtime.shutdown();
    runtime.join();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    match control.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "control plane failed"),
        Err(_) => tracing::error!("control plane panicked"),
    }
    for (name, list) in &responder.lists() {
        tracing::info!(list = %name, refused = list.hits(), "suppression list hits");
    }
    tracing::info!("sluice stopped");
    ExitCode::SUCCESS
}

/// Blocks until SIGTERM, SIGINT or SIGHUP; returns which.
fn wait_for_signal() -> i32 {
    // SAFETY: sigset manipulation and sigwait on this thread; the signals are blocked in
    // every thread (the mask is inherited by threads spawned later, and shards were spawned
    // after main blocked it in `main`).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

/// Raises the open-file soft limit to the hard limit and returns it: every connection is a
/// descriptor, and the usual default of 1024 is far below what a relay with many queues holds
/// open.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    let limit = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
        lim.rlim_cur
    };
    limit as u64
}

/// Command-line tools piped into `head` should end quietly, as Unix tools do, rather than
/// panic on EPIPE (Rust ignores SIGPIPE by default).
fn default_sigpipe() {
    // SAFETY: restoring the default disposition of one signal.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn block_signals() {
    // SAFETY: as above; done before any thread starts so all threads inherit the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// No transparent huge pages for this process. The allocator asks for them on its memory
/// (`MADV_HUGEPAGE`), so on a host whose THP setting is `madvise` (Debian's, and this
/// machine's) memory it gives back and takes again comes back as 2 MiB pages, each cleared
/// whole at its first touch: for the 100 KiB buffers of a campaign's large messages, 20% of
/// the relay's CPU went to clearing pages (`perf/RESULTS.md`, 2026-12-07). With 4 KiB pages
/// only what is touched is cleared. Called first, before any thread starts; the setting is
/// the process's (`PR_SET_THP_DISABLE`, also what mimalloc's `allow_thp=0` does).
fn no_transparent_huge_pages() {
    // SAFETY: a plain prctl on this process; failure (an old kernel) changes nothing.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!("sluice: cannot turn transparent huge pages off: {}", std::io::Error::last_os_error());
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(|| logfile::Tee)
        // Colours for a terminal only: logs in files and journald stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            // A panic ends one connection, or the whole process: never a half-alive relay.
            sluice_netio::guard::install_hook();
            let limit = raise_fd_limit();
            tracing::info!(open_files = limit, "open-files limit (each connection takes one)");
            if limit < 16_384 {
                tracing::warn!(
                    open_files = limit,
                    "under 16384 open files: raise the hard limit (LimitNOFILE=) for many connections"
                );
            }
            block_signals();
            run(config.as_deref())
        }
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::Operate(verb) => {
            default_sigpipe();
            cli::run(verb)
        }
        Command::Directives => {
            print!("{}", sluice_config::known::directives_markdown());
            ExitCode::SUCCESS
        }
        Command::DefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Loadgen(args) => {
            let _ = raise_fd_limit();
            default_sigpipe();
            tools::loadgen(args)
        }
        Command::Sink(args) => {
            let _ = raise_fd_limit();
            default_sigpipe();
            tools::sink(args)
        }
        Command::SignSpeed { key, seconds } => tools::sign_speed(&key, seconds),
        Command::Suppress(Suppress::Hash { address, hmac }) => {
            println!("{}", sluice_engine::suppress::address_hash(&address, hmac.as_deref().map(str::as_bytes)));
            ExitCode::SUCCESS
        }
    }
}
