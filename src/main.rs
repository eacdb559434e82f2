//! The `roamtun` command: both daemons, key tools and the status client.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

use roamtun::config::{ClientConfig, ConfigError, ServerConfig};
use roamtun::control::{self, Request, Response};
use roamtun::keys::PrivateKey;

#[derive(Parser)]
#[command(name = "roamtun", version, about = "Keeps TCP and UDP sessions alive while a device changes uplinks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the client daemon (CNAPT) in the foreground.
    Client {
        /// The configuration (docs/config.md); the service roamtun-client@NAME uses /etc/roamtun/NAME.toml.
        #[arg(short, long, value_name = "FILE", default_value = "/etc/roamtun/client.toml")]
        config: PathBuf,
        /// Only check the configuration file: print what it says, warn of likely mistakes, and exit.
        #[arg(long)]
        check: bool,
    },
    /// Run the server daemon (SNAPT) in the foreground.
    Server {
        /// The configuration (docs/config.md); the service roamtun-server@NAME uses /etc/roamtun/NAME.toml.
        #[arg(short, long, value_name = "FILE", default_value = "/etc/roamtun/server.toml")]
        config: PathBuf,
        /// Only check the configuration file: print what it says, warn of likely mistakes, and exit.
        #[arg(long)]
        check: bool,
    },
    /// Show what a running daemon is doing.
    Status {
        /// Print JSON (stable keys, see docs/status.md) instead of text.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket; by default the client's, else the server's.
        #[arg(short, long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Move the client's session to another uplink now (a planned, make-before-break switch); returns
    /// when the switch is done.
    Switch {
        /// The uplink (interface) to use, e.g. wwan0.
        uplink: String,
        /// Print the switch record as JSON (keys in docs/status.md).
        #[arg(long)]
        json: bool,
        #[arg(short, long, value_name = "PATH", default_value = "/run/roamtun/client.sock")]
        socket: PathBuf,
    },
    /// Use this uplink whenever it is usable, whatever the decision task would choose.
    Pin {
        uplink: String,
        #[arg(short, long, value_name = "PATH", default_value = "/run/roamtun/client.sock")]
        socket: PathBuf,
    },
    /// Back to the automatic choice of uplink.
    Unpin {
        #[arg(short, long, value_name = "PATH", default_value = "/run/roamtun/client.sock")]
        socket: PathBuf,
    },
    /// Server: read the config file and peers_dir again; added, changed and removed peers take effect
    /// without touching the other sessions (SIGHUP does the same).
    Reload {
        #[arg(short, long, value_name = "PATH", default_value = "/run/roamtun/server.sock")]
        socket: PathBuf,
    },
    /// Print a new private key.
    Genkey,
    /// Read a private key on stdin and print its public key.
    Pubkey,
    /// Print the shell completion script for SHELL, e.g.
    /// `roamtun completion bash > /etc/bash_completion.d/roamtun`.
    #[command(alias = "completions")]
    Completion { shell: clap_complete::Shell },
    /// Print the manual page roamtun(1) in roff, or write it and one page per subcommand
    /// (roamtun-client(1), …) into a directory: `roamtun man --dir /usr/local/share/man/man1`.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Exit codes: 0 done, 1 runtime failure, 2 bad configuration or usage.
const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Genkey => match PrivateKey::generate() {
            Ok(key) => {
                warn_if_stdout_is_shared();
                println!("{}", key.to_base64().as_str());
                ExitCode::SUCCESS
            }
            Err(err) => fail(EXIT_FAILURE, &err),
        },
        Command::Pubkey => {
            let mut input = String::new();
            if let Err(err) = std::io::stdin().read_to_string(&mut input) {
                return fail(EXIT_FAILURE, &err);
            }
            match PrivateKey::from_base64(input.trim()) {
                Ok(key) => {
                    println!("{}", key.public_key());
                    ExitCode::SUCCESS
                }
                Err(err) => fail(EXIT_CONFIG, &err),
            }
        }
        Command::Client { config, check } => match ClientConfig::load(&config) {
            Err(err) => config_error(&err),
            Ok(cfg) if check => {
                let mut report = roamtun::check::client(&cfg, roamtun::check::link_exists);
                // Asks the system bus whether systemd-resolved runs, only when there is DNS to apply.
                let backend = (!cfg.dns.is_empty()).then(|| runtime(1).block_on(roamtun::dns::detect()));
                let dns = roamtun::check::dns(&cfg, backend.as_ref());
                report.facts.extend(dns.facts);
                report.warnings.extend(dns.warnings);
                checked(&config, &report)
            }
            Ok(cfg) => run_daemon(cfg.tuning.worker_threads, roamtun::daemon::client::run(cfg)),
        },
        Command::Server { config, check } => match ServerConfig::load(&config) {
            Err(err) => config_error(&err),
            Ok(cfg) if check => checked(&config, &roamtun::check::server(&cfg, roamtun::check::link_exists)),
            Ok(cfg) => run_daemon(cfg.tuning.worker_threads, roamtun::daemon::server::run(cfg, config)),
        },
        Command::Status { json, socket } => status(json, socket),
        Command::Switch { uplink, json, socket } => switch(uplink, json, socket),
        Command::Completion { shell } => {
            // Into a buffer first: the generator panics on a write error (e.g. `| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "roamtun", &mut script);
            print_bytes(&script)
        }
        Command::Man { dir } => {
            let mut page = Vec::new();
            let written = match &dir {
                Some(dir) => clap_mangen::generate_to(Cli::command(), dir),
                None => clap_mangen::Man::new(Cli::command()).render(&mut page),
            };
            match written {
                Ok(()) => print_bytes(&page),
                Err(err) => fail(EXIT_FAILURE, &err),
            }
        }
        Command::Pin { uplink, socket } => simple(&socket, Request::Pin { uplink: Some(uplink) }),
        Command::Unpin { socket } => simple(&socket, Request::Pin { uplink: None }),
        Command::Reload { socket } => simple(&socket, Request::Reload),
    }
}

