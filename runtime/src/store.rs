//! Pod and container records in the daemon's metadata database (tables `runtime_pods` and
//! `runtime_containers`, JSON values keyed by id).

use std::path::PathBuf;
use std::sync::Arc;

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::ContainerSpec;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("runtime_pods");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("runtime_containers");

/// Where a pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodPhase {
    /// Recorded, monitor not confirmed yet: undone at reconcile.
    Creating,
    /// The monitor runs.
    Ready,
    /// Stopped: containers dead, monitor gone.
    NotReady,
}

/// A pod's durable record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod id.
    pub id: String,
    /// kubelet's config, returned verbatim in status (labels, annotations, metadata).
    pub config: PodSandboxConfig,
    /// RuntimeClass handler.
    pub runtime_handler: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// Life phase.
    pub phase: PodPhase,
    /// Host PID of the monitor.
    pub monitor_pid: i32,
    /// Namespaces the pod owns (`net`, `ipc`, `uts`, `pid`), bind-mounted under `ns/`.
    pub namespaces: Vec<String>,
    /// Pod IPs the network set up.
    #[serde(default)]
    pub ips: Vec<String>,
    /// The pod's hostname.
    #[serde(default)]
    pub hostname: String,
    /// RunPodSandbox finished: the caller set up the pod's network and reported it with
    /// [`crate::Runtime::set_pod_network`]. A ready pod that is not confirmed was cut short by
    /// a crash, and the next start undoes it.
    #[serde(default = "confirmed_default")]
    pub confirmed: bool,
    /// Where the pod's processes are placed (recorded before the cgroups are made).
    #[serde(default)]
    pub cgroup: crate::cgroups::PodCgroup,
}

fn confirmed_default() -> bool {
    true
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerPhase {
    /// Recorded, not created in the monitor yet: undone at reconcile.
    Creating,
    /// Created, waiting for start.
    Created,
    /// Started.
    Running,
    /// Ended.
    Exited,
}

/// The image a container was made from, as reported in its status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image id.
    pub id: String,
    /// Name kubelet used.
    pub name: String,
    /// `image_ref`.
    pub image_ref: String,
}

/// A container's durable record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container id.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// kubelet's config.
    pub config: ContainerConfig,
    /// The image.
    pub image: ImageRecord,
    /// The plan the monitor executed.
    pub spec: ContainerSpec,
    /// Signal that asks it to stop (image STOPSIGNAL, else SIGTERM).
    pub stop_signal: i32,
    /// Life phase.
    pub phase: ContainerPhase,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// Nanoseconds since the epoch; 0 until started.
    #[serde(default)]
    pub started_at: i64,
    /// Nanoseconds since the epoch; 0 until exited.
    #[serde(default)]
    pub finished_at: i64,
    /// Exit code (128 + signal when killed).
    #[serde(default)]
    pub exit_code: i32,
    /// `Completed`, `Error`, `StartError`, `Unknown`.
    #[serde(default)]
    pub reason: String,
    /// Detail for `reason`.
    #[serde(default)]
    pub message: String,
    /// Host PID of its first process.
    #[serde(default)]
    pub pid: i32,
    /// Full path of its CRI log file, empty without one.
    #[serde(default)]
    pub log_path: PathBuf,
    /// The container's cgroup, in the driver's naming (recorded before it is made).
    #[serde(default)]
    pub cgroup: String,
}

/// The runtime's tables on the shared database.
#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<Database>,
}

impl Store {
    pub fn open(db: Arc<Database>) -> Result<Store> {
        let tx = db.begin_write().map_err(Error::db)?;
        tx.open_table(PODS).map_err(Error::db)?;
        tx.open_table(CONTAINERS).map_err(Error::db)?;
        tx.commit().map_err(Error::db)?;
        Ok(Store { db })
    }

    fn load<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>> {
        let tx = self.db.begin_read().map_err(Error::db)?;
        let table = tx.open_table(def).map_err(Error::db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(Error::db)? {
            let (k, v) = row.map_err(Error::db)?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| Error::Corrupt(k.value().to_owned(), e))?,
            );
        }
        Ok(out)
    }

    pub fn pods(&self) -> Result<Vec<PodRecord>> {
        self.load(PODS)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        self.load(CONTAINERS)
    }

    fn put(
        &self,
        def: TableDefinition<&str, &[u8]>,
        id: &str,
        value: &impl Serialize,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::Internal(format!("encode record {id}: {e}")))?;
        let tx = self.db.begin_write().map_err(Error::db)?;
        tx.open_table(def)
            .map_err(Error::db)?
            .insert(id, bytes.as_slice())
            .map_err(Error::db)?;
        tx.commit().map_err(Error::db)
    }

    fn delete(
        &self,
        def: TableDefinition<&str, &[u8]>,
        id: &str,
        durability: Durability,
    ) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(Error::db)?;
        tx.set_durability(durability).map_err(Error::db)?;
        tx.open_table(def)
            .map_err(Error::db)?
            .remove(id)
            .map_err(Error::db)?;
        tx.commit().map_err(Error::db)
    }

    pub fn put_pod(&self, rec: &PodRecord) -> Result<()> {
        self.put(PODS, &rec.id, rec)
    }

    pub fn delete_pod(&self, id: &str) -> Result<()> {
        self.delete(PODS, id, Durability::Immediate)
    }

    pub fn put_container(&self, rec: &ContainerRecord) -> Result<()> {
        self.put(CONTAINERS, &rec.id, rec)
    }

    /// Deletes a container's record without waiting for the disk (RemoveContainer is on
    /// kubelet's path): the next durable commit persists it. A crash before that brings the
    /// record back at the next start as an exited container whose files are gone, which
    /// kubelet removes again; nothing it owned is lost.
    pub fn delete_container(&self, id: &str) -> Result<()> {
        self.delete(CONTAINERS, id, Durability::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_delete() {
        let d = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(d.path().join("db")).unwrap());
        let s = Store::open(db.clone()).unwrap();
        let pod = PodRecord {
            id: "p1".into(),
            config: PodSandboxConfig {
                hostname: "h".into(),
                ..Default::default()
            },
            runtime_handler: String::new(),
            created_at: 1,
            phase: PodPhase::Ready,
            monitor_pid: 7,
            namespaces: vec!["net".into()],
            ips: vec![],
            hostname: "h".into(),
            confirmed: true,
            cgroup: Default::default(),
        };
        s.put_pod(&pod).unwrap();
        let s2 = Store::open(db).unwrap();
        let pods = s2.pods().unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].config.hostname, "h");
        assert_eq!(pods[0].phase, PodPhase::Ready);
        s2.delete_pod("p1").unwrap();
        s2.delete_pod("p1").unwrap();
        assert!(s2.pods().unwrap().is_empty());
    }
}
