//! The seam for cgroup placement and limits: the runtime asks a [`CgroupManager`] where a pod
//! and its containers go, and the monitor writes each process into the files it returns
//! before the process runs any code of the container.

pub mod convert;
pub mod parse;

use std::path::PathBuf;

use k8s_cri::v1::{LinuxContainerResources, PodSandboxConfig};

use crate::error::Result;

/// Places pods and containers in cgroups and applies their limits.
pub trait CgroupManager: Send + Sync {
    /// Creates the pod's cgroup; returns the `cgroup.procs` files the monitor joins.
    fn create_pod(&self, pod_id: &str, config: &PodSandboxConfig) -> Result<Vec<PathBuf>>;
    /// Creates a container's cgroup with its limits; returns the `cgroup.procs` files its
    /// processes (and exec processes) join.
    fn create_container(
        &self,
        pod_id: &str,
        container_id: &str,
        resources: Option<&LinuxContainerResources>,
    ) -> Result<Vec<PathBuf>>;
    /// Removes a container's cgroup; succeeds when it is already gone.
    fn remove_container(&self, pod_id: &str, container_id: &str) -> Result<()>;
    /// Removes the pod's cgroup; succeeds when it is already gone.
    fn remove_pod(&self, pod_id: &str) -> Result<()>;
}

/// Leaves every process in the daemon's own cgroup.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCgroups;

impl CgroupManager for NoCgroups {
    fn create_pod(&self, _pod_id: &str, _config: &PodSandboxConfig) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
    fn create_container(
        &self,
        _p: &str,
        _c: &str,
        _r: Option<&LinuxContainerResources>,
    ) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
    fn remove_container(&self, _pod_id: &str, _container_id: &str) -> Result<()> {
        Ok(())
    }
    fn remove_pod(&self, _pod_id: &str) -> Result<()> {
        Ok(())
    }
}
