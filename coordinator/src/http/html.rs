//! Escaping and the frame every page shares: inline CSS and the live-update script, so a page
//! needs nothing but this server.

use std::fmt::Write as _;

/// `text` safe inside HTML element content and double-quoted attribute values. Everything a
/// user wrote (sweep names, errors, log lines, worker names) goes through this.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value (percent-encoded: everything but unreserved characters).
pub(crate) fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
header{background:#1f3b57;color:#fff;padding:.6em 1.2em}header a{color:#fff;text-decoration:none;font-weight:600}\
header form{display:inline;float:right}main{padding:1em 1.5em}\
table{border-collapse:collapse;margin:.5em 0 1.5em;background:#fff}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}\
th{background:#eef2f6}td.l,th.l{text-align:left}\
.s-succeeded{color:#176d2c}.s-failed,.s-diverged{color:#b3261e}.s-running{color:#1f5fa8}.s-cancelled{color:#777}\
.err{max-width:40em;overflow-wrap:anywhere;text-align:left}.figs{display:flex;flex-wrap:wrap;gap:1em}\
.figs svg{max-width:100%;height:auto;background:#fff;border:1px solid #ddd}\
.bar{display:inline-block;width:10em;height:.8em;background:#ddd;vertical-align:middle}\
.bar span{display:block;height:100%;background:#3b7dd8}pre{background:#fff;border:1px solid #ddd;padding:.5em;\
overflow-x:auto;white-space:pre-wrap}.muted{color:#777}.pause{background:#fff3cd;padding:.5em;border:1px solid #e0c060}";

/// Replaces `<main>`'s content with the page's fragment whenever the server says something
/// changed. At most one fetch in flight; the server throttles the stream and caches renders.
const LIVE: &str = "\
(function(){var busy=false,again=false,n=0;\
function load(){if(busy){again=true;return;}busy=true;\
var u=new URL(location.href);u.searchParams.set('fragment','1');\
fetch(u,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null;}).then(function(t){\
if(t!==null){document.getElementById('main').innerHTML=t;n+=1;document.body.setAttribute('data-updates',String(n));}\
}).finally(function(){busy=false;if(again){again=false;load();}});}\
var es=new EventSource('/live');es.onmessage=function(){load();};})();";

/// A whole page: `title` (escaped here) and `body` (already HTML) inside `<main id=main>`;
/// `live` adds the update script. `logout` shows the log-out button (sessions only).
pub(crate) fn page(title: &str, body: &str, live: bool, logout: bool) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    let _ = write!(
        out,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · lorasweep</title>\
         <meta name=viewport content=\"width=device-width\"><style>{STYLE}</style></head>\
         <body data-updates=0><header><a href=\"/\">lorasweep</a>",
        esc(title)
    );
    if logout {
        out.push_str("<form method=post action=\"/logout\"><button>Log out</button></form>");
    }
    let _ = write!(out, "</header><main id=main>{body}</main>");
    if live {
        let _ = write!(out, "<script>{LIVE}</script>");
    }
    out.push_str("</body></html>");
    out
}

/// A page without the live script or session controls (errors, the login form).
pub(crate) fn frame(title: &str, body: &str, logout: bool) -> String {
    page(title, body, false, logout)
}

/// An optional number with `decimals`, or an em dash.
pub(crate) fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        Some(v) => format!("{v}"),
        None => "—".into(),
    }
}

/// Milliseconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS`, or an em dash for 0.
pub(crate) fn time(ms: i64) -> String {
    if ms <= 0 {
        return "—".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A duration in seconds as `1h 02m`, `3m 04s` or `5s`.
pub(crate) fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "—".into();
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_users_write() {
        assert_eq!(esc("<script>alert(1)</script>"), "&lt;script&gt;alert(1)&lt;/script&gt;");
        assert_eq!(esc("a\"b'c&d"), "a&quot;b&#39;c&amp;d");
        assert_eq!(query_value("1e-3 &x"), "1e-3%20%26x");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "—");
        assert_eq!(time(1_764_676_800_000), "2025-12-02 12:00:00");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(duration(59.4), "59s");
        assert_eq!(duration(3725.0), "1h 02m");
    }
}
