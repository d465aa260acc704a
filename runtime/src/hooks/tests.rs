use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// A hook running `sh -c script` (`$0` is `hook`), with `env` and `timeout`.
fn sh(script: &str, env: &[&str], timeout: Option<u32>) -> HookSpec {
    HookSpec {
        path: "/bin/sh".into(),
        args: ["sh", "-c", script, "hook"].map(String::from).to_vec(),
        env: env.iter().map(|s| s.to_string()).collect(),
        timeout,
    }
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

/// Runs `hook`, retrying while its freshly written program is still open for writing in
/// a process another test forked (ETXTBSY).
fn run_fresh(hook: &HookSpec, state: &[u8]) -> Result<Output, HookError> {
    for _ in 0..100 {
        match run(hook, state) {
            Err(HookError::Start { source, .. })
                if source.raw_os_error() == Some(libc::ETXTBSY) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
    panic!("{} stayed busy", hook.path.display());
}

#[test]
fn state_is_json_as_the_runtime_spec_says() {
    let rootfs = Path::new("/var/lib/berth/containers/c1/rootfs");
    let annotations = BTreeMap::from([("example.com/note".to_owned(), "a \"b\"".to_owned())]);
    let s = State::new("c1", rootfs, &annotations, Status::Creating, Some(42));
    let v: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "ociVersion": crate::oci::OCI_VERSION,
            "id": "c1",
            "status": "creating",
            "pid": 42,
            "bundle": "/var/lib/berth/containers/c1",
            "annotations": {"example.com/note": "a \"b\""},
        })
    );
    let none = BTreeMap::new();
    let gone =
        serde_json::to_value(State::new("c1", rootfs, &none, Status::Stopped, None)).unwrap();
    assert_eq!(gone["status"], "stopped");
    assert!(gone.get("pid").is_none(), "{gone}");
    assert!(gone.get("annotations").is_none(), "{gone}");
}

#[test]
fn the_state_arrives_on_stdin() {
    let state = serde_json::to_vec(&State::new(
        "c1",
        Path::new("/b/rootfs"),
        &BTreeMap::new(),
        Status::Created,
        Some(7),
    ))
    .unwrap();
    let out = run(&sh("cat", &[], Some(5)), &state).unwrap();
    assert_eq!(out.stdout, state);
}

#[test]
fn a_large_state_reaches_a_hook_that_reads_it_late() {
    // More than a pipe holds: written as the hook reads, not all at once before.
    let state = vec![b'x'; 1 << 20];
    let out = run(
        &sh("sleep 0.2; wc -c", &["PATH=/usr/bin:/bin"], Some(10)),
        &state,
    )
    .unwrap();
    assert_eq!(text(&out.stdout).trim(), "1048576");
}

#[test]
fn a_hook_that_does_not_read_its_stdin_still_succeeds() {
    let state = vec![b'x'; 1 << 20];
    let out = run(&sh("echo ok", &[], Some(10)), &state).unwrap();
    assert_eq!(text(&out.stdout), "ok\n");
}

#[test]
fn the_environment_is_exactly_the_hooks() {
    // The test process has PATH, HOME and more: none of it reaches the hook.
    let hook = HookSpec {
        path: "/usr/bin/env".into(),
        args: vec!["env".into()],
        env: vec!["A=1".into(), "B=two=2".into(), "EMPTY=".into()],
        timeout: Some(5),
    };
    let out = run(&hook, b"{}").unwrap();
    assert_eq!(text(&out.stdout), "A=1\nB=two=2\nEMPTY=\n");
}

