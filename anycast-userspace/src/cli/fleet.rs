//! `anycast fleet ...`: the fleet document in etcd (apply, diff, history, show, rollback) and
//! the edges' reports (status). Every command reads the agent's config for its `[fleet]` section
//! (where etcd is) and validates documents against its `[agent]` section, as an edge would.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::config::{Config, FleetConfig};
use crate::error::error_chain;
use crate::fleet::doc::{self, VipDiff};
use crate::fleet::report::{Assessment, EdgeReport, assess};
use crate::fleet::store::{Revision, Store};

pub const DEFAULT_CONFIG: &str = "/etc/anycast/anycast.toml";

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The agent's config: its [fleet] section says where etcd is, its [agent] section is what
    /// documents are validated against.
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Validate FILE (a fleet document) and write it as the new revision, if the document is
    /// still at the revision read (compare-and-swap); a concurrent writer gets a conflict.
    Apply { file: PathBuf },
    /// What applying FILE would change, per VIP: backends added, removed, reweighted, and the
    /// share of the VIP's Maglev slots that would send packets elsewhere.
    Diff { file: PathBuf },
    /// Every applied revision, oldest first.
    History,
    /// The document at REV (default: the current one).
    Show { rev: Option<i64> },
    /// Write the document of revision REV again, as a new revision.
    Rollback { rev: i64 },
    /// Every live edge: applied revision, table fingerprints, refusals, its own health view;
    /// flags edges that lag or whose tables differ from the others' at the same revision.
    Status,
}

struct Ctx {
    store: Store,
}

fn fleet_of(path: &Path) -> anyhow::Result<FleetConfig> {
    let c = Config::load(path)?;
    c.fleet
        .ok_or_else(|| anyhow!("{}: no [fleet] section (where is etcd?)", path.display()))
}

async fn ctx(path: &Path) -> anyhow::Result<Ctx> {
    let fleet = fleet_of(path)?;
    let store = Store::connect(&fleet)
        .await
        .map_err(|e| anyhow!(error_chain(&e)))?;
    Ok(Ctx { store })
}

fn validate(file: &Path, text: &str) -> anyhow::Result<Config> {
    let raw = doc::read_file(file).map_err(|e| anyhow!(error_chain(&e)))?;
    doc::merge(raw, text).map_err(|e| anyhow!(error_chain(&e)))
}

fn read_doc(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// What `apply` and `rollback` report.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub previous: Option<i64>,
    pub revision: Option<i64>,
    pub changes: Vec<VipDiff>,
}

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub revision: Option<i64>,
    pub edges: Vec<EdgeReport>,
    pub assessment: Vec<Assessment>,
}

pub fn run(args: &FleetArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: &FleetArgs) -> anyhow::Result<()> {
    let mut cx = ctx(&args.config).await?;
    let e = |e: crate::fleet::store::StoreError| anyhow!(error_chain(&e));
    match &args.command {
        FleetCommand::Apply { file } => {
            let text = read_doc(file)?;
            let r = write(&mut cx, &args.config, &text).await?;
            print_applied(&r, args.json, "applied")
        }
        FleetCommand::Rollback { rev } => {
            let old = cx.store.at(*rev).await.map_err(e)?;
            let r = write(&mut cx, &args.config, &old.text).await?;
            print_applied(
                &r,
                args.json,
                &format!("rolled back to the document of revision {rev}"),
            )
        }
        FleetCommand::Diff { file } => {
            let new = validate(&args.config, &read_doc(file)?)?;
            let (cur, _) = cx.store.document().await.map_err(e)?;
            let old = current_config(&args.config, cur.as_ref())?;
            let changes = doc::diff(&old, &new);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&changes)?);
            } else {
                print!("{}", render_diff(&changes));
            }
            Ok(())
        }
        FleetCommand::History => {
            let h = cx.store.history().await.map_err(e)?;
            let (cur, _) = cx.store.document().await.map_err(e)?;
            if args.json {
                let rows: Vec<_> = h
                    .iter()
                    .map(|r| serde_json::json!({"revision": r.revision, "bytes": r.text.len()}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            for r in &h {
                let summary = match validate(&args.config, &r.text) {
                    Ok(c) => format!(
                        "{} VIPs, {} backends",
                        c.vips.len(),
                        c.vips.iter().map(|v| v.backends.len()).sum::<usize>()
                    ),
                    Err(err) => format!("invalid here: {err:#}"),
                };
                let mark = if cur.as_ref().is_some_and(|c| c.revision == r.revision) {
                    " (current)"
                } else {
                    ""
                };
                println!(
                    "revision {}{mark}: {} bytes, {summary}",
                    r.revision,
                    r.text.len()
                );
            }
            Ok(())
        }
        FleetCommand::Show { rev } => {
            let r =
                match rev {
                    Some(rev) => cx.store.at(*rev).await.map_err(e)?,
                    None => cx.store.document().await.map_err(e)?.0.ok_or_else(|| {
                        anyhow!("no fleet document yet (`anycast fleet apply FILE`)")
                    })?,
                };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"revision": r.revision, "document": r.text})
                    )?
                );
            } else {
                println!("# fleet revision {}", r.revision);
                print!("{}", r.text);
            }
            Ok(())
        }
        FleetCommand::Status => {
            let (cur, _) = cx.store.document().await.map_err(e)?;
            let edges = cx.store.edges().await.map_err(e)?;
            let revision = cur.map(|c| c.revision);
            let st = FleetStatus {
                assessment: assess(&edges, revision.unwrap_or(0)),
                revision,
                edges,
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", render_status(&st));
            }
            Ok(())
        }
    }
}

