//! Container identity from `/proc/PID/cgroup`: the Docker container id (`docker:id`) and the
//! Kubernetes pod UID (`k8s:pod-uid`), for cgroup v1 (`ID:controllers:/path`) and cgroup v2
//! (`0::/path`) line formats, with both the cgroupfs and the systemd cgroup drivers.
//!
//! Only the layouts a container runtime creates from the cgroup root count, anchored at the
//! root: `/docker/<id>`, `/system.slice/docker-<id>.scope`, `/machine.slice/libpod-<id>.scope`,
//! `/kubepods[/<qos>]/pod<uid>[/<id> or /crio-<id>]` and `/kubepods.slice[/kubepods-<qos>.slice]/
//! kubepods[-<qos>]-pod<uid>.slice[/<runtime>-<id>.scope]`. Creating a cgroup there takes
//! root. A container id or pod UID anywhere else in a path names nothing: under systemd every
//! user owns a delegated subtree (`/user.slice/user-<uid>.slice/user@<uid>.service/...`) in
//! which they can make a cgroup named `docker-<id>.scope` after any container whose id they
//! read from another process's world-readable `/proc/PID/cgroup`.
//!
//! The paths are read in the agent's cgroup namespace: the agent must run in the host's (as
//! SPIRE's agent must), or containers' paths do not start at the root and name nothing.

/// What the cgroup paths of one process say about its container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ContainerInfo {
    /// The 64-hex container id, if the process runs in a container.
    pub(crate) container_id: Option<String>,
    /// The Kubernetes pod UID (dashed form), if the process runs in a pod.
    pub(crate) pod_uid: Option<String>,
}

/// Parses the whole text of `/proc/PID/cgroup`. Lines that do not have the
/// `hierarchy-id:controllers:path` shape are skipped; the first line that names a container
/// (or pod) wins.
pub(crate) fn parse_cgroup_file(text: &str) -> ContainerInfo {
    let mut info = ContainerInfo::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(_controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let found = parse_path(path);
        if info.container_id.is_none() {
            info.container_id = found.container_id;
        }
        if info.pod_uid.is_none() {
            info.pod_uid = found.pod_uid;
        }
    }
    info
}

/// What one cgroup path names, if it is one of the runtime layouts (see the module docs).
fn parse_path(path: &str) -> ContainerInfo {
    let Some(rest) = path.strip_prefix('/') else {
        return ContainerInfo::default();
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["docker", id, ..] => container(bare_id(id), None),
        ["system.slice", scope, ..] => container(scoped_id(scope, &["docker"]), None),
        ["machine.slice", scope, ..] => container(scoped_id(scope, &["libpod"]), None),
        ["kubepods", rest @ ..] => {
            let rest = match rest {
                ["burstable" | "besteffort", rest @ ..] => rest,
                rest => rest,
            };
            match rest {
                [pod, tail @ ..] => match pod.strip_prefix("pod").filter(|uid| is_uuid(uid)) {
                    Some(uid) => container(
                        tail.first().and_then(|id| {
                            bare_id(id).or_else(|| id.strip_prefix("crio-").and_then(bare_id))
                        }),
                        Some(uid.to_owned()),
                    ),
                    None => ContainerInfo::default(),
                },
                [] => ContainerInfo::default(),
            }
        }
        ["kubepods.slice", rest @ ..] => {
            let rest = match rest {
                [qos, rest @ ..]
                    if matches!(
                        *qos,
                        "kubepods-burstable.slice" | "kubepods-besteffort.slice"
                    ) =>
                {
                    rest
                }
                rest => rest,
            };
            match rest {
                [pod, tail @ ..] => match systemd_pod_uid(pod) {
                    Some(uid) => container(
                        tail.first().and_then(|scope| {
                            scoped_id(scope, &["cri-containerd", "crio", "docker"])
                        }),
                        Some(uid),
                    ),
                    None => ContainerInfo::default(),
                },
                [] => ContainerInfo::default(),
            }
        }
        _ => ContainerInfo::default(),
    }
}

fn container(container_id: Option<String>, pod_uid: Option<String>) -> ContainerInfo {
    ContainerInfo {
        container_id,
        pod_uid,
    }
}

/// A segment that is a bare container id (cgroupfs driver).
fn bare_id(segment: &str) -> Option<String> {
    is_container_id(segment).then(|| segment.to_owned())
}

/// The id in a systemd scope `<runtime>-<id>.scope`, for one of `runtimes`.
fn scoped_id(segment: &str, runtimes: &[&str]) -> Option<String> {
    let core = segment.strip_suffix(".scope")?;
    let (runtime, id) = core.rsplit_once('-')?;
    (runtimes.contains(&runtime) && is_container_id(id)).then(|| id.to_owned())
}

