//! kubelet's `LinuxContainerResources` as cgroup file writes, for whichever version each
//! controller is mounted as (a hybrid host has some on v1 and some on v2). Pure: the driver
//! performs the writes.

use k8s_cri::v1::LinuxContainerResources;

use super::convert::shares_to_weight;

/// Which cgroup version a controller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// A v1 hierarchy of its own (or co-mounted).
    V1,
    /// The unified hierarchy.
    V2,
}

/// One file write: `value` into `file` of the controller's hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The controller whose hierarchy holds the file.
    pub controller: String,
    /// File name inside the cgroup directory.
    pub file: String,
    /// What is written.
    pub value: String,
}

fn write(controller: &str, file: impl Into<String>, value: impl ToString) -> Write {
    Write {
        controller: controller.to_owned(),
        file: file.into(),
        value: value.to_string(),
    }
}

/// Why resources cannot be applied on this host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// A limit needs a controller the host does not mount.
    #[error("{what} needs the {controller} cgroup controller, which this node does not have")]
    NoController {
        /// The CRI field.
        what: String,
        /// The controller.
        controller: String,
    },
    /// `unified` keys need cgroup v2 for their controller.
    #[error("unified cgroup key {key:?} needs cgroup v2, but {controller} is on cgroup v1 here")]
    UnifiedOnV1 {
        /// The key.
        key: String,
        /// Its controller.
        controller: String,
    },
    /// A value that no kernel accepts.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The CRI field.
        what: String,
        /// Why.
        why: String,
    },
}

