//! A real etcd (the Debian `etcd-server` binary) for fleet labs: in a namespace of its own
//! (named with the lab's prefix, so a crashed run is cleaned up with the lab), on a bridge with
//! one veth into each agent's namespace, its data in the lab's run directory. The test talks to
//! it with the agent's own client (`anycast::fleet::store`), from inside that namespace.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anycast::fleet::report::EdgeReport;
use anycast::fleet::store::{Revision, Store, StoreError};

use crate::lab::Lab;
use crate::netns::Netns;

/// etcd's address on its bridge; agent `i` of [`Etcd::start`] gets `.10 + i`.
pub const ETCD_ADDR: &str = "198.19.250.1";
pub const ETCD_PORT: u16 = 2379;
pub const PREFIX: &str = "/anycast-lab";

pub fn endpoint() -> String {
    format!("{ETCD_ADDR}:{ETCD_PORT}")
}

/// The `[fleet]` section of the agent in `ns`.
pub fn fleet_section(lab_dir: &std::path::Path, ns: &str) -> String {
    format!(
        "[fleet]\nendpoints = [\"{}\"]\nedge = \"{ns}\"\npop = \"lab\"\nprefix = \"{PREFIX}\"\nlease_ttl_s = 3\ncache_dir = {:?}\n",
        endpoint(),
        lab_dir
            .join(format!("fleet-cache-{ns}"))
            .display()
            .to_string()
    )
}

pub struct Etcd {
    ns: Netns,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    store: Option<Store>,
}

fn sh(mut c: std::process::Command, what: &str) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Etcd {
    /// Builds the namespace and its links to `hosts` (short names of the lab's namespaces),
    /// starts etcd and waits (bounded) until it answers.
    pub fn start(lab: &Lab, hosts: &[&str]) -> Result<Etcd, String> {
        let p = lab.prefix();
        let ns = Netns::replace(&format!("{p}etcd")).map_err(|e| e.to_string())?;
        let ip = |args: &[&str]| {
            let mut c = ns.ip();
            c.args(args);
            sh(c, &format!("ip {args:?}"))
        };
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", "br0", "type", "bridge"])?;
        ip(&["addr", "add", &format!("{ETCD_ADDR}/24"), "dev", "br0"])?;
        ip(&["link", "set", "br0", "up"])?;
        for (i, h) in hosts.iter().enumerate() {
            let (a, b) = (format!("{p}f{i}"), format!("{p}g{i}"));
            let peer_ns = lab.ns(h);
            ip(&[
                "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &peer_ns,
            ])?;
            ip(&["link", "set", &a, "master", "br0", "up"])?;
            let addr = format!("198.19.250.{}/24", 10 + i);
            lab.ip(h, &["addr", "add", &addr, "dev", &b])
                .map_err(|e| e.to_string())?;
            lab.ip(h, &["link", "set", &b, "up"])
                .map_err(|e| e.to_string())?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut e = Etcd {
            ns,
            dir: lab.dir().join("etcd-data"),
            log: lab.dir().join("etcd.log"),
            child: None,
            rt,
            store: None,
        };
        e.restart()?;
        Ok(e)
    }

    /// Starts etcd (on its existing data, if any) and waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let client = format!("http://{}", endpoint());
        let peer = "http://127.0.0.1:2380";
        let mut c = self.ns.command();
        c.args(["etcd", "--name", "lab", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", &format!("lab={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        self.child = Some(c.spawn().map_err(|e| format!("starting etcd: {e}"))?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.document().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("etcd did not answer within 20 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: etcd dies as on a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.store = None;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `f` with a client inside etcd's namespace (its sockets live there).
    fn with<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, String> {
        let cfg = anycast::config::Config::parse(&format!(
            "[agent]\ninterfaces = [\"lo\"]\nhash_seed = 1\n{}",
            fleet_section(std::path::Path::new("/nonexistent"), "test")
        ))
        .map_err(|e| e.to_string())?
        .fleet
        .expect("a [fleet] section");
        let Etcd { ns, rt, store, .. } = self;
        ns.enter(|| {
            rt.block_on(async {
                if store.is_none() {
                    *store = Some(Store::connect(&cfg).await?);
                }
                let r = f(store.as_mut().expect("connected")).await;
                if r.is_err() {
                    *store = None;
                }
                r
            })
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| anycast::error::error_chain(&e))
    }

    pub fn document(&mut self) -> Result<Option<Revision>, String> {
        self.with(async |s| s.document().await.map(|(d, _)| d))
    }

    pub fn edges(&mut self) -> Result<Vec<EdgeReport>, String> {
        self.with(async |s| s.edges().await)
    }

    /// Writes `text` with compare-and-swap on `read`; the new revision.
    pub fn write(&mut self, text: &str, read: Option<&Revision>) -> Result<i64, String> {
        let read = read.cloned();
        let text = text.to_owned();
        self.with(async move |s| s.write(&text, read.as_ref()).await)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
