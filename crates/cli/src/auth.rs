//! `nightshift auth ...`: API keys and who the CLI's credential is.
use nightshift_core::pb;
use serde::Serialize;

use crate::Server;
use crate::args::{AuthCommand, KeyCommand, Output};
use crate::output::{new_table, print, ts};

/// A key as the CLI prints it.
#[derive(Serialize)]
struct KeyView {
    id: String,
    name: String,
    role: String,
    namespaces: String,
    created_at: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    created_by: String,
    /// Only right after `create`: the whole key, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl KeyView {
    fn from_pb(k: &pb::ApiKey, secret: Option<String>) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role.clone(),
            namespaces: k.namespaces.join(","),
            created_at: ts(&k.created_at),
            expires_at: ts(&k.expires_at),
            revoked_at: ts(&k.revoked_at),
            created_by: k.created_by.clone(),
            secret,
        }
    }
}

fn keys_table(keys: &[KeyView]) -> String {
    let mut t = new_table(&["ID", "NAME", "ROLE", "NAMESPACES", "CREATED", "EXPIRES", "REVOKED", "BY"]);
    for k in keys {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        t.add_row([
            k.id.clone(),
            k.name.clone(),
            k.role.clone(),
            k.namespaces.clone(),
            or_dash(&k.created_at),
            or_dash(&k.expires_at),
            or_dash(&k.revoked_at),
            k.created_by.clone(),
        ]);
    }
    format!("{t}\n")
}

pub(crate) async fn run(server: &Server, out: Output, cmd: AuthCommand) -> anyhow::Result<()> {
    let mut client = pb::auth_service_client::AuthServiceClient::new(server.channel().await?);
    match cmd {
        AuthCommand::Key(KeyCommand::Create { name, role, ttl, namespaces }) => {
            let ttl_seconds = match ttl {
                Some(t) => match nightshift_core::duration::parse_signed(&t).map_err(anyhow::Error::msg)? {
                    d if d.negative || d.abs.as_secs() == 0 => anyhow::bail!("--ttl: a positive duration, e.g. 90d"),
                    d => d.abs.as_secs(),
                },
                None => 0,
            };
            let r = client
                .create_api_key(pb::CreateApiKeyRequest { name, role, ttl_seconds, namespaces })
                .await?
                .into_inner();
            let view = KeyView::from_pb(&r.key.unwrap_or_default(), Some(r.secret.clone()));
            print(out, &view, |v| {
                format!(
                    "{}\nThe key (shown once; the server keeps only a hash):\n{}\n",
                    keys_table(std::slice::from_ref(v)).trim_end(),
                    r.secret
                )
            })?;
        }
        AuthCommand::Key(KeyCommand::List) => {
            let r = client.list_api_keys(pb::ListApiKeysRequest {}).await?.into_inner();
            let keys: Vec<KeyView> = r.keys.iter().map(|k| KeyView::from_pb(k, None)).collect();
            print(out, &keys, |k| keys_table(k))?;
        }
        AuthCommand::Key(KeyCommand::Revoke { id }) => {
            let r = client.revoke_api_key(pb::RevokeApiKeyRequest { id }).await?.into_inner();
            let view = KeyView::from_pb(&r.key.unwrap_or_default(), None);
            print(out, &view, |v| keys_table(std::slice::from_ref(v)))?;
        }
        AuthCommand::Whoami => {
            let p = client.who_am_i(pb::WhoAmIRequest {}).await?.into_inner().principal.unwrap_or_default();
            #[derive(Serialize)]
            struct Who {
                name: String,
                role: String,
                namespaces: Vec<String>,
            }
            let who = Who { name: p.name, role: p.role, namespaces: p.namespaces };
            print(out, &who, |w| format!("{} ({}) in {}\n", w.name, w.role, w.namespaces.join(",")))?;
        }
    }
    Ok(())
}
