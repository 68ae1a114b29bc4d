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

/// Renders by URL: (store version, rendered at, body).
#[derive(Debug, Default)]
pub(crate) struct Cache(Mutex<HashMap<String, (u64, Instant, Arc<String>)>>);

impl Cache {
    /// The cached render of `key` if it is of the current store `version` or younger than
    /// [`MIN_INTERVAL`]; otherwise runs `render` and caches what it returns.
    pub(crate) async fn get_or_render<F, E>(&self, key: String, version: u64, render: F) -> Result<Arc<String>, E>
    where
        F: Future<Output = Result<String, E>>,
    {
        {
            let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((v, at, body)) = map.get(&key)
                && (*v == version || at.elapsed() < MIN_INTERVAL)
            {
                return Ok(body.clone());
            }
        }
        let body = Arc::new(render.await?);
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
