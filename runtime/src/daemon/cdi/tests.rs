use std::path::Path;

use super::edits::apply;
use super::spec::{SpecError, parse};
use super::*;
use crate::spec::{ContainerSpec, MountKind, Propagation};

fn spec_json(version: &str, extra_edits: &str) -> String {
    format!(
        r#"{{"cdiVersion":"{version}","kind":"example.com/gpu","devices":[
            {{"name":"gpu0","containerEdits":{{"env":["GPU=0"],"deviceNodes":[
                {{"path":"/dev/egpu0","type":"c","major":1,"minor":3}}]}}}}],
          "containerEdits":{{"env":["VENDOR=example"]{extra_edits}}}}}"#
    )
}

fn parse_json(text: &str) -> Result<Spec, SpecError> {
    parse(Path::new("/x/vendor.json"), text.as_bytes())
}

#[test]
fn every_version_from_0_3_to_1_1_parses_and_others_are_refused() {
    for v in [
        "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
    ] {
        let s = parse_json(&spec_json(v, "")).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(s.devices[0].name, "gpu0");
    }
    for v in ["0.2.0", "0.9.0", "2.0.0", "1.0", "latest", ""] {
        let e = parse_json(&spec_json(v, "")).unwrap_err().to_string();
        assert!(e.contains("cdiVersion"), "{v}: {e}");
    }
}

#[test]
fn yaml_specs_parse_as_json_ones() {
    let yaml = "cdiVersion: 0.6.0\nkind: example.com/gpu\ndevices:\n- name: gpu0\n  \
                containerEdits:\n    env: [GPU=0]\n    deviceNodes:\n    - path: /dev/egpu0\n      \
                hostPath: /dev/null\n";
    let s = parse(Path::new("/x/vendor.yaml"), yaml.as_bytes()).unwrap();
    assert_eq!(s.kind, "example.com/gpu");
    assert_eq!(
        s.devices[0].container_edits.device_nodes[0]
            .host_path
            .as_deref(),
        Some("/dev/null")
    );
    let e = parse(Path::new("/x/v.yaml"), b"cdiVersion: [").unwrap_err();
    assert!(matches!(e, SpecError::Parse(_)), "{e}");
}

