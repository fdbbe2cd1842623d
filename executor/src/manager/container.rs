//! Workers and shell tasks inside the endpoint's container
//! (`engine.container_type`): the command line each runtime needs to run a
//! program in it with the worker runtime, the working directory and the
//! sandbox bound at their own paths, the worker's accelerator passed in, and
//! its environment; and how a container is removed when its command is
//! killed. The manager itself stays outside.
//!
//! The worker runtime is bound read-only from the manager's private
//! directory, so an image needs only a Python, not hpfaas. Environment
//! values never go on a command line (other users can read it): bwrap and
//! Apptainer inherit the runtime command's environment, and Podman and
//! Docker are given only the variables' names (`--env NAME`), whose values
//! they read from their own environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::container::{Container, ContainerType};

/// One program to run in the container.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// Container name (Podman and Docker), unique on the node.
    pub name: &'a str,
    /// The program and its arguments, as inside the container.
    pub argv: Vec<OsString>,
    /// Working directory, bound read-write at the same path.
    pub cwd: &'a Path,
    /// Further directories bound at their own paths: (path, writable).
    pub binds: Vec<(PathBuf, bool)>,
    /// Names of the environment variables the program must see (their
    /// values are in the runtime command's own environment).
    pub env_names: Vec<String>,
    /// The accelerator given to this worker, if any.
    pub accelerator: Option<&'a str>,
    /// Keep stdin open to the program (a worker's request pipe).
    pub interactive: bool,
}

/// Variables of the job's environment that describe the node rather than
/// the job, which an image has its own values of. Only Podman and Docker
/// are given names: bwrap and Apptainer inherit the environment whole.
const NODE_ONLY_VARIABLES: [&str; 6] = [
    "PATH",
    "HOME",
    "HOSTNAME",
    "LD_LIBRARY_PATH",
    "PYTHONHOME",
    "TMPDIR",
];

/// The names among `names` that a container is given ([`Run::env_names`]).
pub fn passed_variables<'a>(names: impl Iterator<Item = &'a std::ffi::OsStr>) -> Vec<String> {
    names
        .filter_map(|k| k.to_str())
        .filter(|k| !NODE_ONLY_VARIABLES.contains(k))
        .map(str::to_string)
        .collect()
}

/// Suffixes of an image archive, which Podman imports before running it.
const ARCHIVE_SUFFIXES: [&str; 4] = [".tar", ".tar.gz", ".tgz", ".tar.xz"];

/// Whether `uri` names an image archive rather than an image or a directory.
pub fn is_archive(uri: &str) -> bool {
    ARCHIVE_SUFFIXES.iter().any(|s| uri.ends_with(s))
}

