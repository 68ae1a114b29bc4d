//! Figures are not inlined into pages: a page names each SVG by the hash of its content
//! (`/figures/<hash>.svg`), and the browser caches it forever. A followed sweep page is
//! fetched again every second; its figures change only when a job finishes or an eval lands,
//! so most refreshes move only the tables.

use std::{
    collections::{HashMap, VecDeque},
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{App, html::esc};

/// Figures kept; the oldest go first. Each page shows at most three, so this covers many open
/// pages (a figure evicted while a page still names it is drawn again on that page's next
/// refresh, within a second).
const KEEP: usize = 256;

/// Rendered figures by name.
#[derive(Debug, Default)]
pub(crate) struct Figures(Mutex<Kept>);

/// The figures by name, and their names oldest first.
type Kept = (HashMap<String, Arc<String>>, VecDeque<String>);

impl Figures {
    /// Keeps `svg` and returns the `<img>` that shows it.
    pub(crate) fn img(&self, svg: String, alt: &str) -> String {
        let mut h = DefaultHasher::new();
        svg.hash(&mut h);
        let name = format!("{:016x}.svg", h.finish());
        let mut guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if !map.contains_key(&name) {
            map.insert(name.clone(), Arc::new(svg));
            order.push_back(name.clone());
            while order.len() > KEEP {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        format!("<img src=\"/figures/{name}\" alt=\"{}\" width=900 height=560>", esc(alt))
    }

    fn get(&self, name: &str) -> Option<Arc<String>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0.get(name).cloned()
    }
}

/// `GET /figures/{name}`: an SVG a page named; immutable, so cached by the browser.
pub(crate) async fn serve(State(app): State<App>, Path(name): Path<String>) -> Response {
    match app.figures.get(&name) {
        Some(svg) => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "private, max-age=31536000, immutable"),
                // An SVG opened directly could run script if it held any; ours never do, and
                // this keeps it so.
                (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'"),
            ],
            svg.as_str().to_string(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such figure (it was drawn long ago); reload the page\n").into_response(),
    }
}
