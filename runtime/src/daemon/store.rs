//! Pod and container records in the daemon's metadata database (tables `runtime_pods` and
//! `runtime_containers`, JSON values keyed by id).

use berth_db::{Commit, Db};
use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::namespace::Namespace;
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
    pub namespaces: Vec<Namespace>,
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
    /// Host network interfaces moved into the pod (CDI `netDevices`), recorded before each
    /// move so that they go back before its namespace goes, also after a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_devices: Vec<crate::cdi::NetDevice>,
}

fn confirmed_default() -> bool {
    true
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerPhase {
    /// Recorded, not created in the monitor yet: undone at reconcile.
    #[default]
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

/// A container's durable record (the default: one being created, nothing of its life
/// known yet).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// RemoveContainer began: this was written durably before the call answered and before
    /// any file went, so a start that finds it finishes the removal. A record whose files
    /// are gone without it is a fault to report, never a removal to finish.
    #[serde(default)]
    pub removing: bool,
    /// The CDI devices applied to it (fully qualified names, in the order applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdi_devices: Vec<String>,
}

impl From<berth_db::Error> for Error {
    fn from(e: berth_db::Error) -> Error {
        Error::Db(berth_db::commit::chain(&e))
    }
}

/// The runtime's tables on the shared database. Writes are queued on the database's commit
/// loop and return a [`Commit`]: the change is durable once it resolves. Writes of one record
/// are queued under that record's lock, so they land in the order they were made.
#[derive(Clone)]
pub(crate) struct Store {
    db: Db,
}

/// A queued write of the runtime's tables.
pub(crate) type Pending = Commit<Result<()>>;

impl Store {
    pub fn open(db: Db) -> Result<Store> {
        db.write(|tx: &WriteTransaction| {
            tx.open_table(PODS).map_err(Error::db)?;
            tx.open_table(CONTAINERS).map_err(Error::db)?;
            Ok::<(), Error>(())
        })
        .wait()?;
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
        def: TableDefinition<'static, &'static str, &'static [u8]>,
        id: &str,
        value: &impl Serialize,
    ) -> Pending {
        let bytes = match serde_json::to_vec(value) {
            Ok(b) => b,
            Err(e) => {
                return Commit::ready(Err(Error::Internal(format!("encode record {id}: {e}"))));
            }
        };
        let id = id.to_owned();
        self.db.write(move |tx: &WriteTransaction| {
            tx.open_table(def)
                .map_err(Error::db)?
                .insert(id.as_str(), bytes.as_slice())
                .map_err(Error::db)?;
            Ok(())
        })
    }

    fn delete(
        &self,
        def: TableDefinition<'static, &'static str, &'static [u8]>,
        id: &str,
    ) -> Pending {
        let id = id.to_owned();
        self.db.write(move |tx: &WriteTransaction| {
            tx.open_table(def)
                .map_err(Error::db)?
                .remove(id.as_str())
                .map_err(Error::db)?;
            Ok(())
        })
    }

    pub fn put_pod(&self, rec: &PodRecord) -> Pending {
        self.put(PODS, &rec.id, rec)
    }

    pub fn delete_pod(&self, id: &str) -> Pending {
        self.delete(PODS, id)
    }

    pub fn put_container(&self, rec: &ContainerRecord) -> Pending {
        self.put(CONTAINERS, &rec.id, rec)
    }

    /// Records a container with another crate's write in the same transaction.
    pub fn put_container_with(&self, rec: &ContainerRecord, mut also: berth_db::Write) -> Pending {
        let bytes = match serde_json::to_vec(rec) {
            Ok(b) => b,
            Err(e) => {
                return Commit::ready(Err(Error::Internal(format!(
                    "encode record {}: {e}",
                    rec.id
                ))));
            }
        };
        let id = rec.id.clone();
        self.db.write(move |tx: &WriteTransaction| {
            tx.open_table(CONTAINERS)
                .map_err(Error::db)?
                .insert(id.as_str(), bytes.as_slice())
                .map_err(Error::db)?;
            also(tx).map_err(Error::db)
        })
    }

    /// Deletes a container's record. RemoveContainer does it last, after the record said
    /// `removing` durably and the files went: see [`ContainerRecord::removing`].
    pub fn delete_container(&self, id: &str) -> Pending {
        self.delete(CONTAINERS, id)
    }

    /// Resolves once every write queued before it is durable: the answer of a call whose
    /// changes were queued on the way (an exit recorded by the monitor's event).
    pub fn flush(&self) -> Pending {
        self.db.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_db::crashsim::{ImageBackend, Recorder};

    use super::*;

    fn pod(id: &str, phase: PodPhase) -> PodRecord {
        PodRecord {
            id: id.into(),
            config: PodSandboxConfig {
                hostname: "h".into(),
                ..Default::default()
            },
            runtime_handler: String::new(),
            created_at: 1,
            phase,
            monitor_pid: 7,
            namespaces: vec![Namespace::Net],
            ips: vec![],
            hostname: "h".into(),
            confirmed: true,
            cgroup: Default::default(),
            net_devices: Vec::new(),
        }
    }

    fn container(id: &str, phase: ContainerPhase, removing: bool) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            pod_id: "p".into(),
            stop_signal: 15,
            phase,
            created_at: 1,
            removing,
            ..Default::default()
        }
    }

    #[test]
    fn records_round_trip_and_delete() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::create(d.path().join("db")).unwrap();
        let s = Store::open(db.clone()).unwrap();
        s.put_pod(&pod("p1", PodPhase::Ready)).wait().unwrap();
        let s2 = Store::open(db).unwrap();
        let pods = s2.pods().unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].config.hostname, "h");
        assert_eq!(pods[0].phase, PodPhase::Ready);
        s2.delete_pod("p1").wait().unwrap();
        s2.delete_pod("p1").wait().unwrap();
        assert!(s2.pods().unwrap().is_empty());
    }

    #[test]
    fn a_pod_record_written_before_namespaces_were_typed_still_reads() {
        let mut old = serde_json::to_value(pod("p1", PodPhase::Ready)).unwrap();
        old["namespaces"] = serde_json::json!(["net", "uts", "ipc", "pid"]);
        let rec: PodRecord = serde_json::from_value(old).unwrap();
        assert_eq!(
            rec.namespaces,
            [
                Namespace::Net,
                Namespace::Uts,
                Namespace::Ipc,
                Namespace::Pid
            ]
        );
        let again = serde_json::to_value(&rec).unwrap();
        assert_eq!(
            again["namespaces"],
            serde_json::json!(["net", "uts", "ipc", "pid"])
        );
    }

    /// What one record goes through, step by step: a container's life to its removal.
    fn container_steps(id: &str) -> Vec<Option<ContainerRecord>> {
        vec![
            Some(container(id, ContainerPhase::Creating, false)),
            Some(container(id, ContainerPhase::Created, false)),
            Some(container(id, ContainerPhase::Running, false)),
            Some(container(id, ContainerPhase::Exited, false)),
            // RemoveContainer's intent, then the record's deletion.
            Some(container(id, ContainerPhase::Exited, true)),
            None,
        ]
    }

    fn pod_steps(id: &str) -> Vec<Option<PodRecord>> {
        vec![
            Some(pod(id, PodPhase::Creating)),
            Some(pod(id, PodPhase::Ready)),
            Some(pod(id, PodPhase::NotReady)),
            None,
        ]
    }

    /// The power-loss simulation (no device-mapper on this kernel): the store runs on a
    /// file whose every write and fsync is recorded, with writers in flight at once as in
    /// the daemon. Each fsynced prefix of the log, plus any subset of the sectors written
    /// after it, is opened as a reboot would find it. Every record must be at the step it
    /// was last acknowledged at, or at the next one if that was already queued: an
    /// acknowledged creation is never lost, an acknowledged removal never comes back.
    #[test]
    fn a_power_loss_keeps_every_acknowledged_change() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::create(&dir.path().join("berth.db")).unwrap();
        let database = redb::Builder::new()
            .create_with_backend(rec.backend())
            .unwrap();
        let store = Store::open(Db::new(Arc::new(database)).unwrap()).unwrap();
        const WRITERS: usize = 6;
        const RECORDS: usize = 5;
        // For each record: when each step was queued and when it was acknowledged.
        type Timeline = Vec<(usize, usize)>;
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, rec) = (store.clone(), rec.clone());
                std::thread::spawn(move || {
                    let mut timelines: Vec<(String, bool, Timeline)> = Vec::new();
                    for r in 0..RECORDS {
                        let id = format!("w{w}r{r}");
                        let is_pod = (w + r) % 3 == 0;
                        let mut t = Vec::new();
                        let steps = if is_pod {
                            pod_steps(&id).len()
                        } else {
                            container_steps(&id).len()
                        };
                        for step in 0..steps {
                            let queued = rec.mark();
                            let commit = if is_pod {
                                match &pod_steps(&id)[step] {
                                    Some(p) => store.put_pod(p),
                                    None => store.delete_pod(&id),
                                }
                            } else {
                                match &container_steps(&id)[step] {
                                    Some(c) => store.put_container(c),
                                    None => store.delete_container(&id),
                                }
                            };
                            commit.wait().unwrap();
                            t.push((queued, rec.mark()));
                        }
                        timelines.push((id, is_pod, t));
                    }
                    timelines
                })
            })
            .collect();
        let timelines: Vec<(String, bool, Timeline)> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let mut checked = 0;
        rec.for_each_crash(0x9e37_79b9_7f4a_7c15, |at, kept, image| {
            let acked_any = timelines
                .iter()
                .any(|(_, _, t)| t.first().is_some_and(|&(_, a)| a <= at));
            if !acked_any {
                return;
            }
            let database = redb::Builder::new()
                .create_with_backend(ImageBackend::new(image))
                .unwrap_or_else(|e| panic!("crash at {at} ({kept} in doubt kept): {e}"));
            let db = Db::new(Arc::new(database)).unwrap();
            let reopened = Store::open(db).unwrap();
            let pods: std::collections::HashMap<String, PodRecord> = reopened
                .pods()
                .unwrap()
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect();
            let containers: std::collections::HashMap<String, ContainerRecord> = reopened
                .containers()
                .unwrap()
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect();
            for (id, is_pod, t) in &timelines {
                // What the reopened store holds, as a step's record would encode it.
                let found = if *is_pod {
                    pods.get(id).map(|p| serde_json::to_vec(p).unwrap())
                } else {
                    containers.get(id).map(|c| serde_json::to_vec(c).unwrap())
                };
                let encode = |step: usize| -> Option<Vec<u8>> {
                    if *is_pod {
                        pod_steps(id)[step]
                            .as_ref()
                            .map(|p| serde_json::to_vec(p).unwrap())
                    } else {
                        container_steps(id)[step]
                            .as_ref()
                            .map(|c| serde_json::to_vec(c).unwrap())
                    }
                };
                let last_acked = t.iter().rposition(|&(_, acked)| acked <= at);
                // The allowed steps: the last acknowledged, and the next if queued.
                let mut allowed: Vec<Option<Vec<u8>>> = Vec::new();
                match last_acked {
                    Some(s) => allowed.push(encode(s)),
                    None => allowed.push(None),
                }
                let next = last_acked.map_or(0, |s| s + 1);
                if let Some(&(queued, _)) = t.get(next)
                    && queued <= at
                {
                    allowed.push(encode(next));
                }
                assert!(
                    allowed.contains(&found),
                    "power loss at {at} ({kept} of {} writes in doubt kept): record \
                         {id} is {found:?}, acknowledged step {last_acked:?}",
                    rec.in_doubt(at),
                    found = found.map(|b| String::from_utf8_lossy(&b).into_owned()),
                );
                checked += 1;
            }
        });
        assert!(checked > 100, "only {checked} checks");
        eprintln!(
            "power loss: {} crash points, {checked} record checks",
            rec.crash_points().len()
        );
    }
}
