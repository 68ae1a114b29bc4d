//! Live updates: one server-sent-events stream per open page says "something changed", and
//! the page fetches its own fragment again ([`super::html`]'s script).
//!
//! The store's change counter moves on every committed write, which while a sweep runs is many
//! times a second. So the stream sends at most one message per [`MIN_INTERVAL`], and renders
//! are cached per URL for the same interval: fifty pages following one sweep cost one render a
//! second, not fifty.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use tokio_stream::Stream;

use super::App;

/// The shortest time between two change messages on one stream, and the longest a cached
/// render is served.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many URLs are cached (a bound: query strings are the client's choice).
const MAX_ENTRIES: usize = 256;

/// A cached render: the store version it was made at, when, and the body.
type Render = (u64, Instant, Arc<String>);

/// Renders by URL: (store version, rendered at, body); and one lock per URL being rendered, so
/// the fifty pages that all fetch right after the same change wait for one render instead of
/// making fifty.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    renders: Mutex<HashMap<String, Render>>,
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Cache {
    fn cached(&self, key: &str, version: u64) -> Option<Arc<String>> {
        let map = self.renders.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key).filter(|(v, at, _)| *v == version || at.elapsed() < MIN_INTERVAL).map(|(_, _, b)| b.clone())
    }

    /// The cached render of `key` if it is of the current store `version` or younger than
    /// [`MIN_INTERVAL`]; otherwise runs `render` (once, however many ask at the same time) and
    /// caches what it returns.
    pub(crate) async fn get_or_render<F, E>(&self, key: String, version: u64, render: F) -> Result<Arc<String>, E>
    where
        F: Future<Output = Result<String, E>>,
    {
        if let Some(body) = self.cached(&key, version) {
            return Ok(body);
        }
        let lock = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if in_flight.len() >= MAX_ENTRIES {
                in_flight.retain(|_, l| Arc::strong_count(l) > 1);
            }
            in_flight.entry(key.clone()).or_default().clone()
        };
        let _rendering = lock.lock().await;
        // Whoever held the lock before may have just rendered it.
        if let Some(body) = self.cached(&key, version) {
            return Ok(body);
        }
        let body = Arc::new(render.await?);
        let mut map = self.renders.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (_, at, _)| at.elapsed() < MIN_INTERVAL);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (version, Instant::now(), body.clone()));
        Ok(body)
    }
}

/// `GET /live`: an event (data: the store's change counter) after each change, at most one per
/// [`MIN_INTERVAL`]; ends when the coordinator stops.
pub(crate) async fn stream(State(app): State<App>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut changes = app.store.changes();
    let stop = app.stop.clone();
    let events = async_stream(move |tx| async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
            let version = *changes.borrow_and_update();
            if tx.send(Ok(Event::default().data(version.to_string()))).await.is_err() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(MIN_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// A stream fed by a task that ends with the stream's receiver (the client went away) or by
/// itself.
fn async_stream<T, F, Fut>(body: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(body(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_are_shared_within_the_interval() {
        let cache = Cache::default();
        let mut renders = 0;
        for version in [1, 2, 3] {
            let body = cache
                .get_or_render::<_, Infallible>("/x".into(), version, async {
                    renders += 1;
                    Ok(format!("v{version}"))
                })
                .await
                .unwrap();
            assert_eq!(*body, "v1", "a render younger than the interval is served");
        }
        assert_eq!(renders, 1);
    }
}
