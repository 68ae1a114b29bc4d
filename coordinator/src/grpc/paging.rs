//! Paging: page sizes, page tokens, and the byte budget that keeps every answer far below the
//! message limit however large the data grows.
//!
//! A token is `<kind>:<position>` (the position is the last item's key: a grid position, an
//! event id, a log seq, a rowid, an offset). Tokens are not secret and need no signature: a
//! forged one only selects another page of data the caller may read anyway. One of another
//! kind, or one that does not parse, is refused with INVALID_ARGUMENT.

use prost::Message;

use crate::error::{Error, Result};

/// A page's encoded size stops growing past this: a quarter of the 4 MiB message limit.
pub(crate) const PAGE_BYTES: usize = 1 << 20;

/// `requested`, or `default` when 0, at most `max`.
pub(crate) fn page_size(requested: u32, default: u32, max: u32) -> u32 {
    if requested == 0 { default } else { requested.min(max) }
}

/// The position a token carries (`None` for the empty token: the first page).
///
/// # Errors
/// [`Error::InvalidArgument`] for a token that is not of `kind` or does not parse.
pub(crate) fn position(token: &str, kind: &str) -> Result<Option<i64>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::InvalidArgument(format!(
            "page_token {:?} is not a token this call returned; pass the previous response's \
             next_page_token, or an empty token for the first page",
            crate::store::failfast::shorten(token, 64)
        ))
    };
    let (k, n) = token.split_once(':').ok_or_else(bad)?;
    if k != kind {
        return Err(bad());
    }
    let n: i64 = n.parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(bad());
    }
    Ok(Some(n))
}

/// The token for the page after the item at `position`.
pub(crate) fn token(kind: &str, position: i64) -> String {
    format!("{kind}:{position}")
}

/// Keeps the leading `items` whose encoded sizes sum to at most [`PAGE_BYTES`] (always at least
/// one: each item alone is bounded far below the message limit by the input limits) and
/// returns the rest (empty when all fit).
pub(crate) fn fit<T: Message>(items: &mut Vec<T>) -> Vec<T> {
    let mut total = 0;
    for (i, item) in items.iter().enumerate() {
        // Field tag + length prefix: at most ~6 bytes per item on top of its body.
        total += item.encoded_len() + 6;
        if total > PAGE_BYTES && i > 0 {
            return items.split_off(i);
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        assert_eq!(position("", "j").expect("empty"), None);
        assert_eq!(position(&token("j", 41), "j").expect("own token"), Some(41));
        for bad in ["j", "j:", "j:x", "e:4", "j:-1", "j:99999999999999999999", "💥"] {
            let err = position(bad, "j").expect_err(bad).to_string();
            assert!(err.contains("page_token") && err.contains("next_page_token"), "{bad}: {err}");
        }
    }

    #[test]
    fn pages_are_cut_at_the_byte_budget() {
        let big = lorasweep_proto::pb::LogRecord { message: "x".repeat(100_000), ..Default::default() };
        let mut items = vec![big; 30];
        let rest = fit(&mut items);
        assert_eq!((items.len(), rest.len()), (10, 20), "10 × 100 kB fit a 1 MiB page, 11 do not");
        let mut small = vec![lorasweep_proto::pb::LogRecord::default(); 5];
        assert!(fit(&mut small).is_empty());
        assert_eq!(small.len(), 5);
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!((page_size(0, 100, 500), page_size(7, 100, 500), page_size(9000, 100, 500)), (100, 7, 500));
    }
}