#[test]
fn a_field_newer_than_the_declared_version_is_refused() {
    let cases = [
        (
            "0.3.0",
            r#","mounts":[{"hostPath":"/a","containerPath":"/b","type":"bind"}]"#,
            "mounts type",
        ),
        (
            "0.4.0",
            r#","deviceNodes":[{"path":"/dev/x","hostPath":"/dev/null"}]"#,
            "hostPath",
        ),
        ("0.6.0", r#","additionalGids":[5]"#, "additionalGids"),
        (
            "0.8.0",
            r#","intelRdt":{"closID":"a","schemata":["L3:0=f"]}"#,
            "schemata",
        ),
        (
            "1.0.0",
            r#","netDevices":[{"hostInterfaceName":"eth1","name":"net1"}]"#,
            "netDevices",
        ),
    ];
    for (v, extra, field) in cases {
        let e = parse_json(&spec_json(v, extra)).unwrap_err().to_string();
        assert!(
            e.contains(field) && e.contains("needs cdiVersion"),
            "{v}: {e}"
        );
    }
    let digit = spec_json("0.4.0", "").replace("gpu0", "0");
    let e = parse_json(&digit).unwrap_err().to_string();
    assert!(e.contains("starts with a digit"), "{e}");
    assert!(parse_json(&spec_json("0.5.0", "").replace("gpu0", "0")).is_ok());
    let dotted = spec_json("0.5.0", "").replace("example.com/gpu", "example.com/gpu.x");
    assert!(parse_json(&dotted).unwrap_err().to_string().contains("dot"));
}

#[test]
fn bad_specs_are_refused_naming_what_is_wrong() {
    let cases = [
        (
            spec_json("0.6.0", "").replace("example.com/gpu", "gpu"),
            "kind",
        ),
        (
            spec_json("0.6.0", "").replace("example.com/gpu", "-x.com/gpu"),
            "vendor",
        ),
        (
            spec_json("0.6.0", "").replace("gpu0", "g/0"),
            "invalid character",
        ),
        (
            spec_json("0.6.0", "").replace("/dev/egpu0", "dev/egpu0"),
            "absolute",
        ),
        (
            spec_json("0.6.0", "").replace("/dev/egpu0", "/dev/../etc/x"),
            "clean",
        ),
        (spec_json("0.6.0", "").replace("GPU=0", "GPU"), "KEY=value"),
        (
            spec_json("0.6.0", "").replace("\"c\"", "\"x\""),
            "invalid type",
        ),
        (
            spec_json(
                "0.6.0",
                r#","hooks":[{"hookName":"bogus","path":"/bin/true"}]"#,
            ),
            "hook name",
        ),
        (
            spec_json(
                "0.6.0",
                r#","hooks":[{"hookName":"createContainer","path":"true"}]"#,
            ),
            "hook path",
        ),
        (
            spec_json(
                "0.6.0",
                r#","mounts":[{"hostPath":"/a","containerPath":"/proc/../b"}]"#,
            ),
            "clean",
        ),
    ];
    for (text, want) in cases {
        let e = parse_json(&text).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    let twice = spec_json("0.6.0", "").replace(
        r#"}}],
          "containerEdits""#,
        r#"}}, {"name":"gpu0","containerEdits":{"env":["A=1"]}}],
          "containerEdits""#,
    );
    let e = parse_json(&twice).unwrap_err().to_string();
    assert!(e.contains("defined twice"), "{e}");
}

#[test]
fn qualified_names_and_annotations_are_parsed_as_containerd_does() {
    assert_eq!(
        spec::parse_qualified("example.com/gpu=0").unwrap(),
        ("example.com/gpu", "0")
    );
    for bad in [
        "gpu=0",
        "example.com/gpu",
        "example.com/gpu=",
        "example.com/gpu=../x",
    ] {
        assert!(spec::parse_qualified(bad).is_err(), "{bad}");
    }
    let mut config = k8s_cri::v1::ContainerConfig {
        cdi_devices: vec![k8s_cri::v1::CdiDevice {
            name: "example.com/gpu=1".into(),
        }],
        ..Default::default()
    };
    config.annotations.insert(
        "cdi.k8s.io/plugin".into(),
        "example.com/gpu=0, example.com/gpu=1".into(),
    );
    config.annotations.insert("other/x".into(), "nope".into());
    assert_eq!(
        requested(&config).unwrap(),
        ["example.com/gpu=1", "example.com/gpu=0"]
    );
    config
        .annotations
        .insert("cdi.k8s.io/bad".into(), "not-a-device".into());
    let e = requested(&config).unwrap_err().to_string();
    assert!(e.contains("cdi.k8s.io/bad"), "{e}");
    assert!(requested(&Default::default()).unwrap().is_empty());
    // A request repeating names by the hundred thousand asks for each device once, in the
    // order first named.
    let mut flood = k8s_cri::v1::ContainerConfig::default();
    let names: Vec<String> = (0..200_000)
        .map(|i| format!("example.com/gpu={}", i % 3))
        .collect();
    flood
        .annotations
        .insert("cdi.k8s.io/flood".into(), names.join(","));
    assert_eq!(
        requested(&flood).unwrap(),
        [
            "example.com/gpu=0",
            "example.com/gpu=1",
            "example.com/gpu=2"
        ]
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn one_device(name: &str, env: &str) -> String {
    format!(
        r#"{{"cdiVersion":"0.6.0","kind":"example.com/gpu","devices":[
            {{"name":"{name}","containerEdits":{{"env":["{env}"]}}}}]}}"#
    )
}

fn env_of(reg: &Registry, name: &str) -> String {
    let r = reg.resolve(&[name.to_owned()]).unwrap();
    let (_, d) = &r[0];
    d.spec.devices[d.index].container_edits.env[0].clone()
}

#[test]
fn later_dirs_override_and_conflicts_in_one_dir_drop_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (low, high) = (tmp.path().join("z-low"), tmp.path().join("a-high"));
    std::fs::create_dir_all(&low).unwrap();
    std::fs::create_dir_all(&high).unwrap();
    let reg = Registry::new(vec![low.clone(), high.clone()]);
    write(&low, "a.json", &one_device("gpu0", "FROM=low"));
    assert_eq!(env_of(&reg, "example.com/gpu=gpu0"), "FROM=low");
    write(&high, "a.yaml", &one_device("gpu0", "FROM=high"));
    assert_eq!(env_of(&reg, "example.com/gpu=gpu0"), "FROM=high");

    write(&low, "b.json", &one_device("gpu1", "X=1"));
    write(&low, "c.json", &one_device("gpu1", "X=2"));
    let e = reg
        .resolve(&["example.com/gpu=gpu1".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("more than one spec file") && e.contains("c.json"),
        "{e}"
    );
    let report = reg.report();
    assert!(report.devices.contains(&"example.com/gpu=gpu0".to_owned()));
    assert!(!report.devices.contains(&"example.com/gpu=gpu1".to_owned()));
    let b = report
        .spec_files
        .iter()
        .find(|f| f.path.ends_with("b.json"))
        .unwrap();
    assert!(b.errors[0].contains("gpu1"), "{:?}", b.errors);

    // Removing the second definition makes the device usable again, without a restart.
    std::fs::remove_file(low.join("c.json")).unwrap();
    assert_eq!(env_of(&reg, "example.com/gpu=gpu1"), "X=1");
}

#[test]
fn a_broken_file_is_reported_and_takes_only_its_own_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::new(vec![tmp.path().to_owned()]);
    write(tmp.path(), "good.json", &one_device("gpu0", "A=1"));
    write(tmp.path(), "broken.json", "{ not json");
    write(tmp.path(), "ignored.txt", "anything");
    assert_eq!(env_of(&reg, "example.com/gpu=gpu0"), "A=1");
    let report = reg.report();
    assert_eq!(report.spec_files.len(), 2);
    let broken = &report.spec_files[0];
    assert!(broken.path.ends_with("broken.json"));
    assert!(broken.errors[0].starts_with("cannot parse"), "{:?}", broken);
    let e = reg
        .resolve(&["example.com/gpu=gpu9".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unresolvable CDI device \"example.com/gpu=gpu9\""),
        "{e}"
    );
}

