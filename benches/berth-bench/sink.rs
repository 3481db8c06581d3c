//! `event-sink`: a webhook receiver that counts the events a registry delivers and how long
//! each took from its commit (the CloudEvent's `time`) to its arrival here. It answers 204 at
//! once, listens on `--sink-listen`, and reports when no event came for `--sink-idle`
//! seconds after the first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;

use crate::{Bench, Result};

#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Bench {
    pub(crate) async fn event_sink(&mut self) -> Result<()> {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let recorder = Arc::clone(&seen);
        let app = axum::Router::new().fallback(axum::routing::post(move |body: Bytes| {
            let seen = Arc::clone(&recorder);
            async move {
                let arrived = now_millis();
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let events = match value {
                    serde_json::Value::Array(list) => list,
                    serde_json::Value::Object(ref map) if map.contains_key("events") => {
                        value["events"].as_array().cloned().unwrap_or_default()
                    }
                    other => vec![other],
                };
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                seen.first.get_or_insert(now);
                seen.last = Some(now);
                for event in events {
                    let time = event["time"].as_str().or(event["timestamp"].as_str());
                    if let Some(at) = time.and_then(parse_rfc3339_millis) {
                        let ms = u64::try_from(arrived - at).unwrap_or(0);
                        seen.latencies.push(Duration::from_millis(ms));
                    }
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }));
        let listener = tokio::net::TcpListener::bind(&self.opts.sink_listen).await?;
        eprintln!("event sink listening on {}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        let idle = Duration::from_secs_f64(self.opts.sink_idle);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.last.is_some_and(|last| last.elapsed() >= idle) {
                break;
            }
        }
        let mut seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        let span = match (seen.first, seen.last) {
            (Some(first), Some(last)) => last.duration_since(first).as_secs_f64().max(0.001),
            _ => 1.0,
        };
        let count = seen.latencies.len();
        self.record(
            "event-sink",
            count as f64 / span,
            "events/s",
            Some(&mut seen.latencies),
        );
        eprintln!("event sink: {count} events");
        Ok(())
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS[.mmm]Z` as Unix milliseconds.
fn parse_rfc3339_millis(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (t.next()??, t.next()??, t.next()??);
    let ms = format!("{fraction:0<3}")[..3].parse::<i64>().ok()?;
    // Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + m * 60 + s) * 1000) + ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_parse() {
        assert_eq!(
            super::parse_rfc3339_millis("1970-01-01T00:00:00.000Z"),
            Some(0)
        );
        assert_eq!(
            super::parse_rfc3339_millis("2026-12-07T23:59:59.999Z"),
            Some(1_796_687_999_999)
        );
    }
}
