//! Desired against actual: the pure heart of the coordinator. Given the [`World`], it returns
//! the fenced writes that move it toward what should run, and the backends of dead runners to
//! take out of the table.
//!
//! Rules:
//! - A runner whose heartbeat is older than `dead_after` is dead: its assignments and reports
//!   are forgotten and its instances' backends removed, so they are placed elsewhere.
//! - Each slot (`web.1`, `web.2`, ...) the formation asks for gets one instance of the current
//!   release and restart generation, on the live runner with the fewest instances of that
//!   process type, then the fewest instances, within capacity.
//! - An instance of an older release or generation in the same slot keeps running until the new
//!   one is up (healthy and routed): rollouts and restarts never leave a slot empty.
//! - Slots above the formation's count are stopped.
//! - One-off processes (`pier run`) are placed once each and never moved: see [`crate::runs`].
//! - When a new release's instance keeps crashing (or cannot be placed) while an older release
//!   still serves the slot, the new release is marked failed with the reason, and the app goes
//!   back to the release that serves.

use std::collections::{BTreeMap, BTreeSet};

use pier_model::platform::{
    effective_formation, InstanceSpec, InstanceState, Release, ReleaseStatus,
};
use pier_store::FencedOp;

use crate::world::World;

/// The knobs of a plan.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A runner silent this long is dead.
    pub dead_after_ms: u64,
    /// Crashes of a new release's instance before its rollout counts as failed.
    pub max_crashes: u32,
    /// Whether silent runners may be called dead now. False until this coordinator has read
    /// the state without error for `dead_after`: after a Redis outage every heartbeat is old,
    /// and runners must get the time to beat again before their work is moved.
    pub judge_dead: bool,
}

/// A report of an instance no runner is asked to run, left this long, is removed (its runner
/// could not remove it).
const STALE_REPORT_MS: u64 = 30_000;

/// What a tick changes.
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<FencedOp>,
    /// `(app, instance id)` of backends to remove from the registry (dead runners).
    pub dead_backends: Vec<(String, String)>,
    /// What happened, for the log.
    pub events: Vec<String>,
    /// Slots no runner had room for.
    pub unplaced: Vec<String>,
    /// `(app, runner)` where an instance could not start: to avoid for a while.
    pub failed_on: Vec<(String, String)>,
}

