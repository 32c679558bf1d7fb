//! The feed checker's loop (TR 103 621 6.13): the manufacturer's feed is checked right after
//! start, then at a random time around every `check_interval_s`; new releases and advisories go
//! through the same checks as an owner's upload ([`HubApi`]), and the outcome is kept for
//! `hub ctl updates` ([`super::FeedState`]).

use tokio_util::sync::CancellationToken;

use crate::api::HubApi;
use crate::clock::unix_now_ms;

/// The feed checker (TR 103 621 6.13): checks the manufacturer's feed right after start, then
/// at a random time around every `check_interval_s`; new releases go through the same checks
/// as an owner's upload. None without a feed; an unusable feed (its pinned certificate
/// unreadable or invalid) refuses the start, with the reason.
pub(crate) fn checker(
    cfg: &crate::config::UpdatesConfig,
    api: HubApi,
    shutdown: CancellationToken,
) -> Result<Option<impl std::future::Future<Output = ()> + Send + 'static>, String> {
    let (Some(url), Some(cert)) = (cfg.feed_url.clone(), cfg.feed_cert.clone()) else {
        return Ok(None);
    };
    let interval = cfg.check_interval_s;
    let client = std::fs::read_to_string(&cert)
        .map_err(|e| format!("{}: {e}", cert.display()))
        .and_then(|pem| super::FeedClient::new(&url, &pem).map_err(|e| e.to_string()))?;
    api.feed.configured(&url);
    Ok(Some(async move {
        let mut rng = crate::rng::os_seeded();
        let mut done: std::collections::HashSet<(String, u32, String)> = Default::default();
        let mut seen_advisories: std::collections::HashSet<String> = Default::default();
        let mut delay = std::time::Duration::ZERO;
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            delay = super::next_check_delay(interval, &mut rng);
            let next_ms = || {
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                Some(unix_now_ms().saturating_add(delay_ms))
            };
            let index = match client.index().await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(error = %e, "update feed check failed");
                    api.feed.checked(Err(e.to_string()), unix_now_ms(), next_ms());
                    continue;
                }
            };
            let listed = (index.releases.len(), index.advisories.len());
            let (mut new_releases, mut new_advisories) = (0usize, 0usize);
            for e in index.releases {
                let key = (e.model.clone(), e.version, e.manifest.clone());
                if done.contains(&key) {
                    continue;
                }
                let (m, i) = match (client.get(&e.manifest).await, client.get(&e.image).await) {
                    (Ok(m), Ok(i)) => (m, i),
                    (Err(err), _) | (_, Err(err)) => {
                        tracing::warn!(model = %e.model, version = e.version, error = %err, "feed download failed");
                        continue;
                    }
                };
                match api.update_add(m, i, "feed").await {
                    Ok(_) => {
                        new_releases += 1;
                        done.insert(key);
                    }
                    Err(crate::api::ApiError::BadRequest(_)) => {
                        done.insert(key);
                    }
                    Err(err) => tracing::warn!(error = %err, "feed release not handled"),
                }
            }
            // Advisories (TR 103 621 6.22): verified like manifests, then acted on at once.
            for path in index.advisories {
                if seen_advisories.contains(&path) {
                    continue;
                }
                let signed = match client.get(&path).await {
                    Ok(b) => b,
                    Err(err) => {
                        tracing::warn!(%path, error = %err, "advisory download failed");
                        continue;
                    }
                };
                match api.advisory_add(signed, "feed").await {
                    Ok(_) => {
                        new_advisories += 1;
                        seen_advisories.insert(path);
                    }
                    Err(crate::api::ApiError::Command(crate::link::LinkError::Advisory(e))) => {
                        if !matches!(e, crate::isolation::AdvisoryError::Known(_)) {
                            tracing::warn!(%path, error = %e, "feed advisory refused");
                        }
                        seen_advisories.insert(path);
                    }
                    Err(err) => tracing::warn!(error = %err, "feed advisory not handled"),
                }
            }
            tracing::info!(
                %url,
                releases = listed.0,
                advisories = listed.1,
                new_releases,
                new_advisories,
                next_check_in_s = delay.as_secs(),
                "update feed checked"
            );
            api.feed.checked(Ok(listed), unix_now_ms(), next_ms());
        }
    }))
}
