//! `roamtun-wanem --a IF --b IF --duration SECS [--delay-ms MS] [--rate-mbit R] [--queue-ms MS]
//! [--loss-ab PCT] [--loss-ba PCT] [--seed N]`: bridges IF a and IF b for SECS seconds (or until
//! SIGINT / SIGTERM) and prints its counters per direction on exit.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use roamtun_wanem::bridge::{run_direction, DirectionStats};
use roamtun_wanem::link::{Link, LinkConfig};
use roamtun_wanem::socket::PacketSocket;

#[derive(Parser, Debug)]
#[command(
    name = "roamtun-wanem",
    version,
    about = "A WAN emulator: an L2 bridge between two interfaces with delay, rate, queue and loss per direction"
)]
struct Args {
    /// First interface (frames read here go to --b).
    #[arg(long)]
    a: String,
    /// Second interface (frames read here go to --a).
    #[arg(long)]
    b: String,
    /// How long to run, in seconds (it also stops on SIGINT or SIGTERM).
    #[arg(long)]
    duration: f64,
    /// One-way delay in each direction, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Rate in each direction in Mbit/s, every byte of the Ethernet frame counted; 0 = no limit.
    #[arg(long, default_value_t = 0.0)]
    rate_mbit: f64,
    /// Queue in front of each direction's wire, in milliseconds of the rate (drop-tail beyond).
    #[arg(long, default_value_t = 50.0)]
    queue_ms: f64,
    /// Queue in bytes instead of --queue-ms.
    #[arg(long)]
    queue_bytes: Option<u64>,
    /// Percent of the frames from a to b lost on the wire.
    #[arg(long, default_value_t = 0.0)]
    loss_ab: f64,
    /// Percent of the frames from b to a lost on the wire.
    #[arg(long, default_value_t = 0.0)]
    loss_ba: f64,
    /// Seed of the loss draws (b to a uses seed + 1): the same seed replays the same losses.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bound on the frames held per direction (queued or in flight).
    #[arg(long, default_value_t = 100_000)]
    max_frames: usize,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain data; the handler only stores to an atomic (async-signal-safe).
        // No SA_RESTART: a waiting ppoll returns at once.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

fn direction_config(args: &Args, loss_pct: f64, seed: u64) -> Result<LinkConfig, String> {
    let check = |what: &str, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("--{what} must be a number >= 0, got {v}"))
        }
    };
    let rate_bps = match check("rate-mbit", args.rate_mbit)? {
        0.0 => None,
        r => Some((r * 1e6).round() as u64),
    };
    let queue_bytes = match (args.queue_bytes, rate_bps) {
        (Some(b), _) => b,
        (None, Some(rate)) => (rate as f64 / 8.0 * check("queue-ms", args.queue_ms)? / 1e3) as u64,
        (None, None) => u64::MAX,
    };
    Ok(LinkConfig {
        delay: Duration::from_secs_f64(check("delay-ms", args.delay_ms)? / 1e3),
        rate_bps,
        queue_bytes,
        loss: check("loss", loss_pct)? / 100.0,
        seed,
        max_frames: args.max_frames,
    })
}

fn print_stats(name: &str, s: &DirectionStats) {
    let forwarded = s.link.forwarded - s.send_errors;
    println!(
        "{name}: read={} forwarded={forwarded} forwarded_bytes={} dropped_queue={} dropped_loss={} oversized={} send_errors={} held_at_exit={}",
        s.read(),
        s.link.forwarded_bytes,
        s.link.dropped_queue,
        s.link.dropped_loss,
        s.oversized,
        s.send_errors,
        s.held_at_exit
    );
}

fn run(args: Args) -> Result<(), String> {
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err(format!("--duration must be a number of seconds > 0, got {}", args.duration));
    }
    let ab = Link::new(direction_config(&args, args.loss_ab, args.seed)?).map_err(|e| format!("a->b: {e}"))?;
    let ba = Link::new(direction_config(&args, args.loss_ba, args.seed.wrapping_add(1))?)
        .map_err(|e| format!("b->a: {e}"))?;
    let sock_a = Arc::new(PacketSocket::bind(&args.a).map_err(error_chain)?);
    let sock_b = Arc::new(PacketSocket::bind(&args.b).map_err(error_chain)?);
    install_signal_handlers().map_err(|e| format!("failed to install the SIGINT/SIGTERM handlers: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let c = ab.config();
    println!(
        "wanem: ready, bridging {} <-> {} for {} s: delay {:?}, rate {}, queue {} B, loss a->b {} % b->a {} %, seed {}",
        sock_a.iface(),
        sock_b.iface(),
        args.duration,
        c.delay,
        c.rate_bps.map_or("unlimited".to_owned(), |r| format!("{r} bit/s")),
        c.queue_bytes,
        args.loss_ab,
        args.loss_ba,
        args.seed
    );
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |rx: Arc<PacketSocket>, tx: Arc<PacketSocket>, link, name: &'static str| {
        let stop = stop.clone();
        std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            // 1 µs timer slack instead of 50: pacing at 200 Mbit/s is 60 µs per frame.
            // SAFETY: a plain prctl on this thread.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
            let r = run_direction(&rx, &tx, link, deadline, stop.clone());
            // One direction failing ends the other too.
            stop.store(true, Ordering::Relaxed);
            r
        })
    };
    let t_ab =
        spawn(sock_a.clone(), sock_b.clone(), ab, "a->b").map_err(|e| format!("failed to start a thread: {e}"))?;
    let t_ba =
        spawn(sock_b.clone(), sock_a.clone(), ba, "b->a").map_err(|e| format!("failed to start a thread: {e}"))?;
    // The signal may land on any thread; this one relays it.
    while !t_ab.is_finished() || !t_ba.is_finished() {
        if STOP.load(Ordering::Relaxed) {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut failed = Vec::new();
    for (name, t, iface_in) in [("a->b", t_ab, &args.a), ("b->a", t_ba, &args.b)] {
        match t.join() {
            Ok(Ok(stats)) => print_stats(name, &stats),
            Ok(Err(e)) => failed.push(format!("{name}: failed to move frames from {iface_in}: {e}")),
            Err(_) => failed.push(format!("{name}: the thread panicked")),
        }
    }
    let why = if STOP.load(Ordering::Relaxed) { "signal" } else { "duration" };
    println!("wanem: stopped ({why})");
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

fn error_chain(e: impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s += &format!(": {c}");
        cause = c.source();
    }
    s
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roamtun-wanem: {e}");
            ExitCode::FAILURE
        }
    }
}
