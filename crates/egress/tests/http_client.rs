//! The egress HTTP client (what MCP servers over HTTP are reached with) against a real local
//! HTTP server: a name resolving to loopback is refused at connection time unless the policy
//! allows it, and a redirect is handed back instead of followed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use nightshift_core::operator_policy::OperatorPolicy;
use nightshift_egress::Egress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server answering every request with `response`; returns its port.
async fn serve(response: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_checked_and_redirects_are_not_followed() {
    let ok = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
    let url = format!("http://localhost:{ok}/mcp");

    let strict = Egress::new(OperatorPolicy::default()).http_client().unwrap();
    let refused = strict.get(&url).send().await.expect_err("a loopback name was reached");
    let chain = error_chain(&refused);
    assert!(chain.contains("resolves to") && chain.contains("loopback"), "{chain}");

    let allowing = OperatorPolicy { private_egress: vec!["127.0.0.1/32".into()], ..OperatorPolicy::default() };
    let allowed = Egress::new(allowing.clone()).http_client().unwrap();
    assert_eq!(allowed.get(&url).send().await.unwrap().text().await.unwrap(), "ok");

    // A redirect (here to the cloud metadata address) comes back as the answer, unfollowed.
    let redirect =
        serve("HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    let answer = allowed.get(format!("http://localhost:{redirect}/")).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::FOUND);
}
