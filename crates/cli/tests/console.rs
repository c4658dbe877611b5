//! The console in a real browser: Debian's headless Chromium, driven over the DevTools protocol
//! (chromiumoxide), against `nightshift dev` with authentication on. The model is the scripted
//! OpenAI-compatible server (deterministic tool calls; a hosted model is unreachable here), each
//! turn delayed and the tool (`http_get` of a slow route) slow, so that the run's timeline
//! visibly fills in step by step. Screenshots of each page go to
//! `target/console-screenshots/` (docs/console.md shows them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::Dev;
use common::browser::*;
use nightshift_core::pb;
use nightshift_rpc::CallChannel;
use pb::manager_service_client::ManagerServiceClient;

/// The scripted model, plus `GET /slow` (answers after 2.5 s): the agent's slow tool call.
async fn model() -> (String, Arc<nightshift_testkit::llm::Script>) {
    let script = Arc::new(nightshift_testkit::llm::Script::default());
    let slow = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            "slow answer"
        }),
    );
    let app = nightshift_testkit::llm::router(script.clone()).merge(slow);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), script)
}

fn manifest(name: &str, schedule: &str, query: &str, llm: &str) -> String {
    format!(
        "name: {name}\nlabels: {{team: data}}\nsystem_instruction: Report briefly.\nmodel: {{provider: openai, model: scripted, base_url: '{llm}/v1'}}\n\
         task: {{query: '{query}'}}\nschedule: {{{schedule}}}\ntools: {{local: [http_get]}}\npolicy: {{max_retries: 0}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let (llm, script) = model().await;
    script.delay_ms.store(1500, Ordering::SeqCst);
    script.calls.lock().unwrap().push(("http_get".into(), format!("{{\"url\":\"{llm}/slow\"}}")));

    // With keys for an operator and a viewer; the demo agent (manual trigger) and a scheduled one.
    // A price for the scripted model (USD per million tokens), so that the run shows its cost.
    let secured = secured_dev(&llm, "[manager.prices.scripted]\ninput = 1.0\noutput = 2.0\n").await;
    let dev = &secured.dev;
    let (admin, operator, viewer) = (secured.admin.clone(), secured.operator.clone(), secured.viewer.clone());
    let base = dev.endpoint.clone();
    let mut manager: ManagerServiceClient<CallChannel> = ManagerServiceClient::new(channel(&base, &admin).await);
    for (name, schedule) in [("console-demo", "manual: true"), ("nightly-report", "cron: '0 3 * * *'")] {
        let yaml = manifest(name, schedule, "Fetch the slow page and report", &llm);
        manager.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: yaml }).await.unwrap();
    }
    let runs_of = async |m: &mut ManagerServiceClient<CallChannel>| {
        let agent = Some(pb::AgentRef::by_name("console-demo"));
        m.list_runs(pb::ListRunsRequest { agent, ..Default::default() }).await.unwrap().into_inner().runs
    };

    let profile = tempfile::tempdir().unwrap();
    let (mut browser, events) = launch(profile.path()).await;
    let page = browser.new_page("about:blank").await.unwrap();

    // 1. Signing in: a wrong key is refused; the operator's key opens the agents page.
    page.goto(format!("{base}/agents")).await.unwrap();
    until(&page, "location.pathname === '/login'", "the redirect to sign in").await;
    shot(&page, "login.png").await;
    page.find_element("#credential").await.unwrap().click().await.unwrap().type_str("nsk_wrong").await.unwrap();
    click(&page, "section.signin button[type=submit]").await;
    until(&page, "document.querySelector('.error')?.textContent.includes('not accepted') === true", "a refusal").await;
    sign_in(&page, &base, &operator).await;
    let names: Vec<String> =
        eval(&page, "Array.from(document.querySelectorAll('tr[data-agent]')).map(r => r.dataset.agent)").await;
    assert_eq!(names, ["console-demo", "nightly-report"]);
    let schedule: String =
        eval(&page, "document.querySelector('tr[data-agent=nightly-report] td:nth-child(4)').textContent").await;
    assert_eq!(schedule, "cron 0 3 * * * (UTC)");
    // Search by name.
    page.goto(format!("{base}/agents?q=night")).await.unwrap();
    until(&page, "document.querySelectorAll('tr[data-agent]').length === 1", "the filtered list").await;

    // 2. Trigger from the agent's page: the browser lands on the run, whose timeline fills in live.
    page.goto(format!("{base}/agents/default/console-demo")).await.unwrap();
    until(&page, "!!document.querySelector('form[action$=\"/trigger\"] button')", "the agent page").await;
    shot(&page, "agent.png").await;
    page.find_element("#query").await.unwrap().click().await.unwrap().type_str("Fetch it now").await.unwrap();
    click(&page, "form[action$='/trigger'] button").await;
    until(&page, "location.pathname.startsWith('/runs/')", "the run page").await;
    let _: bool = eval(&page, "window.__notReloaded = true").await;
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let steps: String = eval(
            &page,
            "Array.from(document.querySelectorAll('ol.timeline li.step')).map(li => li.dataset.step).join(',')",
        )
        .await;
        if seen.last() != Some(&steps) {
            seen.push(steps.clone());
        }
        if steps.ends_with("answer") {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not finish in the page; seen {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(eval::<bool>(&page, "window.__notReloaded === true").await, "the page was reloaded");
    // Each state the page showed is the one before plus what came next: LLM, then tool, then the
    // answer. The slow parts (a 1.5 s LLM turn, the 2.5 s tool) are always seen on their own; the
    // moment between the last step and the run's end may be seen or not.
    assert_eq!(seen.first().map(String::as_str), Some("pending"), "{seen:?}");
    // With memory on (dev's default): what was recalled comes with the first LLM call, and the
    // stored episode with the run's end.
    assert_eq!(seen.last().map(String::as_str), Some("recall,llm,tool,llm,memory,answer"), "{seen:?}");
    for wanted in ["recall,llm,pending", "recall,llm,tool,pending"] {
        assert!(seen.iter().any(|s| s == wanted), "the page never showed {wanted}: {seen:?}");
    }
    let steps = |s: &str| s.split(',').filter(|k| *k != "pending").map(str::to_owned).collect::<Vec<_>>();
    for pair in seen.windows(2) {
        let (before, after) = (steps(&pair[0]), steps(&pair[1]));
        assert!(after.starts_with(&before) && after.len() > before.len(), "steps went back or stood still: {seen:?}");
    }
    let badge: String = eval(&page, "document.querySelector('h1 .badge').textContent").await;
    assert_eq!(badge, "succeeded");
    let query: String = eval(&page, "document.querySelector('q').textContent").await;
    assert_eq!(query, "Fetch it now");
    assert_eq!(runs_of(&mut manager).await.len(), 1);
    let run_id: String = eval(&page, "location.pathname.split('/').pop()").await;
    // What the first call was sent is what the model received (the scripted server keeps the
    // system message of each first turn); the second call says it sent the same plus the steps.
    let sent: Vec<String> =
        eval(&page, "Array.from(document.querySelectorAll('li.llm details.prompt')).map(d => d.textContent)").await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    let system = script.systems.lock().unwrap().last().cloned().unwrap();
    let shown_system: String =
        eval(&page, "document.querySelector('li.llm details.prompt div.call pre').textContent").await;
    assert_eq!(shown_system, system);
    assert!(sent[0].starts_with("Sent: system prompt, 1 message · ") && sent[0].contains("Fetch it now"), "{sent:?}");
    assert!(sent[1].starts_with("Sent: the system prompt and task above, then 3 messages"), "{sent:?}");
    let recalled: String = eval(&page, "document.querySelector('li[data-step=recall]').textContent").await;
    assert!(recalled.contains("0 episodes · 0 facts · 0 notes"), "the agent's first run: {recalled}");
    let stored: String = eval(&page, "document.querySelector('li[data-step=memory]').textContent").await;
    assert!(stored.contains(&format!("episode-{run_id}")) && !stored.contains("Not stored"), "{stored}");
    // The cost of each call and of the run, at the price above and the tokens the provider
    // reported: 50 in + 10 out, then 80 in + 12 out.
    let costs: Vec<String> =
        eval(&page, "Array.from(document.querySelectorAll('li.llm span.cost')).map(d => d.textContent)").await;
    let usd = nightshift_core::cost::format_usd;
    assert_eq!(costs, [usd(50 + 10 * 2), usd(80 + 12 * 2)]);
    let total: String =
        eval(&page, "document.querySelector('dd[title^=\"LLM calls priced\"]').textContent.trim()").await;
    assert_eq!(total, usd(50 + 10 * 2 + 80 + 12 * 2));
    shot(&page, "run.png").await;

    // The run's episode, on the agent's memory page.
    page.goto(format!("{base}/agents/default/console-demo/memory")).await.unwrap();
    until(&page, "!!document.querySelector('li[data-memory-type=episodic]')", "the run's episode").await;
    let episode: String = eval(&page, "document.querySelector('li[data-memory-type=episodic] pre').textContent").await;
    assert!(episode.contains("The area is 12"), "{episode}");

    // The worker that ran it, and the scheduler's schedules.
    page.goto(format!("{base}/workers")).await.unwrap();
    until(&page, "!!document.querySelector('section.worker dd[data-active]')", "the worker's state").await;
    let worker: String = eval(&page, "document.querySelector('section.worker h2').textContent").await;
    assert!(worker.contains("taking runs"), "{worker}");
    let completed: String = eval(&page, "document.querySelectorAll('section.worker dd')[1].textContent").await;
    assert_eq!(completed, "1", "runs the worker completed");
    let scheduled: String = eval(&page, "document.querySelector('table.schedules tbody').textContent").await;
    assert!(scheduled.contains("nightly-report") && scheduled.contains("cron 0 3 * * * (UTC)"), "{scheduled}");
    let held: u32 =
        eval(&page, "Number(document.querySelector('table.schedulers td[data-shards]').dataset.shards)").await;
    assert_eq!(held, 64, "the one scheduler holds every shard");
    shot(&page, "workers.png").await;

    // 3. Pause from the agents list (where the last 24 hours show the run); the services agree.
    page.goto(format!("{base}/agents")).await.unwrap();
    until(&page, "!!document.querySelector('tr[data-agent=console-demo] form[action$=\"/pause\"] button')", "pause")
        .await;
    let day: Vec<String> = eval(
        &page,
        "(() => { const d = document.querySelector('tr[data-agent=console-demo] span.day'); \
         return [d.dataset.ended, d.dataset.succeeded, d.querySelector('.rate').textContent]; })()",
    )
    .await;
    assert_eq!(day[..2], ["1", "1"], "{day:?}");
    assert!(day[2].starts_with("100 % of 1 · "), "{day:?}");
    click(&page, "tr[data-agent=console-demo] form[action$='/pause'] button").await;
    until(&page, "document.querySelector('tr[data-agent=console-demo] .badge')?.textContent === 'paused'", "paused")
        .await;
    let agent = manager.get_agent(pb::GetAgentRequest { agent: Some(pb::AgentRef::by_name("console-demo")) }).await;
    assert_eq!(agent.unwrap().into_inner().agent.unwrap().state, pb::AgentState::Paused as i32);
    shot(&page, "agents.png").await;

    // 4. The live tail: an event appears without reloading; paused, it is held back and counted.
    page.goto(format!("{base}/events")).await.unwrap();
    until(&page, "document.getElementById('tail-state')?.textContent === 'Live'", "the live tail").await;
    let by_name = || Some(pb::AgentRef::by_name("console-demo"));
    manager.resume_agent(pb::ResumeAgentRequest { agent: by_name() }).await.unwrap();
    until(&page, "!!document.querySelector('tr[data-type=AGENT_RESUMED]')", "the AGENT_RESUMED row").await;
    click(&page, "#tail-pause").await;
    manager.pause_agent(pb::PauseAgentRequest { agent: by_name() }).await.unwrap();
    // Once the event service has it (and a moment to deliver it), it is held back and counted.
    let mut events_api = pb::event_service_client::EventServiceClient::new(channel(&base, &admin).await);
    let paused_event = pb::EventFilter { types: vec![pb::EventType::AgentPaused as i32], ..Default::default() };
    let listed = pb::ListEventsRequest { filter: Some(paused_event), ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while events_api.list_events(listed.clone()).await.unwrap().into_inner().events.is_empty() {
        assert!(Instant::now() < deadline, "AGENT_PAUSED never reached the event service");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    until(&page, "/^Paused: [1-9]\\d* new$/.test(document.getElementById('tail-state').textContent)", "a held event")
        .await;
    assert!(
        eval::<bool>(&page, "!document.querySelector('tr[data-type=AGENT_PAUSED]')").await,
        "a row shown while paused"
    );
    click(&page, "#tail-pause").await;
    until(&page, "!!document.querySelector('tr[data-type=AGENT_PAUSED]')", "the held row shown").await;
    shot(&page, "events.png").await;
    manager.resume_agent(pb::ResumeAgentRequest { agent: by_name() }).await.unwrap();

    // 5. A new version: the agent's history lists both, and the diff shows what changed.
    let v2 = manifest("console-demo", "manual: true", "Fetch the slow page twice", &llm);
    manager.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: v2 }).await.unwrap();
    page.goto(format!("{base}/agents/default/console-demo")).await.unwrap();
    until(&page, "document.querySelectorAll('table.versions tr[data-version]').length === 2", "two versions").await;
    click(&page, "tr[data-version='2'] a").await;
    until(&page, "!!document.querySelector('pre.diff')", "the diff").await;
    let changed: Vec<String> =
        eval(&page, "Array.from(document.querySelectorAll('pre.diff .ins, pre.diff .del')).map(s => s.textContent)")
            .await;
    assert_eq!(changed, ["-   query: Fetch the slow page and report", "+   query: Fetch the slow page twice"]);
    shot(&page, "diff.png").await;

    // 6. A viewer sees the agent but its trigger button is disabled, and a forged POST is refused.
    click(&page, "header.top form[action='/logout'] button").await;
    until(&page, "location.pathname === '/login'", "signed out").await;
    sign_in(&page, &base, &viewer).await;
    page.goto(format!("{base}/agents/default/console-demo")).await.unwrap();
    until(&page, "!!document.querySelector('form[action$=\"/trigger\"] button')", "the agent page").await;
    assert!(eval::<bool>(&page, "document.querySelector('form[action$=\"/trigger\"] button').disabled").await);
    assert!(eval::<bool>(&page, "!document.querySelector('form[action$=\"/delete\"]')").await);
    page.goto(format!("{base}/agents/default/console-demo/memory")).await.unwrap();
    until(&page, "document.querySelector('p.error')?.textContent.includes('operator or admin') === true", "no memory")
        .await;
    page.goto(format!("{base}/agents/default/console-demo")).await.unwrap();
    until(&page, "!!document.querySelector('input[name=csrf]')", "the agent page").await;
    // With the session's own CSRF token the console passes the call on; the manager refuses it.
    let status: u16 = eval(
        &page,
        "fetch(location.pathname + '/trigger', {method: 'POST', body: new URLSearchParams({csrf: \
         document.querySelector('input[name=csrf]').value})}).then(r => r.status)",
    )
    .await;
    assert_eq!(status, 403, "a viewer's trigger");
    // Without the token the console refuses it itself.
    let status: u16 = eval(&page, "fetch(location.pathname + '/trigger', {method: 'POST'}).then(r => r.status)").await;
    assert_eq!(status, 403, "a trigger without the CSRF token");
    // From another origin, with the operator's session: refused before anything runs.
    let cookie = operator_session(&base, &operator).await;
    let forged = reqwest::Client::new()
        .post(format!("{base}/agents/default/console-demo/trigger"))
        .header("cookie", cookie)
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(runs_of(&mut manager).await.len(), 1, "no refused action started a run");

    // 7. The overview, from the process's own metrics: an admin (every namespace) sees the one
    // run that ended; the operator (namespace default) is told it spans every namespace.
    click(&page, "header.top form[action='/logout'] button").await;
    until(&page, "location.pathname === '/login'", "signed out").await;
    sign_in(&page, &base, &admin).await;
    page.goto(format!("{base}/")).await.unwrap();
    until(&page, "!!document.querySelector('dd[data-figure=runs]')", "the overview").await;
    let ended: String = eval(&page, "document.querySelector('dd[data-figure=runs]').textContent").await;
    assert_eq!(ended, "1", "runs ended since the start");
    shot(&page, "overview.png").await;

    browser.close().await.unwrap();
    let _ = browser.wait().await;
    events.abort();
}

/// A session cookie of the operator, signed in over plain HTTP as the login form would.
async fn operator_session(base: &str, key: &str) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = client
        .post(format!("{base}/login"))
        .header("origin", base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("credential={key}&next=%2Fagents"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "signing in");
    let cookie = res.headers().get("set-cookie").unwrap().to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// A stand-in OpenID Connect provider (no real one is reachable here): discovery, an authorize
/// endpoint that signs "alice" in at once (checking the PKCE challenge method and the redirect),
/// and a token endpoint that checks the code verifier against the challenge and returns an ID
/// token signed with a key made for the test, whose public half the manager trusts.
struct Provider {
    issuer: String,
    jwks: PathBuf,
    /// Token requests the provider answered.
    exchanged: Arc<std::sync::atomic::AtomicUsize>,
}

async fn provider(dir: &std::path::Path) -> Provider {
    use axum::extract::{Form, Query, State};
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use std::collections::HashMap;
    use std::sync::Mutex;

    let key = EncodingKey::from_ec_der(&rcgen::KeyPair::generate().unwrap().serialize_der());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());

    /// What an issued code was for: its PKCE challenge, nonce and redirect URI.
    struct Grant {
        challenge: String,
        nonce: String,
        redirect: String,
    }
    #[derive(Clone)]
    struct Idp {
        issuer: String,
        key: Arc<EncodingKey>,
        codes: Arc<Mutex<HashMap<String, Grant>>>,
        exchanged: Arc<std::sync::atomic::AtomicUsize>,
    }
    let exchanged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let idp = Idp { issuer: issuer.clone(), key: Arc::new(key), codes: Arc::default(), exchanged: exchanged.clone() };
    let discovery = |State(i): State<Idp>| async move {
        axum::Json(serde_json::json!({
            "issuer": i.issuer, "authorization_endpoint": format!("{}/authorize", i.issuer),
            "token_endpoint": format!("{}/token", i.issuer), "jwks_uri": format!("{}/jwks", i.issuer),
        }))
    };
    let authorize = |State(i): State<Idp>, Query(q): Query<HashMap<String, String>>| async move {
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "nightshift-console");
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(q["scope"].split(' ').any(|s| s == "openid"), "{}", q["scope"]);
        let code = format!("code-{}", rand::random::<u64>());
        let redirect = q["redirect_uri"].clone();
        let grant =
            Grant { challenge: q["code_challenge"].clone(), nonce: q["nonce"].clone(), redirect: redirect.clone() };
        i.codes.lock().unwrap().insert(code.clone(), grant);
        axum::response::Redirect::to(&format!("{redirect}?code={code}&state={}", q["state"]))
    };
    let token = |State(i): State<Idp>, Form(f): Form<HashMap<String, String>>| async move {
        use base64::Engine;
        use sha2::Digest;
        let Grant { challenge, nonce, redirect } =
            i.codes.lock().unwrap().remove(&f["code"]).expect("a code it issued, once");
        let derived = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(f["code_verifier"].as_bytes()));
        assert_eq!(derived, challenge, "the PKCE verifier matches the challenge");
        assert_eq!(f["redirect_uri"], redirect);
        assert_eq!(f["grant_type"], "authorization_code");
        i.exchanged.fetch_add(1, Ordering::SeqCst);
        let exp = chrono::Utc::now().timestamp() + 600;
        let claims = serde_json::json!({"iss": i.issuer, "aud": "nightshift-console", "sub": "alice", "exp": exp,
            "nonce": nonce, "nightshift_role": "operator"});
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        axum::Json(serde_json::json!({"id_token": jsonwebtoken::encode(&header, &claims, &i.key).unwrap(),
            "access_token": "opaque", "token_type": "Bearer"}))
    };
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", axum::routing::get(discovery))
        .route("/authorize", axum::routing::get(authorize))
        .route("/token", axum::routing::post(token))
        .with_state(idp);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Provider { issuer, jwks, exchanged }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_through_an_oidc_provider() {
    let dir = tempfile::tempdir().unwrap();
    let idp = provider(dir.path()).await;
    let admin = format!("{:064x}", rand::random::<u128>());
    let admin_file = dir.path().join("admin.key");
    std::fs::write(&admin_file, &admin).unwrap();
    // The manager trusts the provider's tokens for the console's client id; the console sends
    // users there (its callback is its own address, as the browser reaches it).
    let config = format!(
        "[auth]\nmode = \"required\"\nbootstrap_admin_key_file = \"{}\"\n\
         [auth.oidc]\nissuer = \"{issuer}\"\naudience = \"nightshift-console\"\njwks = \"{}\"\n\
         [console.oidc]\nissuer = \"{issuer}\"\nclient_id = \"nightshift-console\"\nlabel = \"Sign in with Test IdP\"\n",
        admin_file.display(),
        idp.jwks.display(),
        issuer = idp.issuer,
    );
    let dev = Dev::start(Some(&config));
    let base = dev.endpoint.clone();
    let (mut browser, events) = launch(&dir.path().join("profile")).await;
    let page = browser.new_page("about:blank").await.unwrap();
    page.goto(format!("{base}/runs")).await.unwrap();
    until(&page, "document.querySelector('#oidc')?.textContent === 'Sign in with Test IdP'", "the provider's button")
        .await;
    click(&page, "#oidc").await;
    // Back from the provider, signed in as the token's subject, on the page asked for first.
    until(&page, "location.pathname === '/runs' && !!document.querySelector('header.top .who')", "signed in").await;
    let who: String = eval(&page, "document.querySelector('header.top .who span').textContent").await;
    assert_eq!(who, "oidc:alice · operator");
    assert_eq!(idp.exchanged.load(Ordering::SeqCst), 1, "one code exchanged");
    // A replayed callback (the same state again) signs nobody in.
    let replay = reqwest::get(format!("{base}/login/oidc/callback?code=code-1&state=used")).await.unwrap();
    assert_eq!(replay.status(), 400);
    browser.close().await.unwrap();
    let _ = browser.wait().await;
    events.abort();
}
