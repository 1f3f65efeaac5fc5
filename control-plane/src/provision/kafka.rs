//! Kafka topics through rdkafka's admin client. Every operation is "make it so": creating a topic that exists,
//! or deleting one that does not, is not an error, so a failed apply can simply be applied again.

use crate::error::Error;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::util::Timeout;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Kafka {
    admin: Arc<AdminClient<DefaultClientContext>>,
    brokers: String,
    timeout: Duration,
    replication: i32,
}

impl Kafka {
    pub fn new(brokers: &str, timeout: Duration, replication: i32) -> Result<Self, Error> {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // Never create a topic as a side effect of asking about it.
            .set("allow.auto.create.topics", "false")
            .set("socket.timeout.ms", timeout.as_millis().to_string())
            .create()
            .map_err(|e| Error::Internal(format!("creating the Kafka admin client: {e}")))?;
        Ok(Self { admin: Arc::new(admin), brokers: brokers.to_string(), timeout, replication })
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        Error::unavailable("the Kafka broker", format!("{}: {e}", self.brokers))
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(Timeout::After(self.timeout)))
            .operation_timeout(Some(Timeout::After(self.timeout)))
    }

    /// Partition counts of every topic. Fails with UNAVAILABLE when the broker does not answer in time.
    pub async fn topics(&self) -> Result<HashMap<String, usize>, Error> {
        let admin = self.admin.clone();
        let timeout = self.timeout;
        let md = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, Timeout::After(timeout)))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| self.unavailable(e))?;
        Ok(md.topics().iter().filter(|t| t.error().is_none()).map(|t| (t.name().to_string(), t.partitions().len())).collect())
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.topics().await.map(|_| ())
    }

    /// Creates the topic, or grows it to `partitions` and sets its retention. Refuses to shrink.
    pub async fn ensure_topic(&self, name: &str, partitions: u32, retention_ms: i64) -> Result<(), Error> {
        let retention = retention_ms.to_string();
        match self.topics().await?.get(name).copied() {
            None => {
                let topic = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(self.replication))
                    .set("retention.ms", &retention);
                let results =
                    self.admin.create_topics([&topic], &self.options()).await.map_err(|e| self.admin_error("create", name, e))?;
                for r in results {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((t, code)) => return Err(self.op_error("creating topic", &t, code)),
                    }
                }
                self.wait_until(name, |p| p == Some(partitions as usize)).await
            }
            Some(have) if have > partitions as usize => Err(Error::FailedPrecondition(format!(
                "topic `{name}` has {have} partitions; Kafka cannot shrink it to {partitions}"
            ))),
            Some(have) => {
                if have < partitions as usize {
                    let np = NewPartitions::new(name, partitions as usize);
                    let results = self.admin.create_partitions([&np], &self.options()).await;
                    for r in results.map_err(|e| self.admin_error("add partitions to", name, e))? {
                        if let Err((t, code)) = r {
                            return Err(self.op_error("adding partitions to", &t, code));
                        }
                    }
                    self.wait_until(name, |p| p == Some(partitions as usize)).await?;
                }
                if self.retention_ms(name).await?.as_deref() != Some(retention.as_str()) {
                    let cfg = AlterConfig::new(ResourceSpecifier::Topic(name)).set("retention.ms", &retention);
                    let results = self.admin.alter_configs([&cfg], &self.options()).await;
                    for r in results.map_err(|e| self.admin_error("change retention.ms of", name, e))? {
                        if let Err((_, code)) = r {
                            return Err(self.op_error("setting retention.ms of", name, code));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The topic's retention.ms as the broker describes it.
    async fn retention_ms(&self, name: &str) -> Result<Option<String>, Error> {
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(name)], &self.options())
            .await
            .map_err(|e| self.admin_error("describe", name, e))?;
        Ok(results.into_iter().flatten().flat_map(|r| r.entries).find(|e| e.name == "retention.ms").and_then(|e| e.value))
    }

    /// A whole admin request failed: a broker lacking the API is a precondition, anything else an outage.
    fn admin_error(&self, what: &str, topic: &str, e: KafkaError) -> Error {
        match e {
            KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature) => Error::FailedPrecondition(format!(
                "this broker cannot {what} topic `{topic}` (it does not implement the Kafka API for it); \
                 declare a new version of the stream instead, or use a broker that does"
            )),
            other => self.unavailable(other),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let results = self.admin.delete_topics(&[name], &self.options()).await;
        for r in results.map_err(|e| self.admin_error("delete", name, e))? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) | Err((_, RDKafkaErrorCode::UnknownTopic)) => {}
                Err((t, code)) => return Err(self.op_error("deleting topic", &t, code)),
            }
        }
        self.wait_until(name, |p| p.is_none()).await
    }

    fn op_error(&self, what: &str, topic: &str, code: RDKafkaErrorCode) -> Error {
        match code {
            RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut => self.unavailable(format!("{what} `{topic}`: {code}")),
            _ => Error::Internal(format!("the broker refused {what} `{topic}`: {code}")),
        }
    }

    /// Topic changes show in metadata a little later: poll until they do, bounded by the timeout.
    async fn wait_until(&self, name: &str, ok: impl Fn(Option<usize>) -> bool) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if ok(self.topics().await?.get(name).copied()) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.unavailable(format!("topic `{name}` did not reach the requested state in time")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
