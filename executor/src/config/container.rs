//! `engine.container_type`, `container_uri` and `container_cmd_options`
//! (Globus Compute's names): which container runtime the workers and shell
//! tasks run in, and in what. Read from the file by the agent, passed to
//! each manager on its command line and read back there with the same
//! parser; `manager/container.rs` turns them into command lines.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// A container runtime (`engine.container_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ContainerType {
    /// `podman run`: an image, an image archive (`.tar`), or a root
    /// filesystem directory (`--rootfs`, with an overlay over it).
    Podman,
    /// `docker run`: an image.
    Docker,
    /// `apptainer exec`: a `.sif` file, a sandbox directory, or an image URI.
    Apptainer,
    /// `singularity exec`: as Apptainer.
    Singularity,
    /// `bwrap` (bubblewrap): a root filesystem directory, read-only; none
    /// means this machine's own, read-only, in new namespaces.
    Bwrap,
}

impl ContainerType {
    /// The names `engine.container_type` accepts.
    pub const NAMES: [&'static str; 5] = ["podman", "docker", "apptainer", "singularity", "bwrap"];

    /// Reads an `engine.container_type` value.
    pub fn parse(name: &str) -> Result<ContainerType, String> {
        match name {
            "podman" => Ok(ContainerType::Podman),
            "docker" => Ok(ContainerType::Docker),
            "apptainer" => Ok(ContainerType::Apptainer),
            "singularity" => Ok(ContainerType::Singularity),
            "bwrap" => Ok(ContainerType::Bwrap),
            other => Err(format!(
                "engine.container_type = {other:?} is unknown; use one of {}",
                ContainerType::NAMES.join(", ")
            )),
        }
    }

    /// The value `engine.container_type` takes, which is also the runtime's
    /// command.
    pub fn name(self) -> &'static str {
        match self {
            ContainerType::Podman => "podman",
            ContainerType::Docker => "docker",
            ContainerType::Apptainer => "apptainer",
            ContainerType::Singularity => "singularity",
            ContainerType::Bwrap => "bwrap",
        }
    }

    /// Whether the runtime runs a container as a child of its own command
    /// (bwrap, Apptainer): killing the command kills the container. Podman
    /// and Docker hand it to a daemon or monitor, and it must be removed by
    /// name.
    pub fn is_child(self) -> bool {
        matches!(
            self,
            ContainerType::Bwrap | ContainerType::Apptainer | ContainerType::Singularity
        )
    }
}

impl fmt::Display for ContainerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ContainerType {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        ContainerType::parse(name)
    }
}

impl TryFrom<String> for ContainerType {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        ContainerType::parse(&name)
    }
}

/// The container every worker and shell task of an endpoint runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The runtime.
    pub kind: ContainerType,
    /// What to run (`engine.container_uri`); only bwrap may go without.
    pub uri: Option<String>,
    /// `engine.container_cmd_options`, split at white space: the runtime's
    /// own options, after hpfaas's and before the image.
    pub options: Vec<String>,
}

impl Container {
    /// The container the three keys describe; `None` without a type. A
    /// URI or options without a type are refused rather than ignored.
    pub fn from_keys(
        kind: Option<ContainerType>,
        uri: Option<&str>,
        options: &str,
    ) -> Result<Option<Container>, String> {
        let uri = uri.map(str::trim).filter(|u| !u.is_empty());
        let Some(kind) = kind else {
            if uri.is_some() || !options.trim().is_empty() {
                return Err(
                    "engine.container_uri and engine.container_cmd_options need \
                     engine.container_type (one of podman, docker, apptainer, singularity, bwrap)"
                        .into(),
                );
            }
            return Ok(None);
        };
        if uri.is_none() && kind != ContainerType::Bwrap {
            return Err(format!(
                "engine.container_type = \"{kind}\" needs engine.container_uri: the image (or \
                 archive, directory, .sif) the workers run in"
            ));
        }
        if let Some(u) = uri {
            if u.starts_with('-') || u.contains(['\n', '\0']) {
                return Err(format!(
                    "engine.container_uri = {u:?} is not an image name or a path"
                ));
            }
        }
        Ok(Some(Container {
            kind,
            uri: uri.map(str::to_string),
            options: options.split_whitespace().map(str::to_string).collect(),
        }))
    }

    /// The manager's command-line arguments that carry this container.
    pub fn manager_args(&self) -> Vec<String> {
        let mut args = vec!["--container-type".to_string(), self.kind.to_string()];
        if let Some(uri) = &self.uri {
            args.extend(["--container-uri".to_string(), uri.clone()]);
        }
        if !self.options.is_empty() {
            // `=`: options start with `-`, which clap would take for a flag.
            args.push(format!(
                "--container-cmd-options={}",
                self.options.join(" ")
            ));
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_listed() {
        for name in ContainerType::NAMES {
            assert_eq!(ContainerType::parse(name).unwrap().name(), name);
        }
        let err = ContainerType::parse("lxc").unwrap_err();
        assert!(err.contains("\"lxc\"") && err.contains("bwrap"), "{err}");
    }

    #[test]
    fn keys_are_checked_together() {
        assert_eq!(Container::from_keys(None, None, "").unwrap(), None);
        let err = Container::from_keys(None, Some("img"), "").unwrap_err();
        assert!(err.contains("need engine.container_type"), "{err}");
        let err = Container::from_keys(Some(ContainerType::Podman), None, "").unwrap_err();
        assert!(err.contains("needs engine.container_uri"), "{err}");
        let bwrap = Container::from_keys(Some(ContainerType::Bwrap), None, " --x  y ").unwrap();
        assert_eq!(bwrap.unwrap().options, ["--x", "y"]);
        let err = Container::from_keys(Some(ContainerType::Docker), Some("--privileged"), "")
            .unwrap_err();
        assert!(err.contains("not an image name"), "{err}");
    }

    #[test]
    fn manager_args_carry_all_three() {
        let c = Container::from_keys(
            Some(ContainerType::Podman),
            Some("localhost/sci:1"),
            "--runtime runc",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            c.manager_args(),
            [
                "--container-type",
                "podman",
                "--container-uri",
                "localhost/sci:1",
                "--container-cmd-options=--runtime runc"
            ]
        );
    }
}
