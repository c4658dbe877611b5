//! Driving Debian's headless Chromium over the DevTools protocol (chromiumoxide) in the console's
//! browser tests: launch, sign in, wait for a condition, click, screenshot.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::{Page, ScreenshotParams};
use futures::StreamExt;
use nightshift_rpc::{CallChannel, ClientOptions};
use tonic::transport::Channel;

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn channel(endpoint: &str, key: &str) -> CallChannel {
    let ch = Channel::from_shared(endpoint.to_owned()).unwrap().connect().await.unwrap();
    ClientOptions { api_key: key.to_owned(), ..ClientOptions::default() }.wrap(ch)
}

pub async fn eval<T: serde::de::DeserializeOwned>(page: &Page, js: &str) -> T {
    page.evaluate(js).await.unwrap_or_else(|e| panic!("{js}: {e}")).into_value().unwrap()
}

/// Waits until `js` is true in the page.
pub async fn until(page: &Page, js: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if page.evaluate(js).await.ok().and_then(|v| v.into_value::<bool>().ok()) == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what} ({js})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn shot(page: &Page, name: &str) {
    let png = page.screenshot(ScreenshotParams::builder().full_page(true).build()).await.unwrap();
    std::fs::write(screenshots().join(name), png).unwrap();
}

pub async fn click(page: &Page, selector: &str) {
    page.find_element(selector).await.unwrap_or_else(|e| panic!("{selector}: {e}")).click().await.unwrap();
}

pub async fn sign_in(page: &Page, base: &str, key: &str) {
    page.goto(format!("{base}/agents")).await.unwrap();
    until(page, "location.pathname === '/login' && !!document.querySelector('#credential')", "the sign-in page").await;
    page.find_element("#credential").await.unwrap().click().await.unwrap().type_str(key).await.unwrap();
    click(page, "section.signin button[type=submit]").await;
    until(page, "location.pathname === '/agents' && !!document.querySelector('table.agents')", "the agents page").await;
}

pub async fn launch(profile: &std::path::Path) -> (Browser, tokio::task::JoinHandle<()>) {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package"
    );
    let config = BrowserConfig::builder()
        .chrome_executable(CHROMIUM)
        .no_sandbox()
        .user_data_dir(profile)
        .window_size(1280, 900)
        .viewport(None)
        .args([
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .build()
        .unwrap();
    let (browser, mut handler) = Browser::launch(config).await.expect("launching Chromium");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    (browser, events)
}

/// `nightshift dev` with authentication required (a bootstrap admin key) and `http_get` allowed
/// to reach `llm`, plus `extra` config; an operator key (`ops`) and a viewer key (`watcher`).
pub struct SecuredDev {
    pub dev: super::Dev,
    pub admin: String,
    pub operator: String,
    pub viewer: String,
    _keys: tempfile::TempDir,
}

pub async fn secured_dev(llm: &str, extra: &str) -> SecuredDev {
    let keys = tempfile::tempdir().unwrap();
    let admin = format!("{:064x}", rand::random::<u128>());
    let admin_file = keys.path().join("admin.key");
    std::fs::write(&admin_file, &admin).unwrap();
    let config = format!(
        "[auth]\nmode = \"required\"\nbootstrap_admin_key_file = \"{}\"\n\
         [worker.tools]\nhttp_allow = [\"{llm}/\"]\n[worker.allow]\nprivate_egress = [\"127.0.0.1\"]\n{extra}",
        admin_file.display()
    );
    let dev = super::Dev::start(Some(&config));
    let mut auth =
        nightshift_core::pb::auth_service_client::AuthServiceClient::new(channel(&dev.endpoint, &admin).await);
    let mut key = async |name: &str, role: &str| {
        let req = nightshift_core::pb::CreateApiKeyRequest {
            name: name.into(),
            role: role.into(),
            ttl_seconds: 3600,
            namespaces: vec![],
        };
        auth.create_api_key(req).await.unwrap().into_inner().secret
    };
    let operator = key("ops", "operator").await;
    let viewer = key("watcher", "viewer").await;
    SecuredDev { dev, admin, operator, viewer, _keys: keys }
}