/// What the edges run now: the current document, or (none yet) the file's own VIPs.
fn current_config(config: &Path, cur: Option<&Revision>) -> anyhow::Result<Config> {
    match cur {
        Some(c) => validate(config, &c.text)
            .with_context(|| format!("the current document (revision {})", c.revision)),
        None => Ok(Config::load(config)?),
    }
}

/// Validates, then writes with compare-and-swap on the revision read.
async fn write(cx: &mut Ctx, config: &Path, text: &str) -> anyhow::Result<Applied> {
    let new = validate(config, text)?;
    let (cur, _) = cx
        .store
        .document()
        .await
        .map_err(|e| anyhow!(error_chain(&e)))?;
    let old = current_config(config, cur.as_ref()).ok();
    let changes = old.map(|o| doc::diff(&o, &new)).unwrap_or_default();
    if cur.as_ref().is_some_and(|c| c.text == text) {
        return Ok(Applied {
            previous: cur.as_ref().map(|c| c.revision),
            revision: None,
            changes,
        });
    }
    let revision = cx
        .store
        .write(text, cur.as_ref())
        .await
        .map_err(|e| anyhow!(error_chain(&e)))?;
    Ok(Applied {
        previous: cur.map(|c| c.revision),
        revision: Some(revision),
        changes,
    })
}

fn print_applied(r: &Applied, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    match r.revision {
        None => println!(
            "unchanged: the document is already at revision {}",
            r.previous.unwrap_or(0)
        ),
        Some(rev) => println!(
            "{what}: revision {rev} (was {})",
            r.previous.map_or("none".to_string(), |p| p.to_string())
        ),
    }
    print!("{}", render_diff(&r.changes));
    Ok(())
}

pub fn render_diff(changes: &[VipDiff]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if changes.is_empty() {
        s.push_str("no VIP table changes\n");
    }
    for c in changes {
        let _ = writeln!(
            s,
            "vip {} ({}): {} of {} slots move ({:.2}%)",
            c.vip,
            c.change,
            c.slots_moved,
            c.ring_size,
            c.moved_share() * 100.0
        );
        let list = |v: &[IpAddr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !c.backends_added.is_empty() {
            let _ = writeln!(s, "  + backends {}", list(&c.backends_added));
        }
        if !c.backends_removed.is_empty() {
            let _ = writeln!(s, "  - backends {}", list(&c.backends_removed));
        }
        for (b, o, n) in &c.weights_changed {
            let _ = writeln!(s, "  ~ {b} weight {o} -> {n}");
        }
    }
    s
}

pub fn render_status(st: &FleetStatus) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fleet revision {}, {} live edges",
        st.revision.map_or("none".to_string(), |r| r.to_string()),
        st.edges.len()
    );
    for (e, a) in st.edges.iter().zip(&st.assessment) {
        let mut flags = Vec::new();
        if a.lagging {
            flags.push(format!("LAGGING (at {})", e.applied_revision));
        }
        if !a.fingerprint_differs.is_empty() {
            flags.push(format!(
                "TABLE DIFFERS for {}",
                a.fingerprint_differs.join(", ")
            ));
        }
        if let Some(r) = &e.refused {
            flags.push(format!("REFUSED revision {}: {}", r.revision, r.error));
        }
        let _ = writeln!(
            s,
            "edge {} (pop {}): revision {}, {}{}",
            e.edge,
            e.pop,
            e.applied_revision,
            if flags.is_empty() { "ok" } else { "" },
            flags.join("; ")
        );
        for (vip, fp) in &e.fingerprints {
            let _ = writeln!(s, "  vip {vip}: table {}", fp.as_deref().unwrap_or("none"));
        }
        let down: Vec<String> = e
            .health
            .iter()
            .filter(|h| !h.healthy)
            .map(|h| format!("{} ({})", h.backend, h.vip))
            .collect();
        if !down.is_empty() {
            let _ = writeln!(s, "  own checks see down: {}", down.join(", "));
        }
        if !e.announced.is_empty() {
            let _ = writeln!(s, "  announces {}", e.announced.join(", "));
        }
        if e.etcd_outages > 0 {
            let _ = writeln!(s, "  etcd outages since start: {}", e.etcd_outages);
        }
    }
    s
}

