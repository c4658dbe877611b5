//! `nightshift dev`: every service that exists, in one process, on one gRPC port, on embedded
//! defaults (a SQLite file under the data directory).
use anyhow::Context;
use nightshift_core::AgentManifest;
use nightshift_manager::{ManagerConfig, ManagerService, SERVICE_NAME as MANAGER};
use nightshift_rpc::{GrpcServer, shutdown_signal};
use nightshift_store::Store;
use nightshift_telemetry::LogFormat;

use crate::agent::{documents, manifest_files};
use crate::args::DevArgs;

pub(crate) async fn run(args: DevArgs, log_format: LogFormat) -> anyhow::Result<()> {
    nightshift_telemetry::init(log_format);
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
            format!("sqlite://{}", args.data_dir.join("nightshift.db").display())
        }
    };
    let store = Store::connect(&url).await.context("opening the database")?;

    // Manifests given with --apply go through the same validation as ApplyAgent.
    for file in manifest_files(&args.apply)? {
        for doc in documents(&file)? {
            let spec = AgentManifest::from_yaml(&doc)
                .and_then(|m| m.validate())
                .map_err(|e| anyhow::anyhow!("{}: invalid agent manifest: {e}", file.display()))?;
            let (rec, outcome) = store.apply_agent(&spec).await?;
            tracing::info!(agent = %rec.spec.name, version = rec.version, ?outcome, file = %file.display(), "applied");
        }
    }

    let mut server = GrpcServer::new();
    server
        .routes()
        .add_service(ManagerService::new(store.clone(), ManagerConfig::default().default_lease_ttl).into_server());
    server.serving(MANAGER);
    let listener = GrpcServer::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    // Printed on stdout (not the log) so scripts and tests can read the bound address.
    println!("nightshift dev listening on {addr} (database {})", nightshift_store_redact(&url));
    server.serve(listener, shutdown_signal()).await?;
    store.close().await;
    Ok(())
}

fn nightshift_store_redact(url: &str) -> String {
    nightshift_store::redact(url)
}