/// Computes the plan. `new_id` names a new instance of `app`, `ptype`, `index`.
pub fn plan(
    world: &World,
    now_ms: u64,
    rules: Rules,
    new_id: &mut dyn FnMut(&str, &str, u32) -> String,
) -> Plan {
    let mut out = Plan::default();
    let live: BTreeSet<&str> = world
        .runners
        .iter()
        .filter(|r| {
            !rules.judge_dead || now_ms.saturating_sub(r.heartbeat_ms) < rules.dead_after_ms
        })
        .map(|r| r.id.as_str())
        .collect();

    // Dead runners: forget them; their instances are placed again below.
    for r in &world.runners {
        if live.contains(r.id.as_str()) {
            continue;
        }
        let specs = world
            .assignments
            .get(&r.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        out.events.push(format!(
            "runner {} is dead (no heartbeat for {} ms): moving {} instances",
            r.id,
            now_ms.saturating_sub(r.heartbeat_ms),
            specs.len()
        ));
        for s in specs {
            // A leaving runner's instances stay routed until their replacements are up (the
            // runner waits for them, then drains); a silent one's are gone now.
            if !r.leaving {
                out.dead_backends.push((s.app.clone(), s.id.clone()));
            }
            out.ops.push(FencedOp::RemoveReport {
                app: s.app.clone(),
                id: s.id.clone(),
            });
        }
        out.ops.push(FencedOp::ForgetRunner(r.id.clone()));
    }

    // What runs on live runners, and how loaded each is.
    let mut placed: Vec<(String, InstanceSpec)> = Vec::new();
    let mut load: BTreeMap<String, u32> = BTreeMap::new();
    for r in &world.runners {
        if live.contains(r.id.as_str()) {
            let specs = world.assignments.get(&r.id).cloned().unwrap_or_default();
            load.insert(r.id.clone(), specs.len() as u32);
            placed.extend(specs.into_iter().map(|s| (r.id.clone(), s)));
        }
    }
    let capacity: BTreeMap<&str, u32> = world
        .runners
        .iter()
        .map(|r| (r.id.as_str(), r.capacity))
        .collect();

    crate::runs::plan_runs(
        world,
        now_ms,
        crate::runs::Placing {
            live: &live,
            load: &mut load,
            placed: &mut placed,
            out: &mut out,
        },
        new_id,
    );

    let unassign = |out: &mut Plan, runner: &str, s: &InstanceSpec| {
        out.ops.push(FencedOp::Unassign {
            runner: runner.to_string(),
            id: s.id.clone(),
        });
    };

    // Apps that no longer have a current release: stop all they run.
    for (runner, s) in &placed {
        if !world.apps.contains_key(&s.app) {
            unassign(&mut out, runner, s);
        }
    }

    for (app, aw) in &world.apps {
        let cur = &aw.current;
        if cur.slug.is_none() {
            continue; // nothing deployed yet
        }
        let gen_of = |slot: &str| {
            let all = world.generations.get(app.as_str()).copied().unwrap_or(0);
            let one = world
                .generations
                .get(&format!("{app}/{slot}"))
                .copied()
                .unwrap_or(0);
            all.max(one)
        };
        let fresh =
            |s: &InstanceSpec| s.release == cur.version && s.generation >= gen_of(&s.name());
        // One-off processes are not in the formation: crate::runs handles them.
        let mine: Vec<(String, InstanceSpec)> = placed
            .iter()
            .filter(|(_, s)| &s.app == app && s.run.is_none())
            .cloned()
            .collect();
        let formation = effective_formation(&cur.processes, &aw.formation);
        let mut ptypes: BTreeSet<&str> = formation.keys().map(String::as_str).collect();
        ptypes.extend(mine.iter().map(|(_, s)| s.ptype.as_str()));

        let mut all_up = true;
        let mut failure: Option<String> = None;
        let mut serving_release: Option<u64> = None;
        for ptype in ptypes {
            let want = formation.get(ptype).copied().unwrap_or(0);
            let of_type: Vec<&(String, InstanceSpec)> =
                mine.iter().filter(|(_, s)| s.ptype == ptype).collect();
            for (runner, s) in of_type.iter().map(|p| (&p.0, &p.1)) {
                if s.index > want {
                    unassign(&mut out, runner, s);
                    out.events
                        .push(format!("{app}: {} stopped (scaled to {want})", s.name()));
                }
            }
            for index in 1..=want {
                let slot: Vec<(&String, &InstanceSpec)> = of_type
                    .iter()
                    .map(|p| (&p.0, &p.1))
                    .filter(|(_, s)| s.index == index)
                    .collect();
                let (new, old): (Vec<_>, Vec<_>) = slot.into_iter().partition(|(_, s)| fresh(s));
                for (_, s) in &old {
                    if s.release != cur.version {
                        serving_release =
                            Some(serving_release.map_or(s.release, |v: u64| v.max(s.release)));
                    }
                }
                let report = |s: &InstanceSpec| world.reports.get(&s.id);
                // Keep one new instance: the one that is up, else the first.
                let keep = new
                    .iter()
                    .find(|(_, s)| report(s).is_some_and(|r| r.state == InstanceState::Up))
                    .or(new.first())
                    .copied();
                for (runner, s) in &new {
                    if Some((*runner, *s)) != keep {
                        unassign(&mut out, runner, s);
                    }
                }
                let Some((runner, s)) = keep else {
                    all_up = false;
                    // Place a new one where this app's type is least present, then least load.
                    let choice = world
                        .runners
                        .iter()
                        .filter(|r| live.contains(r.id.as_str()))
                        .filter(|r| {
                            load.get(&r.id).copied().unwrap_or(0)
                                < capacity.get(r.id.as_str()).copied().unwrap_or(0)
                        })
                        .min_by_key(|r| {
                            let avoided = world.avoid.contains(&(app.clone(), r.id.clone()));
                            let same = placed
                                .iter()
                                .filter(|(rid, p)| {
                                    rid == &r.id && &p.app == app && p.ptype == ptype
                                })
                                .count();
                            (
                                avoided,
                                same,
                                load.get(&r.id).copied().unwrap_or(0),
                                r.id.clone(),
                            )
                        });
                    match choice {
                        Some(r) => {
                            let spec = InstanceSpec {
                                id: new_id(app, ptype, index),
                                app: app.clone(),
                                ptype: ptype.to_string(),
                                index,
                                release: cur.version,
                                generation: gen_of(&format!("{ptype}.{index}")),
                                run: None,
                            };
                            out.events.push(format!(
                                "{app}: {ptype}.{index} of v{} placed on {} ({})",
                                cur.version, r.id, spec.id
                            ));
                            *load.entry(r.id.clone()).or_default() += 1;
                            placed.push((r.id.clone(), spec.clone()));
                            out.ops.push(FencedOp::Assign {
                                runner: r.id.clone(),
                                spec,
                            });
                        }
                        None => out.unplaced.push(format!("{app} {ptype}.{index}")),
                    }
                    continue;
                };
                match report(s).map(|r| (r.state, r.restarts, r.last_exit.clone())) {
                    Some((InstanceState::Up, _, _)) => {
                        // The new one serves: the old ones of this slot drain and stop.
                        for (r, o) in &old {
                            unassign(&mut out, r, o);
                        }
                    }
                    Some((InstanceState::Failed, _, why)) => {
                        all_up = false;
                        unassign(&mut out, runner, s);
                        out.failed_on.push((app.clone(), runner.to_string()));
                        out.events.push(format!(
                            "{app}: {} could not be placed on {runner}: {}",
                            s.name(),
                            why.clone().unwrap_or_default()
                        ));
                        if !old.is_empty() {
                            failure.get_or_insert(format!(
                                "{} could not start: {}",
                                s.name(),
                                why.unwrap_or_default()
                            ));
                        }
                    }
                    Some((InstanceState::Crashed, restarts, why))
                        if restarts >= rules.max_crashes =>
                    {
                        all_up = false;
                        if old.iter().any(|(_, o)| o.release != cur.version) {
                            failure.get_or_insert(format!(
                                "{} crashed {restarts} times, last: {}",
                                s.name(),
                                why.unwrap_or_default()
                            ));
                        }
                    }
                    _ => all_up = false,
                }
            }
        }
        match (failure, serving_release) {
            (Some(why), Some(back_to)) => {
                out.events.push(format!(
                    "{app}: rollout of v{} failed ({why}); back to v{back_to}",
                    cur.version
                ));
                out.ops.push(FencedOp::PutRelease(Release {
                    status: ReleaseStatus::Failed,
                    reason: Some(format!(
                        "instances never became healthy: {why}; v{back_to} kept serving"
                    )),
                    ..cur.clone()
                }));
                out.ops.push(FencedOp::SetCurrent {
                    app: app.clone(),
                    version: back_to,
                });
                for (runner, s) in &mine {
                    if s.release == cur.version {
                        unassign(&mut out, runner, s);
                    }
                }
            }
            _ => {
                let old_left = mine.iter().any(|(_, s)| !fresh(s));
                if all_up && !old_left && cur.status != ReleaseStatus::Running {
                    out.events
                        .push(format!("{app}: v{} is running", cur.version));
                    out.ops.push(FencedOp::PutRelease(Release {
                        status: ReleaseStatus::Running,
                        reason: None,
                        ..cur.clone()
                    }));
                }
            }
        }
    }
    let assigned: BTreeSet<&str> = world
        .assignments
        .values()
        .flatten()
        .map(|s| s.id.as_str())
        .collect();
    for r in world.reports.values() {
        if !assigned.contains(r.id.as_str())
            && now_ms.saturating_sub(r.updated_ms) > STALE_REPORT_MS
        {
            out.ops.push(FencedOp::RemoveReport {
                app: r.app.clone(),
                id: r.id.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::world::AppWorld;
    use pier_model::platform::{InstanceStatus, RunnerRecord, SlugRef};

    const RULES: Rules = Rules {
        dead_after_ms: 3000,
        max_crashes: 3,
        judge_dead: true,
    };

    fn runner(id: &str, beat: u64) -> RunnerRecord {
        RunnerRecord {
            id: id.into(),
            address: "127.0.0.1".into(),
            capacity: 10,
            started_ms: 0,
            heartbeat_ms: beat,
            limits: String::new(),
            leaving: false,
            log_lines_dropped: 0,
            exec: Some("127.0.0.1:1".into()),
        }
    }

    fn release(version: u64) -> Release {
        Release {
            app: "blog".into(),
            version,
            slug: Some(SlugRef {
                digest: "d".repeat(64),
                size: 1,
            }),
            processes: [("web".to_string(), "python3 app.py".to_string())].into(),
            config: Default::default(),
            description: String::new(),
            created_ms: 0,
            status: ReleaseStatus::Pending,
            reason: None,
        }
    }

    fn world(runners: Vec<RunnerRecord>, version: u64, web: u32) -> World {
        World {
            runners,
            apps: [(
                "blog".to_string(),
                AppWorld {
                    current: release(version),
                    formation: [("web".to_string(), web)].into(),
                },
            )]
            .into(),
            ..World::default()
        }
    }

    fn ids() -> impl FnMut(&str, &str, u32) -> String {
        let mut n = 0;
        move |app, t, i| {
            n += 1;
            format!("{app}-{t}-{i}-{n}")
        }
    }

    /// Applies a plan's assignments to the world (what Redis would hold after the write).
    fn apply(w: &mut World, p: &Plan) {
        for op in &p.ops {
            match op {
                FencedOp::Assign { runner, spec } => w
                    .assignments
                    .entry(runner.clone())
                    .or_default()
                    .push(spec.clone()),
                FencedOp::Unassign { runner, id } => w
                    .assignments
                    .entry(runner.clone())
                    .or_default()
                    .retain(|s| &s.id != id),
                FencedOp::ForgetRunner(r) => {
                    w.assignments.remove(r);
                    w.runners.retain(|x| &x.id != r);
                }
                FencedOp::SetCurrent { version, .. } => {
                    w.apps.get_mut("blog").unwrap().current = release(*version);
                }
                _ => {}
            }
        }
    }

    fn report(w: &mut World, id: &str, state: InstanceState, restarts: u32) {
        let s = w
            .assignments
            .values()
            .flatten()
            .find(|s| s.id == id)
            .unwrap()
            .clone();
        w.reports.insert(
            id.into(),
            InstanceStatus {
                id: id.into(),
                app: s.app,
                ptype: s.ptype,
                index: s.index,
                release: s.release,
                generation: s.generation,
                runner: String::new(),
                state,
                address: None,
                started_ms: 0,
                restarts,
                last_exit: Some("exit status 1".into()),
                next_try_ms: None,
                cpu_s: 0.0,
                rss_kib: 0,
                updated_ms: 0,
            },
        );
    }

    fn on(w: &World, runner: &str) -> Vec<String> {
        w.assignments
            .get(runner)
            .into_iter()
            .flatten()
            .map(|s| s.name())
            .collect()
    }

    #[test]
    fn spreads_across_runners_and_moves_off_a_dead_one() {
        let mut w = world(vec![runner("a", 10_000), runner("b", 10_000)], 1, 2);
        let mut id = ids();
        let p = plan(&w, 10_100, RULES, &mut id);
        apply(&mut w, &p);
        assert_eq!(on(&w, "a").len() + on(&w, "b").len(), 2);
        assert_eq!(on(&w, "a").len(), 1, "one per runner: {:?}", w.assignments);
        // b stops heartbeating: its instance is moved to a, its backend removed.
        w.runners[0].heartbeat_ms = 20_000;
        let p = plan(&w, 20_100, RULES, &mut id);
        assert_eq!(p.dead_backends.len(), 1);
        apply(&mut w, &p);
        assert_eq!(on(&w, "a").len(), 2, "{:?}", w.assignments);
        assert!(w.runners.iter().all(|r| r.id == "a"));
    }

    #[test]
    fn no_runner_is_called_dead_before_the_coordinator_has_watched_long_enough() {
        // After a Redis outage every heartbeat is old: nothing moves until runners can beat.
        let mut w = world(vec![runner("a", 10_000), runner("b", 10_000)], 1, 2);
        let mut id = ids();
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        let waiting = Rules {
            judge_dead: false,
            ..RULES
        };
        let p = plan(&w, 60_000, waiting, &mut id);
        assert!(
            p.dead_backends.is_empty() && p.ops.is_empty(),
            "{:?}",
            p.ops
        );
        let p = plan(&w, 60_000, RULES, &mut id);
        assert_eq!(p.dead_backends.len(), 2);
    }

    #[test]
    fn reports_of_unassigned_instances_are_removed_once_stale() {
        let mut w = world(vec![runner("a", 10_000)], 1, 1);
        let mut id = ids();
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        let sid = w.assignments["a"][0].id.clone();
        report(&mut w, &sid, InstanceState::Up, 0);
        let mut ghost = w.reports[&sid].clone();
        ghost.id = "ghost".into();
        ghost.updated_ms = 10_000;
        w.reports.insert("ghost".into(), ghost);
        let removed = |p: &Plan| {
            p.ops
                .iter()
                .filter_map(|o| match o {
                    FencedOp::RemoveReport { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        w.runners[0].heartbeat_ms = 20_000;
        assert!(removed(&plan(&w, 20_000, RULES, &mut id)).is_empty());
        w.runners[0].heartbeat_ms = 50_000;
        assert_eq!(
            removed(&plan(&w, 50_000, RULES, &mut id)),
            vec!["ghost".to_string()]
        );
    }

    #[test]
    fn rollout_keeps_the_old_instance_until_the_new_one_is_up() {
        let mut w = world(vec![runner("a", 10_000)], 1, 1);
        let mut id = ids();
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        let old = w.assignments["a"][0].id.clone();
        report(&mut w, &old, InstanceState::Up, 0);
        // v2 released: a new instance is placed; the old one stays.
        w.apps.get_mut("blog").unwrap().current = release(2);
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        assert_eq!(w.assignments["a"].len(), 2);
        let new = w.assignments["a"]
            .iter()
            .find(|s| s.release == 2)
            .unwrap()
            .id
            .clone();
        report(&mut w, &new, InstanceState::Starting, 0);
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        assert_eq!(w.assignments["a"].len(), 2, "old kept while new starts");
        report(&mut w, &new, InstanceState::Up, 0);
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        assert_eq!(
            w.assignments["a"]
                .iter()
                .map(|s| s.id.clone())
                .collect::<Vec<_>>(),
            vec![new.clone()]
        );
        // Next tick: v2 is marked running.
        let p = plan(&w, 10_000, RULES, &mut id);
        assert!(p
            .ops
            .iter()
            .any(|o| matches!(o, FencedOp::PutRelease(r) if r.status == ReleaseStatus::Running)));
    }

    #[test]
    fn a_crashing_release_fails_and_the_app_goes_back() {
        let mut w = world(vec![runner("a", 10_000)], 1, 1);
        let mut id = ids();
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        let old = w.assignments["a"][0].id.clone();
        report(&mut w, &old, InstanceState::Up, 0);
        w.apps.get_mut("blog").unwrap().current = release(2);
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        let new = w.assignments["a"]
            .iter()
            .find(|s| s.release == 2)
            .unwrap()
            .id
            .clone();
        report(&mut w, &new, InstanceState::Crashed, 2);
        let p = plan(&w, 10_000, RULES, &mut id);
        assert!(
            !p.ops
                .iter()
                .any(|o| matches!(o, FencedOp::SetCurrent { .. })),
            "not yet"
        );
        report(&mut w, &new, InstanceState::Crashed, 3);
        let p = plan(&w, 10_000, RULES, &mut id);
        let failed = p.ops.iter().find_map(|o| match o {
            FencedOp::PutRelease(r) if r.status == ReleaseStatus::Failed => r.reason.clone(),
            _ => None,
        });
        assert!(failed.unwrap().contains("crashed 3 times"));
        assert!(p
            .ops
            .iter()
            .any(|o| matches!(o, FencedOp::SetCurrent { version: 1, .. })));
        apply(&mut w, &p);
        assert_eq!(
            w.assignments["a"]
                .iter()
                .map(|s| s.id.clone())
                .collect::<Vec<_>>(),
            vec![old]
        );
    }

    #[test]
    fn an_instance_that_cannot_start_is_placed_on_another_runner() {
        let mut w = world(vec![runner("a", 10_000), runner("b", 10_000)], 1, 1);
        let mut id = ids();
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        let (first, sid) = w
            .assignments
            .iter()
            .find_map(|(r, v)| v.first().map(|s| (r.clone(), s.id.clone())))
            .unwrap();
        report(&mut w, &sid, InstanceState::Failed, 0);
        let p = plan(&w, 10_000, RULES, &mut id);
        assert_eq!(p.failed_on, vec![("blog".to_string(), first.clone())]);
        apply(&mut w, &p);
        w.avoid.insert(("blog".into(), first.clone()));
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        assert!(on(&w, &first).is_empty(), "{:?}", w.assignments);
        assert_eq!(w.assignments.values().flatten().count(), 1);
    }

    #[test]
    fn scale_down_stops_the_highest_slots_and_capacity_is_respected() {
        let mut r = runner("a", 10_000);
        r.capacity = 2;
        let mut w = world(vec![r], 1, 3);
        let mut id = ids();
        let p = plan(&w, 10_000, RULES, &mut id);
        assert_eq!(p.unplaced, vec!["blog web.3".to_string()]);
        apply(&mut w, &p);
        w.apps.get_mut("blog").unwrap().formation = [("web".to_string(), 1)].into();
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        assert_eq!(on(&w, "a"), vec!["web.1".to_string()]);
    }

    #[test]
    fn restart_replaces_one_slot_only() {
        let mut w = world(vec![runner("a", 10_000)], 1, 2);
        let mut id = ids();
        let p = plan(&w, 10_000, RULES, &mut id);
        apply(&mut w, &p);
        for s in w.assignments["a"].clone() {
            report(&mut w, &s.id, InstanceState::Up, 0);
        }
        w.generations.insert("blog/web.2".into(), 1);
        let p = plan(&w, 10_000, RULES, &mut id);
        let placed: Vec<_> = p
            .ops
            .iter()
            .filter_map(|o| match o {
                FencedOp::Assign { spec, .. } => Some((spec.name(), spec.generation)),
                _ => None,
            })
            .collect();
        assert_eq!(placed, vec![("web.2".to_string(), 1)]);
    }
}
