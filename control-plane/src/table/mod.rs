//! ClickHouse tables' engines and options: their validation (`options`, `expr`), their one rendering to DDL
//! (`ddl`, with each column's in `columns`), how they may change (`changes`) and what each needs of the server (`features`).

pub mod changes;
pub mod columns;
pub mod ddl;
pub mod expr;
pub mod features;
pub mod options;

use crate::diff::Planned;
use crate::resource::{life_cycle, spec};
use millrace_proto::v1::{resource::Spec, ChangeAction, LifeCycle};

/// Whether any change of the diff creates or alters a ClickHouse table.
pub fn touches_tables(planned: &[Planned]) -> bool {
    planned.iter().any(|p| server_work(p).is_some())
}

/// The table a change creates (stored None) or alters, when Millrace makes that change on the server.
fn server_work(p: &Planned) -> Option<(&millrace_proto::v1::Table, Option<&millrace_proto::v1::Table>)> {
    if !matches!(p.action, ChangeAction::Create | ChangeAction::Update) {
        return None;
    }
    let Some(d @ Spec::Table(t)) = p.desired.as_ref().map(spec) else { return None };
    if life_cycle(d) == LifeCycle::ExternallyManaged {
        return None;
    }
    let stored = match p.stored.as_ref().map(spec) {
        Some(Spec::Table(s)) => Some(s),
        _ => None,
    };
    Some((t, stored))
}

/// Marks as refused every table change this server cannot make, saying which feature needs which version.
pub fn refuse_what_the_server_lacks(planned: &mut [Planned], server: &features::Server) {
    for p in planned.iter_mut() {
        let verdict = match server_work(p) {
            None => continue,
            Some((t, None)) => features::check_create(t, server),
            Some((t, Some(s))) => features::check_alter(t, s, server),
        };
        if let Err(reason) = verdict {
            p.action = ChangeAction::Refused;
            p.reason = reason;
        }
    }
}
