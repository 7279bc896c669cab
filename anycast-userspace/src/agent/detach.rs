//! What an agent finds of its predecessor (the state file) and `anycast detach`.

use super::*;

/// The state file the previous agent of this `pin_path` left, if it can be used. A missing file
/// is a first start. A file that cannot be read or parsed, or that describes another pin path,
/// is ignored with a warning: the agent starts from its config alone (no overrides, backends
/// pending their first check), as on a first start, and overwrites the file. Refusing to start
/// would leave the host without a working agent over a file that only ever holds derived state
/// and operator conveniences.
pub fn previous_state(config: &Config) -> Option<StateFile> {
    let path = &config.agent.state_file;
    match StateFile::read_if_present(path) {
        Ok(None) => None,
        Ok(Some(s)) if s.pin_path == config.agent.pin_path => Some(s),
        Ok(Some(s)) => {
            warn!(
                state_file = %path.display(),
                "the state file describes the dataplane pinned at {}, not {}: its runtime overrides and health verdicts are not restored",
                s.pin_path.display(),
                config.agent.pin_path.display()
            );
            None
        }
        Err(e) => {
            warn!(
                error = %error_chain(&e),
                "state file ignored: starting without the previous agent's runtime overrides and health verdicts (it will be rewritten)"
            );
            None
        }
    }
}

/// What `anycast detach` removed.
#[derive(Debug, Default)]
pub struct DetachReport {
    pub removed: Vec<PathBuf>,
}

/// Removes the dataplane an agent left pinned under `config`'s `agent.pin_path`: every pinned
/// link (which detaches the program from its interface), the program and the maps, and the
/// state file. Refuses while the agent that wrote the state file still runs.
pub fn detach(config: &Config) -> Result<DetachReport, AgentError> {
    let state_path = &config.agent.state_file;
    if let Ok(state) = StateFile::read(state_path)
        && state.pid != std::process::id()
        && process_is_agent(state.pid)
    {
        return Err(AgentError::AgentRunning { pid: state.pid });
    }
    let layout = PinLayout::new(&config.agent.pin_path);
    let links = layout.pinned_links();
    let mut removed = pins::remove_all(&layout)?;
    for l in &links {
        info!(interface = %l, "XDP program detached (pinned link removed)");
    }
    if std::fs::remove_file(state_path).is_ok() {
        removed.push(state_path.clone());
    }
    Ok(DetachReport { removed })
}

pub(super) fn process_is_agent(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            args.iter().any(|a| *a == b"agent") && !args.iter().any(|a| *a == b"--detach")
        })
        .unwrap_or(false)
}