/// The pod UID in a systemd pod slice, `kubepods[-<qos>]-pod<uid>.slice` with underscores for
/// the UID's dashes.
fn systemd_pod_uid(segment: &str) -> Option<String> {
    let core = segment.strip_suffix(".slice")?;
    let uid = [
        "kubepods-pod",
        "kubepods-burstable-pod",
        "kubepods-besteffort-pod",
    ]
    .iter()
    .find_map(|prefix| core.strip_prefix(prefix))?;
    if uid.contains('-') {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == lens.len()
        && groups.iter().zip(lens).all(|(g, n)| {
            g.len() == n
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1e8f6c0a4b9d2e7c5a1b3d4e6f8a0b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f";
    const POD: &str = "0b6ab7c2-4cd1-4f47-9b3a-0c8d4a8e2f11";

    #[test]
    fn parses_docker_id_from_cgroup_v1_cgroupfs_lines() {
        let text = format!(
            "12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"
        );
        let info = parse_cgroup_file(&text);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.pod_uid, None);
    }

    #[test]
    fn parses_docker_id_from_cgroup_v2_systemd_scope() {
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse_cgroup_file(&text).container_id.as_deref(), Some(ID));
    }

    #[test]
    fn parses_docker_id_from_cgroup_v2_cgroupfs_path() {
        let text = format!("0::/docker/{ID}\n");
        assert_eq!(parse_cgroup_file(&text).container_id.as_deref(), Some(ID));
    }

    #[test]
    fn parses_pod_uid_and_container_from_kubernetes_cgroup_v1_cgroupfs() {
        let text = format!(
            "11:devices:/kubepods/burstable/pod{POD}/{ID}\n4:pids:/kubepods/burstable/pod{POD}/{ID}\n"
        );
        let info = parse_cgroup_file(&text);
        assert_eq!(info.pod_uid.as_deref(), Some(POD));
        assert_eq!(info.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn parses_pod_uid_from_kubernetes_cgroup_v2_systemd_driver() {
        let underscored = POD.replace('-', "_");
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/cri-containerd-{ID}.scope\n"
        );
        let info = parse_cgroup_file(&text);
        assert_eq!(info.pod_uid.as_deref(), Some(POD));
        assert_eq!(info.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn parses_guaranteed_pod_in_cgroup_v1_systemd_driver() {
        let underscored = POD.replace('-', "_");
        let text =
            format!("9:memory:/kubepods.slice/kubepods-pod{underscored}.slice/crio-{ID}.scope\n");
        let info = parse_cgroup_file(&text);
        assert_eq!(info.pod_uid.as_deref(), Some(POD));
        assert_eq!(info.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn host_process_has_no_container_or_pod() {
        let text = "0::/user.slice/user-1000.slice/session-2.scope\n";
        assert_eq!(parse_cgroup_file(text), ContainerInfo::default());
        let v1 = "12:pids:/user.slice/user-1000.slice\n1:name=systemd:/init.scope\n";
        assert_eq!(parse_cgroup_file(v1), ContainerInfo::default());
    }

    #[test]
    fn malformed_lines_and_near_miss_ids_are_ignored() {
        let short = &ID[..63];
        let upper = ID.to_uppercase();
        let text = format!(
            "garbage\n0::/docker/{short}\n0::/docker/{upper}\n0::/pods/podnot-a-uid\n0::/x/evilpod{POD}\n"
        );
        assert_eq!(parse_cgroup_file(&text), ContainerInfo::default());
    }

    /// Any user can make cgroups named after a container or pod in their own delegated
    /// subtree: such paths name nothing.
    #[test]
    fn container_and_pod_names_outside_the_runtime_layouts_name_nothing() {
        let user = "/user.slice/user-1000.slice/user@1000.service/app.slice";
        let underscored = POD.replace('-', "_");
        for path in [
            format!("{user}/docker-{ID}.scope"),
            format!("{user}/docker/{ID}"),
            format!("{user}/kubepods/burstable/pod{POD}/{ID}"),
            format!("{user}/kubepods-besteffort-pod{underscored}.slice/cri-containerd-{ID}.scope"),
            // Rootless podman: the user's own containers, in the user's subtree.
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!("/system.slice/evil-{ID}.scope"),
            format!("/system.slice/docker-{ID}.service"),
            format!("/../docker/{ID}"),
            format!("docker/{ID}"),
            format!("/kubepods/pod{POD}x/{ID}"),
            format!("/kubepods.slice/evil-pod{underscored}.slice/crio-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{POD}.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(
                parse_cgroup_file(&format!("0::{path}\n")),
                ContainerInfo::default(),
                "{path}"
            );
        }
        // What the runtimes themselves make, for contrast.
        let rootful_podman = format!("0::/machine.slice/libpod-{ID}.scope\n");
        assert_eq!(
            parse_cgroup_file(&rootful_podman).container_id.as_deref(),
            Some(ID)
        );
        // CRI-O with the cgroupfs driver.
        let crio = format!("0::/kubepods/burstable/pod{POD}/crio-{ID}\n");
        let info = parse_cgroup_file(&crio);
        assert_eq!(
            (info.pod_uid.as_deref(), info.container_id.as_deref()),
            (Some(POD), Some(ID))
        );
        let pod_only = format!("0::/kubepods/besteffort/pod{POD}\n");
        let info = parse_cgroup_file(&pod_only);
        assert_eq!(
            (info.pod_uid.as_deref(), info.container_id),
            (Some(POD), None)
        );
    }

    #[test]
    fn parses_this_process_real_cgroup_file_without_error() {
        // The real file of the test process: whatever it says, parsing must not fail, and a
        // host process in a plain session yields no pod UID.
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let info = parse_cgroup_file(&text);
        if let Some(id) = info.container_id {
            assert!(is_container_id(&id));
        }
    }
}
