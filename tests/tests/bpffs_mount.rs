//! The agent mounts bpffs at its pin path's parent when none is there, and refuses, with the
//! reason, where a mount would hide something or cannot be made. Every agent here runs in a
//! private mount namespace of its own (`unshare --mount --propagation private`), so whatever it
//! mounts, right or wrong, never reaches the machine's mount table; the test checks that too.

use anycast_tests::mount::Mount;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anycast::proto::Status;
use anycast_tests::lab::{AgentSpec, End, Lab, Link, Topology, find_binary};

const EDGE: &str = "edge";

fn topology() -> Topology {
    Topology {
        namespaces: vec![EDGE.into(), "peer".into()],
        links: vec![Link {
            a: End {
                ns: EDGE.into(),
                name: "e-p".into(),
                addrs: vec!["198.18.50.2/24".into(), "fd00:50::2/64".into()],
            },
            b: End {
                ns: "peer".into(),
                name: "p-e".into(),
                addrs: vec!["198.18.50.1/24".into(), "fd00:50::1/64".into()],
            },
            mtu: 1500,
            tx_checksum_off: false,
        }],
        ..Topology::default()
    }
}

/// A decapsulating agent on the edge's interface, its pins at `pin_path`.
fn write_config(lab: &Lab, name: &str, pin_path: &Path) -> PathBuf {
    let spec = AgentSpec {
        ns: EDGE.into(),
        interfaces: vec!["e-p".into()],
        tunnel_source: Some("198.18.50.2".into()),
        tunnel_source_v6: None,
        encapsulation: "ipip".into(),
        decap_allow: vec!["198.18.0.0/15".into()],
        ring_size: 1009,
        hash_seed: 42,
        vips: vec![],
        health: None,
        extra_config: String::new(),
    };
    let text: String = lab
        .agent_config(&spec)
        .expect("agent config")
        .lines()
        .map(|l| {
            if l.starts_with("pin_path") {
                format!("pin_path = {:?}\n", pin_path.display().to_string())
            } else if l.starts_with("state_file") {
                format!("state_file = {:?}\n", lab.agent_state_path(name))
            } else if l.starts_with("api_socket") {
                format!("api_socket = {:?}\n", lab.agent_socket_path(name))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = lab.agent_config_path(name);
    std::fs::write(&path, text + "metrics_listen = \"\"\n").expect("writing the config");
    path
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Mount points in this process's (the machine's) mount table under `dir`.
fn host_mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect()
}

/// Runs an agent that must refuse to start; returns its stderr. Bounded: killed after 60 s.
fn agent_refuses(lab: &Lab, config: &Path, wrapper: &[&str]) -> String {
    let bin = find_binary("anycast", "ANYCAST_BIN").expect("the anycast binary");
    let mut c = lab.command(EDGE);
    c.args(["unshare", "--mount", "--propagation", "private", "--"])
        .args(wrapper)
        .arg(&bin)
        .args(["agent", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("starting the agent");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for the agent") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent with {} did not refuse to start",
                config.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("reading stderr");
    assert!(!status.success(), "the agent started: {err}");
    err
}

#[test]
fn the_agent_mounts_bpffs_where_none_is_and_refuses_where_a_mount_would_hide_something() {
    if !anycast_tests::privileged(
        "the_agent_mounts_bpffs_where_none_is_and_refuses_where_a_mount_would_hide_something",
    ) {
        return;
    }
    let mut lab = Lab::build(&topology()).expect("building the lab");
    let dir = lab.dir().to_owned();

    // A plain, empty directory (on the lab's run directory, not a bpffs) as the parent.
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    assert!(!is_bpffs(&plain));
    let pin_path = plain.join("anycast");
    let config = write_config(&lab, "mounted", &pin_path);
    let bin = find_binary("anycast", "ANYCAST_BIN").expect("the anycast binary");
    let (bin, cfg) = (bin.to_string_lossy(), config.to_string_lossy());
    lab.spawn(
        EDGE,
        "agent-mounted",
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            &bin,
            "agent",
            "--config",
            &cfg,
        ],
        &[("RUST_LOG", "info")],
    )
    .expect("starting the agent");
    let socket = lab.agent_socket_path("mounted");
    let start = Instant::now();
    let program = loop {
        lab.check_alive().expect("the agent died");
        let out = Command::new(bin.as_ref())
            .args(["status", "--json", "--socket"])
            .arg(&socket)
            .output()
            .expect("anycast status");
        if out.status.success() {
            let status: Status = serde_json::from_slice(&out.stdout).expect("status JSON");
            if let Some(id) = status.program.id {
                break id;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent did not start:\n{}",
            lab.log("agent-mounted")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = lab.log("agent-mounted");
    println!(
        "agent with pin_path {} started, program {program}; its log:",
        pin_path.display(),
    );
    for l in log
        .lines()
        .filter(|l| l.contains("bpffs") || l.contains("pinned"))
    {
        println!("  {l}");
    }
    assert!(
        log.contains("bpffs was not mounted at agent.pin_path's parent: mounted it there"),
        "{log}"
    );
    assert!(log.contains("mount namespace of the agent's own"), "{log}");
    // In the agent's mount namespace: a bpffs at the parent, holding the pins.
    let pid = lab
        .agent_pid("mounted")
        .expect("the agent's pid in its state file");
    let inside = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .arg("--")
            .args(args)
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        inside(&["stat", "-f", "-c", "%T", &plain.to_string_lossy()]),
        "bpf_fs"
    );
    assert_eq!(
        inside(&["ls", &pin_path.join("links").to_string_lossy()]),
        lab.ifname("e-p").unwrap(),
        "the link pinned in the agent's bpffs"
    );
    // The machine's mount table has none of it.
    assert!(
        !is_bpffs(&plain),
        "the bpffs leaked into the host's mount namespace"
    );
    assert_eq!(host_mounts_under(&plain), Vec::<String>::new());
    assert!(
        lab.ip(
            EDGE,
            &["-d", "link", "show", "dev", &lab.ifname("e-p").unwrap()]
        )
        .unwrap()
        .contains("prog/xdp")
    );

    // The warning is right: with the namespace, the pins and the attachment go.
    assert_eq!(
        lab.signal("agent-mounted", nix::sys::signal::Signal::SIGTERM),
        1
    );
    let start = Instant::now();
    while lab
        .ip(
            EDGE,
            &["-d", "link", "show", "dev", &lab.ifname("e-p").unwrap()],
        )
        .unwrap()
        .contains("prog/xdp")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the program stayed attached after the agent and its mount namespace went:\n{}",
            lab.log("agent-mounted")
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Refused: the parent is the mount point of another filesystem.
    let tmpfs = Mount::tmpfs(&dir.join("tmpfs"));
    let err = agent_refuses(
        &lab,
        &write_config(&lab, "tmpfs", &tmpfs.path().join("anycast")),
        &[],
    );
    println!("parent is a tmpfs mount point: {}", err.trim());
    assert!(
        err.contains(&format!(
            "{} (agent.pin_path's parent) is not on a bpffs, and it is the mount point of a tmpfs filesystem",
            tmpfs.path().display()
        )),
        "{err}"
    );
    assert!(!is_bpffs(tmpfs.path()));

    // Refused: the parent holds files.
    let full = dir.join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep"), "x").unwrap();
    let err = agent_refuses(
        &lab,
        &write_config(&lab, "full", &full.join("anycast")),
        &[],
    );
    println!("parent not empty: {}", err.trim());
    assert!(err.contains("and it is not empty"), "{err}");
    assert!(full.join("keep").exists());

    // The mount itself fails (no CAP_SYS_ADMIN): the error says so and what to do.
    let denied = dir.join("denied");
    let err = agent_refuses(
        &lab,
        &write_config(&lab, "denied", &denied.join("anycast")),
        &[
            "setpriv",
            "--inh-caps=-sys_admin",
            "--bounding-set=-sys_admin",
            "--",
        ],
    );
    println!("mount not permitted: {}", err.trim());
    assert!(
        err.contains(&format!(
            "mounting bpffs at {} (agent.pin_path's parent, not on a bpffs) failed",
            denied.display()
        )) && err.contains("Operation not permitted"),
        "{err}"
    );
    assert_eq!(host_mounts_under(&dir.join("plain")), Vec::<String>::new());
    drop(tmpfs);
}
