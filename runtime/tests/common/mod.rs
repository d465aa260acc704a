//! Shared harness for the root-only tests: a busybox root file system, a private runtime
//! (own root, state and database under a temp dir), the steps every test takes (a running
//! pod, a shell container, waiting for its exit or its log lines, exec) and cleanup that runs
//! even on failure.

// Each test binary (lifecycle, monitor_memory) uses its own part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_runtime::{ImageConfig, ImageInfo, Runtime, RuntimeOptions};
use k8s_cri::v1::ExecSyncResponse;
use k8s_cri::v1::*;

/// Whether the tests can run (root, busybox present).
pub fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping: needs root");
    }
    root && Path::new("/bin/busybox").exists()
}

/// Copies Debian's dynamic busybox, its libraries and applet links into `dir`.
pub fn busybox_rootfs(dir: &Path) {
    let copy = |src: &Path| {
        let dst = dir.join(src.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, &dst).unwrap();
    };
    copy(Path::new("/bin/busybox"));
    let ldd = std::process::Command::new("ldd")
        .arg("/bin/busybox")
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        for word in line.split_whitespace() {
            if word.starts_with('/') {
                let real = std::fs::canonicalize(word).unwrap();
                let dst = dir.join(word.trim_start_matches('/'));
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(&real, &dst).unwrap();
            }
        }
    }
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    let passwd = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n";
    let group = "root:x:0:\nwheel:x:10:alice\nalice:x:1000:\nnogroup:x:65534:\n";
    for (file, text) in [("etc/passwd", passwd), ("etc/group", group)] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
}

