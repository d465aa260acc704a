//! `config.json`: the OCI runtime spec of a planned container in its pod, built from the
//! same [`ContainerSpec`] Berth's own executor runs and the [`PodBinding`] that says how the
//! container joins its pod, in `oci_spec::runtime`'s types.
//!
//! oci-spec's builders start from its `Default`s, which describe a runc-style shell container
//! (a hostname, rlimits, default mounts, namespaces and masked paths). Every field Berth does
//! not decide is cleared, so the document says only what the plan says
//! (`testdata/` holds what it said when it was written with `json!`, and the tests hold it
//! to that).
//!
//! Two things follow from the types: capability lists are sets, written in no particular
//! order; and a name oci-spec has no value for (a seccomp architecture such as
//! `SCMP_ARCH_LOONGARCH64`, an unknown operator or device type) is refused as an invalid
//! argument instead of being handed to the runtime to refuse.

use std::path::PathBuf;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capabilities, Capability, Hook, HookBuilder, Hooks, LinuxBuilder,
    LinuxCapabilitiesBuilder, LinuxCpu, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, LinuxResourcesBuilder, LinuxSeccomp,
    LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder, Mount, MountBuilder, Process, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};
use serde::Deserialize;
use serde::de::IntoDeserializer;

use super::PodBinding;
use crate::error::{Error, Result};
use crate::namespace::Namespace;
use crate::seccomp::{Profile, SyscallRule};
use crate::security::CAPABILITY_NAMES;
use crate::spec::{
    ContainerSpec, HookSpec, HooksSpec, MountKind, MountSpec, PidNamespace, Propagation,
};

/// The OCI runtime spec version the generated `config.json` declares.
pub const OCI_VERSION: &str = "1.0.2";

/// The namespaces a pod holds that its containers join by path, in the order `config.json`
/// lists them: the name Berth records the namespace under (and its file in the pod's `ns/`
/// dir), and its OCI type.
const POD_NAMESPACES: [(Namespace, LinuxNamespaceType); 3] = [
    (Namespace::Net, LinuxNamespaceType::Network),
    (Namespace::Ipc, LinuxNamespaceType::Ipc),
    (Namespace::Uts, LinuxNamespaceType::Uts),
];

/// The OCI runtime spec of a planned container in its pod: the same process, ids,
/// capabilities, mounts, devices, masked paths and seccomp profile Berth's own executor
/// would apply, in the pod's namespaces and the cgroup Berth placed it in.
pub fn runtime_spec(spec: &ContainerSpec, pod: &PodBinding) -> Result<Spec> {
    let root = RootBuilder::default()
        .path(&spec.rootfs.mount_point)
        .readonly(spec.rootfs.readonly)
        .build()
        .map_err(unbuildable)?;
    let mounts = spec.mounts.iter().map(mount).collect::<Result<Vec<_>>>()?;
    let mut doc = SpecBuilder::default()
        .version(OCI_VERSION)
        .process(process(spec)?)
        .root(root)
        .mounts(mounts)
        .linux(linux(spec, pod)?)
        .build()
        .map_err(unbuildable)?;
    // Kept only for a container with hooks: runtimes hand them to the hooks in the state.
    let annotations = spec.annotations.iter().map(|(k, v)| (k.clone(), v.clone()));
    doc.set_hostname(None)
        .set_annotations((!spec.annotations.is_empty()).then(|| annotations.collect()));
    if !spec.hooks.is_empty() {
        doc.set_hooks(Some(hooks(&spec.hooks)?));
    }
    Ok(doc)
}

/// The container's OCI hooks (from CDI specs), which the runtime runs.
fn hooks(h: &HooksSpec) -> Result<Hooks> {
    let list = |hooks: &[HookSpec]| -> Result<Option<Vec<Hook>>> {
        if hooks.is_empty() {
            return Ok(None);
        }
        hooks
            .iter()
            .map(|h| {
                let mut hook = HookBuilder::default()
                    .path(&h.path)
                    .build()
                    .map_err(unbuildable)?;
                hook.set_args((!h.args.is_empty()).then(|| h.args.clone()))
                    .set_env((!h.env.is_empty()).then(|| h.env.clone()))
                    .set_timeout(h.timeout.map(i64::from));
                Ok(hook)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    };
    let mut hooks = Hooks::default();
    hooks
        .set_prestart(None)
        .set_create_runtime(list(&h.create_runtime)?)
        .set_create_container(list(&h.create_container)?)
        .set_start_container(list(&h.start_container)?)
        .set_poststart(list(&h.poststart)?)
        .set_poststop(list(&h.poststop)?);
    Ok(hooks)
}

/// The container's process: command, environment, ids, capabilities and the settings of its
/// security context.
fn process(spec: &ContainerSpec) -> Result<Process> {
    let p = &spec.process;
    let sec = &p.security;
    let caps = &sec.capabilities;
    let user = UserBuilder::default()
        .uid(p.user.uid)
        .gid(p.user.gid)
        .additional_gids(p.user.additional_gids.clone())
        .build()
        .map_err(unbuildable)?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capability_set(caps.bounding)?)
        .effective(capability_set(caps.effective)?)
        .permitted(capability_set(caps.permitted)?)
        .inheritable(capability_set(caps.inheritable)?)
        .ambient(capability_set(caps.ambient)?)
        .build()
        .map_err(unbuildable)?;
    let mut process = ProcessBuilder::default()
        .terminal(spec.tty)
        .user(user)
        .args(p.args.clone())
        .env(p.env.clone())
        .cwd(&p.cwd)
        .capabilities(capabilities)
        .no_new_privileges(sec.no_new_privs)
        .build()
        .map_err(unbuildable)?;
    process
        .set_rlimits(None)
        .set_oom_score_adj(p.oom_score_adj)
        .set_apparmor_profile(sec.apparmor_profile.clone());
    Ok(process)
}

/// The capabilities of a mask of capability numbers.
fn capability_set(mask: u64) -> Result<Capabilities> {
    CAPABILITY_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1u64 << i) != 0)
        .map(|(_, name)| named::<Capability>("capability", &format!("CAP_{name}")))
        .collect()
}

