//! The fleet's keys in etcd, read and written with the `etcd-client` crate.
//!
//! Key layout under `fleet.prefix` (`/anycast` by default):
//! - `{prefix}/config`: the fleet document (TOML text). Its `mod_revision` is the fleet revision.
//! - `{prefix}/history/{version:012}`: every document ever applied, written in the same
//!   transaction as `config` (so its `mod_revision` is that revision); read by `history`,
//!   `show REV` and `rollback REV`, and kept when etcd compacts its own history.
//! - `{prefix}/edges/{edge}`: one edge's report (JSON, [`EdgeReport`]) under the edge's lease;
//!   read by `fleet status`, watched by nobody (so a write costs no edge-to-edge fan-out).
//! - `{prefix}/health/{edge}`: one edge's health vote (JSON, [`HealthReport`]: what its checks
//!   see down) under the same lease; watched by every edge.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};

use super::report::{EdgeReport, HealthReport};
use crate::config::FleetConfig;

/// Every call to etcd gives up after this long: an edge keeps its state and retries, and the CLI
/// reports the outage instead of hanging.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd ({endpoints}): {what}")]
    Etcd {
        endpoints: String,
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "conflict: the fleet document is at revision {current}, not at revision {read} it was read at (another writer applied in between); nothing was written: review `anycast fleet diff` again and retry"
    )]
    Conflict { read: i64, current: i64 },
    #[error("fleet revision {0} is not in the history (`anycast fleet history` lists them)")]
    NoSuchRevision(i64),
    #[error("reading {path}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd session lost: {0}")]
    Lost(&'static str),
    #[error("{key}: not a valid value: {problem}")]
    Corrupt { key: String, problem: String },
}

/// One version of the fleet document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub revision: i64,
    /// How many documents were applied up to this one (the history key).
    pub version: i64,
    pub text: String,
}

pub struct Store {
    client: Client,
    prefix: String,
    endpoints: String,
}

