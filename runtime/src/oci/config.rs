//! `config.json`: the OCI runtime spec of a planned container in its pod, built from the
//! same [`ContainerSpec`] Berth's own executor runs and the [`PodBinding`] that says how the
//! container joins its pod.

use serde_json::{Value, json};

use super::PodBinding;
use crate::error::{Error, Result};
use crate::seccomp::Profile;
use crate::security::CAPABILITY_NAMES;
use crate::spec::{ContainerSpec, MountKind, MountSpec, PidNamespace, Propagation};

/// The OCI runtime spec version the generated `config.json` declares.
pub const OCI_VERSION: &str = "1.0.2";

fn caps_list(mask: u64) -> Vec<String> {
    CAPABILITY_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1u64 << i) != 0)
        .map(|(_, n)| format!("CAP_{n}"))
        .collect()
}

fn propagation_option(p: Propagation) -> &'static str {
    match p {
        Propagation::Private => "rprivate",
        Propagation::Slave => "rslave",
        Propagation::Shared => "rshared",
    }
}

/// One planned mount in OCI form.
pub fn mount_json(m: &MountSpec) -> Value {
    let mut options: Vec<String> = Vec::new();
    let (kind, source) = match &m.kind {
        MountKind::Bind {
            source,
            propagation,
        } => {
            options.push("rbind".into());
            if let Some(p) = propagation {
                options.push(propagation_option(*p).into());
            }
            ("bind".to_string(), source.display().to_string())
        }
        MountKind::Fs {
            fstype,
            source,
            data,
        } => {
            options.extend(
                data.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            (fstype.clone(), source.clone())
        }
        MountKind::Overlay { lower_dirs } => {
            let lower: Vec<String> = lower_dirs.iter().map(|d| d.display().to_string()).collect();
            options.push(format!("lowerdir={}", lower.join(":")));
            ("overlay".to_string(), "overlay".to_string())
        }
    };
    let o = &m.options;
    for (set, name) in [
        (o.nosuid, "nosuid"),
        (o.nodev, "nodev"),
        (o.noexec, "noexec"),
        (o.readonly, "ro"),
        (o.recursive_readonly, "rro"),
    ] {
        if set {
            options.push(name.into());
        }
    }
    json!({
        "destination": m.destination,
        "type": kind,
        "source": source,
        "options": options,
    })
}

fn namespaces_json(spec: &ContainerSpec, pod: &PodBinding) -> Result<Vec<Value>> {
    let mut out = vec![json!({"type": "mount"})];
    // The runtime runs in the monitor's PID namespace (the pod's, or the host's for a
    // hostPID pod), with its /proc: staying there is sharing the pod's.
    match &spec.pid_ns {
        PidNamespace::Container => out.push(json!({"type": "pid"})),
        PidNamespace::Pod | PidNamespace::Node => {}
        PidNamespace::Target { container_id } => {
            let pid = pod.target_pid.ok_or_else(|| {
                Error::FailedPrecondition(format!("target container {container_id} is not running"))
            })?;
            out.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}));
        }
    }
    for (ours, oci) in [("net", "network"), ("ipc", "ipc"), ("uts", "uts")] {
        if pod.namespaces.iter().any(|n| n == ours) {
            out.push(json!({"type": oci, "path": pod.ns_dir.join(ours)}));
        }
    }
    Ok(out)
}

fn resources_json(pod: &PodBinding, privileged: bool) -> Value {
    let mut devices = vec![json!({"allow": privileged, "access": "rwm"})];
    if !privileged {
        for r in &pod.device_rules {
            let mut d = json!({"allow": true, "type": r.kind.to_string(), "access": r.access});
            if let Some(major) = r.major {
                d["major"] = json!(major);
            }
            if let Some(minor) = r.minor {
                d["minor"] = json!(minor);
            }
            devices.push(d);
        }
    }
    let mut res = json!({ "devices": devices });
    if let Some(r) = &pod.resources {
        let mut cpu = serde_json::Map::new();
        if r.cpu_shares > 0 {
            cpu.insert("shares".into(), json!(r.cpu_shares));
        }
        if r.cpu_quota != 0 {
            cpu.insert("quota".into(), json!(r.cpu_quota));
        }
        if r.cpu_period > 0 {
            cpu.insert("period".into(), json!(r.cpu_period));
        }
        if !r.cpuset_cpus.is_empty() {
            cpu.insert("cpus".into(), json!(r.cpuset_cpus));
        }
        if !r.cpuset_mems.is_empty() {
            cpu.insert("mems".into(), json!(r.cpuset_mems));
        }
        if !cpu.is_empty() {
            res["cpu"] = Value::Object(cpu);
        }
        if r.memory_limit_in_bytes > 0 {
            res["memory"] = json!({"limit": r.memory_limit_in_bytes});
        }
    }
    res
}

