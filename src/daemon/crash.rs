//! Crash containment: a daemon whose engine task or any connection task has panicked must not stay
//! up half-dead, holding its TUN and routes (a client that routes everything into its TUN would
//! black-hole the host). A panic anywhere is recorded by a panic hook; [`super::serve`] waits for it
//! beside the signals, removes what the daemon installed and returns an error, so the process exits
//! non-zero and a service manager restarts it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use tokio::sync::Notify;

static PANICKED: AtomicBool = AtomicBool::new(false);
static NOTIFY: Notify = Notify::const_new();
static HOOK: Once = Once::new();
/// Where the first panic happened and what it said, for the daemon's last error.
static FIRST: Mutex<Option<String>> = Mutex::new(None);

/// Installs the panic hook (once per process): the default report first, then the note that wakes
/// [`panicked`].
pub fn install_hook() {
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            if let Ok(mut first) = FIRST.lock() {
                first.get_or_insert(format!("{what} (at {at})"));
            }
            PANICKED.store(true, Ordering::SeqCst);
            // Stores a permit when nobody waits yet, so a panic during start-up is not missed.
            NOTIFY.notify_one();
        }));
    });
}

/// Resolves once some thread of this process has panicked, with what the first panic said.
pub async fn panicked() -> String {
    while !PANICKED.load(Ordering::SeqCst) {
        NOTIFY.notified().await;
    }
    first_panic()
}

/// What the first panic of this process said, and where.
pub fn first_panic() -> String {
    FIRST.lock().ok().and_then(|first| first.clone()).unwrap_or_default()
}

/// A test-only fault, named by `ROAMTUN_TEST_PANIC` (the netns crash tests set it): `engine` panics
/// in the engine task at the first status request, `connection` in the server's task for an accepted
/// connection. Read once at start; unset in normal use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestPanic {
    Engine,
    Connection,
}

impl TestPanic {
    pub fn from_env() -> Option<TestPanic> {
        match std::env::var("ROAMTUN_TEST_PANIC").ok()?.as_str() {
            "engine" => Some(TestPanic::Engine),
            "connection" => Some(TestPanic::Connection),
            other => {
                tracing::warn!(value = other, "ROAMTUN_TEST_PANIC: unknown value, ignored (engine, connection)");
                None
            }
        }
    }
}