/// Makes `container` ready on this node, once per manager: its runtime must
/// be installed, and Podman imports an image archive (`podman import`),
/// whose image then stands for the archive. The error names the runtime or
/// the archive and what the runtime said; every worker start fails with it.
pub fn prepare(container: Container) -> Result<Container, String> {
    let runtime = container.kind.name();
    if !hpfaas_scheduler_adapters::command::on_path(runtime) {
        return Err(format!(
            "engine.container_type = \"{runtime}\", but {runtime} is not installed on this node \
             (not on PATH)"
        ));
    }
    let uri = match container.uri.as_deref() {
        Some(uri) if container.kind == ContainerType::Podman && is_archive(uri) => uri,
        _ => return Ok(container),
    };
    let out = std::process::Command::new(runtime)
        .args(["import", "--quiet", uri])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{runtime} import {uri}`: {e}"))?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || id.is_empty() {
        return Err(format!(
            "cannot import the image archive {uri} (engine.container_uri): `{runtime} import` \
             said: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    tracing::info!("imported {uri} as image {id}");
    Ok(Container {
        uri: Some(id),
        ..container
    })
}

/// The full command line (runtime first) that runs `run` in `container`.
pub fn argv(container: &Container, run: &Run) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![container.kind.name().into()];
    match container.kind {
        ContainerType::Bwrap => {
            let root = container.uri.as_deref().unwrap_or("/");
            // A private /tmp: the node's is shared with other users.
            push(
                &mut out,
                &["--die-with-parent", "--unshare-pid", "--unshare-ipc"],
            );
            push(
                &mut out,
                &["--ro-bind", root, "/", "--proc", "/proc", "--tmpfs", "/tmp"],
            );
            if run.accelerator.is_some() {
                push(&mut out, &["--dev-bind", "/dev", "/dev"]);
            } else {
                push(&mut out, &["--dev", "/dev"]);
            }
            for (path, writable) in binds(run) {
                let flag = if writable { "--bind" } else { "--ro-bind" };
                out.extend([
                    flag.into(),
                    path.as_os_str().into(),
                    path.as_os_str().into(),
                ]);
            }
            out.extend(["--chdir".into(), run.cwd.as_os_str().into()]);
            out.extend(container.options.iter().map(OsString::from));
            out.push("--".into());
        }
        ContainerType::Podman | ContainerType::Docker => {
            out.push("run".into());
            // No log driver: a worker's stdout is its reply pipe, which
            // holds task results, and nothing should keep a copy.
            push(
                &mut out,
                &["--rm", "--network", "host", "--log-driver", "none"],
            );
            if run.interactive {
                out.push("--interactive".into());
            }
            out.extend(["--name".into(), run.name.into()]);
            for (path, writable) in binds(run) {
                let mut spec = OsString::from("type=bind,source=");
                spec.push(path.as_os_str());
                spec.push(",destination=");
                spec.push(path.as_os_str());
                if !writable {
                    spec.push(",readonly");
                }
                out.extend(["--mount".into(), spec]);
            }
            out.extend(["--workdir".into(), run.cwd.as_os_str().into()]);
            for name in &run.env_names {
                out.extend(["--env".into(), name.into()]);
            }
            if let Some(device) = run.accelerator {
                if container.kind == ContainerType::Podman {
                    out.extend(["--device".into(), format!("nvidia.com/gpu={device}").into()]);
                } else {
                    out.extend(["--gpus".into(), format!("device={device}").into()]);
                }
            }
            out.extend(container.options.iter().map(OsString::from));
            let uri = container.uri.as_deref().unwrap_or_default();
            if container.kind == ContainerType::Podman && Path::new(uri).is_dir() {
                // A root filesystem: under an overlay, so tasks cannot
                // change the directory itself.
                out.extend(["--rootfs".into(), format!("{uri}:O").into()]);
            } else {
                out.push(uri.into());
            }
        }
        ContainerType::Apptainer | ContainerType::Singularity => {
            // No home or /tmp of the node unless asked for in the options;
            // not `--containall`, whose `--cleanenv` would drop the worker's
            // environment.
            push(&mut out, &["exec", "--contain", "--ipc", "--pid"]);
            for (path, writable) in binds(run) {
                let mut spec = path.as_os_str().to_owned();
                spec.push(":");
                spec.push(path.as_os_str());
                if !writable {
                    spec.push(":ro");
                }
                out.extend(["--bind".into(), spec]);
            }
            out.extend(["--pwd".into(), run.cwd.as_os_str().into()]);
            if run.accelerator.is_some() {
                out.push("--nv".into());
            }
            out.extend(container.options.iter().map(OsString::from));
            out.push(container.uri.as_deref().unwrap_or_default().into());
        }
    }
    out.extend(run.argv.iter().cloned());
    out
}

fn push(out: &mut Vec<OsString>, words: &[&str]) {
    out.extend(words.iter().map(OsString::from));
}

/// The working directory and the other binds, in order, without repeats;
/// never the node's `/` (a job whose home is unknown works in `/`).
fn binds(run: &Run) -> Vec<(PathBuf, bool)> {
    let mut all: Vec<(PathBuf, bool)> = Vec::new();
    let wanted = std::iter::once((run.cwd.to_path_buf(), true)).chain(run.binds.iter().cloned());
    for (path, writable) in wanted {
        if path != Path::new("/") && !all.iter().any(|(p, _)| *p == path) {
            all.push((path, writable));
        }
    }
    all
}

/// The command that removes the container `name` whatever its state, for
/// runtimes whose containers outlive their command (Podman, Docker).
pub fn remove_command(container: &Container, name: &str) -> Option<std::process::Command> {
    if container.kind.is_child() {
        return None;
    }
    let mut command = std::process::Command::new(container.kind.name());
    command.args(["rm", "--force", name]);
    Some(command)
}

/// The start of the name of every container this manager starts (Podman,
/// Docker): the user and the manager's pid, so that a later manager can
/// tell the containers a killed manager of the same user left ([`sweep`])
/// from anyone else's.
pub fn name_prefix() -> String {
    format!("hpfaas-{}-{}-", uid(), std::process::id())
}

/// This process's user id.
fn uid() -> u32 {
    // SAFETY: getuid(2) cannot fail.
    unsafe { libc::getuid() }
}

/// The pid of the manager that named container `name`, if it is one of
/// `uid`'s ([`name_prefix`]).
fn manager_of(name: &str, uid: u32) -> Option<u32> {
    let rest = name.strip_prefix(&format!("hpfaas-{uid}-"))?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Removes the containers (Podman, Docker) that this user's managers on
/// this node left behind when they were killed (SIGKILL gives a manager no
/// chance to remove them, and `--rm` acts only once a container's process
/// ends, which a warm worker's never does): those named by a manager whose
/// process is gone. Other users' containers, and those of managers still
/// running, are left alone. Returns how many were removed.
pub fn sweep(container: &Container) -> usize {
    if container.kind.is_child() {
        return 0;
    }
    let uid = uid();
    let listed = std::process::Command::new(container.kind.name())
        .args(["ps", "--all", "--format", "{{.Names}}"])
        .arg("--filter")
        .arg(format!("name=^hpfaas-{uid}-"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Some(listed) = listed.ok().filter(|o| o.status.success()) else {
        return 0;
    };
    let mut removed = 0;
    for name in String::from_utf8_lossy(&listed.stdout).lines() {
        let Some(pid) = manager_of(name.trim(), uid) else {
            continue;
        };
        if pid == std::process::id() || crate::agent::pid::pid_alive(pid) {
            continue;
        }
        let Some(mut rm) = remove_command(container, name.trim()) else {
            continue;
        };
        let done = rm
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if done.is_ok_and(|s| s.success()) {
            tracing::info!(
                container = name.trim(),
                manager = pid,
                "removed a container a killed manager left"
            );
            removed += 1;
        }
    }
    removed
}

/// Removes container `name` in the background (Podman, Docker): a killed
/// `podman run` leaves its container running. Waited for on a thread, so
/// no zombie is left and the caller does not block.
pub fn remove(container: &Container, name: &str) {
    if let Some(mut command) = remove_command(container, name) {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Ok(mut child) = command.spawn() {
            std::thread::spawn(move || child.wait());
        }
    }
}

/// Words for messages: `podman container localhost/sci:1`.
pub fn describe(container: &Container) -> String {
    match &container.uri {
        Some(uri) => format!("{} container {uri}", container.kind),
        None => format!("{} container of this node's /", container.kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(kind: &str, uri: Option<&str>, options: &str) -> Container {
        Container::from_keys(Some(kind.parse().unwrap()), uri, options)
            .unwrap()
            .unwrap()
    }

    fn words(argv: Vec<OsString>) -> String {
        argv.iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn worker<'a>(cwd: &'a Path, accelerator: Option<&'a str>) -> Run<'a> {
        Run {
            name: "hpfaas-w-1-0",
            argv: ["python3", "-u", "-c", "boot"].map(OsString::from).to_vec(),
            cwd,
            binds: vec![
                (PathBuf::from("/ep/runtime/rt"), false),
                (PathBuf::from("/job"), true),
            ],
            env_names: vec!["HPFAAS_WORKER_RANK".into(), "OMP_NUM_THREADS".into()],
            accelerator,
            interactive: true,
        }
    }

    /// The exact command lines, one per runtime: Apptainer and Singularity
    /// cannot be installed here, so these lines are their only test.
    #[test]
    fn command_lines_per_runtime() {
        let cwd = Path::new("/job");
        let cases = [
            (
                container("bwrap", None, ""),
                None,
                "bwrap --die-with-parent --unshare-pid --unshare-ipc --ro-bind / / --proc /proc \
                 --tmpfs /tmp --dev /dev --bind /job /job --ro-bind /ep/runtime/rt /ep/runtime/rt \
                 --chdir /job -- python3 -u -c boot",
            ),
            (
                container("bwrap", Some("/images/sci"), "--unshare-net"),
                Some("0"),
                "bwrap --die-with-parent --unshare-pid --unshare-ipc --ro-bind /images/sci / \
                 --proc /proc --tmpfs /tmp --dev-bind /dev /dev --bind /job /job --ro-bind \
                 /ep/runtime/rt /ep/runtime/rt --chdir /job --unshare-net -- python3 -u -c boot",
            ),
            (
                container("podman", Some("localhost/sci:1"), "--runtime runc"),
                Some("1"),
                "podman run --rm --network host --log-driver none --interactive --name \
                 hpfaas-w-1-0 --mount type=bind,source=/job,destination=/job --mount \
                 type=bind,source=/ep/runtime/rt,destination=/ep/runtime/rt,readonly --workdir \
                 /job --env HPFAAS_WORKER_RANK --env OMP_NUM_THREADS --device nvidia.com/gpu=1 \
                 --runtime runc localhost/sci:1 python3 -u -c boot",
            ),
            (
                container("docker", Some("sci:1"), ""),
                Some("2"),
                "docker run --rm --network host --log-driver none --interactive --name \
                 hpfaas-w-1-0 --mount type=bind,source=/job,destination=/job --mount \
                 type=bind,source=/ep/runtime/rt,destination=/ep/runtime/rt,readonly --workdir \
                 /job --env HPFAAS_WORKER_RANK --env OMP_NUM_THREADS --gpus device=2 sci:1 \
                 python3 -u -c boot",
            ),
            (
                container("apptainer", Some("/images/sci.sif"), "--writable-tmpfs"),
                Some("0"),
                "apptainer exec --contain --ipc --pid --bind /job:/job --bind \
                 /ep/runtime/rt:/ep/runtime/rt:ro --pwd /job --nv --writable-tmpfs \
                 /images/sci.sif python3 -u -c boot",
            ),
            (
                container("singularity", Some("/images/sci.sif"), ""),
                None,
                "singularity exec --contain --ipc --pid --bind /job:/job --bind \
                 /ep/runtime/rt:/ep/runtime/rt:ro --pwd /job /images/sci.sif python3 -u -c boot",
            ),
        ];
        for (c, accelerator, want) in cases {
            let want: String = want.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(
                words(argv(&c, &worker(cwd, accelerator))),
                want,
                "{}",
                c.kind
            );
        }
    }

    #[test]
    fn a_podman_root_directory_runs_under_an_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().to_str().unwrap();
        let line = words(argv(
            &container("podman", Some(uri), ""),
            &worker(Path::new("/job"), None),
        ));
        assert!(
            line.contains(&format!("--rootfs {uri}:O python3")),
            "{line}"
        );
    }

    #[test]
    fn only_daemon_runtimes_need_removing() {
        for kind in ["bwrap", "apptainer", "singularity"] {
            assert!(remove_command(&container(kind, Some("/x"), ""), "n").is_none());
        }
        let rm = remove_command(&container("podman", Some("img"), ""), "hpfaas-w-1-0").unwrap();
        let args: Vec<_> = rm
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["rm", "--force", "hpfaas-w-1-0"]);
        assert!(is_archive("/images/sci.tar") && !is_archive("localhost/sci:1"));
    }

    #[test]
    fn only_this_users_manager_names_are_read() {
        assert_eq!(manager_of("hpfaas-1000-4242-w0-3", 1000), Some(4242));
        assert_eq!(manager_of("hpfaas-1000-4242-t0f3a", 1000), Some(4242));
        assert_eq!(manager_of("hpfaas-1001-4242-w0-3", 1000), None);
        assert_eq!(manager_of("hpfaas-10000-4242-w0-3", 1000), None);
        assert_eq!(manager_of("hpfaas-1000-x-w0", 1000), None);
        assert_eq!(manager_of("other", 1000), None);
        let own = name_prefix();
        assert_eq!(
            manager_of(&format!("{own}w1-0"), uid()),
            Some(std::process::id())
        );
    }
}
