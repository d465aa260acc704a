//! Which user a container runs as: CRI security context or image USER, resolved in the
//! image's own `/etc/passwd` and `/etc/group`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod imagefs;

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member user names.
    pub members: Vec<String>,
}

/// The entries of a passwd-style database (`name:password:id:...`) as their name, their
/// numeric id and all their fields, skipping comments and malformed lines (fewer than
/// `min_fields` fields, no name, an id that is not a number) as libc does.
fn records(text: &str, min_fields: usize) -> impl Iterator<Item = (String, u32, Vec<&str>)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(move |l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < min_fields || f[0].is_empty() {
                return None;
            }
            let id = f[2].trim().parse().ok()?;
            Some((f[0].to_owned(), id, f))
        })
}

/// Parses `/etc/passwd` text, skipping malformed lines and comments as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    records(text, 4)
        .filter_map(|(name, uid, f)| {
            Some(PasswdEntry {
                name,
                uid,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    let members = |m: &str| -> Vec<String> {
        m.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    records(text, 3)
        .map(|(name, gid, f)| GroupEntry {
            name,
            gid,
            members: f.get(3).map(|m| members(m)).unwrap_or_default(),
        })
        .collect()
}

/// What the container asks for, before resolution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserRequest {
    /// CRI `run_as_user`.
    pub run_as_user: Option<i64>,
    /// CRI `run_as_group`.
    pub run_as_group: Option<i64>,
    /// CRI `run_as_username`.
    pub run_as_username: String,
    /// The image's USER.
    pub image_user: String,
    /// CRI `supplemental_groups`.
    pub supplemental_groups: Vec<i64>,
    /// `SupplementalGroupsPolicy` Strict: no groups from the image's /etc/group.
    pub strict_groups: bool,
}

/// The ids a container's processes run with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
    /// Home directory, for `HOME`.
    pub home: String,
}

fn to_id(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} is out of range")))
}

/// Resolves a request against the image's passwd and group entries, as containerd does.
pub fn resolve_user(
    req: &UserRequest,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<ResolvedUser> {
    if req.run_as_group.is_some() && req.run_as_user.is_none() && req.run_as_username.is_empty() {
        // As containerd and CRI-O answer: a group alone would silently pair with the
        // image's user.
        return Err(Error::InvalidArgument(
            "run_as_group is set without run_as_user or run_as_username".into(),
        ));
    }
    let by_uid = |uid: u32| passwd.iter().find(|p| p.uid == uid);
    let by_name = |name: &str| passwd.iter().find(|p| p.name == name);
    let (uid, mut gid, entry): (u32, u32, Option<&PasswdEntry>) = if let Some(uid) = req.run_as_user
    {
        let uid = to_id(uid, "run_as_user")?;
        let e = by_uid(uid);
        (uid, e.map(|e| e.gid).unwrap_or(0), e)
    } else if !req.run_as_username.is_empty() {
        let e = by_name(&req.run_as_username).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "user {:?} not found in the image's /etc/passwd",
                req.run_as_username
            ))
        })?;
        (e.uid, e.gid, Some(e))
    } else {
        let spec = req.image_user.trim();
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, gid, e) = if user.is_empty() {
            (0, 0, by_uid(0))
        } else if let Ok(uid) = user.parse::<u32>() {
            let e = by_uid(uid);
            (uid, e.map(|e| e.gid).unwrap_or(0), e)
        } else {
            let e = by_name(user).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "image user {user:?} not found in the image's /etc/passwd"
                ))
            })?;
            (e.uid, e.gid, Some(e))
        };
        let gid = match group {
            None | Some("") => gid,
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => groups
                    .iter()
                    .find(|x| x.name == g)
                    .map(|x| x.gid)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "image group {g:?} not found in the image's /etc/group"
                        ))
                    })?,
            },
        };
        (uid, gid, e)
    };
    if let Some(g) = req.run_as_group {
        gid = to_id(g, "run_as_group")?;
    }
    let mut additional: Vec<u32> = Vec::new();
    if !req.strict_groups
        && let Some(e) = entry
    {
        for g in groups {
            if g.members.iter().any(|m| m == &e.name) && !additional.contains(&g.gid) {
                additional.push(g.gid);
            }
        }
    }
    for g in &req.supplemental_groups {
        let g = to_id(*g, "supplemental group")?;
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    // As containerd: the primary group is one of the supplementary groups too, so the
    // process keeps it if it changes its gid, and ContainerStatus reports what `id -G` shows.
    if !additional.contains(&gid) {
        additional.insert(0, gid);
    }
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        home,
    })
}

/// The largest `/etc/passwd` or `/etc/group` read from an image. Over it the container is
/// refused rather than the file truncated: a cut line can parse as another entry
/// (`alice:x:1000:1000` cut to `alice:x:1000:1`), and the daemon's memory is bounded by what
/// it agrees to read, not by the image. Real images' files are a few KiB; 4 MiB is some
/// 50,000 accounts.
pub const MAX_ACCOUNTS_FILE: u64 = 4 << 20;

