//! Names that end up in paths, URLs and logs: datasets, channels, artifacts.

/// Longest artifact name accepted.
pub const MAX_ARTIFACT_NAME: usize = 128;
/// Longest dataset or channel id accepted.
pub const MAX_ID: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} `{name}` contains a character that is not allowed ({reason})")]
    BadCharacter { what: &'static str, name: String, reason: &'static str },
}

/// Dataset and channel ids: lowercase letters, digits, `-`, `_`, `.`;
/// starting with a letter or digit (e.g. `vocab-en`, `stable`).
pub fn check_id(what: &'static str, id: &str) -> Result<(), NameError> {
    if id.is_empty() {
        return Err(NameError::Empty { what });
    }
    if id.len() > MAX_ID {
        return Err(NameError::TooLong { what, max: MAX_ID });
    }
    let ok_first = id.as_bytes()[0].is_ascii_lowercase() || id.as_bytes()[0].is_ascii_digit();
    let ok_rest = id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if !ok_first || !ok_rest {
        return Err(NameError::BadCharacter {
            what,
            name: id.chars().take(MAX_ID).collect(),
            reason: "use a-z, 0-9, '-', '_', '.', starting with a letter or digit",
        });
    }
    Ok(())
}

/// Artifact names become file names on the relay and on devices: no path
/// separators, no `..`, no control characters, no leading dot, bounded length.
pub fn check_artifact_name(name: &str) -> Result<(), NameError> {
    let what = "artifact name";
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_ARTIFACT_NAME {
        return Err(NameError::TooLong { what, max: MAX_ARTIFACT_NAME });
    }
    let bad = |reason| Err(NameError::BadCharacter { what, name: name.escape_default().to_string(), reason });
    if name.contains('/') || name.contains('\\') {
        return bad("path separator");
    }
    if name.contains("..") {
        return bad("`..`");
    }
    if name.starts_with('.') {
        return bad("leading dot");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("control character");
    }
    if name.chars().any(|c| matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|' | '%')) {
        return bad("reserved character");
    }
    if name.trim() != name {
        return bad("leading or trailing white space");
    }
    Ok(())
}

/// Percent-encodes one URL path segment (artifact names may hold spaces or
/// non-ASCII), keeping only RFC 3986 unreserved characters as they are.
pub fn encode_path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A byte count for people: `4.0 GiB`, `512.0 MiB`, `900 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Parses a size as people write it: `4294967296`, `4GiB`, `512 MiB`,
/// `100MB` (decimal units are 1000-based, binary ones 1024-based).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use B, KiB, MiB, GiB, TiB or KB, MB, GB, TB)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a size (e.g. 4GiB or 4294967296)"))?;
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names() {
        for ok in ["words.sqlite", "audio-01.pack", "README", "a b.txt", "ü.bin"] {
            assert_eq!(check_artifact_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "../x", "a/b", "a\\b", "..", ".hidden", "a\nb", "a\u{0}", "x:y", " lead", &"x".repeat(129)] {
            assert!(check_artifact_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_path_segment("a b/ü.db"), "a%20b%2F%C3%BC.db");
        assert_eq!(encode_path_segment("words-1_2.~db"), "words-1_2.~db");
    }

    #[test]
    fn ids() {
        assert_eq!(check_id("dataset", "vocab-en"), Ok(()));
        for bad in ["", "Vocab", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_id("dataset", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(900), "900 B");
        assert_eq!(human_bytes(4 << 30), "4.0 GiB");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("100MB"), Ok(100_000_000));
        assert_eq!(parse_bytes("4294967296"), Ok(4 << 30));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("0").is_err());
    }
}
