//! `ctdata pull`: the consolidated sightings added since the last pull, into `inbox/`.
//! The cursor is saved only after the file is safely in place, so a crash means the
//! same range is fetched again, never a gap.

use std::process::ExitCode;

use anyhow::{bail, Context};
use ctdata_api::{ErrorBody, NEXT_CURSOR};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::config::{Config, Protocol};
use crate::home::{sync_dir, Home, INBOX};
use crate::{http, state};

pub async fn run(home: &Home, format: &str) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    home.create()?;
    let down = config.download();
    if down.protocol != Protocol::Https {
        bail!("pull needs an https download URL: `ctdata init --download-url https://… --download-token …`");
    }
    if !matches!(format, "csv" | "geojson" | "ndjson") {
        bail!("--format {format:?}: use csv, geojson or ndjson");
    }
    let Some(_only_one) = home.try_lock(".pull.lock")? else {
        bail!("another pull is running for {}", home.root.display());
    };
    let since = state::read(home)?.pull_cursor.unwrap_or(0);
    let client = http::client(down)?;
    let url = format!("{}/api/v1/sightings", down.base());
    let response = client
        .get(&url)
        .query(&[("format", format), ("since", &since.to_string())])
        .bearer_auth(down.require_token()?)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(http::describe(&e, &down.url)))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.json::<ErrorBody>().await.ok();
        let message = body
            .as_ref()
            .map_or("no reason given", |b| b.message.as_str());
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "{url} does not accept the download token ({message}): pull needs an \
                 administrator's API token (`ctdata-server admin token NAME`, set with \
                 `ctdata init --download-token`) or the token of a device the server lets \
                 read (http.read_devices)"
            );
        }
        bail!("{url} answered {status}: {message}");
    }
    let next: i64 = response
        .headers()
        .get(NEXT_CURSOR)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .with_context(|| format!("{url} sent no {NEXT_CURSOR} header: is it a ctdata-server?"))?;
    if next <= since {
        println!("nothing new since the last pull (cursor {since})");
        return Ok(ExitCode::SUCCESS);
    }
    let dir = home.dir(INBOX);
    let name = format!("sightings-{since}-{next}.{format}");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = tokio::fs::File::create(&tmp).await?;
    let mut bytes = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!(http::describe(&e, &down.url)))?;
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    drop(file);
    std::fs::rename(&tmp, dir.join(&name))?;
    sync_dir(&dir)?;
    let mut locked = state::lock(home)?;
    locked.state.pull_cursor = Some(next);
    locked.save()?;
    println!("pulled {bytes} bytes into {}", dir.join(&name).display());
    Ok(ExitCode::SUCCESS)
}
