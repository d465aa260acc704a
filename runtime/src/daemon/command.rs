//! The process a container runs: argv from CRI and image, and its environment.

use crate::error::{Error, Result};
use crate::image::ImageConfig;

/// The PATH a container gets when neither the image nor CRI sets one (containerd's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Composes the container's argv as kubelet expects (and containerd does): CRI `command`
/// replaces the image ENTRYPOINT, CRI `args` replaces CMD; an explicit `command` without
/// `args` drops the image CMD.
pub fn compose_argv(
    command: &[String],
    args: &[String],
    image: &ImageConfig,
) -> Result<Vec<String>> {
    let mut argv: Vec<String> = if command.is_empty() {
        let mut v = image.entrypoint.clone();
        v.extend(
            if args.is_empty() {
                image.cmd.iter().cloned()
            } else {
                args.iter().cloned()
            }
            .collect::<Vec<_>>(),
        );
        v
    } else {
        let mut v = command.to_vec();
        v.extend(args.iter().cloned());
        v
    };
    if argv.is_empty() {
        return Err(Error::InvalidArgument(
            "no command specified: the container config and the image give neither command nor args".into(),
        ));
    }
    if argv[0].is_empty() {
        argv.remove(0);
        if argv.is_empty() {
            return Err(Error::InvalidArgument(
                "the command is an empty string".into(),
            ));
        }
    }
    Ok(argv)
}

/// Builds the environment: image ENV, then CRI envs replacing same-named keys, then defaults
/// for PATH, HOSTNAME and HOME when not set.
pub fn compose_env(
    image_env: &[String],
    cri_env: &[(String, String)],
    hostname: &str,
    home: &str,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::with_capacity(image_env.len() + cri_env.len() + 3);
    fn put(env: &mut Vec<String>, entry: String) {
        let key = entry.split('=').next().unwrap_or("").to_owned();
        if let Some(slot) = env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            *slot = entry;
        } else {
            env.push(entry);
        }
    }
    for e in image_env {
        put(
            &mut env,
            if e.contains('=') {
                e.clone()
            } else {
                format!("{e}=")
            },
        );
    }
    for (k, v) in cri_env {
        put(&mut env, format!("{k}={v}"));
    }
    let has = |env: &Vec<String>, k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !hostname.is_empty() && !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

/// The value of `key` in a `KEY=value` list.
pub fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Classify;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn image(ep: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: s(ep),
            cmd: s(cmd),
            ..Default::default()
        }
    }

    #[test]
    fn kubelet_rules() {
        let img = image(&["/ep", "x"], &["c1", "c2"]);
        assert_eq!(
            compose_argv(&[], &[], &img).unwrap(),
            s(&["/ep", "x", "c1", "c2"])
        );
        assert_eq!(
            compose_argv(&[], &s(&["a"]), &img).unwrap(),
            s(&["/ep", "x", "a"])
        );
        assert_eq!(
            compose_argv(&s(&["/bin/sh"]), &[], &img).unwrap(),
            s(&["/bin/sh"])
        );
        assert_eq!(
            compose_argv(&s(&["/bin/sh"]), &s(&["-c", "x"]), &img).unwrap(),
            s(&["/bin/sh", "-c", "x"])
        );
        let cmd_only = image(&[], &["sh"]);
        assert_eq!(compose_argv(&[], &[], &cmd_only).unwrap(), s(&["sh"]));
        assert_eq!(
            compose_argv(&[], &s(&["top"]), &cmd_only).unwrap(),
            s(&["top"])
        );
    }

    #[test]
    fn empty_command_is_invalid() {
        let err = compose_argv(&[], &[], &ImageConfig::default()).unwrap_err();
        assert_eq!(err.class(), crate::Class::InvalidArgument);
        assert!(compose_argv(&s(&[""]), &[], &ImageConfig::default()).is_err());
    }

    #[test]
    fn env_merges_and_defaults() {
        let env = compose_env(
            &s(&["A=1", "B=2", "PATH=/bin"]),
            &[("B".into(), "3".into()), ("C".into(), "x=y".into())],
            "pod1",
            "/root",
        );
        assert_eq!(
            env,
            s(&[
                "A=1",
                "B=3",
                "PATH=/bin",
                "C=x=y",
                "HOSTNAME=pod1",
                "HOME=/root"
            ])
        );
        let env = compose_env(&[], &[("HOME".into(), "/h".into())], "", "/root");
        assert_eq!(env, s(&[&format!("PATH={DEFAULT_PATH}"), "HOME=/h"]));
        assert_eq!(env_value(&env, "HOME"), Some("/h"));
        assert_eq!(env_value(&env, "HOM"), None);
    }
}