/// The OCI runtime spec of a planned container in its pod: the same process, ids,
/// capabilities, mounts, devices, masked paths and seccomp profile Berth's own executor
/// would apply, in the pod's namespaces and the cgroup Berth placed it in.
pub fn runtime_spec(spec: &ContainerSpec, pod: &PodBinding) -> Result<Value> {
    let p = &spec.process;
    let sec = &p.security;
    let caps = &sec.capabilities;
    let mut process = json!({
        "terminal": spec.tty,
        "user": {
            "uid": p.user.uid,
            "gid": p.user.gid,
            "additionalGids": p.user.additional_gids,
        },
        "args": p.args,
        "env": p.env,
        "cwd": p.cwd,
        "capabilities": {
            "bounding": caps_list(caps.bounding),
            "effective": caps_list(caps.effective),
            "permitted": caps_list(caps.permitted),
            "inheritable": caps_list(caps.inheritable),
            "ambient": caps_list(caps.ambient),
        },
        "noNewPrivileges": sec.no_new_privs,
    });
    if let Some(v) = p.oom_score_adj {
        process["oomScoreAdj"] = json!(v);
    }
    if let Some(profile) = &sec.apparmor_profile {
        process["apparmorProfile"] = json!(profile);
    }
    let devices: Vec<Value> = pod
        .devices
        .iter()
        .map(|d| {
            json!({
                "path": d.path,
                "type": d.kind.to_string(),
                "major": d.major,
                "minor": d.minor,
                "fileMode": d.file_mode,
                "uid": 0,
                "gid": 0,
            })
        })
        .collect();
    let mut linux = json!({
        "namespaces": namespaces_json(spec, pod)?,
        "resources": resources_json(pod, sec.privileged),
        "devices": devices,
        "rootfsPropagation": propagation_option(spec.root_propagation),
    });
    if !pod.cgroups_path.is_empty() {
        linux["cgroupsPath"] = json!(pod.cgroups_path);
    }
    if !sec.privileged {
        linux["maskedPaths"] = json!(sec.masked_paths);
        linux["readonlyPaths"] = json!(sec.readonly_paths);
    }
    if let Some(s) = &pod.seccomp {
        linux["seccomp"] = s.clone();
    }
    Ok(json!({
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {
            "path": spec.rootfs.mount_point,
            "readonly": spec.rootfs.readonly,
        },
        "mounts": spec.mounts.iter().map(mount_json).collect::<Vec<_>>(),
        "linux": linux,
    }))
}

/// A seccomp profile (ours, or a Localhost one as read) in the OCI runtime spec's form.
pub fn seccomp_json(profile: &Profile) -> Value {
    let mut archs: Vec<String> = profile.architectures.clone();
    for a in &profile.arch_map {
        archs.push(a.architecture.clone());
        archs.extend(a.sub_architectures.iter().cloned());
    }
    archs.dedup();
    let syscalls: Vec<Value> = profile
        .syscalls
        .iter()
        .map(|r| {
            let mut names = r.names.clone();
            names.extend(r.name.iter().cloned());
            let mut s = json!({"names": names, "action": r.action});
            if let Some(e) = r.errno_ret {
                s["errnoRet"] = json!(e);
            }
            if !r.args.is_empty() {
                s["args"] = r
                    .args
                    .iter()
                    .map(|a| {
                        json!({
                            "index": a.index,
                            "value": a.value,
                            "valueTwo": a.value_two,
                            "op": a.op,
                        })
                    })
                    .collect();
            }
            s
        })
        .filter(|s| s["names"].as_array().is_some_and(|n| !n.is_empty()))
        .collect();
    let mut out = json!({
        "defaultAction": profile.default_action,
        "architectures": archs,
        "syscalls": syscalls,
    });
    if let Some(e) = profile.default_errno_ret {
        out["defaultErrnoRet"] = json!(e);
    }
    if !profile.flags.is_empty() {
        out["flags"] = json!(profile.flags);
    }
    out
}
