//! The control socket among local users: who may connect, what a refused user reads, and how long
//! a silent connection is kept. The cases that change user need root (as the netns tests do) and
//! say so when skipped.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use roamtun::config::ControlGroup;
use roamtun::control::{self, Access, ControlRequest, Response};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

const ROAMTUN: &str = env!("CARGO_BIN_EXE_roamtun");
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A directory every user may enter (the socket's own mode decides who connects).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Serves `path` with a daemon stand-in that answers every request with "pinned".
async fn serve(path: &Path, access: Access) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let _ = req.reply.send(Response::Done { message: "pinned".into() });
        }
    });
    control::serve(path, access, tx).await.unwrap()
}

/// `roamtun pin wlan0 --socket PATH` as `uid`:`gid` (no other groups): exit code, stdout, stderr.
async fn pin_as(socket: PathBuf, uid: u32, gid: u32) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(ROAMTUN);
        cmd.args(["pin", "wlan0", "--socket"]).arg(&socket);
        if uid != 0 {
            // std drops the supplementary groups too when it leaves root.
            cmd.gid(gid).uid(uid);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn nogroup() -> ControlGroup {
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(NOBODY)).unwrap().expect("a group 65534");
    ControlGroup { name: group.name, gid: NOBODY }
}

#[tokio::test]
async fn the_socket_is_private_to_root_without_a_group() {
    let dir = open_dir();
    let path = dir.path().join("client.sock");
    let _task = serve(&path, Access::new(None)).await;
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    // Nothing is left of the private directory it was bound in.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["client.sock"]);
    assert_eq!(pin_as(path.clone(), 0, 0).await, (0, "pinned\n".into(), String::new()));
    if !is_root() {
        eprintln!("skipped: the cases as another user need root");
        return;
    }
    // Another user is stopped by the kernel: the socket's mode lets only root in.
    let (code, _, err) = pin_as(path.clone(), NOBODY, NOBODY).await;
    assert_eq!(code, 1);
    assert!(err.contains("Permission denied"), "{err}");
    // A mode loosened by hand does not let them in either: the daemon checks who connected.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out, err) = pin_as(path.clone(), NOBODY, NOBODY).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "roamtun: refused: uid 65534 may not use this control socket: only root may (set control_group to let a \
         group in)\n"
    );
}

#[tokio::test]
async fn members_of_control_group_may_use_it_others_may_not() {
    if !is_root() {
        eprintln!("skipped: giving the socket to a group and changing user need root");
        return;
    }
    let dir = open_dir();
    let path = dir.path().join("server.sock");
    let group = nogroup();
    let _task = serve(&path, Access::new(Some(group.clone()))).await;
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, NOBODY));
    assert_eq!(pin_as(path.clone(), NOBODY, NOBODY).await, (0, "pinned\n".into(), String::new()));
    // A user of another group: the kernel refuses, and so does the daemon if the mode is loosened.
    let (code, _, err) = pin_as(path.clone(), 65533, 65533).await;
    assert!(code == 1 && err.contains("Permission denied"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, err) = pin_as(path.clone(), 65533, 65533).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "roamtun: refused: uid 65533 may not use this control socket: only root and members of group {:?} may\n",
            group.name
        )
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let dir = open_dir();
    let path = dir.path().join("idle.sock");
    let timeout = Duration::from_millis(200);
    let _task = serve(&path, Access { group: None, request_timeout: timeout }).await;
    let mut idle = tokio::net::UnixStream::connect(&path).await.unwrap();
    let start = Instant::now();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(start.elapsed() >= timeout, "closed after {:?}", start.elapsed());
    assert_eq!(answer, "{\"result\":\"error\",\"message\":\"no request within 200 ms: closing\"}\n");
    // One that asks in time is answered.
    let mut busy = tokio::net::UnixStream::connect(&path).await.unwrap();
    busy.write_all(b"{\"command\":\"status\"}\n").await.unwrap();
    let mut answer = String::new();
    busy.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "{\"result\":\"done\",\"message\":\"pinned\"}\n");
}

#[tokio::test]
async fn a_live_socket_is_not_taken_over_a_stale_one_is() {
    let dir = open_dir();
    let path = dir.path().join("c.sock");
    let first = serve(&path, Access::new(None)).await;
    let (tx, _rx) = mpsc::channel(1);
    let err = control::serve(&path, Access::new(None), tx.clone()).await.unwrap_err();
    assert!(format!("{:?}", err).contains("another daemon answers on it"), "{err:?}");
    first.abort();
    let _ = first.await;
    // The listener is gone with its task; the file is left behind, as by a daemon that died.
    assert!(path.exists());
    let _second = control::serve(&path, Access::new(None), tx).await.unwrap();
    assert!(tokio::net::UnixStream::connect(&path).await.is_ok());
}
