//! Where each ingest API is served: `/ingest/<path>` when it declares a path (moose's `path`), else
//! `/ingest/<name>` and `/ingest/<name>/<version>`. Paths are normalised and checked here, and no two APIs may be
//! served at one path, so a worker never has to guess which API a request meant.

use crate::plan::PlanError;
use crate::resource::{spec, ResourceKey, State};
use millrace_proto::v1::resource::Spec;
use std::collections::HashMap;

const MAX_SEGMENTS: usize = 8;
const MAX_SEGMENT: usize = 64;

/// The path without a leading or trailing `/`, or why it cannot be served.
pub fn normalise(path: &str) -> Result<String, String> {
    let trimmed = path.trim_matches('/');
    let segments: Vec<&str> = trimmed.split('/').collect();
    if segments.len() > MAX_SEGMENTS {
        return Err(format!("`{path}` has {} segments; at most {MAX_SEGMENTS}", segments.len()));
    }
    for s in &segments {
        let ok = !s.is_empty()
            && s.len() <= MAX_SEGMENT
            && *s != "."
            && *s != ".."
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(format!(
                "`{path}`: each segment must be 1 to {MAX_SEGMENT} of letters, digits, `_`, `.` and `-` (not `.` or `..`), segments joined by `/`"
            ));
        }
    }
    Ok(trimmed.to_string())
}

/// Every path the plan's ingest APIs are served at, checked to be distinct.
pub fn check(state: &State) -> Result<(), PlanError> {
    let mut served: HashMap<String, &ResourceKey> = HashMap::new();
    for (key, r) in state {
        let Spec::IngestApi(api) = spec(r) else { continue };
        let paths = if api.path.is_empty() {
            // The bare name serves the newest version: versions of one API share it by design.
            let mut p = vec![];
            if !api.version.is_empty() {
                p.push(format!("{}/{}", api.name, api.version));
            }
            p
        } else {
            vec![api.path.clone()]
        };
        for path in paths {
            if let Some(other) = served.insert(path.clone(), key) {
                return Err(PlanError {
                    resource: key.to_string(),
                    field: "path".into(),
                    reason: format!("POST /ingest/{path} would be served by {other} too: give one of them another `path`"),
                });
            }
        }
    }
    // A custom path equal to another API's bare name would hide that API's default route.
    for (key, r) in state {
        let Spec::IngestApi(api) = spec(r) else { continue };
        if !api.path.is_empty() {
            continue;
        }
        if let Some(other) = served.get(&api.name).filter(|o| **o != key) {
            return Err(PlanError {
                resource: key.to_string(),
                field: "path".into(),
                reason: format!("POST /ingest/{} is {other}'s path: give one of them another `path`", api.name),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(apis: &[(&str, &str, &str)]) -> millrace_proto::v1::Plan {
        use millrace_proto::v1::{field_type::Kind, Field, FieldType, IngestApi, Plan, ResourceRef, ScalarType, Stream};
        let id = Field { name: "id".into(), r#type: Some(FieldType { kind: Some(Kind::Scalar(ScalarType::String as i32)) }), nullable: false, key: true, ..Default::default() };
        Plan {
            streams: vec![Stream { name: "s".into(), fields: vec![id], ..Default::default() }],
            ingest_apis: apis
                .iter()
                .map(|&(name, version, path)| IngestApi {
                    name: name.into(),
                    version: version.into(),
                    destination: Some(ResourceRef { name: "s".into(), version: String::new() }),
                    path: path.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn two_apis_served_at_one_path_are_refused() {
        let ok = crate::plan::validate(plan(&[("a", "", "/v2/a/"), ("a", "1", ""), ("a", "2", ""), ("b", "", "")])).unwrap();
        let paths: Vec<String> = ok.values().filter_map(|r| match spec(r) { Spec::IngestApi(i) => Some(i.path.clone()), _ => None }).collect();
        assert!(paths.contains(&"v2/a".to_string()), "stored trimmed: {paths:?}");
        for clash in [
            vec![("a", "", "x/y"), ("b", "", "x/y")],
            vec![("a", "1", ""), ("b", "", "a/1")],
            vec![("a", "", ""), ("b", "", "a")],
        ] {
            let e = crate::plan::validate(plan(&clash)).unwrap_err();
            assert_eq!(e.field, "path", "{clash:?}: {e}");
        }
        assert_eq!(crate::plan::validate(plan(&[("a", "", "a/../b")])).unwrap_err().field, "path");
    }

    #[test]
    fn paths_are_trimmed_and_hostile_ones_refused() {
        assert_eq!(normalise("/events/v2/").unwrap(), "events/v2");
        assert_eq!(normalise("raw-events.json").unwrap(), "raw-events.json");
        for bad in ["", "/", "a//b", "a/../b", "a/./b", "a b", "a?b", "a%2Fb", "é", &"a/".repeat(9), &"x".repeat(65)] {
            assert!(normalise(bad).is_err(), "{bad:?}");
        }
    }
}
