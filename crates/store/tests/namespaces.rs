//! Namespaces in the store, on both backends: names unique per namespace, lists filtered by
//! namespace (and paged across them), runs carrying their agent's namespace, the lease token
//! that vouches for a worker's memory access; and a SQLite database made before namespaces
//! existed upgraded in place without losing an agent or a run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use nightshift_core::{AgentSpec, AgentState, Namespace, RunId, WorkerId};
use nightshift_store::{AgentFilter, NewRun, RunFilter, StartInput, StartOutcome, Store, StoreError};
use nightshift_testkit::{Db, database};
use prost::Message;

fn spec(namespace: &str, name: &str) -> AgentSpec {
    AgentSpec::from_yaml(&format!(
        "namespace: {namespace}\nname: {name}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {{manual: true}}"
    ))
    .unwrap()
}

fn ns(s: &str) -> Namespace {
    Namespace::parse("ns", s).unwrap()
}

nightshift_testkit::both_backends!(
    names_are_unique_per_namespace,
    lists_and_runs_are_confined,
    lease_tokens_vouch_for_runs
);

async fn names_are_unique_per_namespace(kind: Db) {
    let (url, _guard) = database(kind).await;
    let store = Store::connect(&url).await.unwrap();
    let a = store.create_agent(&spec("team-a", "same"), AgentState::Active).await.unwrap();
    let b = store.create_agent(&spec("team-b", "same"), AgentState::Active).await.unwrap();
    assert_ne!(a.id, b.id);
    let again = store.create_agent(&spec("team-a", "same"), AgentState::Active).await.unwrap_err();
    assert!(matches!(&again, StoreError::AlreadyExists(m) if m.contains("team-a")), "{again:?}");
    assert_eq!(store.get_agent_by_name(&ns("team-b"), "same").await.unwrap().unwrap().id, b.id);
    assert!(store.get_agent_by_name(&ns("default"), "same").await.unwrap().is_none());
    let (applied, _) = store.apply_agent(&spec("team-b", "same")).await.unwrap();
    assert_eq!(applied.id, b.id, "apply finds the agent in its own namespace");
}

async fn lists_and_runs_are_confined(kind: Db) {
    let (url, _guard) = database(kind).await;
    let store = Store::connect(&url).await.unwrap();
    let mut ids = Vec::new();
    for namespace in ["team-b", "team-a", "default"] {
        for name in ["x", "y"] {
            ids.push(store.create_agent(&spec(namespace, name), AgentState::Active).await.unwrap().id);
        }
    }
    // Pages of two walk (namespace, name) in order across namespaces.
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = store.list_agents(&AgentFilter { limit: 2, page_token: token, ..Default::default() }).await.unwrap();
        seen.extend(page.items.iter().map(|a| format!("{}/{}", a.spec.namespace, a.spec.name)));
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["default/x", "default/y", "team-a/x", "team-a/y", "team-b/x", "team-b/y"]);
    let only = |list: &[&str]| Some(list.iter().map(|n| ns(n)).collect::<Vec<_>>());
    let filter = AgentFilter { namespaces: only(&["team-a"]), limit: 100, ..Default::default() };
    let team_a = store.list_agents(&filter).await.unwrap().items;
    assert!(team_a.len() == 2 && team_a.iter().all(|a| a.spec.namespace == ns("team-a")));
    let none = AgentFilter { namespaces: only(&[]), limit: 100, ..Default::default() };
    assert!(store.list_agents(&none).await.unwrap().items.is_empty(), "an empty list matches nothing");

    for id in &ids {
        let new = NewRun::manual(RunId::generate(), id.clone());
        store.insert_run(&new).await.unwrap();
    }
    let runs = store.list_runs(&RunFilter { namespaces: only(&["team-b"]), limit: 100, ..Default::default() }).await;
    let runs = runs.unwrap().items;
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.namespace == ns("team-b")), "{runs:?}");
    let all = store.list_runs(&RunFilter { limit: 100, ..Default::default() }).await.unwrap().items;
    assert_eq!(all.len(), 6);
}

async fn lease_tokens_vouch_for_runs(kind: Db) {
    let (url, _guard) = database(kind).await;
    let store = Store::connect(&url).await.unwrap();
    let agent = store.create_agent(&spec("team-a", "x"), AgentState::Active).await.unwrap();
    let run = RunId::generate();
    let new = NewRun::manual(run.clone(), agent.id.clone());
    store.insert_run(&new).await.unwrap();
    assert_eq!(store.held_run_agent(&run, "anything").await.unwrap(), None, "a queued run vouches for no one");
    let input = StartInput {
        run_id: run.clone(),
        agent_id: agent.id.clone(),
        worker_id: WorkerId::from_string("w1"),
        worker_endpoint: None,
        lease_ttl: std::time::Duration::from_secs(30),
        budgets: Default::default(),
    };
    let StartOutcome::Started { lease_token, .. } = store.start_run(&input).await.unwrap() else {
        panic!("not started")
    };
    assert_eq!(store.held_run_agent(&run, &lease_token).await.unwrap(), Some((agent.id.clone(), 1)));
    assert_eq!(store.held_run_agent(&run, &"0".repeat(lease_token.len())).await.unwrap(), None);
}

/// A SQLite database as the release before namespaces left it (its migrations, an agent, a
/// version, a run) opens under this release: everything lands in `default`, nothing cascades
/// away while the agents table is rebuilt, and a second namespace may reuse the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_from_before_namespaces_is_upgraded_in_place() {
    let db = nightshift_testkit::sqlite_db();
    sqlx::any::install_default_drivers();
    let pool =
        sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&format!("{}?mode=rwc", db.url)).await.unwrap();
    sqlx::query("PRAGMA foreign_keys = ON").execute(&pool).await.unwrap();
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"));
    let mut before = sqlx::migrate::Migrator::new(dir).await.unwrap();
    let old: Vec<_> = before.migrations.iter().filter(|m| m.version < 20261205000002).cloned().collect();
    assert!(old.len() < before.migrations.len(), "the namespace migration is among the migrations");
    before.migrations = old.into();
    before.run(&pool).await.unwrap();
    // The spec as that release encoded it: no namespace field.
    let mut old_spec = spec("default", "legacy").to_proto();
    old_spec.namespace.clear();
    let bytes = old_spec.encode_to_vec();
    for sql in [
        "INSERT INTO agents (id, name, version, state, spec, created_at, updated_at) VALUES ('a1', 'legacy', 1, 'active', $1, 1, 1)",
        "INSERT INTO agent_versions (agent_id, version, spec, created_at) VALUES ('a1', 1, $1, 1)",
    ] {
        sqlx::query(sql).bind(bytes.clone()).execute(&pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO runs (id, agent_id, agent_version, status, trigger_kind, created_at) VALUES ('r1', 'a1', 1, 'succeeded', 'manual', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = Store::connect(&db.url).await.unwrap();
    let agent = store.get_agent_by_name(&ns("default"), "legacy").await.unwrap().expect("the agent survived");
    assert_eq!(agent.spec.namespace, ns("default"));
    let run = store.get_run(&RunId::from_string("r1")).await.unwrap().expect("its run survived the rebuild");
    assert_eq!(run.namespace, ns("default"));
    assert_eq!(store.get_agent_version(&agent.id, 1).await.unwrap().name, agent.spec.name);
    store.create_agent(&spec("team-a", "legacy"), AgentState::Active).await.unwrap();
    let dup = store.create_agent(&spec("default", "legacy"), AgentState::Active).await.unwrap_err();
    assert!(matches!(dup, StoreError::AlreadyExists(_)), "the unique index came back: {dup:?}");
}