/// Reads the image's passwd and group entries from its layers (topmost first) as the
/// container's root shows them, never following an image symlink out of the image (see
/// [`imagefs`]); missing files read as empty.
pub fn image_accounts(lower_dirs: &[PathBuf]) -> Result<(Vec<PasswdEntry>, Vec<GroupEntry>)> {
    let root = imagefs::ImageRoot::open(lower_dirs).map_err(|source| Error::Io {
        op: "open the image's layers",
        path: lower_dirs.first().cloned().unwrap_or_default(),
        source,
    })?;
    let read = |path: &str| -> Result<String> {
        let data = root.read_file(path, MAX_ACCOUNTS_FILE).map_err(|e| {
            // The message goes to kubelet as a string: the cause goes with it.
            let mut msg = format!("the image's {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            Error::InvalidArgument(msg)
        })?;
        Ok(String::from_utf8_lossy(&data.unwrap_or_default()).into_owned())
    };
    Ok((
        parse_passwd(&read("/etc/passwd")?),
        parse_group(&read("/etc/group")?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Classify;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbad line\nwww-data:x:33:33:www:/var/www:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root,alice\nwww-data:x:33:\nvideo:x:44:alice\nalice:x:1000:\n";

    fn resolve(req: UserRequest) -> Result<ResolvedUser> {
        resolve_user(&req, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn parses() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[1],
            PasswdEntry {
                name: "www-data".into(),
                uid: 33,
                gid: 33,
                home: "/var/www".into()
            }
        );
        let g = parse_group(GROUP);
        assert_eq!(g[1].members, vec!["root".to_string(), "alice".to_string()]);
    }

    #[test]
    fn default_is_root_with_groups() {
        let u = resolve(UserRequest::default()).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.additional_gids, vec![0, 10]);
    }

    #[test]
    fn image_user_forms() {
        let image_user = |u: &str| {
            resolve(UserRequest {
                image_user: u.into(),
                ..Default::default()
            })
        };
        let u = image_user("alice").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1000, vec![1000, 10, 44])
        );
        let u = image_user("33").unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        let u = image_user("4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        let u = image_user("alice:video").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 44));
        let u = image_user("1:7").unwrap();
        assert_eq!((u.uid, u.gid), (1, 7));
        assert!(image_user("bob").is_err());
        assert!(image_user("alice:nogroup").is_err());
    }

    #[test]
    fn a_group_alone_is_refused() {
        let e = resolve(UserRequest {
            run_as_group: Some(5),
            image_user: "www-data".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("run_as_group"), "{e}");
    }

    #[test]
    fn cri_overrides_image() {
        let u = resolve(UserRequest {
            run_as_user: Some(1000),
            run_as_group: Some(5),
            image_user: "www-data".into(),
            supplemental_groups: vec![7, 10],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids),
            (1000, 5, vec![5, 10, 44, 7])
        );
        let u = resolve(UserRequest {
            run_as_username: "www-data".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        let e = resolve(UserRequest {
            run_as_username: "nobody".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.class(), crate::Class::InvalidArgument);
        assert!(
            resolve(UserRequest {
                run_as_user: Some(-1),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn strict_policy_keeps_only_requested_groups() {
        let u = resolve(UserRequest {
            image_user: "alice".into(),
            supplemental_groups: vec![99],
            strict_groups: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(u.additional_gids, vec![1000, 99]);
    }

    #[test]
    fn accounts_come_from_the_merged_image() {
        let d = tempfile::tempdir().unwrap();
        let (top, bottom) = (d.path().join("top"), d.path().join("bottom"));
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "root:x:0:0::/r:/bin/sh\n").unwrap();
        std::fs::write(bottom.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(top.join("etc/passwd"), "root:x:0:0::/top:/bin/sh\n").unwrap();
        std::fs::write(top.join("etc/.wh.group"), "").unwrap();
        let (p, g) = image_accounts(&[top.clone(), bottom.clone()]).unwrap();
        assert_eq!(p[0].home, "/top");
        assert!(g.is_empty());
        let (_, g) = image_accounts(std::slice::from_ref(&bottom)).unwrap();
        assert_eq!(g[0].name, "root");
    }

    #[test]
    fn an_image_etc_pointing_at_the_node_is_refused_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let layer = d.path().join("l");
        std::fs::create_dir_all(&layer).unwrap();
        // `/etc -> /etc`: on the node it would be the node's /etc; in the image it loops.
        std::os::unix::fs::symlink("/etc", layer.join("etc")).unwrap();
        let e = image_accounts(std::slice::from_ref(&layer)).unwrap_err();
        assert_eq!(e.class(), crate::Class::InvalidArgument);
        let msg = e.to_string();
        assert!(
            msg.contains("/etc/passwd") && msg.contains("symbolic links"),
            "{msg}"
        );
        // `etc/passwd -> /etc/shadow`: the image has no shadow file, so no accounts; the
        // node's shadow is never read.
        std::fs::remove_file(layer.join("etc")).unwrap();
        std::fs::create_dir(layer.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", layer.join("etc/passwd")).unwrap();
        let (p, g) = image_accounts(std::slice::from_ref(&layer)).unwrap();
        assert!(p.is_empty() && g.is_empty(), "{p:?} {g:?}");
    }

    #[test]
    fn an_oversized_passwd_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let layer = d.path().join("l");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        let line = "u:x:1:1::/:/bin/sh\n";
        let big = line.repeat((MAX_ACCOUNTS_FILE as usize / line.len()) + 1);
        std::fs::write(layer.join("etc/group"), &big).unwrap();
        let e = image_accounts(std::slice::from_ref(&layer)).unwrap_err();
        assert_eq!(e.class(), crate::Class::InvalidArgument);
        assert!(e.to_string().contains("/etc/group"), "{e}");
    }
}