/// The namespaces, cgroup, limits, devices, masked paths and seccomp profile.
fn linux(spec: &ContainerSpec, pod: &PodBinding) -> Result<oci_spec::runtime::Linux> {
    let sec = &spec.process.security;
    let devices = pod.devices.iter().map(device).collect::<Result<Vec<_>>>()?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(spec, pod)?)
        .resources(resources(pod, sec.privileged)?)
        .devices(devices)
        .rootfs_propagation(propagation_option(spec.root_propagation))
        .build()
        .map_err(unbuildable)?;
    let confined = !sec.privileged;
    linux
        .set_cgroups_path((!pod.cgroups_path.is_empty()).then(|| PathBuf::from(&pod.cgroups_path)))
        .set_masked_paths(confined.then(|| sec.masked_paths.clone()))
        .set_readonly_paths(confined.then(|| sec.readonly_paths.clone()))
        .set_seccomp(pod.seccomp.clone());
    Ok(linux)
}

fn propagation_option(p: Propagation) -> &'static str {
    match p {
        Propagation::Private => "rprivate",
        Propagation::Slave => "rslave",
        Propagation::Shared => "rshared",
    }
}

/// One planned mount in OCI form.
pub fn mount(m: &MountSpec) -> Result<Mount> {
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
            ("bind", source.clone())
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
            (fstype.as_str(), PathBuf::from(source))
        }
        MountKind::Overlay { lower_dirs } => {
            let lower: Vec<String> = lower_dirs.iter().map(|d| d.display().to_string()).collect();
            options.push(format!("lowerdir={}", lower.join(":")));
            ("overlay", PathBuf::from("overlay"))
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
    MountBuilder::default()
        .destination(&m.destination)
        .typ(kind)
        .source(source)
        .options(options)
        .build()
        .map_err(unbuildable)
}

/// A new mount namespace; a new PID namespace, the target container's, or none (the
/// runtime runs in the monitor's: the pod's, or the host's for a hostPID pod, with its
/// /proc); and the pod's namespaces, joined by path.
fn namespaces(spec: &ContainerSpec, pod: &PodBinding) -> Result<Vec<LinuxNamespace>> {
    let mut out = vec![namespace(LinuxNamespaceType::Mount, None)?];
    match &spec.pid_ns {
        PidNamespace::Container => out.push(namespace(LinuxNamespaceType::Pid, None)?),
        PidNamespace::Pod | PidNamespace::Node => {}
        PidNamespace::Target { container_id } => {
            let pid = pod.target_pid.ok_or_else(|| {
                Error::FailedPrecondition(format!("target container {container_id} is not running"))
            })?;
            let path = PathBuf::from(format!("/proc/{pid}/ns/pid"));
            out.push(namespace(LinuxNamespaceType::Pid, Some(path))?);
        }
    }
    for (ns, typ) in POD_NAMESPACES {
        if pod.namespaces.contains(&ns) {
            out.push(namespace(typ, Some(pod.ns_dir.join(ns.name())))?);
        }
    }
    Ok(out)
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> Result<LinuxNamespace> {
    let mut ns = LinuxNamespaceBuilder::default()
        .typ(typ)
        .build()
        .map_err(unbuildable)?;
    ns.set_path(path);
    Ok(ns)
}

/// The device rules and the CPU and memory limits Berth's cgroup manager applied.
fn resources(pod: &PodBinding, privileged: bool) -> Result<LinuxResources> {
    let mut devices = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()
            .map_err(unbuildable)?,
    ];
    if !privileged {
        for r in &pod.device_rules {
            devices.push(device_rule(r)?);
        }
    }
    let mut res = LinuxResourcesBuilder::default()
        .devices(devices)
        .build()
        .map_err(unbuildable)?;
    let Some(r) = &pod.resources else {
        return Ok(res);
    };
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(u64::try_from(r.cpu_shares).ok().filter(|s| *s > 0))
        .set_quota((r.cpu_quota != 0).then_some(r.cpu_quota))
        .set_period(u64::try_from(r.cpu_period).ok().filter(|p| *p > 0))
        .set_cpus(non_empty(&r.cpuset_cpus))
        .set_mems(non_empty(&r.cpuset_mems));
    if cpu != Default::default() {
        res.set_cpu(Some(cpu));
    }
    if r.memory_limit_in_bytes > 0 {
        let memory = LinuxMemoryBuilder::default()
            .limit(r.memory_limit_in_bytes)
            .build()
            .map_err(unbuildable)?;
        res.set_memory(Some(memory));
    }
    Ok(res)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A device cgroup rule beyond the defaults.
fn device_rule(r: &crate::cgroups::DeviceRule) -> Result<LinuxDeviceCgroup> {
    let mut rule = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(device_type(r.kind)?)
        .access(&r.access)
        .build()
        .map_err(unbuildable)?;
    rule.set_major(r.major.map(device_number).transpose()?)
        .set_minor(r.minor.map(device_number).transpose()?);
    Ok(rule)
}

/// A device node of the container.
fn device(d: &super::DeviceNode) -> Result<LinuxDevice> {
    LinuxDeviceBuilder::default()
        .path(&d.path)
        .typ(device_type(d.kind)?)
        .major(device_number(d.major)?)
        .minor(device_number(d.minor)?)
        .file_mode(d.file_mode)
        .uid(d.uid)
        .gid(d.gid)
        .build()
        .map_err(unbuildable)
}

fn device_type(kind: char) -> Result<LinuxDeviceType> {
    named("device type", kind.encode_utf8(&mut [0; 4]))
}

fn device_number(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::InvalidArgument(format!("device number {n} is too large")))
}

