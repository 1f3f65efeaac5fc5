//! A sidecar's answer to one batch as one outcome per input record, read from `results` or from `packed`. An
//! answer that does not fit its batch is the sidecar's fault, never a record's: an error, so nothing is produced.

use bytes::Bytes;
use millrace_proto::v1::{record_result, BatchResult, PackedResults};
use std::collections::HashMap;

/// One output: its JSON and, for a multi-transform, the index of the stream it is routed to in `Answer::routes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub value: Bytes,
    pub route: Option<u32>,
}

/// One input record's outputs, or its error (type, message).
pub type Outcome = Result<Vec<Output>, (String, String)>;

/// A batch's answer: one outcome per record, and the streams (physical names) its outputs are routed to.
#[derive(Debug, Default)]
pub struct Answer {
    pub outcomes: Vec<Outcome>,
    pub routes: Vec<String>,
}

/// The answer to a batch of `n` records, or what is wrong with it.
pub fn outcomes(result: BatchResult, n: usize) -> Result<Answer, String> {
    match result.packed {
        Some(p) if result.results.is_empty() => unpack(p, n),
        Some(_) => Err("the sidecar answered both `results` and `packed`".into()),
        None if result.results.len() != n => Err(format!("the sidecar answered {} results for {n} records", result.results.len())),
        None => {
            let mut routes: Vec<String> = Vec::new();
            let mut index = HashMap::new();
            let mut outcomes = Vec::with_capacity(n);
            for r in result.results {
                outcomes.push(match r.result {
                    Some(record_result::Result::Ok(out)) => {
                        if !out.routes.is_empty() && out.routes.len() != out.values.len() {
                            return Err(format!("the sidecar sent {} routes for {} outputs of a record", out.routes.len(), out.values.len()));
                        }
                        let mut named = out.routes.into_iter().map(|name| intern(&mut routes, &mut index, name));
                        Ok(out.values.into_iter().map(|value| Output { value, route: named.next() }).collect())
                    }
                    Some(record_result::Result::Error(e)) => Err((e.error_type, e.message)),
                    None => Err(("ProtocolError".to_string(), "the sidecar returned no result for the record".to_string())),
                });
            }
            Ok(Answer { outcomes, routes })
        }
    }
}

fn intern(routes: &mut Vec<String>, index: &mut HashMap<String, u32>, name: String) -> u32 {
    *index.entry(name).or_insert_with_key(|name| {
        routes.push(name.clone());
        (routes.len() - 1) as u32
    })
}

