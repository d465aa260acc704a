//! Pure conversions used by the cgroup drivers: kubelet's `cgroup_parent` to a relative cgroup
//! path (cgroupfs and systemd drivers), and cpu shares (v1) to cpu weight (v2).

use std::path::PathBuf;

/// Why a `cgroup_parent` cannot be turned into a cgroup path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParentError {
    /// A path component is `..`, `.`, or empty where a name is required.
    #[error("invalid cgroup parent {0:?}")]
    Invalid(String),
    /// A systemd driver parent is not a `.slice` name.
    #[error("systemd cgroup parent {0:?} is not a slice name")]
    NotASlice(String),
}

/// Turns a cgroupfs-driver parent such as `/kubepods/burstable/pod<uid>` into a path relative
/// to a hierarchy root. Rejects `..` and `.` components so the result stays beneath the root.
pub fn cgroupfs_parent(parent: &str) -> Result<PathBuf, ParentError> {
    let mut out = PathBuf::new();
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        if part == ".." || part == "." || part.contains('\0') {
            return Err(ParentError::Invalid(parent.to_owned()));
        }
        out.push(part);
    }
    Ok(out)
}

/// Expands a systemd slice name the way systemd does: `a-b-c.slice` lives at
/// `a.slice/a-b.slice/a-b-c.slice`; `-.slice` (the root slice) is the empty path.
pub fn systemd_slice(slice: &str) -> Result<PathBuf, ParentError> {
    let name = slice
        .strip_suffix(".slice")
        .ok_or_else(|| ParentError::NotASlice(slice.to_owned()))?;
    if name == "-" {
        return Ok(PathBuf::new());
    }
    if name.is_empty()
        || name.contains('/')
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(ParentError::Invalid(slice.to_owned()));
    }
    let mut out = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out)
}

/// Converts cgroup v1 `cpu.shares` (2..=262144) to cgroup v2 `cpu.weight` (1..=10000), with
/// the formula runc and crun use; 0 means "unset" and maps to 0.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Converts cgroup v2 `cpu.weight` back to approximate v1 shares (for status reporting).
pub fn weight_to_shares(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    let weight = weight.clamp(1, 10_000);
    2 + ((weight - 1) * 262_142) / 9999
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_parent_is_relative_and_safe() {
        assert_eq!(
            cgroupfs_parent("/kubepods/burstable/podabc").unwrap(),
            PathBuf::from("kubepods/burstable/podabc")
        );
        assert_eq!(cgroupfs_parent("").unwrap(), PathBuf::new());
        assert!(cgroupfs_parent("/kubepods/../etc").is_err());
    }

    #[test]
    fn systemd_slice_expands_like_systemd() {
        assert_eq!(
            systemd_slice("kubepods-burstable-pod12.slice").unwrap(),
            PathBuf::from("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice")
        );
        assert_eq!(
            systemd_slice("kubepods.slice").unwrap(),
            PathBuf::from("kubepods.slice")
        );
        assert_eq!(systemd_slice("-.slice").unwrap(), PathBuf::new());
        assert!(matches!(
            systemd_slice("kubepods"),
            Err(ParentError::NotASlice(_))
        ));
        assert!(systemd_slice("a--b.slice").is_err());
        assert!(systemd_slice("a/b.slice").is_err());
    }

    #[test]
    fn shares_weight_conversion_matches_known_points() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
        assert!(weight_to_shares(shares_to_weight(1024)).abs_diff(1024) < 30);
    }
}
