//! The `ringgate` command: `run`, `check`, `proxy` (quick mode, no file) and `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringgate::config::{self, Config};
use ringgate::demo::DemoOrigin;
use ringgate::{Gateway, Handle, StartError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc (v3) commits its arenas' memory eagerly on Linux; with that
/// default, a gateway at rest held 22 MiB resident and each idle
/// connection 2.3 KiB, against 9 MiB and 1.4 KiB when arena memory is
/// committed as it is used (`benches/compare/run --cases idle-conns`,
/// docs/benchmarks.md). The option must be set before mimalloc's own
/// start-up (its constructor runs at priority 101, this one at 100, both
/// before `main`); `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still
/// decides when it is set.
#[used]
#[unsafe(link_section = ".init_array.00100")]
static ALLOCATOR_OPTIONS: extern "C" fn() = allocator_options;

extern "C" fn allocator_options() {
    /// `mi_option_arena_eager_commit` in mimalloc v3's `mi_option_t`
    /// (libmimalloc-sys names only v2's numbering).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // SAFETY: getenv with a NUL-terminated name, before any thread exists;
    // mi_option_set only stores the value, whether or not mimalloc started.
    unsafe {
        if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        }
    }
}

#[derive(Parser)]
#[command(
    name = "ringgate",
    version,
    about = "Thread-per-core HTTP/1.1 API gateway on io_uring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on a config file.
    Run {
        /// Config file.
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Take over from the ringgate running this config file: receive its
        /// listening sockets, start accepting, then let it drain and exit
        /// (SIGUSR2 to the running process starts this for you).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and exit (0 when valid).
    Check {
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Ask the running gateway to re-read its config file, through the
    /// admin API that file names (`POST /config/reload`; SIGHUP does the same).
    Reload {
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Proxy everything from one address to a list of servers, no config file needed.
    Proxy(Box<QuickArgs>),
    /// Run the gateway on its default config in front of a built-in demo origin.
    Demo {
        /// Where the gateway listens (default: the default config's listener, 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Also serve HTTPS here, with a self-signed certificate made at start
        /// for localhost and 127.0.0.1 (try `curl -k https://...`).
        #[arg(long)]
        tls_listen: Option<SocketAddr>,
    },
}

/// Quick mode. Each option maps onto one config field in [`QuickArgs::into_config`].
#[derive(Args)]
struct QuickArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long)]
    listen: SocketAddr,
    /// Upstream servers, comma-separated host:port list.
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// Worker threads (default: one per available CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Largest request body, e.g. 10MiB; 0 = unlimited.
    #[arg(long)]
    max_body: Option<String>,
    /// Requests served on one client connection (HTTP/1.1 and HTTP/2) before
    /// it is closed (HTTP/2: a graceful GOAWAY).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Requests per second per client address, node-wide (429 past it),
    /// with a burst of as many again.
    #[arg(long)]
    rate_limit: Option<f64>,
    /// Share invalidations with the other nodes using this Redis
    /// (redis://host:port/db): a purge or a write on any node reaches all.
    #[arg(long)]
    cluster_redis: Option<String>,
    /// With --cluster-redis: also share stored responses through Redis
    /// (a cold miss asks Redis before the origin).
    #[arg(long, requires = "cluster_redis")]
    cluster_shared_cache: bool,
    /// Write an access log line per request to this file ("-": standard output).
    #[arg(long)]
    access_log: Option<String>,
    /// The access log's format: combined (nginx's) or json.
    #[arg(long, value_parser = ["combined", "json"], requires = "access_log")]
    access_log_format: Option<String>,
    /// Cache size per worker (core), e.g. 64MiB. Responses are cached as
    /// their Cache-Control allows (RFC 9111).
    #[arg(long)]
    cache_size: Option<String>,
    /// Do not cache: pure pass-through.
    #[arg(long, conflicts_with = "cache_size")]
    no_cache: bool,
    /// Serve the admin API (health, stats, metrics, purge) on this address.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Bearer token the admin API asks for (required when --admin is not a
    /// loopback address). Default: the RINGGATE_ADMIN_TOKEN environment variable.
    #[arg(long, env = "RINGGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Event loop: auto (io_uring, else epoll), io_uring or epoll.
    #[arg(long, value_parser = ["auto", "io_uring", "epoll"])]
    driver: Option<String>,
    /// Terminate TLS on --listen with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl QuickArgs {
    fn into_config(self) -> Result<Config, String> {
        let mut servers = Vec::new();
        for s in &self.to {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(s.as_str())
                .map_err(|e| format!("--to {s}: {e}"))?
                .next()
                .ok_or_else(|| format!("--to {s}: resolves to no address"))?;
            servers.push(addr);
        }
        let mut config = Config::quick(self.listen, servers);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let files = config::CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
                ocsp: None,
            };
            ringgate::tls::certs::load(&files, std::time::SystemTime::now())
                .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
            config.listeners[0].tls = Some(config::ListenerTls {
                certificates: vec![files],
            });
        }
        if let Some(n) = self.workers {
            if n == 0 {
                return Err("--workers must be at least 1".into());
            }
            config.workers.count = Some(n);
        }
        if self.no_pin {
            config.workers.pin = false;
        }
        if let Some(listen) = self.admin {
            if let Some(t) = &self.admin_token {
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(
                        "--admin-token: must be non-empty visible ASCII without spaces".into(),
                    );
                }
            }
            config.admin = Some(config::AdminConfig {
                listen,
                token: self.admin_token.clone(),
            });
            if let Some(admin) = &config.admin {
                admin
                    .check()
                    .map_err(|e| format!("--admin {listen}: {}", e.reason))?;
            }
        } else if self.admin_token.is_some() && std::env::var_os("RINGGATE_ADMIN_TOKEN").is_none() {
            return Err("--admin-token needs --admin ADDR".into());
        }
        if self.no_cache {
            config.routes[0].cache = None;
        }
        if let Some(size) = self.cache_size {
            config.workers.per_core.cache_size =
                config::units::parse_size(&size).map_err(|e| format!("--cache-size: {e}"))?;
        }
        if let Some(driver) = self.driver.as_deref() {
            config.workers.driver = match driver {
                "io_uring" => config::DriverChoice::IoUring,
                "epoll" => config::DriverChoice::Epoll,
                _ => config::DriverChoice::Auto,
            };
        }
        if let Some(n) = self.max_requests {
            if n == 0 {
                return Err("--max-requests: must be at least 1".into());
            }
            config.limits.max_keepalive_requests = n;
            config.http2.max_requests = n;
        }
        if let Some(rate) = self.rate_limit {
            use ringgate::route::rate_limit::{LimitKey, RateLimit};
            let burst = rate.ceil().min(f64::from(u32::MAX)) as u32;
            let limit = RateLimit::new(rate, burst, LimitKey::ClientIp)
                .map_err(|e| format!("--rate-limit: {e}"))?;
            for route in &mut config.routes {
                route.rate_limit = Some(limit.clone());
            }
        }
        if let Some(url) = &self.cluster_redis {
            let text = format!("[cluster]\nredis = {url:?}\n");
            let parsed = config::Config::parse(&format!(
                "[[listeners]]\naddress = \"{}\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"u\"\n{text}",
                self.listen
            ))
            .map_err(|e| format!("--cluster-redis: {}", e.reason))?;
            config.cluster = parsed.cluster;
            if let Some(cluster) = &mut config.cluster {
                cluster.shared_cache = self.cluster_shared_cache;
            }
        }
        if let Some(path) = &self.access_log {
            config.access_log.enabled = true;
            config.access_log.target = match path.as_str() {
                "-" | "stdout" => config::LogTarget::Stdout,
                p => config::LogTarget::File(p.into()),
            };
            if self.access_log_format.as_deref() == Some("json") {
                config.access_log.format = config::LogFormat::Json;
            }
        }
        if let Some(size) = self.max_body {
            let bytes = config::units::parse_size(&size).map_err(|e| format!("--max-body: {e}"))?;
            config.limits.max_request_body = (bytes > 0).then_some(bytes);
        }
        Ok(config)
    }
}