fn unpack(p: PackedResults, n: usize) -> Result<Answer, String> {
    if p.output_counts.len() != n {
        return Err(format!("the sidecar answered {} output counts for {n} records", p.output_counts.len()));
    }
    let outputs: u64 = p.output_counts.iter().map(|&c| u64::from(c)).sum();
    if outputs != p.value_lengths.len() as u64 {
        return Err(format!("the sidecar's output counts add up to {outputs}, but it sent {} outputs", p.value_lengths.len()));
    }
    let bytes: u64 = p.value_lengths.iter().map(|&l| u64::from(l)).sum();
    if bytes != p.values.len() as u64 {
        return Err(format!("the sidecar's output lengths add up to {bytes} bytes, but it sent {}", p.values.len()));
    }
    if !p.value_routes.is_empty() && p.value_routes.len() != p.value_lengths.len() {
        return Err(format!("the sidecar sent {} routes for {} outputs", p.value_routes.len(), p.value_lengths.len()));
    }
    if let Some(bad) = p.value_routes.iter().find(|&&r| r as usize >= p.routes.len()) {
        return Err(format!("the sidecar routed an output to stream {bad} of {}", p.routes.len()));
    }
    let mut out: Vec<Outcome> = Vec::with_capacity(n);
    let (mut lengths, mut routes, mut at) = (p.value_lengths.iter(), p.value_routes.iter(), 0usize);
    for &count in &p.output_counts {
        let mut values = Vec::with_capacity(count as usize);
        for &len in lengths.by_ref().take(count as usize) {
            values.push(Output { value: p.values.slice(at..at + len as usize), route: routes.next().copied() });
            at += len as usize;
        }
        out.push(Ok(values));
    }
    let mut last = None;
    for e in p.errors {
        let i = e.index as usize;
        if i >= n || last.is_some_and(|l| i <= l) {
            return Err(format!("the sidecar named record {i} as failed, out of order or outside a batch of {n}"));
        }
        if p.output_counts[i] != 0 {
            return Err(format!("the sidecar sent outputs for record {i} and an error too"));
        }
        last = Some(i);
        let e = e.error.unwrap_or_default();
        out[i] = Err((e.error_type, e.message));
    }
    Ok(Answer { outcomes: out, routes: p.routes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::{IndexedError, RecordError};

    fn packed(values: &[&str], counts: &[u32], errors: &[(u32, &str)]) -> BatchResult {
        BatchResult {
            packed: Some(PackedResults {
                values: Bytes::from(values.concat()),
                value_lengths: values.iter().map(|v| v.len() as u32).collect(),
                output_counts: counts.to_vec(),
                errors: errors.iter().map(|&(index, t)| IndexedError { index, error: Some(RecordError { error_type: t.into(), message: "m".into() }) }).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn packed_results_give_each_record_its_own_outputs_and_errors() {
        let got = outcomes(packed(&["a", "bb", "ccc"], &[1, 0, 2, 0], &[(3, "ValueError")]), 4).unwrap();
        assert_eq!(got.outcomes.iter().map(text).collect::<Vec<_>>(), vec![Ok(vec!["a".into()]), Ok(vec![]), Ok(vec!["bb".into(), "ccc".into()]), Err("ValueError".into())]);
        assert!(got.outcomes.iter().flatten().flatten().all(|o| o.route.is_none()));
    }

    fn text(o: &Outcome) -> Result<Vec<String>, String> {
        o.as_ref().map(|v| v.iter().map(|b| String::from_utf8(b.value.to_vec()).unwrap()).collect::<Vec<_>>()).map_err(|e| e.0.clone())
    }

    #[test]
    fn a_multi_transforms_outputs_each_name_their_stream() {
        let mut answer = packed(&["a", "b", "c"], &[2, 1], &[]);
        let p = answer.packed.as_mut().unwrap();
        p.routes = vec!["left".into(), "right".into()];
        p.value_routes = vec![1, 0, 1];
        let got = outcomes(answer, 2).unwrap();
        assert_eq!(got.routes, vec!["left", "right"]);
        let routes: Vec<Vec<Option<u32>>> = got.outcomes.iter().map(|o| o.as_ref().unwrap().iter().map(|x| x.route).collect()).collect();
        assert_eq!(routes, vec![vec![Some(1), Some(0)], vec![Some(1)]]);
        let mut bad = packed(&["a"], &[1], &[]);
        bad.packed.as_mut().unwrap().value_routes = vec![0];
        assert!(outcomes(bad, 1).is_err(), "a route index beyond the routes sent");
    }

    #[test]
    fn a_packed_answer_that_does_not_fit_its_batch_is_refused() {
        for (bad, n) in [
            (packed(&["a"], &[1], &[]), 2),
            (packed(&["a"], &[2], &[]), 1),
            (packed(&["a", "b"], &[1, 0], &[]), 2),
            (packed(&["a"], &[1, 0], &[(2, "E")]), 2),
            (packed(&["a"], &[1, 0], &[(0, "E")]), 2),
            (packed(&[], &[0, 0], &[(1, "E"), (1, "E")]), 2),
        ] {
            assert!(outcomes(bad, n).is_err());
        }
        let mut wrong_bytes = packed(&["ab"], &[1], &[]);
        wrong_bytes.packed.as_mut().unwrap().value_lengths = vec![5];
        assert!(outcomes(wrong_bytes, 1).is_err());
    }
}
