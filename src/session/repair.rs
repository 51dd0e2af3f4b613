//! Repairing the chain around failed, stalled and slow nodes.
//!
//! A node is declared dead when its control connection breaks, when it is
//! silent for `--timeout`, or when it stalls the chain: its sink takes nothing
//! for `SINK_STALL_FACTOR` timeouts although data is waiting (a hung disk), or it
//! takes nothing for a timeout from an upstream that has more while its own
//! children have caught up with it (a hung receiver). Its children are then
//! reattached to its upstream, which replays what they missed from its buffer
//! (or the server re-reads its input).
//!
//! A node that is alive but much slower than the rest (its sink never waits for
//! data while the others' mostly do) is taken out of the chain for `--slow-after`
//! and fed on its own by the server, so it no longer sets everybody's pace.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use super::client::HEARTBEAT;
use super::lobby::{record, Lobby, LobbyState};
use crate::protocol::{Frame, Report};

/// A sink is given this many `--timeout`s before it counts as hung: a busy
/// disk flushing its cache can block writes for seconds, and cutting off a
/// healthy node costs more than waiting a little for a dead one.
const SINK_STALL_FACTOR: u32 = 3;

/// A sink busier than this (fraction of time not waiting for data) is saturated.
const SATURATED: f64 = 0.9;
/// ... and it is "much slower than the rest" when the others' median is below this.
const OTHERS_IDLE: f64 = 0.5;

/// The node is gone or hopeless: it is told so (it exits non-zero), its result
/// says why, and its children move up to its upstream.
pub(crate) fn declare_dead(st: &mut LobbyState, lobby: &Lobby, id: u32, why: String) {
    if st.results.contains_key(&id) && st.index_of(id).is_some_and(|i| st.members[i].dead) {
        return;
    }
    warn!(
        "node '{}' declared dead: {why}",
        st.index_of(id).map(|i| st.members[i].name.as_str()).unwrap_or("?")
    );
    let (bytes, duration_ms) = match st.index_of(id) {
        Some(i) => {
            let _ = st.members[i].writer.write_frame(&Frame::Abort { reason: why.clone() });
            (st.members[i].received, st.started_at.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0))
        }
        None => (0, 0),
    };
    record(
        st,
        &lobby.stats,
        id,
        Report { bytes, hash_ok: false, sink_status: None, duration_ms, error: Some(why) },
    );
    remove_from_chain(st, id);
}

/// Reattaches the node's children to its upstream and cuts it off there.
pub(crate) fn remove_from_chain(st: &mut LobbyState, id: u32) {
    let Some(i) = st.index_of(id) else { return };
    if st.members[i].dead || st.members[i].pos == 0 {
        return;
    }
    st.members[i].dead = true;
    detach_at_parent(st, id);
    relink_children(st, i);
}

/// Gives the children of member `i` its upstream as theirs.
fn relink_children(st: &mut LobbyState, i: usize) {
    let parent = st.members[i].parent;
    for c in st.children_of(st.members[i].pos) {
        st.members[c].parent = parent;
        // A fresh timeout at its new upstream: it was starved, not stalled.
        st.members[c].behind_since = None;
        let upstream = st.upstream_of(c);
        let child = &mut st.members[c];
        if st.results.contains_key(&child.id) {
            continue;
        }
        info!("reattaching node '{}' to {upstream}", child.name);
        if let Err(e) = child.writer.write_frame(&Frame::Reattach { upstream }) {
            warn!("cannot reattach node '{}': {e}", child.name);
        }
    }
}

