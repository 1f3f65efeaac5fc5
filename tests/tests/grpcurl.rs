//! Administering the control plane with the real grpcurl binary, as README shows.

use millrace_tests::*;
use serde_json::Value;

fn example_plan() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/plan.json")).expect("examples/plan.json")
}

#[tokio::test]
async fn grpcurl_lists_describes_applies_and_deletes() {
    let env = TestEnv::new();
    let cp = env.start().await;
    let addr = cp.addr.clone();
    // grpcurl blocks: run it off the runtime that serves the control plane.
    let call = |data: Option<&str>, args: &[&str]| {
        let (addr, data) = (addr.clone(), data.map(str::to_string));
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || grpcurl(&addr, data.as_deref(), &args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let (ok, out, err) = call(None, &["list"]).await.unwrap();
    assert!(ok, "{err}");
    for svc in ["millrace.v1.ControlPlane", "grpc.health.v1.Health"] {
        assert!(out.contains(svc), "{out}");
    }

    let (ok, out, err) = call(None, &["describe", "millrace.v1.ControlPlane"]).await.unwrap();
    assert!(ok && out.contains("rpc ApplyPlan"), "{out}{err}");
    let (ok, out, _) = call(None, &["grpc.health.v1.Health/Check"]).await.unwrap();
    assert!(ok && out.contains("SERVING"), "{out}");

    let plan = example_plan();
    let dry = format!("{{\"dryRun\": true, \"plan\": {plan}}}");
    let (ok, out, err) = call(Some(&dry), &["millrace.v1.ControlPlane/ApplyPlan"]).await.unwrap();
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    // The eight declared, and the default dead letter queue for the transform whose source names none.
    assert_eq!(v["changes"].as_array().unwrap().len(), 9, "{out}");
    assert!(v["changes"].as_array().unwrap().iter().any(|c| c["name"] == "millrace_dead_letters"), "{out}");
    assert!(v["changes"].as_array().unwrap().iter().all(|c| c["action"] == "CREATE"), "{out}");
    assert_eq!(env.partitions(&env.topic("raw_data")), None, "dry run created nothing");

    let real = format!("{{\"client\": \"grpcurl-test\", \"plan\": {plan}}}");
    let (ok, out, err) = call(Some(&real), &["millrace.v1.ControlPlane/ApplyPlan"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("applyId"), "{out}");
    assert_eq!(env.partitions(&env.topic("raw_data")), Some(4));
    assert_eq!(env.tables().await, vec!["final_table".to_string()]);

    let (ok, out, _) = call(Some(r#"{"kind": "STREAM"}"#), &["millrace.v1.ControlPlane/ListResources"]).await.unwrap();
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["resources"].as_array().unwrap().iter().map(|r| r["resource"]["stream"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["final_stream", "intermediate_stream", "raw_data"]);

    // A stream still in use cannot go; the ingest API can.
    let delete = "millrace.v1.ControlPlane/DeleteResource";
    let (ok, _, err) = call(Some(r#"{"kind": "STREAM", "name": "raw_data"}"#), &[delete]).await.unwrap();
    assert!(!ok && err.contains("FailedPrecondition") && err.contains("still referred to"), "{err}");
    let (ok, out, err) = call(Some(r#"{"kind": "INGEST_API", "name": "raw_data"}"#), &[delete]).await.unwrap();
    assert!(ok && out.contains("DELETE"), "{out}{err}");

    let bad = r#"{"plan": {"streams": [{"name": "bad name"}]}}"#;
    let (ok, _, err) = call(Some(bad), &["millrace.v1.ControlPlane/ApplyPlan"]).await.unwrap();
    assert!(!ok && err.contains("InvalidArgument") && err.contains("bad name"), "{err}");
    cp.stop().await;
    env.cleanup().await;
}