/// A private runtime and everything it made, removed when dropped.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: berth_db::Db,
    pub rt: Arc<Runtime>,
    pub image: ImageInfo,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("berth-rt-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("image");
        busybox_rootfs(&rootfs);
        let db = berth_db::Db::create(dir.path().join("berth.db")).unwrap();
        let rt = Runtime::open(Self::options(dir.path()), db.clone()).unwrap();
        let image = ImageInfo {
            id: "sha256:busybox".into(),
            name: "docker.io/library/busybox:test".into(),
            repo_digest: String::new(),
            lower_dirs: vec![rootfs],
            config: ImageConfig {
                env: vec!["PATH=/bin".into(), "IMAGE_VAR=from-image".into()],
                cmd: vec!["sh".into()],
                ..Default::default()
            },
        };
        Env { dir, db, rt, image }
    }

    /// A fresh environment, or `None` (the test returns early) where the tests cannot run.
    pub fn if_root() -> Option<Env> {
        can_run().then(Env::new)
    }

    /// A fresh environment with a running pod named `name`: (env, pod config, pod id), or
    /// `None` where the tests cannot run.
    pub async fn with_pod(name: &str) -> Option<(Env, PodSandboxConfig, String)> {
        let env = Env::if_root()?;
        let pc = env.pod_config(name);
        let pod = env.run_pod(&pc).await;
        Some((env, pc, pod))
    }

    pub fn options(dir: &Path) -> RuntimeOptions {
        RuntimeOptions::new(
            dir.join("root"),
            dir.join("state"),
            env!("CARGO_BIN_EXE_berth-monitor"),
        )
    }

    /// A second runtime on the same state, as after a daemon restart.
    pub fn reopen(&mut self) {
        self.rt = Runtime::open(Self::options(self.dir.path()), self.db.clone()).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.log_dir().join(name).display().to_string(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            annotations: HashMap::from([("note".to_string(), "kept".to_string())]),
            ..Default::default()
        }
    }

    pub async fn run_pod(&self, config: &PodSandboxConfig) -> String {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let id = self.rt.run_pod_sandbox(&req).await.unwrap().id;
        // The daemon confirms a pod once its network is set up; these tests have none.
        self.rt.set_pod_network(&id, Vec::new()).unwrap();
        id
    }

    pub fn container_config(&self, name: &str, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.name.clone(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into()],
            args: args.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub async fn create(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> String {
        self.rt
            .create_container(pod, config, pod_config, self.image.clone(), &HashMap::new())
            .await
            .unwrap()
    }

    pub async fn run(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> String {
        let id = self.create(pod, pod_config, config).await;
        self.rt.start_container(&id).await.unwrap();
        id
    }

    /// Creates and starts container `name` running the shell `script`; returns its id.
    pub async fn run_sh(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        script: &str,
    ) -> String {
        self.run(pod, pod_config, &self.container_config(name, &[script]))
            .await
    }

    /// The error CreateContainer gives for `config` in `pod`, which must fail.
    pub async fn create_err(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> berth_runtime::Error {
        self.rt
            .create_container(pod, config, pod_config, self.image.clone(), &HashMap::new())
            .await
            .expect_err("CreateContainer must fail")
    }

    /// Runs the shell `script` in the container with ExecSync.
    pub async fn exec_sh(
        &self,
        id: &str,
        script: &str,
        timeout: Duration,
    ) -> berth_runtime::Result<ExecSyncResponse> {
        let cmd = ["sh", "-c", script].map(String::from);
        self.rt.exec_sync(id, &cmd, timeout).await
    }

    /// The PID of the pod's monitor, from its verbose status.
    pub fn monitor_pid(&self, pod: &str) -> i32 {
        let status = self.rt.pod_sandbox_status(pod, true).unwrap();
        info_pid(&status.info)
    }

    /// The PID of the container's process, from its verbose status.
    pub fn container_pid(&self, id: &str) -> i32 {
        info_pid(&self.rt.container_status(id, true).unwrap().info)
    }

    /// The ids of the containers the runtime lists.
    pub fn container_ids(&self) -> Vec<String> {
        let listed = self.rt.list_containers(None);
        listed.into_iter().map(|c| c.id).collect()
    }

    pub fn status(&self, id: &str) -> ContainerStatus {
        self.rt.container_status(id, false).unwrap().status.unwrap()
    }

    /// Waits (up to 10 s) until the container has exited; returns its status.
    pub async fn wait_exit(&self, id: &str) -> ContainerStatus {
        let timeout = Duration::from_secs(10);
        let until = Instant::now() + timeout;
        loop {
            let s = self.status(id);
            if s.state == ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(
                Instant::now() < until,
                "container {id} did not exit in {timeout:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log file's lines without their timestamps.
    pub fn log_lines(&self, pod: &PodSandboxConfig, name: &str) -> Vec<String> {
        let path = Path::new(&pod.log_directory).join(format!("{name}/0.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .map(|l| {
                let (ts, rest) = l.split_once(' ').unwrap();
                assert!(
                    ts.ends_with('Z') && ts.contains('T'),
                    "bad timestamp in {l:?}"
                );
                rest.to_owned()
            })
            .collect()
    }

    /// Waits (up to 5 s) until container `name` has logged at least `n` lines; returns them.
    pub async fn wait_log_lines(
        &self,
        pod: &PodSandboxConfig,
        name: &str,
        n: usize,
    ) -> Vec<String> {
        let start = Instant::now();
        loop {
            let lines = self.log_lines(pod, name);
            if lines.len() >= n {
                return lines;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "{lines:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The names in the directory `rel` under this environment's directory.
    pub fn entries(&self, rel: &str) -> Vec<String> {
        let dir = std::fs::read_dir(self.dir.path().join(rel)).unwrap();
        dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Mount points under this environment's directory.
    pub fn mounts_left(&self) -> Vec<String> {
        let prefix = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&prefix))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let rt = self.rt.clone();
        // Cleanup runs on its own thread: Drop may run inside the test's tokio runtime.
        let _ = std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio.block_on(async {
                for p in rt.list_pod_sandbox(None) {
                    let _ = rt.remove_pod_sandbox(&p.id).await;
                }
            });
        })
        .join();
        for m in self.mounts_left().iter().rev() {
            let c = std::ffi::CString::new(m.as_str()).unwrap();
            // SAFETY: unmounting a path string we own.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// The `pid` of a verbose status's `info` JSON.
fn info_pid(info: &HashMap<String, String>) -> i32 {
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

/// The container config's security context (every config of [`Env::container_config`] has one).
pub fn security_context(cfg: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    cfg.linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("a security context")
}

/// The pod config's namespace options, made if the config has none.
pub fn pod_namespace_options(pc: &mut PodSandboxConfig) -> &mut NamespaceOption {
    let linux = pc.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default)
}

/// The container config's namespace options.
pub fn namespace_options(cfg: &mut ContainerConfig) -> &mut NamespaceOption {
    security_context(cfg)
        .namespace_options
        .as_mut()
        .expect("namespace options")
}

/// A bind mount of `host` at `container_path`.
pub fn bind(container_path: &str, host: &Path, readonly: bool) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}
