//! Container identity from `/proc/PID/cgroup`: the Docker container id (`docker:id`) and the
//! Kubernetes pod UID (`k8s:pod-uid`), for cgroup v1 (`ID:controllers:/path`) and cgroup v2
//! (`0::/path`) line formats, with both the cgroupfs and the systemd cgroup drivers.

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
        if info.container_id.is_none() {
            info.container_id = container_id_from_path(path);
        }
        if info.pod_uid.is_none() {
            info.pod_uid = pod_uid_from_path(path);
        }
    }
    info
}

/// The container id in a cgroup path: the last path segment that is (or, for the systemd
/// driver, wraps) 64 lowercase hex characters, e.g. `/docker/<id>`,
/// `/system.slice/docker-<id>.scope`, `/kubepods/besteffort/pod<uid>/<id>`,
/// `/kubepods.slice/.../cri-containerd-<id>.scope`.
fn container_id_from_path(path: &str) -> Option<String> {
    path.split('/').rev().find_map(|segment| {
        let core = segment.strip_suffix(".scope").unwrap_or(segment);
        // `docker-<id>`, `cri-containerd-<id>`, `crio-<id>`, `libpod-<id>` or the bare id.
        let candidate = core.rsplit('-').next().unwrap_or(core);
        is_container_id(candidate).then(|| candidate.to_owned())
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod UID in a cgroup path: a segment `pod<uid>` (cgroupfs driver, dashes) or
/// `kubepods-<qos>-pod<uid>.slice` (systemd driver, underscores instead of dashes).
fn pod_uid_from_path(path: &str) -> Option<String> {
    path.split('/').find_map(|segment| {
        let core = segment.strip_suffix(".slice").unwrap_or(segment);
        let start = core.rfind("pod")?;
        let uid = core.get(start + 3..)?.replace('_', "-");
        // Everything before `pod` must be the kubepods prefix (or nothing).
        let prefix = core.get(..start)?;
        if !(prefix.is_empty() || prefix.starts_with("kubepods")) {
            return None;
        }
        is_uuid(&uid).then_some(uid)
    })
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
