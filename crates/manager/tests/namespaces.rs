//! The manager confines every call to the caller's namespaces (called in process, with the
//! principal the auth layer would have put on the request; the attack suite proves the same
//! through the binaries with real keys): an agent or run of another namespace is NOT_FOUND by id,
//! naming that namespace is PERMISSION_DENIED, lists hold only the caller's namespaces, and an
//! agent does not move between namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::time::Duration;

use nightshift_core::auth::{Principal, Role};
use nightshift_core::pb::manager_service_server::ManagerService as _;
use nightshift_core::{Namespaces, pb};
use nightshift_manager::ManagerService;
use nightshift_store::Store;
use tonic::{Code, Request};

fn operator_of(namespace: &str) -> Principal {
    Principal {
        name: format!("ops-{namespace}"),
        role: Role::Operator,
        namespaces: Namespaces::parse("namespaces", &[namespace]).unwrap(),
    }
}

fn as_<T>(who: &Principal, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.extensions_mut().insert(who.clone());
    r
}

fn manifest(namespace: &str, name: &str, description: &str) -> pb::ApplyAgentRequest {
    let yaml = format!(
        "namespace: {namespace}\nname: {name}\ndescription: {description}\nmodel: {{provider: openai, model: m}}\n\
         task: {{query: q}}\nschedule: {{manual: true}}\n"
    );
    pb::ApplyAgentRequest { spec: None, manifest_yaml: yaml }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_confined_to_the_callers_namespaces() {
    let db = nightshift_testkit::sqlite_db();
    let manager = ManagerService::new(Store::connect(&db.url).await.unwrap(), Duration::from_secs(30));
    let (a, b) = (operator_of("team-a"), operator_of("team-b"));

    let agent = manager.apply_agent(as_(&a, manifest("team-a", "x", "one"))).await.unwrap().into_inner();
    let agent = agent.agent.unwrap();
    let denied = manager.apply_agent(as_(&a, manifest("team-b", "x", "one"))).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("team-b"), "{denied:?}");

    let by_id = pb::GetAgentRequest { agent: Some(pb::AgentRef::by_id(&agent.id)) };
    assert_eq!(manager.get_agent(as_(&b, by_id.clone())).await.unwrap_err().code(), Code::NotFound);
    manager.get_agent(as_(&a, by_id)).await.unwrap();
    let by_name = pb::GetAgentRequest { agent: Some(pb::AgentRef::by_name_in("team-a", "x")) };
    assert_eq!(manager.get_agent(as_(&b, by_name)).await.unwrap_err().code(), Code::PermissionDenied);

    let listed = manager.list_agents(as_(&b, pb::ListAgentsRequest::default())).await.unwrap().into_inner();
    assert!(listed.agents.is_empty(), "{:?}", listed.agents);
    let theirs = pb::ListAgentsRequest { namespace: "team-a".into(), ..Default::default() };
    assert_eq!(manager.list_agents(as_(&b, theirs)).await.unwrap_err().code(), Code::PermissionDenied);

    let trigger = pb::TriggerAgentRequest { agent: Some(pb::AgentRef::by_id(&agent.id)), query_override: None };
    let run = manager.trigger_agent(as_(&a, trigger)).await.unwrap().into_inner().run.unwrap();
    assert_eq!(run.namespace, "team-a");
    let get_run = pb::GetRunRequest { run_id: run.id.clone() };
    assert_eq!(manager.get_run(as_(&b, get_run.clone())).await.unwrap_err().code(), Code::NotFound);
    manager.get_run(as_(&a, get_run)).await.unwrap();
    let runs = manager.list_runs(as_(&b, pb::ListRunsRequest::default())).await.unwrap().into_inner().runs;
    assert!(runs.is_empty(), "{runs:?}");
    let cancel = pb::CancelRunRequest { run_id: run.id.clone(), reason: String::new() };
    assert_eq!(manager.cancel_run(as_(&b, cancel)).await.unwrap_err().code(), Code::NotFound);

    // A caller without a principal (a server without authentication) sees every namespace.
    let all = manager.list_agents(Request::new(pb::ListAgentsRequest::default())).await.unwrap().into_inner();
    assert_eq!(all.agents.len(), 1);

    let moved = manifest("team-b", "x", "moved");
    let update = pb::UpdateAgentRequest {
        agent: Some(pb::AgentRef::by_id(&agent.id)),
        spec: None,
        manifest_yaml: moved.manifest_yaml,
        expected_version: None,
    };
    let refused = manager.update_agent(Request::new(update)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("does not move between namespaces"), "{refused:?}");
}