/// `anycast drain --fleet` / `undrain --fleet`: the current document with BACKEND's fleet-wide
/// drain set or lifted, written with compare-and-swap.
pub fn drain(config: &Path, backend: &str, drained: bool) -> anyhow::Result<()> {
    let backend: IpAddr = backend
        .parse()
        .map_err(|_| anyhow!("{backend:?} is not an IP address"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let mut cx = ctx(config).await?;
        let (cur, _) = cx
            .store
            .document()
            .await
            .map_err(|e| anyhow!(error_chain(&e)))?;
        let Some(cur) = cur else {
            bail!("no fleet document yet: nothing to drain fleet-wide");
        };
        let text =
            doc::with_drain(&cur.text, backend, drained).map_err(|e| anyhow!(error_chain(&e)))?;
        let r = write(&mut cx, config, &text).await?;
        print_applied(
            &r,
            false,
            &format!(
                "{} {backend} fleet-wide",
                if drained { "drained" } else { "undrained" }
            ),
        )
    })
}

/// The `fleet` line of `anycast status`: this edge's own view of its link to etcd.
pub fn render_view(f: &crate::proto::FleetView) -> String {
    let rev = |r: Option<i64>| r.map_or("none".to_owned(), |r| r.to_string());
    let mut line = format!(
        "fleet edge {} (pop {}): etcd {}, revision {} applied ({} documents), {} live edges, {} outages",
        f.edge,
        f.pop,
        if f.connected {
            "connected".to_owned()
        } else {
            format!(
                "UNREACHABLE ({}; the dataplane keeps its last good state)",
                f.last_error.as_deref().unwrap_or("not yet connected")
            )
        },
        rev(f.applied_revision),
        f.documents_applied,
        f.live_edges,
        f.outages
    );
    if let (Some(r), Some(e)) = (f.refused_revision, &f.refused_error) {
        line.push_str(&format!("\n  REFUSED revision {r}: {e}"));
    }
    line
}

#[cfg(test)]
mod view_tests {
    use super::*;
    use crate::proto::FleetView;

    #[test]
    fn the_status_line_names_an_outage_and_a_refused_document() {
        let mut v = FleetView {
            edge: "edge1".into(),
            pop: "ams".into(),
            connected: true,
            applied_revision: Some(12),
            documents_applied: 3,
            live_edges: 3,
            ..FleetView::default()
        };
        assert_eq!(
            render_view(&v),
            "fleet edge edge1 (pop ams): etcd connected, revision 12 applied (3 documents), 3 live edges, 0 outages"
        );
        v.connected = false;
        v.outages = 1;
        v.last_error = Some("connecting to etcd: timed out".into());
        v.refused_revision = Some(14);
        v.refused_error = Some("vip[0].port: 0 is not a port".into());
        let text = render_view(&v);
        assert!(
            text.contains("etcd UNREACHABLE (connecting to etcd: timed out;"),
            "{text}"
        );
        assert!(
            text.ends_with("\n  REFUSED revision 14: vip[0].port: 0 is not a port"),
            "{text}"
        );
    }
}