impl Store {
    /// Connects to etcd. Connecting does not wait for a server; the first call does (within
    /// [`CALL_TIMEOUT`]).
    pub async fn connect(cfg: &FleetConfig) -> Result<Self, StoreError> {
        let endpoints = cfg.endpoints.join(",");
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), CALL_TIMEOUT);
        if let Some(a) = &cfg.auth {
            opts = opts.with_user(a.user.clone(), a.password.clone());
        }
        if let Some(t) = &cfg.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|source| StoreError::TlsFile {
                    path: p.display().to_string(),
                    source,
                })
            };
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&t.ca)?));
            if let Some((cert, key)) = &t.identity {
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(tls);
        }
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(|source| StoreError::Etcd {
                endpoints: endpoints.clone(),
                what: "connecting",
                source,
            })?;
        Ok(Self {
            client,
            prefix: cfg.prefix.clone(),
            endpoints,
        })
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub(crate) fn err(
        &self,
        what: &'static str,
    ) -> impl FnOnce(etcd_client::Error) -> StoreError + '_ {
        move |source| StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            what,
            source,
        }
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn edges_prefix(&self) -> String {
        format!("{}/edges/", self.prefix)
    }

    pub fn health_prefix(&self) -> String {
        format!("{}/health/", self.prefix)
    }

    pub fn edge_key(&self, edge: &str) -> String {
        format!("{}{edge}", self.edges_prefix())
    }

    fn history_key(&self, version: i64) -> String {
        format!("{}/history/{version:012}", self.prefix)
    }

    /// The current document and the store's revision at the time of the read (`None`: no
    /// document was ever applied).
    pub async fn document(&mut self) -> Result<(Option<Revision>, i64), StoreError> {
        let key = self.config_key();
        let r = self
            .client
            .get(key, None)
            .await
            .map_err(self.err("reading the fleet document"))?;
        let store_rev = r.header().map_or(0, |h| h.revision());
        let doc = match r.kvs().first() {
            Some(kv) => Some(self.revision_of(kv)?),
            None => None,
        };
        Ok((doc, store_rev))
    }

    pub(crate) fn revision_of(&self, kv: &etcd_client::KeyValue) -> Result<Revision, StoreError> {
        let text = kv.value_str().map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            problem: e.to_string(),
        })?;
        Ok(Revision {
            revision: kv.mod_revision(),
            version: kv.version(),
            text: text.to_owned(),
        })
    }

    /// Writes `text` as the new document if the current one is still at `read` (0: none yet),
    /// with its history entry, in one transaction. Returns the new revision.
    pub async fn write(&mut self, text: &str, read: Option<&Revision>) -> Result<i64, StoreError> {
        let key = self.config_key();
        let (rev, version) = read.map_or((0, 0), |r| (r.revision, r.version));
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([
                TxnOp::put(key.clone(), text, None),
                TxnOp::put(self.history_key(version + 1), text, None),
            ])
            .or_else([TxnOp::get(key, None)]);
        let r = self
            .client
            .txn(txn)
            .await
            .map_err(self.err("writing the fleet document"))?;
        if r.succeeded() {
            return Ok(r.header().map_or(0, |h| h.revision()));
        }
        let current = r
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(etcd_client::KeyValue::mod_revision),
                _ => None,
            })
            .unwrap_or(0);
        Err(StoreError::Conflict { read: rev, current })
    }

    /// Every applied document, oldest first.
    pub async fn history(&mut self) -> Result<Vec<Revision>, StoreError> {
        let prefix = format!("{}/history/", self.prefix);
        let r = self
            .client
            .get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Ascend),
                ),
            )
            .await
            .map_err(self.err("reading the fleet history"))?;
        r.kvs()
            .iter()
            .enumerate()
            .map(|(i, kv)| {
                let mut rev = self.revision_of(kv)?;
                rev.version = i64::try_from(i).unwrap_or(i64::MAX) + 1;
                Ok(rev)
            })
            .collect()
    }

    /// The document applied at fleet revision `rev`.
    pub async fn at(&mut self, rev: i64) -> Result<Revision, StoreError> {
        self.history()
            .await?
            .into_iter()
            .find(|r| r.revision == rev)
            .ok_or(StoreError::NoSuchRevision(rev))
    }

    /// The reports of the edges whose lease is alive, by name.
    pub async fn edges(&mut self) -> Result<Vec<EdgeReport>, StoreError> {
        let r = self
            .client
            .get(
                self.edges_prefix(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Ascend),
                ),
            )
            .await
            .map_err(self.err("reading the edge reports"))?;
        r.kvs().iter().map(parse_report).collect()
    }

    /// A lease of `ttl_s` seconds for this edge's report.
    pub async fn grant(&mut self, ttl_s: u32) -> Result<i64, StoreError> {
        let r = self
            .client
            .lease_grant(i64::from(ttl_s), None)
            .await
            .map_err(self.err("granting the edge's lease"))?;
        Ok(r.id())
    }

    /// The live edges' health votes.
    pub async fn votes(&mut self) -> Result<Vec<HealthReport>, StoreError> {
        let r = self
            .client
            .get(self.health_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(self.err("reading the health votes"))?;
        r.kvs().iter().map(parse_json).collect()
    }

    pub async fn put_vote(&mut self, vote: &HealthReport, lease: i64) -> Result<(), StoreError> {
        let key = format!("{}{}", self.health_prefix(), vote.edge);
        let value = serde_json::to_string(vote).expect("a vote serializes");
        self.client
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(self.err("writing the edge's health vote"))?;
        Ok(())
    }

    pub async fn put_report(&mut self, report: &EdgeReport, lease: i64) -> Result<(), StoreError> {
        let key = self.edge_key(&report.edge);
        let value = serde_json::to_string(report).expect("a report serializes");
        self.client
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(self.err("writing the edge's report"))?;
        Ok(())
    }
}

pub fn parse_report(kv: &etcd_client::KeyValue) -> Result<EdgeReport, StoreError> {
    parse_json(kv)
}

pub fn parse_json<T: serde::de::DeserializeOwned>(
    kv: &etcd_client::KeyValue,
) -> Result<T, StoreError> {
    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        problem: e.to_string(),
    })
}