#[test]
fn a_changed_file_is_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::new(vec![tmp.path().to_owned()]);
    write(tmp.path(), "v.json", &one_device("gpu0", "A=1"));
    assert_eq!(env_of(&reg, "example.com/gpu=gpu0"), "A=1");
    // Same size, another content: the ctime/mtime stamp changes.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(tmp.path(), "v.json", &one_device("gpu0", "A=2"));
    assert_eq!(env_of(&reg, "example.com/gpu=gpu0"), "A=2");
}

fn resolved(reg: &Registry, names: &[&str]) -> Vec<(String, DeviceRef)> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    reg.resolve(&names).unwrap()
}

#[test]
fn edits_apply_spec_first_then_devices_and_conflicts_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::new(vec![tmp.path().to_owned()]);
    write(
        tmp.path(),
        "gpu.json",
        r#"{"cdiVersion":"0.7.0","kind":"example.com/gpu",
          "containerEdits":{"env":["VENDOR=1"],"additionalGids":[44, 0],
            "hooks":[{"hookName":"createContainer","path":"/bin/hook","args":["hook","x"],"timeout":5},
                     {"hookName":"prestart","path":"/bin/pre"}]},
          "devices":[
            {"name":"0","containerEdits":{"deviceNodes":[{"path":"/dev/egpu0","hostPath":"/dev/null"}],
               "mounts":[{"hostPath":"/opt/lib","containerPath":"/usr/lib/egpu","options":["ro","nosuid","rbind","rshared"]}]}},
            {"name":"1","containerEdits":{"deviceNodes":[{"path":"/dev/egpu1","type":"c","major":1,"minor":5,"fileMode":384,"permissions":"rw","uid":7}],
               "mounts":[{"hostPath":"/opt/lib","containerPath":"/usr/lib/egpu","options":["ro","nosuid","rbind","rshared"]}]}},
            {"name":"bad-node","containerEdits":{"deviceNodes":[{"path":"/dev/egpu0","type":"c","major":1,"minor":7}]}},
            {"name":"bad-env","containerEdits":{"env":["VENDOR=2"]}},
            {"name":"tmp","containerEdits":{"mounts":[{"hostPath":"tmpfs","containerPath":"/scratch","type":"tmpfs","options":["nosuid","size=1m"]}]}},
            {"name":"proc","containerEdits":{"mounts":[{"hostPath":"/a","containerPath":"/proc/sys/x"}]}},
            {"name":"rdt","containerEdits":{"intelRdt":{"closID":"x"}}}
          ]}"#,
    );
    let mut plan = ContainerSpec::default();
    plan.process.env = vec!["VENDOR=mine".into(), "PATH=/bin".into()];
    apply(
        &mut plan,
        &resolved(
            &reg,
            &[
                "example.com/gpu=0",
                "example.com/gpu=1",
                "example.com/gpu=tmp",
            ],
        ),
        false,
    )
    .unwrap();
    assert_eq!(plan.process.env, ["PATH=/bin", "VENDOR=1"]);
    assert_eq!(plan.process.user.additional_gids, [44]);
    assert_eq!(plan.hooks.create_container.len(), 1);
    assert_eq!(plan.hooks.create_container[0].timeout, Some(5));
    assert_eq!(plan.hooks.create_runtime[0].path, Path::new("/bin/pre"));
    let nodes: Vec<_> = plan
        .devices
        .iter()
        .map(|d| (d.container_path.as_str(), d.node.unwrap()))
        .collect();
    assert_eq!(nodes[0].0, "/dev/egpu0");
    assert_eq!(
        (nodes[0].1.kind, nodes[0].1.major, nodes[0].1.minor),
        ('c', 1, 3)
    );
    assert_eq!(nodes[1].1.file_mode, Some(0o600));
    assert_eq!(nodes[1].1.uid, Some(7));
    assert_eq!(plan.devices[1].permissions, "rw");
    // The same mount from two devices is made once; a shared one makes the root shared.
    assert_eq!(plan.mounts.len(), 2);
    assert_eq!(plan.mounts[0].destination, "/scratch");
    assert!(matches!(&plan.mounts[0].kind, MountKind::Fs { data, .. } if data == "size=1m"));
    assert!(plan.mounts[1].options.readonly && plan.mounts[1].options.nosuid);
    assert_eq!(plan.root_propagation, Propagation::Shared);

    for (pair, want) in [
        (
            ["example.com/gpu=0", "example.com/gpu=bad-node"],
            "/dev/egpu0 differs",
        ),
        (
            ["example.com/gpu=0", "example.com/gpu=bad-env"],
            "sets VENDOR differently",
        ),
        (["example.com/gpu=0", "example.com/gpu=proc"], "procfs"),
        (["example.com/gpu=0", "example.com/gpu=rdt"], "Intel RDT"),
    ] {
        let mut plan = ContainerSpec::default();
        let e = apply(&mut plan, &resolved(&reg, &pair), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains(pair[1]), "{want}: {e}");
    }
}