/// `roamtun genkey > FILE` with a permissive umask leaves the secret readable by others; say so, as
/// `wg genkey` does, before the daemon refuses the file.
fn warn_if_stdout_is_shared() {
    use std::os::fd::AsFd as _;
    let Ok(stat) = nix::sys::stat::fstat(std::io::stdout().as_fd()) else { return };
    let is_file = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
    if is_file && stat.st_mode & 0o077 != 0 {
        let name = std::fs::read_link("/proc/self/fd/1").map(|p| p.display().to_string());
        let name = name.unwrap_or_else(|_| "FILE".into());
        let who = if stat.st_mode & 0o007 != 0 { "world" } else { "group" };
        eprintln!("Warning: writing to {who} accessible file.");
        eprintln!(
            "Consider setting the umask to 077 and trying again (umask 077; roamtun genkey > {name}), or run \
             chmod 600 {name}: the daemons refuse a key file that other users can read."
        );
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROAMTUN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd: to journald, each tracing field a journal field (src/service.rs).
    if let Some(journal) = roamtun::service::journal_layer() {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::registry().with(filter).with(journal).init();
        return;
    }
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Writes generated text to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn print_bytes(bytes: &[u8]) -> ExitCode {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, &err),
    }
}

fn fail(code: u8, err: &dyn std::error::Error) -> ExitCode {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("roamtun: {msg}");
    ExitCode::from(code)
}

/// `--check` on a valid file: what it says on stdout, what is probably a mistake on stderr (exit 0:
/// the daemon would start).
fn checked(path: &std::path::Path, report: &roamtun::check::Report) -> ExitCode {
    println!("{}: valid", path.display());
    for fact in &report.facts {
        println!("  {fact}");
    }
    for warning in &report.warnings {
        eprintln!("roamtun: warning: {warning}");
    }
    ExitCode::SUCCESS
}

fn config_error(err: &ConfigError) -> ExitCode {
    fail(EXIT_CONFIG, err)
}

/// The runtime of a daemon: `workers` threads run its tasks (`tuning.worker_threads`).
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime starts")
}

fn run_daemon(workers: usize, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    roamtun::daemon::memory::tune_malloc();
    // Every path and every connection in its handshake holds a descriptor; the soft limit (often
    // 1024) would make accept fail long before memory or the handshake bounds do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the file descriptor limit"),
    }
    match runtime(workers).block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("roamtun: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Sends one request to the daemon at `socket`; `show` prints the answer it expects and returns
/// true, or returns false for any other answer. The daemon's errors and the socket's are reported
/// the same way for every command.
fn ask(socket: &std::path::Path, request: &Request, show: impl FnOnce(&Response) -> bool) -> ExitCode {
    match runtime(1).block_on(control::request(socket, request)) {
        Ok(Response::Error { message }) => {
            eprintln!("roamtun: {message}");
            ExitCode::from(EXIT_FAILURE)
        }
        Ok(answer) if show(&answer) => ExitCode::SUCCESS,
        Ok(other) => {
            eprintln!("roamtun: unexpected answer from the daemon: {other:?}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(err) => fail(EXIT_FAILURE, &err),
    }
}

fn status(json: bool, socket: Option<PathBuf>) -> ExitCode {
    let paths = match socket {
        Some(p) => vec![p],
        None => vec![PathBuf::from("/run/roamtun/client.sock"), PathBuf::from("/run/roamtun/server.sock")],
    };
    let path = paths.iter().find(|p| p.exists()).unwrap_or(&paths[0]).clone();
    ask(&path, &Request::Status, |answer| {
        let Response::Status(status) = answer else { return false };
        if json {
            // Cannot fail: Status holds only strings, numbers, lists and addresses.
            println!("{}", serde_json::to_string_pretty(status).expect("status serializes"));
        } else {
            print!("{}", control::render(status));
        }
        true
    })
}

fn switch(uplink: String, json: bool, socket: PathBuf) -> ExitCode {
    ask(&socket, &Request::Switch { uplink }, |answer| {
        let Response::Switched(record) = answer else { return false };
        if json {
            // Cannot fail: the record holds only strings and numbers.
            println!("{}", serde_json::to_string_pretty(record).expect("record serializes"));
        } else {
            println!("{}", control::render_switch(record));
        }
        true
    })
}

/// A request answered by one line.
fn simple(socket: &std::path::Path, request: Request) -> ExitCode {
    ask(socket, &request, |answer| {
        let Response::Done { message } = answer else { return false };
        println!("{message}");
        true
    })
}
