//! Short flows: one TCP connection each, sent one after another, each recorded with the edge it
//! entered through and the backend the agents predicted for it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anycast::api::Client;
use anycast_tests::lab::tcp_request_bound;

use crate::tracker::{self, Tracker};
use crate::{EDGES, FLOW_TIMEOUT};

/// Which edges' XDP programs saw a flow (found in their connection-tracking map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Edge(usize),
    /// Both: the router moved the flow while it was open.
    Both,
    /// Neither (a flow that never got past its handshake).
    Unseen,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::Edge(i) => EDGES[i],
            Via::Both => "moved",
            Via::Unseen => "none",
        }
    }

    pub fn includes(self, edge: &str) -> bool {
        match self {
            Via::Edge(i) => EDGES[i] == edge,
            Via::Both => true,
            Via::Unseen => false,
        }
    }
}

/// What the edges' agents say about a flow (`anycast lookup`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prediction {
    Backend(&'static str),
    /// The edges name different backends.
    Disagree(Vec<&'static str>),
    /// An agent could not be asked, or named an unknown address.
    Unknown(String),
}

/// One short flow (one TCP connection).
#[derive(Clone, Debug)]
pub struct Flow {
    pub phase: usize,
    pub started: Instant,
    pub local: Option<SocketAddr>,
    /// The name of the backend that answered, or why none did.
    pub answer: Result<String, String>,
    pub via: Via,
    pub predicted: Prediction,
}

impl Flow {
    pub fn on_predicted(&self) -> bool {
        matches!((&self.answer, &self.predicted), (Ok(name), Prediction::Backend(p)) if name == p)
    }
}

/// Where short flows go and how many a phase sends at most.
pub struct Sender<'a> {
    pub tracker: &'a Tracker,
    /// The edges' agents, in [`EDGES`] order.
    pub agents: &'a [Client; 2],
    pub source: IpAddr,
    pub target: SocketAddr,
    pub per_phase: usize,
}

impl Sender<'_> {
    /// Sends short flows until `stop`, each counted for the `phase` current when it starts, and
    /// records them in `flows`.
    pub fn run(&self, phase: &AtomicUsize, stop: &AtomicBool, flows: &Mutex<Vec<Flow>>) {
        let mut sent = [0usize; 4];
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..10 {
                let p = phase.load(Ordering::Relaxed);
                if sent[p] >= self.per_phase {
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
                let flow = self.one(p);
                flows.lock().expect("flows").push(flow);
                sent[p] += 1;
            }
            // Leave the CPU some room for the long-lived connections (2-core machines).
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn one(&self, phase: usize) -> Flow {
        let (started, since) = (Instant::now(), tracker::monotonic_ns());
        // Bound before it connects, so that the source address is known even when the
        // connection fails (to ask the agents which backend it was meant for).
        let (local, answer) =
            match tcp_request_bound(SocketAddr::new(self.source, 0), self.target, FLOW_TIMEOUT) {
                Ok((local, name)) => (Some(local), Ok(name)),
                Err((local, e)) => (local, Err(e.to_string())),
            };
        let (via, predicted) = match local {
            Some(l) => (
                self.tracker.via(l, self.target, since),
                tracker::predict(self.agents, l, self.target),
            ),
            None => (
                Via::Unseen,
                Prediction::Unknown("no source address".to_owned()),
            ),
        };
        Flow {
            phase,
            started,
            local,
            answer,
            via,
            predicted,
        }
    }
}
