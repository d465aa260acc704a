//! CRI request validation: any `ContainerConfig` kubelet (or anyone on the socket) can send,
//! decoded from protobuf bytes, planned against a fixed pod and image. The plan is a
//! container spec or a typed error, never a panic; and a planned container never mounts
//! over the root or outside an absolute path.
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;

use berth_runtime::image::{ImageConfig, ImageInfo};
use berth_runtime::plan::{PlanInput, PodContext, plan_container};
use berth_runtime::user::{GroupEntry, PasswdEntry};
use k8s_cri::v1::ContainerConfig;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = ContainerConfig::decode(data) else {
        return;
    };
    let pod = PodContext {
        run_dir: PathBuf::from("/run/berth/pods/p"),
        hostname: "pod".into(),
        host_ipc: false,
        host_pid: false,
        log_directory: "/var/log/pods/p".into(),
        userns: None,
    };
    let image = ImageInfo {
        id: "sha256:00".into(),
        name: "busybox".into(),
        repo_digest: String::new(),
        lower_dirs: vec![PathBuf::from("/var/lib/berth/snapshots/a/fs")],
        config: ImageConfig {
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        },
    };
    let passwd = [PasswdEntry {
        name: "root".into(),
        uid: 0,
        gid: 0,
        home: "/root".into(),
    }];
    let groups = [GroupEntry {
        name: "root".into(),
        gid: 0,
        members: vec![],
    }];
    let mount_images = HashMap::new();
    let input = PlanInput {
        id: "c",
        config: &config,
        pod: &pod,
        image: &image,
        mount_images: &mount_images,
        container_dir: PathBuf::from("/var/lib/berth/containers/c"),
        passwd: &passwd,
        groups: &groups,
        all_caps: u64::MAX >> 23,
        oom_score_adj_floor: -1000,
        cgroup_procs: vec![],
    };
    if let Ok(spec) = plan_container(&input) {
        for m in &spec.mounts {
            assert!(m.destination.starts_with('/'), "relative mount {:?}", m.destination);
        }
    }
});
