//! Reconciliation at start: re-adopting the monitors that outlived a daemon restart,
//! bringing records in line with what they report, undoing half-done creations and
//! removing what no record owns.

use super::*;

/// What reconciliation found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Pods whose monitor answered and was adopted.
    pub adopted: usize,
    /// Pods whose monitor was gone: marked NOTREADY.
    pub lost: usize,
    /// Half-created pods and containers undone.
    pub undone: usize,
    /// Directories and mounts no record owned, removed.
    pub orphans_removed: usize,
    /// Removals whose intent was recorded and that a crash cut short: finished.
    pub removals_finished: usize,
    /// Containers whose files are gone though no removal was recorded: reported to kubelet
    /// as exited with reason [`FILES_LOST`], never dropped.
    pub files_lost: usize,
}

/// The reason of a container whose files were found gone at start without a recorded
/// removal (a crash lost what its creation wrote, or something outside deleted them).
pub const FILES_LOST: &str = "FilesLost";

impl Runtime {
    /// Brings records in line with what a monitor reports (after a daemon restart).
    pub(crate) async fn sync_with_monitor(&self, pod: &PodEntry) -> Result<()> {
        let Response::State { containers } = pod.client.call(&Request::State).await? else {
            return Err(Error::Internal("unexpected answer to state".into()));
        };
        for c in self.pod_containers(&pod.id) {
            let phase = lock(&c.rec).phase;
            if !matches!(phase, ContainerPhase::Created | ContainerPhase::Running) {
                continue;
            }
            match containers.iter().find(|s| s.id == c.id) {
                Some(s) => {
                    if s.started_at > 0 && phase == ContainerPhase::Created {
                        let mut rec = lock(&c.rec);
                        rec.phase = ContainerPhase::Running;
                        rec.started_at = s.started_at;
                        // Reconcile flushes before it returns.
                        drop(self.store.put_container(&rec));
                    }
                    if let Some(exit) = s.exit {
                        self.apply_exit(&c, exit);
                    }
                }
                None => self.mark_unknown_exit(&c),
            }
        }
        Ok(())
    }

