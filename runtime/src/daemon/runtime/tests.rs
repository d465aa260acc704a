use super::*;

#[test]
fn census_counts_what_the_lists_show() {
    let c = Census::count(
        [
            (PodPhase::Ready, true),
            (PodPhase::Ready, true),
            // RunPodSandbox under way: its monitor runs, the pod is not listed yet.
            (PodPhase::Ready, false),
            (PodPhase::Creating, false),
            (PodPhase::NotReady, true),
        ],
        [
            ContainerPhase::Creating,
            ContainerPhase::Created,
            ContainerPhase::Running,
            ContainerPhase::Running,
            ContainerPhase::Exited,
        ],
    );
    assert_eq!(
        c,
        Census {
            pods_ready: 2,
            pods_not_ready: 1,
            containers_created: 1,
            containers_running: 2,
            containers_exited: 1,
            monitors: 3,
            containers_files_lost: 0,
        }
    );
}