#[test]
fn argv_is_args_with_its_first_entry() {
    let hook = HookSpec {
        path: "/bin/sh".into(),
        args: [
            "custom-zero",
            "-c",
            "tr '\\0' ' ' < /proc/$$/cmdline",
            "x",
            "y",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![],
        timeout: Some(5),
    };
    let out = run(&hook, b"").unwrap();
    assert!(
        text(&out.stdout).starts_with("custom-zero -c "),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).ends_with(" x y "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn empty_args_run_the_path_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hook");
    std::fs::write(&path, "#!/bin/sh\necho \"$0 $#\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hook = HookSpec {
        path: path.clone(),
        ..Default::default()
    };
    let out = run_fresh(&hook, b"{}").unwrap();
    assert_eq!(text(&out.stdout), format!("{} 0\n", path.display()));
}

#[test]
fn a_nonzero_exit_fails_with_the_path_code_and_stderr() {
    let e = run(
        &sh(
            "echo out; echo '  the device is gone  ' >&2; exit 3",
            &[],
            Some(5),
        ),
        b"",
    )
    .unwrap_err();
    assert!(matches!(&e, HookError::Failed { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "hook /bin/sh exited with code 3: the device is gone"
    );
    let e = run(&sh("kill -9 $$", &[], Some(5)), b"").unwrap_err();
    assert_eq!(e.to_string(), "hook /bin/sh was killed by signal 9");
}

#[test]
fn a_hook_past_its_timeout_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!(
        "echo $$ > {}; echo waiting >&2; exec sleep 30",
        pidfile.display()
    );
    let start = Instant::now();
    let e = run(&sh(&script, &["PATH=/usr/bin:/bin"], Some(1)), b"").unwrap_err();
    let took = start.elapsed();
    assert!(matches!(&e, HookError::TimedOut { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "hook /bin/sh timed out after 1s and was killed: waiting"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    // Killed and reaped: no such process any more.
    assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists());
}

#[test]
fn a_timeout_of_years_is_cut_to_the_limit() {
    let hook = sh("true", &[], Some(u32::MAX));
    assert_eq!(timeout_of(&hook), MAX_TIMEOUT);
    assert_eq!(timeout_of(&sh("true", &[], None)), MAX_TIMEOUT);
    assert_eq!(
        timeout_of(&sh("true", &[], Some(2))),
        Duration::from_secs(2)
    );
    assert_eq!(
        budget(&[sh("true", &[], Some(2)), sh("true", &[], Some(3))]),
        Duration::from_secs(5)
    );
}

#[test]
fn output_is_bounded() {
    // Ten megabytes on stderr: kept up to the limit, the message cut shorter.
    let e = run(
        &sh(
            "head -c 10000000 /dev/zero | tr '\\0' e >&2; exit 1",
            &["PATH=/usr/bin:/bin"],
            Some(20),
        ),
        b"",
    )
    .unwrap_err();
    let HookError::Failed { output, .. } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(output.stderr.len(), MAX_OUTPUT);
    assert!(output.truncated);
    let msg = e.to_string();
    assert!(msg.len() < MAX_MESSAGE + 100, "{}", msg.len());
    assert!(msg.ends_with("eee [...]"), "{msg}");
}

#[test]
fn a_hook_writing_without_end_is_still_killed_at_its_timeout() {
    let start = Instant::now();
    let e = run(&sh("while :; do echo spam; done", &[], Some(1)), b"").unwrap_err();
    assert!(matches!(&e, HookError::TimedOut { .. }), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_child_left_holding_the_pipes_does_not_hold_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > {}; echo done", pidfile.display());
    let start = Instant::now();
    let out = run(&sh(&script, &["PATH=/usr/bin:/bin"], Some(20)), b"").unwrap();
    let took = start.elapsed();
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signalling the sleep the hook left behind, a process of this test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(text(&out.stdout), "done\n");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn the_hook_gets_no_other_fd_of_the_caller() {
    let kept = std::fs::File::open("/dev/null").unwrap();
    let out = run(
        &sh("ls /proc/self/fd", &["PATH=/usr/bin:/bin"], Some(5)),
        b"",
    )
    .unwrap();
    let fds: Vec<&str> = text(&out.stdout).lines().collect();
    // 0-2 and the one ls opens to list the directory.
    assert_eq!(fds.len(), 4, "{fds:?}");
    drop(kept);
}

#[test]
fn hooks_that_cannot_run_say_why() {
    let mut relative = sh("true", &[], Some(1));
    relative.path = "bin/sh".into();
    let e = run(&relative, b"").unwrap_err();
    assert_eq!(e.to_string(), "hook bin/sh: the path is not absolute");
    let e = run(&sh("true", &["NOEQUALS"], Some(1)), b"").unwrap_err();
    assert_eq!(
        e.to_string(),
        "hook /bin/sh: environment entry \"NOEQUALS\" has no '='"
    );
    let e = run(&sh("true", &[], Some(0)), b"").unwrap_err();
    assert_eq!(e.to_string(), "hook /bin/sh: the timeout is zero");
    let missing = HookSpec {
        path: "/nonexistent/hook".into(),
        ..Default::default()
    };
    let e = run(&missing, b"").unwrap_err();
    assert!(matches!(&e, HookError::Start { .. }), "{e:?}");
    let msg = message("createRuntime", &e);
    assert!(
        msg.starts_with("createRuntime hook /nonexistent/hook: start: No such file"),
        "{msg}"
    );
}

#[test]
fn run_all_stops_at_the_first_failure_and_run_each_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = sh(&format!("echo x >> {}", marker.display()), &[], Some(5));
    let fail = sh("exit 1", &[], Some(5));
    let none = BTreeMap::new();
    let state = State::new(
        "c1",
        Path::new("/b/rootfs"),
        &none,
        Status::Running,
        Some(1),
    );
    let hooks = [touch.clone(), fail, touch];
    assert!(run_all(&hooks, &state).is_err());
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x\n");
    let mut failures = 0;
    run_each(&hooks, &state, |_| failures += 1);
    assert_eq!(failures, 1);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x\nx\nx\n");
}
