//! Partition counts of the broker's topics, kept in Postgres. Units follow the real counts, and a count held
//! only in memory is unknown at every start-up: a round run then would count the extra units of an external
//! topic as gone and delete their rows, committed offsets and all. So the refresh stores what it reads, rounds
//! read it back, and a unit whose topic has no known count is kept, never deleted for it.

use super::Coordinator;
use crate::error::Error;
use millrace_proto::v1::WorkUnit;
use prost::Message;
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap};

impl Coordinator {
    /// Reads every topic's partition count from the broker and stores those of this deployment's namespace; true
    /// when one changed. An unreachable broker (or Postgres) keeps the stored counts.
    pub async fn refresh_partitions(&self) -> bool {
        let counts = match self.inner.kafka.topics().await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read partition counts; keeping the stored ones");
                return false;
            }
        };
        match self.store_counts(counts).await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot store partition counts; keeping the stored ones");
                false
            }
        }
    }

    /// Stores the counts of the namespace's topics; true when one was new or changed.
    /// Forgets the counts of topics Millrace deleted (a stream declared again may have fewer partitions).
    pub async fn forget_topics(&self, topics: &[String]) -> Result<(), Error> {
        if !topics.is_empty() {
            sqlx::query("DELETE FROM topic_partitions WHERE topic = ANY($1)").bind(topics).execute(self.inner.store.pool()).await?;
        }
        Ok(())
    }

    /// Counts only grow: Kafka cannot remove partitions, so a smaller count is a topic deleted and made again
    /// (or a broker answering from a partial view), and forgetting partitions would delete their units' offsets.
    async fn store_counts(&self, counts: HashMap<String, usize>) -> Result<bool, Error> {
        // Other deployments share the broker: their topics are none of ours.
        let namespace = &self.inner.names.topic_namespace;
        let (topics, partitions): (Vec<String>, Vec<i32>) = counts
            .into_iter()
            // A topic listed with no partitions (being created, deleted or recovered) has no count yet.
            .filter(|(t, n)| t.starts_with(namespace.as_str()) && *n > 0)
            .map(|(t, n)| (t, i32::try_from(n).unwrap_or(i32::MAX)))
            .unzip();
        let changed: Vec<String> = sqlx::query_scalar(
            "INSERT INTO topic_partitions (topic, partitions) SELECT * FROM UNNEST($1::text[], $2::int[])
             ON CONFLICT (topic) DO UPDATE SET partitions = EXCLUDED.partitions, updated_at = now()
               WHERE topic_partitions.partitions < EXCLUDED.partitions
             RETURNING topic",
        )
        .bind(&topics)
        .bind(&partitions)
        .fetch_all(self.inner.store.pool())
        .await?;
        Ok(!changed.is_empty())
    }
}

/// The stored partition counts, by topic.
pub(super) async fn known_counts(conn: &mut PgConnection) -> Result<HashMap<String, usize>, Error> {
    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT topic, partitions FROM topic_partitions").fetch_all(conn).await?;
    Ok(rows.into_iter().map(|(t, n)| (t, n.max(0) as usize)).collect())
}

/// Adds to `units` the stored units that are not desired only because their source topic's count is unknown: a
/// partition of a transform, consumer or table sync still declared, reading the same topic, whose count nobody
/// has read yet (the broker unreachable since the counts were first stored, say). Such a unit is defined as its
/// declared siblings are, at its own partition, so it keeps running from its committed offset. Returns their ids.
pub(super) fn keep_units_of_unknown_counts<'a>(
    units: &mut BTreeMap<String, WorkUnit>,
    stored: impl IntoIterator<Item = (&'a String, &'a [u8])>,
    known: &HashMap<String, usize>,
) -> Vec<String> {
    let mut kept = Vec::new();
    for (unit_id, definition) in stored {
        if units.contains_key(unit_id) {
            continue;
        }
        let Some((family, partition)) = unit_id.rsplit_once('/') else { continue };
        let Ok(partition) = partition.parse::<i32>() else { continue };
        let prefix = format!("{family}/");
        let sibling = units
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix))
            .map(|(_, u)| u)
            .find(|u| u.unit_id.rsplit_once('/').is_some_and(|(f, _)| f == family));
        let Some(sibling) = sibling else { continue };
        if known.contains_key(&sibling.source_topic) {
            continue;
        }
        // A unit that read another topic is gone for good: its offset means nothing in the new one. Rows from
        // before definitions were stored have none, and are kept.
        let same_source = definition.is_empty()
            || WorkUnit::decode(definition).is_ok_and(|w| w.source_topic == sibling.source_topic);
        if !same_source {
            continue;
        }
        let unit = WorkUnit { unit_id: unit_id.clone(), partition, ..sibling.clone() };
        kept.push(unit_id.clone());
        units.insert(unit_id.clone(), unit);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(id: &str, topic: &str, partition: i32) -> WorkUnit {
        WorkUnit { unit_id: id.into(), name: "t".into(), source_topic: topic.into(), partition, ..Default::default() }
    }

    #[test]
    fn units_of_a_topic_without_a_known_count_are_kept_and_others_go() {
        let desired = |topic: &str| BTreeMap::from([("transform/t/0".to_string(), unit("transform/t/0", topic, 0))]);
        let stored: Vec<(String, Vec<u8>)> = vec![
            ("transform/t/0".into(), unit("transform/t/0", "ext", 0).encode_to_vec()),
            ("transform/t/1".into(), unit("transform/t/1", "ext", 1).encode_to_vec()),
            ("transform/t/2".into(), Vec::new()),
            ("transform/gone/0".into(), unit("transform/gone/0", "ext", 0).encode_to_vec()),
        ];
        let rows = || stored.iter().map(|(id, d)| (id, d.as_slice()));

        let mut units = desired("ext");
        let kept = keep_units_of_unknown_counts(&mut units, rows(), &HashMap::new());
        assert_eq!(kept, vec!["transform/t/1", "transform/t/2"], "partitions of a topic with no known count stay");
        assert_eq!((units["transform/t/2"].partition, units["transform/t/2"].source_topic.as_str()), (2, "ext"));
        assert!(!units.contains_key("transform/gone/0"), "a unit no longer declared is not kept");

        let mut units = desired("ext");
        assert!(keep_units_of_unknown_counts(&mut units, rows(), &HashMap::from([("ext".into(), 1)])).is_empty(), "a known count decides");

        let mut units = desired("other");
        assert_eq!(keep_units_of_unknown_counts(&mut units, rows(), &HashMap::new()), vec!["transform/t/2"], "a new source starts afresh");
    }
}
