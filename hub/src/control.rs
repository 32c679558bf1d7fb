//! The owner's control socket (EN 303 645 5.5-5: security-relevant changes only through an
//! authenticated interface): a Unix socket created 0600 in the 0700 data directory, accepting
//! only connections from the hub's own user, speaking one JSON request per line.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::api::{HubApi, Request};

/// Longest request line accepted (an owner's firmware upload travels hex-encoded: up to the
/// 16 MiB image limit, doubled, plus its manifest).
const MAX_LINE: usize = 34 * 1024 * 1024;

/// Binds the control socket at `path` (replacing a stale one) with mode 0600.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves control connections until `shutdown`.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    api: HubApi,
    shutdown: CancellationToken,
) {
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let peer = stream.peer_cred().ok().map(|c| c.uid());
                if own_uid.is_none() || peer != own_uid {
                    tracing::warn!(?peer, "control connection from another user refused");
                    continue;
                }
                let api = api.clone();
                tokio::spawn(async move { connection(stream, api).await });
            }
            () = shutdown.cancelled() => break,
        }
    }
    let _ = std::fs::remove_file(path);
}

async fn connection(stream: UnixStream, api: HubApi) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_LINE as u64 * 4));
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n > MAX_LINE => {
                let _ = w.write_all(b"{\"error\":\"request too long\"}\n").await;
                return;
            }
            Ok(_) => {}
        }
        #[cfg(feature = "fault-injection")]
        if let Some(answer) = crate::fault::handle(&line) {
            let mut out = answer.to_string();
            out.push('\n');
            if w.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => api.handle(req).await,
            Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
        };
        let mut out = answer.to_string();
        out.push('\n');
        if w.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One request over the socket at `path` (the `hub ctl` client).
pub(crate) async fn request(path: &Path, req: &Request) -> std::io::Result<serde_json::Value> {
    let stream = UnixStream::connect(path).await?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}