#[test]
fn a_node_without_numbers_is_read_from_the_host_and_must_be_a_device() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::new(vec![tmp.path().to_owned()]);
    write(
        tmp.path(),
        "gpu.json",
        r#"{"cdiVersion":"0.5.0","kind":"example.com/gpu","devices":[
            {"name":"file","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/etc/hostname"}]}},
            {"name":"gone","containerEdits":{"deviceNodes":[{"path":"/dev/y","hostPath":"/dev/no-such-device"}]}},
            {"name":"typed","containerEdits":{"deviceNodes":[{"path":"/dev/z","hostPath":"/dev/null","type":"b"}]}}]}"#,
    );
    for (name, want) in [
        ("file", "is not a device"),
        ("gone", "no-such-device"),
        ("typed", "type b"),
    ] {
        let mut plan = ContainerSpec::default();
        let e = apply(
            &mut plan,
            &resolved(&reg, &[&format!("example.com/gpu={name}")]),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{name}: {e}");
    }
}

#[test]
fn net_devices_are_returned_once_and_must_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::new(vec![tmp.path().to_owned()]);
    write(
        tmp.path(),
        "nic.json",
        r#"{"cdiVersion":"1.1.0","kind":"example.com/nic","devices":[
            {"name":"a","containerEdits":{"netDevices":[{"hostInterfaceName":"eth1","name":"net1"}]}},
            {"name":"a2","containerEdits":{"netDevices":[{"hostInterfaceName":"eth1","name":"net1"}]}},
            {"name":"b","containerEdits":{"netDevices":[{"hostInterfaceName":"eth2","name":"net1"}]}},
            {"name":"c","containerEdits":{"netDevices":[{"hostInterfaceName":"eth1","name":"net9"}]}}]}"#,
    );
    let mut plan = ContainerSpec::default();
    let net = apply(
        &mut plan,
        &resolved(&reg, &["example.com/nic=a", "example.com/nic=a2"]),
        false,
    )
    .unwrap();
    assert_eq!(
        net,
        [NetDevice {
            host_name: "eth1".into(),
            name: "net1".into()
        }]
    );
    for (other, want) in [("b", "net1 is eth1"), ("c", "eth1 is net1")] {
        let mut plan = ContainerSpec::default();
        let e = apply(
            &mut plan,
            &resolved(
                &reg,
                &["example.com/nic=a", &format!("example.com/nic={other}")],
            ),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{other}: {e}");
    }
}

#[test]
fn an_oversized_or_irregular_file_is_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::new(vec![tmp.path().to_owned()]);
    let big = vec![b' '; (spec::MAX_SPEC_SIZE + 1) as usize];
    std::fs::write(tmp.path().join("big.json"), big).unwrap();
    std::fs::create_dir(tmp.path().join("dir.yaml")).unwrap();
    let report = reg.report();
    let errors: Vec<&str> = report
        .spec_files
        .iter()
        .map(|f| f.errors[0].as_str())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("larger than"), "{errors:?}");
    assert!(errors[1].contains("not a regular file"), "{errors:?}");
}
