//! HTTP Range for artifact downloads: one byte range, `If-Range` by strong
//! ETag. Pure parsing; the route does the I/O.

/// What to send for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReply {
    /// 200 with the whole file.
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416: the range starts past the end.
    Unsatisfiable,
}

/// Decides from the `Range` and `If-Range` headers. Anything malformed, or
/// several ranges, is served whole (RFC 9110 lets a server ignore Range).
pub fn decide(range: Option<&str>, if_range: Option<&str>, etag: &str, size: u64) -> RangeReply {
    let Some(range) = range else { return RangeReply::Full };
    if let Some(tag) = if_range {
        // Only a strong ETag match keeps the range; a date or another tag means "changed".
        if tag.trim() != etag {
            return RangeReply::Full;
        }
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else { return RangeReply::Full };
    if spec.contains(',') {
        return RangeReply::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeReply::Full };
    let parse = |s: &str| if s.is_empty() { Ok(None) } else { s.parse::<u64>().map(Some) };
    match (parse(first.trim()), parse(last.trim())) {
        (Ok(Some(start)), Ok(end)) => {
            if start >= size {
                return RangeReply::Unsatisfiable;
            }
            let end = end.map_or(size - 1, |e| e.min(size - 1));
            if end < start { RangeReply::Full } else { RangeReply::Partial { start, end } }
        }
        (Ok(None), Ok(Some(suffix))) => {
            if suffix == 0 {
                return RangeReply::Unsatisfiable;
            }
            if size == 0 {
                return RangeReply::Unsatisfiable;
            }
            RangeReply::Partial { start: size.saturating_sub(suffix), end: size - 1 }
        }
        _ => RangeReply::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "\"abc\"";

    #[test]
    fn ranges() {
        assert_eq!(decide(None, None, TAG, 100), RangeReply::Full);
        assert_eq!(decide(Some("bytes=0-9"), None, TAG, 100), RangeReply::Partial { start: 0, end: 9 });
        assert_eq!(decide(Some("bytes=50-"), None, TAG, 100), RangeReply::Partial { start: 50, end: 99 });
        assert_eq!(decide(Some("bytes=90-200"), None, TAG, 100), RangeReply::Partial { start: 90, end: 99 });
        assert_eq!(decide(Some("bytes=-10"), None, TAG, 100), RangeReply::Partial { start: 90, end: 99 });
        assert_eq!(decide(Some("bytes=100-"), None, TAG, 100), RangeReply::Unsatisfiable);
        assert_eq!(decide(Some("bytes=0-1,5-6"), None, TAG, 100), RangeReply::Full);
        assert_eq!(decide(Some("items=0-1"), None, TAG, 100), RangeReply::Full);
        assert_eq!(decide(Some("bytes=x-1"), None, TAG, 100), RangeReply::Full);
        assert_eq!(decide(Some("bytes=5-2"), None, TAG, 100), RangeReply::Full);
    }

    #[test]
    fn if_range_needs_the_same_strong_etag() {
        assert_eq!(decide(Some("bytes=10-"), Some(TAG), TAG, 100), RangeReply::Partial { start: 10, end: 99 });
        assert_eq!(decide(Some("bytes=10-"), Some("\"other\""), TAG, 100), RangeReply::Full);
        assert_eq!(decide(Some("bytes=10-"), Some("Wed, 21 Oct 2015 07:28:00 GMT"), TAG, 100), RangeReply::Full);
    }
}