/// A seccomp profile (ours, or a Localhost one as read) in the OCI runtime spec's form.
/// Docker's `archMap` becomes the list of architectures, its single `name` joins `names`,
/// and rules that name no system call are left out.
pub fn seccomp(profile: &Profile) -> Result<LinuxSeccomp> {
    let mut archs: Vec<&str> = profile.architectures.iter().map(String::as_str).collect();
    for a in &profile.arch_map {
        archs.push(&a.architecture);
        archs.extend(a.sub_architectures.iter().map(String::as_str));
    }
    archs.dedup();
    let architectures = archs
        .into_iter()
        .map(|a| named::<Arch>("seccomp architecture", a))
        .collect::<Result<Vec<_>>>()?;
    let syscalls = profile
        .syscalls
        .iter()
        .filter(|r| !r.names.is_empty() || r.name.is_some())
        .map(syscall_rule)
        .collect::<Result<Vec<_>>>()?;
    let mut out = LinuxSeccompBuilder::default()
        .default_action(named::<LinuxSeccompAction>(
            "seccomp action",
            &profile.default_action,
        )?)
        .architectures(architectures)
        .syscalls(syscalls)
        .build()
        .map_err(unbuildable)?;
    let flags = (profile.flags.iter())
        .map(|f| named("seccomp flag", f))
        .collect::<Result<Vec<_>>>()?;
    out.set_default_errno_ret(profile.default_errno_ret)
        .set_flags((!flags.is_empty()).then_some(flags));
    Ok(out)
}

fn syscall_rule(r: &SyscallRule) -> Result<LinuxSyscall> {
    let mut names = r.names.clone();
    names.extend(r.name.iter().cloned());
    let args = (r.args.iter())
        .map(|a| {
            LinuxSeccompArgBuilder::default()
                .index(a.index as usize)
                .value(a.value)
                .value_two(a.value_two)
                .op(named::<LinuxSeccompOperator>("seccomp operator", &a.op)?)
                .build()
                .map_err(unbuildable)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut rule = LinuxSyscallBuilder::default()
        .names(names)
        .action(named::<LinuxSeccompAction>("seccomp action", &r.action)?)
        .build()
        .map_err(unbuildable)?;
    rule.set_errno_ret(r.errno_ret)
        .set_args((!args.is_empty()).then_some(args));
    Ok(rule)
}

/// The value of one of oci-spec's closed sets (`CAP_*`, `SCMP_*`, device types) named as
/// `config.json` spells it: parsed with the same serde names it is written with, so the
/// document carries the name as given.
fn named<T: for<'de> Deserialize<'de>>(what: &str, name: &str) -> Result<T> {
    T::deserialize(name.into_deserializer()).map_err(|_: serde::de::value::Error| {
        Error::InvalidArgument(format!(
            "{what} {name:?} is not one the OCI runtime spec names"
        ))
    })
}

/// A builder found a field it needs unset: a mistake in this module, not in the request.
fn unbuildable(e: OciSpecError) -> Error {
    Error::Internal(format!("build config.json: {e}"))
}
