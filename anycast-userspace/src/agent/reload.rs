//! Config reloads and the carry-over of connection tracking into a new `CONNS` map.

use super::*;

/// Copies the tracked connections of the old `CONNS` into the new one, before the new program
/// (and with it the new map) goes live. A failure loses them, as a replaced map would: logged,
/// not fatal.
pub(super) fn migrate_conns(ctl: &mut Controller<Dataplane>, m: &pins::ConnsMigration) {
    let started = std::time::Instant::now();
    match crate::dataplane::migrate::migrate_into(ctl.sink_mut(), m) {
        Ok(r) => info!(
            capacity_from = m.from.max_entries,
            capacity_to = m.to.max_entries,
            found = r.found,
            copied = r.copied,
            stale = r.stale,
            backend_gone = r.backend_gone,
            no_room = r.no_room,
            "connection tracking carried over into the new CONNS map in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) => warn!(
            error = %error_chain(&e),
            "connection tracking not carried over: tracked connections are lost (those whose table slot is unchanged keep their backend)"
        ),
    }
}

/// Reads the config again (from the fleet's document with `[fleet]`) and hands it to the
/// controller, which keeps its last good state on an error.
pub(super) fn reload(ctl: &mut Controller<Dataplane>, trigger: &str, fleet: Option<&Edge>) {
    let new = match fleet {
        Some(f) => f.load(ctl.config_path()),
        None => Config::load(ctl.config_path()),
    };
    let local = match host::local_addresses() {
        Ok(detected) => new.as_ref().unwrap_or(ctl.config()).local_set(detected),
        Err(e) => {
            error!(trigger, error = %error_chain(&e), "config not reloaded: cannot list this host's addresses");
            return;
        }
    };
    // Errors are logged (field named) and recorded for `anycast status` by the controller.
    let _ = ctl.reload(trigger, new, local);
    if let Some(f) = fleet {
        f.refresh(ctl);
    }
}
