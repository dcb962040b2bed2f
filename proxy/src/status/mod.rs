//! The metrics listener (`metrics_listen`): `/metrics` for Prometheus, a status page at `/` for
//! people without Grafana, `/status.json` (what the page draws), `/healthz` (the process is alive)
//! and `/readyz` (it serves clients; when not, why) for load balancers and orchestrators.
//!
//! Everything here is read-only and shows query *shapes* only (literals replaced by `?`), never a
//! value a client sent; still, it has no login: bind it to an address only operators reach.

mod history;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;

use crate::cache::{admin, tier_view, Cache};
use crate::error::Error;
use crate::passthrough::Reason;
use crate::shared::Shared;
use history::History;

/// The page: one file, no external assets, no build step.
const PAGE: &str = include_str!("page.html");

/// How long an upstream probe's answer stands for `/readyz`: probes at most this often, however
/// often the orchestrator asks.
const PROBE_FRESH: Duration = Duration::from_secs(2);

/// How often the exporter's histograms are trimmed (what its own listener would do).
const UPKEEP: Duration = Duration::from_secs(5);

/// Requests the page lists as hot, and the metrics export.
const HOT_SHOWN: usize = 10;

/// What the listener's pages read.
struct Site {
    shared: Arc<Shared>,
    prometheus: PrometheusHandle,
    history: Arc<History>,
    /// The last upstream probe: when, and what it found.
    probed: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// Binds the metrics listener; the error names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::metrics(addr, e))
}

/// Serves the pages on `listener` until the process ends, with the counters `prometheus` renders
/// and the proxy state in `shared`; keeps the page's history meanwhile.
pub fn serve(listener: TcpListener, shared: Arc<Shared>, prometheus: PrometheusHandle) {
    let history = Arc::new(History::default());
    tokio::spawn(history::keep(
        Arc::downgrade(&history),
        Arc::clone(&shared.meters),
    ));
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let site = Arc::new(Site {
        shared,
        prometheus,
        history,
        probed: Mutex::new(None),
    });
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let site = Arc::clone(&site);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let site = Arc::clone(&site);
                    async move { Ok::<_, std::convert::Infallible>(site.answer(request).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "metrics listener: connection ended with an error");
                }
            });
        }
    });
}

