//! The operator's documentation and packaging cannot drift from the daemon:
//! - README.md's configuration reference is `berth config default`'s output, verbatim, and
//!   its key table names every key;
//! - every config.toml the Helm chart writes (the golden files in charts/berth/tests/golden,
//!   which scripts/test-chart.sh checks against the chart's rendering) is accepted by the
//!   daemon's own parser, with the values the chart's values files gave.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_cri::config::{CgroupDriver, Config, LogFormat};

/// The line above the reference block in README.md.
const MARKER: &str =
    "<!-- berth config default: generated; cri/tests/operator_docs.rs checks it -->";

fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn readme() -> String {
    std::fs::read_to_string(top().join("README.md")).expect("README.md is readable")
}

/// The fenced TOML block right after the marker.
fn reference_block(readme: &str) -> Result<String, String> {
    let start = readme
        .find(MARKER)
        .ok_or_else(|| format!("README.md lacks the line {MARKER}"))?;
    let mut lines = readme[start..].lines().skip(1);
    if lines.next() != Some("```toml") {
        return Err("the marker is not followed by a ```toml fence".into());
    }
    let mut block = String::new();
    for line in lines {
        if line == "```" {
            return Ok(block);
        }
        block.push_str(line);
        block.push('\n');
    }
    Err("the ```toml fence after the marker is not closed".into())
}

#[test]
fn readme_reference_is_berth_config_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "default"])
        .output()
        .expect("berth runs");
    assert!(output.status.success(), "berth config default: {output:?}");
    let printed = String::from_utf8(output.stdout).expect("UTF-8");
    assert_eq!(printed, Config::default_toml());
    let block = reference_block(&readme()).unwrap();
    assert!(
        block == printed,
        "README.md's configuration reference differs from `berth config default`; \
         replace the block after the marker with the command's output.\n--- README\n{block}\
         --- berth config default\n{printed}"
    );
}

/// Dotted names of every key in a TOML document, and of its empty tables (the maps such as
/// `registry.mirrors` whose entries an operator adds).
fn keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() => keys(&name, t, out),
            _ => out.push(name),
        }
    }
}

#[test]
fn readme_describes_every_key() {
    let readme = readme();
    let table: toml::Table = Config::default_toml().parse().expect("the default parses");
    let mut names = Vec::new();
    keys("", &table, &mut names);
    // Keys that have no default and so are not printed, and the keys of map entries.
    names.extend(
        [
            "network.pod_cidr_v6",
            "registry.mirrors.\"HOST\".endpoints",
            "runtimes.\"HANDLER\".path",
            "runtimes.\"HANDLER\".args",
            "insecure",
            "ca_file",
            "username",
            "password",
            "auth",
            "identity_token",
        ]
        .map(String::from),
    );
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !readme.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's configuration reference does not describe {missing:?}"
    );
    assert!(names.len() > 20, "{names:?}");
}

fn golden(name: &str) -> Config {
    let path = top().join("charts/berth/tests/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Config::parse(&text, &path)
        .unwrap_or_else(|e| panic!("the chart writes a config berth refuses: {e}"))
}

#[test]
fn every_config_the_chart_writes_parses() {
    let dir = top().join("charts/berth/tests/golden");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            golden(path.file_name().unwrap().to_str().unwrap());
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} golden configs in {}", dir.display());
}

#[test]
fn chart_configs_carry_their_values() {
    // charts/berth/values.yaml: the daemon's own defaults, written out.
    let default = golden("default.config.toml");
    assert_eq!(default, Config::default());

    // charts/berth/tests/values/mirrors-cni-kubelet.yaml
    let c = golden("mirrors-cni-kubelet.config.toml");
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.network.mtu, 1450);
    assert_eq!(c.network.cni_plugin_timeout_seconds, 30);
    assert_eq!(c.network.cni_bin_dirs, [PathBuf::from("/opt/cni/bin")]);
    assert_eq!(c.network.pod_cidr.to_string(), "10.244.0.0/16");
    assert_eq!(c.metrics.address, "0.0.0.0:9323");
    assert_eq!(c.cgroup.driver, CgroupDriver::Systemd);
    assert_eq!(
        c.registry.mirrors["docker.io"].endpoints,
        [
            "https://mirror.example.com:5000",
            "https://mirror2.example.com"
        ]
    );
    assert!(c.registry.configs["localhost:5000"].insecure);
    assert_eq!(
        c.registry.configs["mirror.example.com:5000"]
            .ca_file
            .as_deref(),
        Some(Path::new("/etc/berth/certs/mirror-ca.pem"))
    );

    // charts/berth/tests/values/custom-paths-minimal.yaml
    let c = golden("custom-paths-minimal.config.toml");
    assert_eq!(c.root, Path::new("/data/berth"));
    assert_eq!(c.state, Path::new("/run/berth-alt"));
    assert_eq!(c.grpc.socket, Path::new("/run/berth-alt/cri.sock"));
    assert_eq!(c.runtimes["runc"].path, Path::new("/usr/bin/runc"));
    assert_eq!(c.network, Default::default());
}