/// Takes a slow node out of the chain: its children move up, and the server
/// feeds it on its own (re-reading the input, never holding back the chain).
fn go_solo(st: &mut LobbyState, i: usize, others: f64) {
    let id = st.members[i].id;
    warn!(
        "node '{}' is much slower than the rest (its sink is busy {:.0}% of the time, the others' {:.0}%): \
         feeding it on its own so the others keep their speed",
        st.members[i].name,
        st.members[i].busy * 100.0,
        others * 100.0
    );
    detach_at_parent(st, id);
    relink_children(st, i);
    if let Some(relay) = &st.relay {
        relay.solo(id);
    }
    let m = &mut st.members[i];
    m.parent = 0;
    m.solo = true;
    m.behind_since = None;
    let upstream = st.upstream_of(i);
    if let Err(e) = st.members[i].writer.write_frame(&Frame::Reattach { upstream }) {
        warn!("cannot move node {id} to the server: {e}");
    }
}

/// Finds a node much slower than the rest, for `--slow-after`.
pub(crate) fn check_slow(st: &mut LobbyState, lobby: &Lobby) {
    let Some(after) = lobby.slow_after else { return };
    let now = Instant::now();
    let live: Vec<usize> =
        (0..st.members.len()).filter(|&i| st.in_stream(&st.members[i]) && !st.members[i].solo).collect();
    let mut slow = None;
    for &i in &live {
        let mut others: Vec<f64> = live.iter().filter(|&&j| j != i).map(|&j| st.members[j].busy).collect();
        if others.is_empty() {
            break;
        }
        others.sort_by(f64::total_cmp);
        let median = others[others.len() / 2];
        let m = &mut st.members[i];
        if m.busy >= SATURATED && median < OTHERS_IDLE && m.written < m.received {
            if now.duration_since(*m.slow_since.get_or_insert(now)) >= after && slow.is_none() {
                slow = Some((i, median));
            }
        } else {
            m.slow_since = None;
        }
    }
    if let Some((i, median)) = slow {
        go_solo(st, i, median);
    }
}

/// Tells the node's upstream to stop serving it (releasing a reserved stream,
/// cutting a hung connection).
pub(crate) fn detach_at_parent(st: &mut LobbyState, id: u32) {
    let Some(i) = st.index_of(id) else { return };
    let parent = st.members[i].parent;
    match st.at_pos(parent).filter(|_| parent != 0) {
        Some(p) => {
            let _ = st.members[p].writer.write_frame(&Frame::Detach { node_id: id });
        }
        None => {
            if let Some(relay) = &st.relay {
                relay.detach(id);
            }
        }
    }
}

/// Finds nodes that stall the chain (see the module doc) and declares them dead.
pub(crate) fn check_stalls(st: &mut LobbyState, lobby: &Lobby) {
    let sent = lobby.stats.sent.load(Ordering::Relaxed);
    let now = Instant::now();
    let t = lobby.timeout;
    let sink_limit = t * SINK_STALL_FACTOR;
    let mut stalled = Vec::new();
    for i in 0..st.members.len() {
        let m = &st.members[i];
        if !st.in_stream(m) || now.duration_since(m.heard_at) > 2 * HEARTBEAT {
            continue;
        }
        let behind = st.upstream_has(i, sent) > m.received;
        let children_caught_up = st.children_of(m.pos).iter().all(|&c| st.members[c].received >= m.received);
        let m = &mut st.members[i];
        if behind {
            m.behind_since.get_or_insert(now);
        } else {
            m.behind_since = None;
        }
        let sink_stuck = m.sink_behind_since.is_some_and(|s| now.duration_since(s) >= sink_limit);
        // A node whose own sink is behind is judged by the sink rule alone.
        let receiver_stuck = m.written >= m.received
            && children_caught_up
            && m.behind_since.is_some_and(|s| now.duration_since(s) >= t);
        if sink_stuck {
            let why = format!("its sink took no data for {}s (hung disk?)", sink_limit.as_secs_f64());
            stalled.push((m.id, why));
        } else if receiver_stuck {
            let why = format!("it took no data for {}s while its upstream had some", t.as_secs_f64());
            stalled.push((m.id, why));
        }
    }
    for (id, why) in stalled {
        declare_dead(st, lobby, id, why);
    }
}
