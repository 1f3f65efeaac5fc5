//! Workers and their assignments. Filled in by the data-plane work; until then no worker can register.

use millrace_proto::v1::WorkerInfo;

#[derive(Clone, Default)]
pub struct Coordinator {}

impl Coordinator {
    /// Called after every apply or delete: the desired assignments may have changed.
    pub fn plan_changed(&self) {}

    pub async fn live_workers(&self) -> usize {
        0
    }

    pub async fn list_workers(&self) -> Vec<WorkerInfo> {
        Vec::new()
    }
}
