//! Units go where they can run: a worker whose sidecar does not host a unit's function (or that has no sidecar of
//! that name) refuses the unit, and the scheduler moves it to a live worker that has not refused it. A rolling
//! deploy (old workers lacking a new function, new ones having it) converges without stalling a partition.

use millrace_proto::v1::{UnitAssignmentInfo, WorkerInfo};
use millrace_tests::dataplane::*;
use millrace_tests::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const PARTITIONS: u32 = 6;
const RECORDS: i64 = 600;

/// A sidecar named `default` that hosts functions, but not the plan's (`double_or_fail`): an old deployment.
struct LackingSidecar {
    port: u16,
    _stop: oneshot::Sender<()>,
}

impl LackingSidecar {
    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = oneshot::channel::<()>();
        let rt = millrace_sdk::Runtime::new("lacking").transform("an_older_function", |r: Raw| r);
        tokio::spawn(async move {
            let _ = rt.serve_with_listener(l, async { let _ = rx.await; }).await;
        });
        Self { port, _stop: tx }
    }

    fn url(&self) -> String {
        format!("default=http://127.0.0.1:{}", self.port)
    }
}

/// Units by the name of the live worker holding them.
fn holders(ws: &[WorkerInfo]) -> BTreeMap<String, Vec<&UnitAssignmentInfo>> {
    ws.iter().filter(|w| w.live).map(|w| (w.name.clone(), w.assignments.iter().collect())).collect()
}

/// Waits until `ok` holds for the live workers' units; panics with what they hold otherwise.
async fn wait_until(cp: &ControlPlane, within: Duration, what: &str, ok: impl Fn(&BTreeMap<String, Vec<&UnitAssignmentInfo>>) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let ws = workers(cp).await;
        let held = holders(&ws);
        if ok(&held) {
            return start.elapsed();
        }
        if start.elapsed() > within {
            let shown: BTreeMap<&String, Vec<String>> =
                held.iter().map(|(w, us)| (w, us.iter().map(|a| format!("{} epoch {} error {:?}", a.unit_id, a.epoch, a.error)).collect())).collect();
            panic!("{what}: not so after {within:?}; live workers hold {shown:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of `0..n` reached `out` within `limit` (panics with the count otherwise).
async fn all_records_arrive(env: &TestEnv, n: i64, limit: Duration) {
    let topic = env.topic("out");
    tokio::task::spawn_blocking(move || read_until(&topic, PARTITIONS as i32, limit, |r| numbers(r).len() as i64 >= n)).await.expect("reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn units_refused_by_a_worker_whose_sidecar_lacks_the_function_move_to_one_that_can_run_them() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(PARTITIONS, "double_or_fail")).await;
    let capable = Sidecar::start().await;
    let lacking = LackingSidecar::start().await;
    let (able, without, unnamed) = (format!("{}-able", env.id), format!("{}-lacking", env.id), format!("{}-unnamed", env.id));
    // Joining together, the three share the six units in one round: four of them land where they cannot run.
    let _able = Worker::start(&able, &cp.addr, &capable.url());
    let _without = Worker::start(&without, &cp.addr, &lacking.url());
    // A worker with no sidecar named `default` at all.
    let _unnamed = Worker::start(&unnamed, &cp.addr, &format!("elsewhere=http://127.0.0.1:{}", capable.port));
    produce(&producer(), &env.topic("src"), &raws(0..RECORDS)).await;

    let all_on_able = |h: &BTreeMap<String, Vec<&UnitAssignmentInfo>>| {
        h.len() == 3 && h.get(&able).is_some_and(|us| us.len() == PARTITIONS as usize) && h.values().map(Vec::len).sum::<usize>() == PARTITIONS as usize
    };
    let moved = wait_until(&cp, Duration::from_secs(20), "every unit on the one worker that can run it", all_on_able).await;
    println!("capability: every unit on the capable worker {moved:?} after the workers started");
    all_records_arrive(&env, RECORDS, Duration::from_secs(20)).await;
    // None parked: every unit on the capable worker, running (no error), every record committed.
    wait_until(&cp, Duration::from_secs(10), "every unit running and committed on the capable worker", |h| {
        all_on_able(h) && h[&able].iter().all(|a| a.error.is_empty() && a.committed_offset >= 0)
    })
    .await;
    // And it stays so: a refusal that is not new moves nothing (no churn).
    let before: Vec<(String, u64)> = holders(&workers(&cp).await)[&able].iter().map(|a| (a.unit_id.clone(), a.epoch)).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<(String, u64)> = holders(&workers(&cp).await)[&able].iter().map(|a| (a.unit_id.clone(), a.epoch)).collect();
    assert_eq!(before, after, "units moved again although no refusal was new");
    cp.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_deploy_of_a_new_function_converges_without_stalling_a_partition() {
    let env = TestEnv::new();
    let cp = control_plane_with(&env, &single_plan(PARTITIONS, "double_or_fail")).await;
    let lacking = LackingSidecar::start().await;
    let (old_a, old_b) = (format!("{}-old-a", env.id), format!("{}-old-b", env.id));
    let old = [Worker::start(&old_a, &cp.addr, &lacking.url()), Worker::start(&old_b, &cp.addr, &lacking.url())];
    produce(&producer(), &env.topic("src"), &raws(0..RECORDS)).await;
    // No live worker can run the units: they stay placed, each showing why it cannot run.
    wait_until(&cp, Duration::from_secs(20), "every unit placed, showing that its function is missing", |h| {
        let units: Vec<&&UnitAssignmentInfo> = h.values().flatten().collect();
        units.len() == PARTITIONS as usize && units.iter().all(|a| a.error.contains("is not hosted by sidecar `default`"))
    })
    .await;

    // The new version rolls out: a new worker whose sidecar hosts the function joins, then the old ones leave.
    let capable = Sidecar::start().await;
    let new_a = format!("{}-new-a", env.id);
    let _new_a = Worker::start(&new_a, &cp.addr, &capable.url());
    let moved = wait_until(&cp, Duration::from_secs(20), "every unit on the new worker", |h| {
        h.get(&new_a).is_some_and(|us| us.len() == PARTITIONS as usize)
    })
    .await;
    println!("rolling deploy: every unit on the new worker {moved:?} after it started");
    all_records_arrive(&env, RECORDS, Duration::from_secs(20)).await;
    for w in &old {
        w.signal(nix::sys::signal::Signal::SIGTERM);
    }
    let new_b = format!("{}-new-b", env.id);
    let _new_b = Worker::start(&new_b, &cp.addr, &capable.url());
    wait_until(&cp, Duration::from_secs(20), "the units shared by the new workers alone", |h| {
        let (a, b) = (h.get(&new_a).map_or(0, Vec::len), h.get(&new_b).map_or(0, Vec::len));
        a + b == PARTITIONS as usize && a.abs_diff(b) <= 1 && h.iter().all(|(w, us)| us.is_empty() || w == &new_a || w == &new_b)
    })
    .await;
    produce(&producer(), &env.topic("src"), &raws(RECORDS..2 * RECORDS)).await;
    all_records_arrive(&env, 2 * RECORDS, Duration::from_secs(20)).await;
    drop(old);
    cp.stop().await;
    env.cleanup().await;
}