/// The writes for `r` (and the node's default pids limit when `r` sets none) given where
/// each controller is mounted.
pub fn writes(
    r: &LinuxContainerResources,
    pids_limit: i64,
    version_of: impl Fn(&str) -> Option<Version>,
) -> Result<Vec<Write>, LimitError> {
    let mut out = Vec::new();
    let need = |what: &str, controller: &str| {
        version_of(controller).ok_or_else(|| LimitError::NoController {
            what: what.to_owned(),
            controller: controller.to_owned(),
        })
    };
    if r.cpu_period < 0 || r.cpu_shares < 0 {
        return Err(LimitError::Invalid {
            what: "cpu_period/cpu_shares".into(),
            why: "negative".into(),
        });
    }
    if r.cpu_period > 0 || r.cpu_quota != 0 {
        match need("cpu_quota", "cpu")? {
            Version::V1 => {
                if r.cpu_period > 0 {
                    out.push(write("cpu", "cpu.cfs_period_us", r.cpu_period));
                }
                if r.cpu_quota != 0 {
                    out.push(write("cpu", "cpu.cfs_quota_us", r.cpu_quota.max(-1)));
                }
            }
            Version::V2 => {
                let quota = if r.cpu_quota > 0 {
                    r.cpu_quota.to_string()
                } else {
                    "max".to_owned()
                };
                let period = if r.cpu_period > 0 {
                    r.cpu_period
                } else {
                    100_000
                };
                out.push(write("cpu", "cpu.max", format!("{quota} {period}")));
            }
        }
    }
    if r.cpu_shares > 0 {
        match need("cpu_shares", "cpu")? {
            Version::V1 => out.push(write("cpu", "cpu.shares", r.cpu_shares)),
            Version::V2 => out.push(write(
                "cpu",
                "cpu.weight",
                shares_to_weight(r.cpu_shares as u64),
            )),
        }
    }
    if !r.cpuset_cpus.is_empty() {
        need("cpuset_cpus", "cpuset")?;
        out.push(write("cpuset", "cpuset.cpus", &r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        need("cpuset_mems", "cpuset")?;
        out.push(write("cpuset", "cpuset.mems", &r.cpuset_mems));
    }
    let memory = r.memory_limit_in_bytes;
    let swap = r.memory_swap_limit_in_bytes;
    if memory < 0 && memory != -1 {
        return Err(LimitError::Invalid {
            what: "memory_limit_in_bytes".into(),
            why: format!("{memory}"),
        });
    }
    if memory > 0 && swap > 0 && swap < memory {
        return Err(LimitError::Invalid {
            what: "memory_swap_limit_in_bytes".into(),
            why: format!("{swap} is below memory_limit_in_bytes {memory}"),
        });
    }
    if memory != 0 || swap != 0 {
        match need("memory_limit_in_bytes", "memory")? {
            Version::V1 => {
                if memory != 0 {
                    out.push(write("memory", "memory.limit_in_bytes", memory));
                }
                if swap != 0 {
                    out.push(write("memory", "memory.memsw.limit_in_bytes", swap));
                }
            }
            Version::V2 => {
                if memory != 0 {
                    out.push(write("memory", "memory.max", max_or(memory)));
                }
                // v1's memsw is memory plus swap; v2 limits swap alone.
                if swap == -1 {
                    out.push(write("memory", "memory.swap.max", "max"));
                } else if swap > 0 && memory > 0 {
                    out.push(write("memory", "memory.swap.max", swap - memory));
                }
            }
        }
    }
    for h in &r.hugepage_limits {
        if !valid_page_size(&h.page_size) {
            return Err(LimitError::Invalid {
                what: "hugepage_limits".into(),
                why: format!("page size {:?}", h.page_size),
            });
        }
        let file = match need("hugepage_limits", "hugetlb")? {
            Version::V1 => format!("hugetlb.{}.limit_in_bytes", h.page_size),
            Version::V2 => format!("hugetlb.{}.max", h.page_size),
        };
        out.push(write("hugetlb", file, h.limit));
    }
    let mut unified: Vec<_> = r.unified.iter().collect();
    unified.sort();
    for (key, value) in unified {
        let controller = key.split('.').next().unwrap_or_default();
        if key.contains('/') || !key.contains('.') || key.starts_with("cgroup.") {
            return Err(LimitError::Invalid {
                what: "unified".into(),
                why: format!("{key:?} is not a controller file"),
            });
        }
        match version_of(controller) {
            Some(Version::V2) => out.push(write(controller, key.clone(), value)),
            Some(Version::V1) => {
                return Err(LimitError::UnifiedOnV1 {
                    key: key.clone(),
                    controller: controller.to_owned(),
                });
            }
            None => {
                return Err(LimitError::NoController {
                    what: format!("unified key {key:?}"),
                    controller: controller.to_owned(),
                });
            }
        }
    }
    if pids_limit > 0 && !out.iter().any(|w| w.file == "pids.max") && version_of("pids").is_some() {
        out.push(write("pids", "pids.max", pids_limit));
    }
    Ok(out)
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".to_owned()
    } else {
        v.to_string()
    }
}

/// `2MB`, `1GB`, `64KB`: how the kernel names huge page sizes in hugetlb files.
fn valid_page_size(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["KB", "MB", "GB"].contains(&unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::HugepageLimit;

    fn v1(_: &str) -> Option<Version> {
        Some(Version::V1)
    }
    fn v2(_: &str) -> Option<Version> {
        Some(Version::V2)
    }
    fn files(w: &[Write]) -> Vec<(String, String)> {
        w.iter()
            .map(|w| (w.file.clone(), w.value.clone()))
            .collect()
    }
    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn full() -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            cpuset_cpus: "0".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn v1_files_and_values() {
        let w = writes(&full(), 0, v1).unwrap();
        assert_eq!(
            files(&w),
            pairs(&[
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("cpu.shares", "512"),
                ("cpuset.cpus", "0"),
                ("cpuset.mems", "0"),
                ("memory.limit_in_bytes", "67108864"),
                ("memory.memsw.limit_in_bytes", "134217728"),
                ("hugetlb.2MB.limit_in_bytes", "4194304"),
            ])
        );
    }

    #[test]
    fn v2_files_and_values() {
        let mut r = full();
        r.unified.insert("memory.high".into(), "50000000".into());
        let w = writes(&r, 100, v2).unwrap();
        assert_eq!(
            files(&w),
            pairs(&[
                ("cpu.max", "50000 100000"),
                ("cpu.weight", "20"),
                ("cpuset.cpus", "0"),
                ("cpuset.mems", "0"),
                ("memory.max", "67108864"),
                ("memory.swap.max", "67108864"),
                ("hugetlb.2MB.max", "4194304"),
                ("memory.high", "50000000"),
                ("pids.max", "100"),
            ])
        );
        let unlimited = LinuxContainerResources {
            cpu_quota: -1,
            memory_limit_in_bytes: -1,
            memory_swap_limit_in_bytes: -1,
            ..Default::default()
        };
        assert_eq!(
            files(&writes(&unlimited, 0, v2).unwrap()),
            pairs(&[
                ("cpu.max", "max 100000"),
                ("memory.max", "max"),
                ("memory.swap.max", "max"),
            ])
        );
    }

    #[test]
    fn hybrid_hosts_pick_per_controller() {
        let hybrid = |c: &str| match c {
            "hugetlb" => Some(Version::V2),
            "rdma" => None,
            _ => Some(Version::V1),
        };
        let w = writes(&full(), 0, hybrid).unwrap();
        assert!(w.iter().any(|w| w.file == "hugetlb.2MB.max"));
        assert!(w.iter().any(|w| w.file == "memory.limit_in_bytes"));
        let mut r = LinuxContainerResources::default();
        r.unified.insert("memory.high".into(), "1".into());
        assert!(matches!(
            writes(&r, 0, hybrid),
            Err(LimitError::UnifiedOnV1 { .. })
        ));
        let mut r = LinuxContainerResources::default();
        r.unified.insert("hugetlb.2MB.max".into(), "0".into());
        assert_eq!(writes(&r, 0, hybrid).unwrap().len(), 1);
        let mut r = LinuxContainerResources::default();
        r.unified.insert("rdma.max".into(), "x".into());
        assert!(matches!(
            writes(&r, 0, hybrid),
            Err(LimitError::NoController { .. })
        ));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut r = LinuxContainerResources {
            memory_limit_in_bytes: 100 << 20,
            memory_swap_limit_in_bytes: 10 << 20,
            ..Default::default()
        };
        assert!(writes(&r, 0, v1).is_err());
        r.memory_swap_limit_in_bytes = 0;
        r.hugepage_limits.push(HugepageLimit {
            page_size: "2XB".into(),
            limit: 1,
        });
        assert!(writes(&r, 0, v1).is_err());
        let mut r = LinuxContainerResources::default();
        r.unified.insert("../memory.max".into(), "1".into());
        assert!(writes(&r, 0, v2).is_err());
        r.unified.clear();
        r.unified.insert("cgroup.procs".into(), "1".into());
        assert!(writes(&r, 0, v2).is_err());
        let none = |_: &str| None;
        let r = LinuxContainerResources {
            cpu_shares: 2,
            ..Default::default()
        };
        assert!(matches!(
            writes(&r, 0, none),
            Err(LimitError::NoController { .. })
        ));
        assert!(
            writes(&LinuxContainerResources::default(), 0, none)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn node_pids_limit_applies_unless_unified_sets_one() {
        let w = writes(&LinuxContainerResources::default(), 64, v1).unwrap();
        assert_eq!(files(&w), pairs(&[("pids.max", "64")]));
        let mut r = LinuxContainerResources::default();
        r.unified.insert("pids.max".into(), "10".into());
        assert_eq!(
            files(&writes(&r, 64, v2).unwrap()),
            pairs(&[("pids.max", "10")])
        );
    }
}
