//! Units a worker cannot run although another might: its sidecar does not host the function (or hosts it as the
//! other kind), or it has no sidecar of that name. The worker says so on its progress report (`cannot_run_here`);
//! the control plane keeps the refusal per unit and worker registration in Postgres (`unit_refusals`), and the
//! next round places the unit on a live worker that has not refused it. A round runs only when a refusal is new.

use crate::error::Error;
use crate::scheduler::Refusals;
use millrace_proto::v1::WorkUnit;
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// How long a refusal holds: then the worker may be given the unit again, so that a sidecar that gained the
/// function without its worker registering again (started late, redeployed in place) is tried again. Long, because
/// each retry of a worker that still lacks the function moves units away from one that has it and back.
pub(super) const REFUSAL_TTL: Duration = Duration::from_secs(300);

/// The refusals a round places by, after dropping those that ended: of a worker registration no longer live, older
/// than `REFUSAL_TTL`, or of a unit that is gone or `redefined` (its function may have changed).
///
/// A refusal of one partition's unit counts for every partition of the same transform or consumer: they share
/// the function and its sidecar, so the worker could run none of them, and moving them together moves each once.
pub(super) async fn current(
    conn: &mut PgConnection,
    units: &BTreeMap<String, WorkUnit>,
    redefined: &[&String],
) -> Result<Refusals, Error> {
    let desired: Vec<&String> = units.keys().collect();
    sqlx::query(
        "DELETE FROM unit_refusals r
         WHERE r.refused_at <= now() - $1 * interval '1 millisecond' OR r.unit_id = ANY($2) OR NOT (r.unit_id = ANY($3))
            OR NOT EXISTS (SELECT 1 FROM workers w
                           WHERE w.worker_id = r.worker_id AND w.generation = r.generation AND w.lease_expires_at > now())",
    )
    .bind(REFUSAL_TTL.as_millis() as i64)
    .bind(redefined)
    .bind(&desired)
    .execute(&mut *conn)
    .await?;
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT unit_id, worker_id FROM unit_refusals").fetch_all(&mut *conn).await?;
    Ok(by_family(units.keys(), rows))
}

/// `transform/<name>` of `transform/<name>/<partition>`.
fn family(unit_id: &str) -> &str {
    unit_id.rsplit_once('/').map_or(unit_id, |(f, _)| f)
}

/// The workers that refused each of `units`: those that refused any unit of its family.
fn by_family<'a>(units: impl IntoIterator<Item = &'a String>, refusals: Vec<(String, String)>) -> Refusals {
    let mut families: HashMap<String, HashSet<String>> = HashMap::new();
    for (unit, worker) in refusals {
        families.entry(family(&unit).to_string()).or_default().insert(worker);
    }
    units.into_iter().filter_map(|u| Some((u.clone(), families.get(family(u))?.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_of_one_partition_counts_for_its_siblings_only() {
        let units: Vec<String> = ["transform/t/0", "transform/t/1", "transform/t2/0", "consumer/t/0"].iter().map(|s| s.to_string()).collect();
        let r = by_family(&units, vec![("transform/t/1".into(), "a".into()), ("consumer/t/0".into(), "b".into())]);
        let of = |u: &str| r.get(u).map(|w| w.iter().cloned().collect::<Vec<_>>());
        assert_eq!(of("transform/t/0"), Some(vec!["a".to_string()]));
        assert_eq!(of("transform/t/1"), Some(vec!["a".to_string()]));
        assert_eq!(of("transform/t2/0"), None);
        assert_eq!(of("consumer/t/0"), Some(vec!["b".to_string()]));
    }
}