/// Standard error for the log, where a failed write (a closed pipe, a
/// full disk) loses the line instead of failing: the log library reports a
/// failed write on standard error itself, and that second failure panics
/// the thread that logged -- a worker, or the thread that handles SIGTERM.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(|| LossyStderr)
        // Colour codes only for a person at a terminal, never in a log file or journal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listener(s), {} upstream group(s), {} route(s))",
                    config.display(),
                    c.listeners.len(),
                    c.upstreams.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, upgrade } => match Config::load(&config) {
            Ok(c) => run_file(c, &config, upgrade),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Proxy(args) => match args.into_config() {
            Ok(c) => run(c),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Demo { listen, tls_listen } => demo(listen, tls_listen),
        Command::Reload { config } => ask_reload(&config),
    }
}

/// `ringgate reload`: `POST /config/reload` to the admin API the config
/// file names, with its token (or `RINGGATE_ADMIN_TOKEN`); prints the answer.
fn ask_reload(path: &std::path::Path) -> ExitCode {
    use std::io::{Read, Write};
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(admin) = config.admin else {
        eprintln!(
            "ringgate reload: {} turns the admin API off; send SIGHUP to the gateway's process instead",
            path.display()
        );
        return ExitCode::from(2);
    };
    let mut address = admin.listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let token = admin
        .token
        .or_else(|| std::env::var("RINGGATE_ADMIN_TOKEN").ok());
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let exchange = || -> std::io::Result<String> {
        let timeout = ringgate::reload::ACK_TIMEOUT + std::time::Duration::from_secs(5);
        let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        write!(
            stream,
            "POST /config/reload HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    match exchange() {
        Ok(answer) => {
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
            let ok = head.starts_with("HTTP/1.1 200");
            if ok {
                print!("{body}");
                ExitCode::SUCCESS
            } else {
                eprint!(
                    "ringgate reload: {} {body}",
                    head.lines().next().unwrap_or("")
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ringgate reload: cannot reach the admin API on {address}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start(config: Config) -> Result<Handle, ExitCode> {
    Gateway::start(config).map_err(|e| {
        eprintln!("ringgate: {e}");
        match e {
            StartError::Config(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    })
}

/// Runs until SIGTERM or SIGINT, then drains gracefully; a second signal exits at once.
/// SIGHUP re-reads the config file (a bad one is logged and the running
/// config stays).
fn run(config: Config) -> ExitCode {
    let signals = match install_signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let handle = match start(config) {
        Ok(h) => h,
        Err(code) => return code,
    };
    wait_for_signal(handle, signals)
}

/// Installed before the gateway starts, so a SIGHUP during start-up is ignored too.
fn install_signals() -> Result<signal_hook::iterator::Signals, ExitCode> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2]).map_err(|e| {
        eprintln!("ringgate: cannot install signal handlers: {e}");
        ExitCode::FAILURE
    })
}

/// `ringgate run`: [`run`], taking the sockets of the process running the
/// same file first with `--upgrade`, and answering the next upgrade.
fn run_file(config: Config, path: &std::path::Path, upgrade: bool) -> ExitCode {
    let signals = match install_signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let taken = if upgrade {
        match ringgate::upgrade::take_over(path) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("ringgate: upgrade: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let handle = match taken {
        None => start(config),
        Some(taken) => {
            let (inherited, rest) = taken.split();
            let handle = Gateway::start_with(config, inherited).map_err(|e| {
                // The old process keeps serving: it hears this one go.
                eprintln!("ringgate: {e}");
                ExitCode::FAILURE
            });
            if handle.is_ok() {
                if let Err(e) = rest.ready() {
                    eprintln!("ringgate: upgrade: cannot tell the old process: {e}");
                }
                tracing::info!("upgrade: took over the listening sockets");
            }
            handle
        }
    };
    let handle = match handle {
        Ok(h) => h,
        Err(code) => return code,
    };
    let stopper = handle.stopper();
    if let Err(e) = ringgate::upgrade::answer(path, handle.sockets(), move || stopper.stop()) {
        tracing::warn!(error = %e, "binary upgrades of this process are off");
    }
    wait_for_signal_upgrading(handle, signals, Some(path.to_path_buf()))
}

fn wait_for_signal(handle: Handle, signals: signal_hook::iterator::Signals) -> ExitCode {
    wait_for_signal_upgrading(handle, signals, None)
}

/// Starts `<this binary> run --config <config> --upgrade` (SIGUSR2), which
/// takes this process's sockets; this process then drains and exits.
fn spawn_upgrade(config: &std::path::Path) {
    // The path it was started by: a binary replaced on disk is the new one.
    let binary = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .filter(|p| p.components().count() > 1)
        .or_else(|| std::env::current_exe().ok());
    let Some(binary) = binary else {
        tracing::error!("SIGUSR2: cannot tell where this binary is");
        return;
    };
    match std::process::Command::new(&binary)
        .args(["run", "--upgrade", "--config"])
        .arg(config)
        .spawn()
    {
        Ok(child) => {
            tracing::info!(pid = child.id(), binary = %binary.display(), "SIGUSR2: started the new binary")
        }
        Err(e) => {
            tracing::error!(binary = %binary.display(), error = %e, "SIGUSR2: cannot start the new binary")
        }
    }
}

fn wait_for_signal_upgrading(
    handle: Handle,
    mut signals: signal_hook::iterator::Signals,
    config: Option<PathBuf>,
) -> ExitCode {
    use signal_hook::consts::{SIGHUP, SIGUSR1, SIGUSR2};
    let stopper = handle.stopper();
    let access_log = handle.access_log();
    let reloader = handle.reloader();
    std::thread::spawn(move || {
        let mut seen = 0;
        for signal in signals.forever() {
            if signal == SIGHUP {
                // Its own thread: a reload waiting on the workers does not
                // hold up a SIGTERM.
                let reloader = reloader.clone();
                std::thread::spawn(move || match reloader.reload_blocking() {
                    Ok(done) if done.timed_out.is_empty() => {
                        tracing::info!(
                            generation = done.generation,
                            "SIGHUP: config reloaded on every worker"
                        )
                    }
                    Ok(done) => {
                        tracing::warn!(generation = done.generation, workers = ?done.timed_out,
                        "SIGHUP: config reloaded; these workers had not applied it in time")
                    }
                    Err(e) => {
                        tracing::error!("SIGHUP: config not reloaded, the running one stays: {e}")
                    }
                });
                continue;
            }
            if signal == SIGUSR1 {
                access_log.reopen();
                tracing::info!("SIGUSR1: reopening the access log");
                continue;
            }
            if signal == SIGUSR2 {
                match &config {
                    Some(path) => spawn_upgrade(path),
                    None => tracing::warn!(
                        "SIGUSR2 ignored: an upgrade needs `ringgate run --config FILE`"
                    ),
                }
                continue;
            }
            seen += 1;
            if seen == 1 {
                tracing::info!(signal, "shutting down: finishing in-flight requests");
                stopper.stop();
            } else {
                tracing::warn!(signal, "second signal: exiting now");
                std::process::exit(1);
            }
        }
    });
    handle.wait();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Writes a self-signed certificate for the demo's HTTPS listener.
fn demo_certificate() -> Result<config::CertificateFiles, String> {
    let (cert, key) = ringgate::tls::certs::self_signed(&["localhost", "127.0.0.1"])?;
    let dir = std::env::temp_dir().join(format!("ringgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = config::CertificateFiles {
        cert: dir.join("demo.crt"),
        key: dir.join("demo.key"),
        ocsp: None,
    };
    std::fs::write(&files.cert, cert).map_err(|e| format!("{}: {e}", files.cert.display()))?;
    std::fs::write(&files.key, key).map_err(|e| format!("{}: {e}", files.key.display()))?;
    Ok(files)
}

fn demo(listen: Option<SocketAddr>, tls_listen: Option<SocketAddr>) -> ExitCode {
    let mut config = match Config::parse(config::SHIPPED_CONFIG) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringgate: built-in config: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = listen {
        config.listeners[0].address = addr;
    }
    if let Some(address) = tls_listen {
        let files = match demo_certificate() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("ringgate: demo certificate: {e}");
                return ExitCode::FAILURE;
            }
        };
        config.listeners.push(config::ListenerConfig {
            tls: Some(config::ListenerTls {
                certificates: vec![files],
            }),
            ..config::ListenerConfig::new(address)
        });
    }
    let origin_addr = config.upstreams[0].servers[0].address;
    let origin = match DemoOrigin::start(origin_addr) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ringgate: cannot start the demo origin on {origin_addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signals = match install_signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let handle = match start(config) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let gw = handle.listen_addr();
    println!(
        "ringgate demo: gateway on http://{gw}, demo catalogue origin on http://{}",
        origin.addr()
    );
    println!("Try:");
    println!("  curl -i http://{gw}/products");
    println!("  curl -i http://{gw}/products/1");
    println!("  curl -i -H 'If-None-Match: \"1-1\"' http://{gw}/products/1");
    println!(
        "  curl -i -X PUT -H 'Content-Type: application/json' -d '{{\"id\":1,\"name\":\"Espresso cup\",\"price_cents\":1100,\"stock\":9}}' http://{gw}/products/1"
    );
    println!(
        "  curl -N http://{gw}/v1/chat/completions -d '{{\"model\":\"demo\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello there\"}}]}}'"
    );
    if let Some(tls) = handle.listen_addrs().get(1) {
        println!("  curl -ik https://{tls}/products   (self-signed certificate)");
    }
    println!("Press Ctrl-C to stop.");
    let code = wait_for_signal(handle, signals);
    drop(origin);
    code
}