impl Site {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET and HEAD\n".into(),
            );
        }
        match request.uri().path() {
            "/" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics().into(),
            ),
            "/status.json" => reply(
                StatusCode::OK,
                "application/json",
                self.status().await.to_string().into(),
            ),
            "/healthz" => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            "/readyz" => match self.readiness().await {
                Ok(why) => reply(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    format!("ready: {why}\n").into(),
                ),
                Err(why) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("not ready: {why}\n").into(),
                ),
            },
            other => reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                format!(
                    "no page {other}; the pages are /, /metrics, /status.json, /healthz and \
                     /readyz\n"
                )
                .into(),
            ),
        }
    }

    /// The exporter's text, then the hot requests: rendered at each scrape so only the current
    /// top ones appear (a series per request ever hot would grow without bound).
    fn metrics(&self) -> String {
        let mut text = self.prometheus.render();
        let Some(cache) = &self.shared.cache else {
            return text;
        };
        text.push_str(
            "# HELP veneer_hot_request_hits Estimated hits of the most-hit requests, by rank, \
             with their query shape.\n# TYPE veneer_hot_request_hits gauge\n",
        );
        for (rank, (shape, _, hits)) in tier_view::hot_shapes(cache)
            .into_iter()
            .take(HOT_SHOWN)
            .enumerate()
        {
            text.push_str(&format!(
                "veneer_hot_request_hits{{rank=\"{}\",query=\"{}\"}} {hits}\n",
                rank + 1,
                label_value(&shape)
            ));
        }
        text
    }

    /// Ready while the proxy accepts clients and its upstream answers.
    async fn readiness(&self) -> Result<String, String> {
        if self.shared.draining.load(Ordering::Relaxed) {
            return Err("shutting down: draining sessions, no new clients".to_owned());
        }
        let fresh = {
            let probed = self.probed.lock().unwrap_or_else(|e| e.into_inner());
            probed
                .as_ref()
                .filter(|(at, _)| at.elapsed() < PROBE_FRESH)
                .map(|(_, found)| found.clone())
        };
        let found = match fresh {
            Some(found) => found,
            None => {
                let found = crate::upstream::probe(&self.shared.config)
                    .await
                    .map_err(|e| e.to_string());
                *self.probed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), found.clone()));
                found
            }
        };
        found?;
        Ok(match &self.shared.cache {
            None => format!(
                "forwarding to {} (caching off)",
                self.shared.config.upstream
            ),
            Some(cache) => {
                let databases = cache.databases();
                let cached = databases.iter().filter(|db| cache.serves(db)).count();
                format!(
                    "forwarding to {}; cache serving {cached} of {} database(s) seen",
                    self.shared.config.upstream,
                    databases.len()
                )
            }
        })
    }

    /// What the page draws.
    async fn status(&self) -> serde_json::Value {
        let meters = &self.shared.meters;
        let ready = self.readiness().await;
        let mut reasons: Vec<(&str, u64)> = Reason::ALL
            .iter()
            .map(|r| (r.label(), meters.bypass_reasons[r.index()].get()))
            .filter(|(_, n)| *n > 0)
            .collect();
        reasons.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let mut page = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "listen": self.shared.config.listen.to_string(),
            "upstream": self.shared.config.upstream.to_string(),
            "ready": { "ok": ready.is_ok(), "reason": ready.unwrap_or_else(|e| e) },
            "history": self.history.samples(),
            "hits": meters.hits.get(),
            "misses": meters.misses.get(),
            "bypasses": meters.bypasses.get(),
            "bypass_reasons": reasons.iter()
                .map(|(reason, count)| json!({ "reason": reason, "count": count }))
                .collect::<Vec<_>>(),
        });
        if let Some(cache) = &self.shared.cache {
            page["cache"] = cache_status(cache).await;
        }
        page
    }
}

/// The cache's part of the page: its summary rows, databases, nodes and hot requests.
async fn cache_status(cache: &Cache) -> serde_json::Value {
    let mut databases = cache.databases();
    databases.sort_by(|a, b| a.name.cmp(&b.name));
    let databases: Vec<_> = databases
        .iter()
        .map(|db| {
            let (behind, delay) = db.stream.lag();
            json!({
                "name": db.name,
                "state": admin::database_state(cache, db),
                "hits": db.usage.hits.get(),
                "misses": db.usage.misses.get(),
                "lag_bytes": behind,
                "delay_ms": delay.as_secs_f64() * 1000.0,
                "retained_bytes": db.stream.last_retained(),
            })
        })
        .collect();
    let hot: Vec<_> = tier_view::hot_shapes(cache)
        .into_iter()
        .take(HOT_SHOWN)
        .map(|(query, share, hits)| json!({ "query": query, "share": share, "hits": hits }))
        .collect();
    json!({
        "status": admin::status(cache).await,
        "databases": databases,
        "nodes": { "columns": tier_view::NODE_COLUMNS, "rows": tier_view::nodes(cache).await },
        "hot": hot,
    })
}

/// A response with `body`, never cached by the browser (the page polls).
fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `text` as a Prometheus label value: backslash, double quote and newline escaped; long shapes
/// cut.
fn label_value(text: &str) -> String {
    const LONGEST: usize = 200;
    let mut out = String::with_capacity(text.len().min(LONGEST) + 8);
    for (i, c) in text.chars().enumerate() {
        if i == LONGEST {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_what_the_text_format_needs() {
        assert_eq!(
            label_value("SELECT \"a\\b\"\nFROM t"),
            "SELECT \\\"a\\\\b\\\"\\nFROM t"
        );
        assert_eq!(label_value(&"x".repeat(500)).chars().count(), 201);
    }
}
