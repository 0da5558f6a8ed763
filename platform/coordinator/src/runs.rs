//! One-off processes (`pier run`) in the plan. A run is placed at most once, on a live runner
//! that can attach clients and has room; it is never placed again (a command must not run
//! twice): when its runner dies, the run ends as `runner lost`. A run the owner stops is taken
//! from its runner, which ends it and writes how it ended.

use std::collections::{BTreeMap, BTreeSet};

use pier_model::platform::{InstanceSpec, RunExit, RunState, RUN_PTYPE};
use pier_store::FencedOp;

use crate::plan::Plan;
use crate::world::World;

/// A run unassigned (stopped) whose runner never wrote how it ended is called ended after this.
const STOP_TIMEOUT_MS: u64 = 60_000;

/// What [`plan_runs`] reads and updates of the plan being made.
pub(crate) struct Placing<'a> {
    pub live: &'a BTreeSet<&'a str>,
    pub load: &'a mut BTreeMap<String, u32>,
    pub placed: &'a mut Vec<(String, InstanceSpec)>,
    pub out: &'a mut Plan,
}

/// Places new runs, stops the ones asked to stop, and retires the ones that ended.
pub(crate) fn plan_runs(
    world: &World,
    now_ms: u64,
    p: Placing<'_>,
    new_id: &mut dyn FnMut(&str, &str, u32) -> String,
) {
    let Placing {
        live,
        load,
        placed,
        out,
    } = p;
    let ended = |run: &RunState, reason: &str| FencedOp::FinishRun {
        app: run.spec.app.clone(),
        number: run.spec.number,
        exit: RunExit {
            ended_ms: now_ms,
            code: None,
            signal: None,
            reason: reason.to_string(),
        },
    };
    for run in &world.runs {
        let spec = &run.spec;
        let name = format!("{}: {RUN_PTYPE}.{}", spec.app, spec.number);
        // Where it is assigned now, if anywhere.
        let assigned = placed
            .iter()
            .find(|(_, s)| {
                s.run
                    .as_ref()
                    .is_some_and(|r| r.app == spec.app && r.number == spec.number)
            })
            .map(|(runner, s)| (runner.clone(), s.id.clone()));
        let unassign = |out: &mut Plan| {
            if let Some((runner, id)) = &assigned {
                out.ops.push(FencedOp::Unassign {
                    runner: runner.clone(),
                    id: id.clone(),
                });
            }
        };
        if let Some(exit) = &run.exit {
            unassign(out);
            out.ops.push(FencedOp::FinishRun {
                app: spec.app.clone(),
                number: spec.number,
                exit: exit.clone(),
            });
            out.events.push(format!("{name} ended ({})", exit.reason));
            continue;
        }
        let Some(placement) = &run.placed else {
            let why = if run.stop_ms.is_some() {
                Some("stopped before it started")
            } else if now_ms >= spec.deadline_ms {
                Some("its lifetime ended before a runner had room")
            } else if !world.apps.contains_key(&spec.app) {
                Some("the app has no release")
            } else {
                None
            };
            if let Some(why) = why {
                out.ops.push(ended(run, why));
                out.events.push(format!("{name} ended: {why}"));
                continue;
            }
            let choice = world
                .runners
                .iter()
                .filter(|r| live.contains(r.id.as_str()) && !r.leaving && r.exec.is_some())
                .filter(|r| load.get(&r.id).copied().unwrap_or(0) < r.capacity)
                .min_by_key(|r| (load.get(&r.id).copied().unwrap_or(0), r.id.clone()));
            let Some(r) = choice else {
                out.unplaced.push(name);
                continue;
            };
            let index = u32::try_from(spec.number).unwrap_or(u32::MAX);
            let inst = InstanceSpec {
                id: new_id(&spec.app, RUN_PTYPE, index),
                app: spec.app.clone(),
                ptype: RUN_PTYPE.to_string(),
                index,
                release: spec.release,
                generation: 0,
                run: Some(spec.clone()),
            };
            out.events
                .push(format!("{name} placed on {} ({})", r.id, inst.id));
            *load.entry(r.id.clone()).or_default() += 1;
            placed.push((r.id.clone(), inst.clone()));
            out.ops.push(FencedOp::PlaceRun {
                runner: r.id.clone(),
                spec: inst,
                at_ms: now_ms,
            });
            continue;
        };
        if !live.contains(placement.runner.as_str()) {
            // Never placed twice: what it did on the dead runner is unknown.
            out.ops.push(ended(run, "runner lost"));
            out.events
                .push(format!("{name} ended: runner {} lost", placement.runner));
            continue;
        }
        match (&assigned, run.stop_ms) {
            (None, Some(stop)) if now_ms.saturating_sub(stop) > STOP_TIMEOUT_MS => {
                out.ops.push(ended(run, "stopped"));
            }
            (None, Some(_)) => {} // its runner is ending it
            (None, None) => {
                out.ops.push(ended(run, "runner lost"));
                out.events.push(format!("{name} ended: no longer assigned"));
            }
            (Some(_), Some(_)) => {
                unassign(out);
                out.events.push(format!("{name} stopped by its owner"));
            }
            (Some(_), None) if now_ms > spec.deadline_ms.saturating_add(STOP_TIMEOUT_MS) => {
                // Its runner ends it at the deadline; this is the backstop.
                unassign(out);
            }
            (Some(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pier_model::platform::{RunPlacement, RunSpec, RunnerRecord};

    fn runner(id: &str, exec: bool) -> RunnerRecord {
        RunnerRecord {
            id: id.into(),
            address: "127.0.0.1".into(),
            capacity: 2,
            started_ms: 0,
            heartbeat_ms: 1000,
            limits: String::new(),
            leaving: false,
            log_lines_dropped: 0,
            exec: exec.then(|| "127.0.0.1:1".to_string()),
        }
    }

    fn run(number: u64) -> RunState {
        RunState {
            spec: RunSpec {
                app: "blog".into(),
                number,
                command: "bash".into(),
                release: 3,
                attach: true,
                tty: true,
                cols: 80,
                rows: 24,
                term: String::new(),
                by: "operator".into(),
                created_ms: 0,
                deadline_ms: 100_000,
                secret: "s".into(),
            },
            placed: None,
            attached_ms: None,
            stop_ms: None,
            exit: None,
        }
    }

    fn plan_of(world: &World, now: u64) -> Plan {
        let live: BTreeSet<&str> = world.runners.iter().map(|r| r.id.as_str()).collect();
        let mut load = BTreeMap::new();
        let mut placed = Vec::new();
        for (r, specs) in &world.assignments {
            load.insert(r.clone(), specs.len() as u32);
            placed.extend(specs.iter().map(|s| (r.clone(), s.clone())));
        }
        let mut out = Plan::default();
        plan_runs(
            world,
            now,
            Placing {
                live: &live,
                load: &mut load,
                placed: &mut placed,
                out: &mut out,
            },
            &mut |app, t, i| format!("{app}-{t}-{i}-x"),
        );
        out
    }

    fn world_with(runs: Vec<RunState>) -> World {
        let mut w = World {
            runners: vec![runner("no-exec", false), runner("r1", true)],
            runs,
            ..Default::default()
        };
        w.apps.insert(
            "blog".into(),
            crate::world::AppWorld {
                current: pier_model::platform::Release {
                    app: "blog".into(),
                    version: 3,
                    slug: None,
                    processes: Default::default(),
                    config: Default::default(),
                    description: String::new(),
                    created_ms: 0,
                    status: pier_model::platform::ReleaseStatus::Running,
                    reason: None,
                },
                formation: Default::default(),
            },
        );
        w
    }

    #[test]
    fn a_run_is_placed_once_on_a_runner_that_can_attach() {
        let p = plan_of(&world_with(vec![run(1)]), 10);
        let placed: Vec<_> = p
            .ops
            .iter()
            .filter_map(|op| match op {
                FencedOp::PlaceRun { runner, spec, .. } => Some((runner.clone(), spec.name())),
                _ => None,
            })
            .collect();
        assert_eq!(placed, vec![("r1".to_string(), "run.1".to_string())]);

        // Placed already: nothing more to do while it runs.
        let mut r = run(1);
        r.placed = Some(RunPlacement {
            runner: "r1".into(),
            instance: "blog-run-1-x".into(),
            at_ms: 10,
        });
        let mut w = world_with(vec![r.clone()]);
        let spec = InstanceSpec {
            id: "blog-run-1-x".into(),
            app: "blog".into(),
            ptype: RUN_PTYPE.into(),
            index: 1,
            release: 3,
            generation: 0,
            run: Some(r.spec.clone()),
        };
        w.assignments.insert("r1".into(), vec![spec]);
        assert!(plan_of(&w, 20).ops.is_empty());

        // Its runner died: it ends as lost, and is not placed again.
        let mut w2 = world_with(vec![r]);
        w2.runners.retain(|x| x.id != "r1");
        w2.runners.push(runner("r2", true));
        let p = plan_of(&w2, 20);
        assert!(matches!(
            p.ops.as_slice(),
            [FencedOp::FinishRun { exit, .. }] if exit.reason == "runner lost"
        ));
    }

    #[test]
    fn stop_unassigns_and_an_exit_retires_the_run() {
        let mut r = run(2);
        r.placed = Some(RunPlacement {
            runner: "r1".into(),
            instance: "blog-run-2-x".into(),
            at_ms: 10,
        });
        r.stop_ms = Some(15);
        let mut w = world_with(vec![r.clone()]);
        w.assignments.insert(
            "r1".into(),
            vec![InstanceSpec {
                id: "blog-run-2-x".into(),
                app: "blog".into(),
                ptype: RUN_PTYPE.into(),
                index: 2,
                release: 3,
                generation: 0,
                run: Some(r.spec.clone()),
            }],
        );
        let p = plan_of(&w, 20);
        assert!(
            matches!(p.ops.as_slice(), [FencedOp::Unassign { id, .. }] if id == "blog-run-2-x")
        );

        r.exit = Some(RunExit {
            ended_ms: 30,
            code: None,
            signal: Some(15),
            reason: "stopped".into(),
        });
        let p = plan_of(&world_with(vec![r]), 40);
        assert!(matches!(
            p.ops.as_slice(),
            [FencedOp::FinishRun { number: 2, .. }]
        ));
    }

    #[test]
    fn no_room_leaves_it_pending_and_a_stop_before_placement_ends_it() {
        let mut w = world_with(vec![run(1)]);
        w.runners.retain(|r| r.exec.is_none());
        let p = plan_of(&w, 10);
        assert!(p.ops.is_empty());
        assert_eq!(p.unplaced, vec!["blog: run.1".to_string()]);

        let mut r = run(1);
        r.stop_ms = Some(5);
        let p = plan_of(&world_with(vec![r]), 10);
        assert!(matches!(
            p.ops.as_slice(),
            [FencedOp::FinishRun { exit, .. }] if exit.reason == "stopped before it started"
        ));
    }
}