    /// Re-adopts running pods after a start: checks each monitor, follows its events and
    /// updates container states that changed meanwhile; undoes half-done creations; removes
    /// directories and mounts that no record owns.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        if self.lsm.apparmor {
            // Before any container can ask for it (they wait for this reconciliation).
            match tokio::task::spawn_blocking(crate::lsm::load_default_profile).await {
                Ok(Ok(())) => tracing::debug!(
                    profile = crate::lsm::DEFAULT_APPARMOR_PROFILE,
                    "apparmor profile loaded"
                ),
                Ok(Err(e)) => tracing::warn!(
                    profile = crate::lsm::DEFAULT_APPARMOR_PROFILE,
                    error = %e,
                    "cannot load the default apparmor profile: containers that need it fail"
                ),
                Err(e) => tracing::warn!(error = %e, "loading the apparmor profile"),
            }
        }
        std::fs::create_dir_all(&self.opts.state)
            .map_err(|e| Error::io("create", &self.opts.state, e))?;
        let boot_file = self.opts.state.join("boot_id");
        sys::write_atomic(&boot_file, read_boot_id().as_bytes())
            .map_err(|e| Error::io("write", &boot_file, e))?;
        let pods: Vec<Arc<PodEntry>> = lock(&self.index).pods.values().cloned().collect();
        for pod in pods {
            let phase = lock(&pod.rec).phase;
            match phase {
                PodPhase::Creating => {
                    self.undo_pod(&pod).await;
                    report.undone += 1;
                }
                PodPhase::Ready if !lock(&pod.rec).confirmed => {
                    // The daemon died between the monitor's start and the network's.
                    tracing::info!(pod = %pod.id, "undoing a pod whose RunPodSandbox was cut short");
                    self.undo_pod(&pod).await;
                    report.undone += 1;
                }
                PodPhase::Ready => {
                    let alive = !self.rebooted
                        && matches!(
                            pod.client.call(&Request::Hello { version: crate::protocol::PROTOCOL_VERSION }).await,
                            Ok(Response::Hello { pod_id, .. }) if pod_id == pod.id
                        );
                    if alive && self.watch_pod(&pod).await.is_ok() {
                        if let Err(e) = self.sync_with_monitor(&pod).await {
                            tracing::warn!(pod = %pod.id, error = %e.full_message(), "cannot read monitor state");
                        }
                        report.adopted += 1;
                    } else {
                        self.on_monitor_gone(&pod);
                        report.lost += 1;
                    }
                }
                PodPhase::NotReady => {}
            }
        }
        // Removals that RemoveContainer answered (their intent is durable) and a crash cut
        // short: the files go first, then the record.
        let removals = std::mem::take(&mut *lock(&self.removals));
        for rec in removals {
            self.release_container_state(&rec.id, &rec.cgroup, rec.spec.oci.as_ref());
            for dir in self.container_dirs(&rec.id) {
                for d in [aside(&dir), dir] {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
            drop(self.store.delete_container(&rec.id));
            // The crash may have come before its poststop hooks ran: they run (again).
            let poststop = crate::daemon::container::Poststop::of(&rec.spec);
            crate::daemon::container::run_poststop(poststop).await;
            report.removals_finished += 1;
        }
        let containers: Vec<Arc<ContainerEntry>> =
            lock(&self.index).containers.values().cloned().collect();
        for c in containers {
            let (phase, orphan) = (lock(&c.rec).phase, self.find_pod(&c.pod_id).is_none());
            if phase == ContainerPhase::Creating || orphan {
                // The monitor may hold it already (the daemon stopped between the monitor's
                // answer and the record): a never-started container is dropped there too.
                if let Some(pod) = self.find_pod(&c.pod_id) {
                    let _ = pod
                        .client
                        .call_ok(&Request::Remove { id: c.id.clone() })
                        .await;
                }
                self.forget_container(&c);
                report.undone += 1;
            } else if !self.container_root_dir(&c.id).exists() {
                self.report_files_lost(&c);
                report.files_lost += 1;
            }
        }
        report.orphans_removed = self.remove_orphans() + self.prune_cgroups();
        // What reconciliation wrote is durable before any call is answered.
        self.store.flush().await?;
        Ok(report)
    }

    /// A container whose files are gone though its removal was never recorded: not a
    /// removal to finish (nothing says one began) but a fault. It stays, exited with reason
    /// [`FILES_LOST`], so that kubelet sees it and removes it; the log and the census tell.
    fn report_files_lost(&self, c: &ContainerEntry) {
        let dir = self.container_root_dir(&c.id);
        {
            let mut rec = lock(&c.rec);
            tracing::error!(
                container = %c.id,
                pod = %c.pod_id,
                dir = %dir.display(),
                phase = ?rec.phase,
                "container files lost: its record has no removal intent; reported exited"
            );
            if rec.phase != ContainerPhase::Exited {
                rec.phase = ContainerPhase::Exited;
                rec.exit_code = 255;
                if rec.finished_at == 0 {
                    rec.finished_at = sys::now_ns();
                }
            }
            rec.reason = FILES_LOST.into();
            rec.message = format!(
                "the container's files under {} are gone but its removal was never recorded",
                dir.display()
            );
            drop(self.store.put_container(&rec));
        }
        c.exited.send_replace(true);
    }

    fn prune_cgroups(&self) -> usize {
        let pods: Vec<_> = lock(&self.index).pods.values().cloned().collect();
        let known: Vec<_> = pods
            .iter()
            .map(|p| {
                let cgroup = lock(&p.rec).cgroup.clone();
                let keep = self
                    .pod_containers(&p.id)
                    .iter()
                    .map(|c| lock(&c.rec).cgroup.clone())
                    .collect();
                (cgroup, keep)
            })
            .collect();
        self.opts.cgroups.prune(&known)
    }

    fn remove_orphans(&self) -> usize {
        let (pods, containers): (Vec<String>, Vec<String>) = {
            let idx = lock(&self.index);
            (
                idx.pods.keys().cloned().collect(),
                idx.containers.keys().cloned().collect(),
            )
        };
        let mut n = 0;
        let list = |d: &Path| -> Vec<String> {
            std::fs::read_dir(d)
                .map(|r| {
                    r.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        for id in list(&self.opts.state.join("pods")) {
            if !pods.contains(&id) {
                crate::daemon::pod::release_pod_mounts(&self.pod_dir(&id));
                let _ = std::fs::remove_dir_all(self.pod_dir(&id));
                n += 1;
            }
        }
        for id in list(&self.opts.state.join("containers")) {
            if !containers.contains(&id) {
                let _ = std::fs::remove_dir_all(self.container_state_dir(&id));
                n += 1;
            }
        }
        for id in list(&self.opts.root.join("containers")) {
            if !containers.contains(&id) {
                let _ = std::fs::remove_dir_all(self.container_root_dir(&id));
                n += 1;
            }
        }
        // RuntimeClass handlers' state of containers no record owns.
        let runtimes = self.opts.state.join("runtimes");
        for handler in list(&runtimes) {
            for id in list(&runtimes.join(&handler)) {
                if !containers.contains(&id) {
                    let _ = std::fs::remove_dir_all(runtimes.join(&handler).join(&id));
                    n += 1;
                }
            }
        }
        n
    }
}
