//! What a client may send with a video: the limits on ids, `meta`, file names and parts, checked at
//! the edge (both transports) before anything is spooled or stored.
//!
//! Every limit is explicit and well inside what the store's log reads back: `meta` is stored
//! wrapped one level deeper (with the file name and media info), and serde_json refuses documents
//! nested deeper than 128, so `meta` is held to [`MAX_META_DEPTH`]. The log checks the round trip
//! again before it acknowledges (`store::StoreError::Unstorable`); these limits make sure a client
//! hears a clear 400 long before that.

use super::ApiError;
use serde_json::Value;

/// Longest `id` in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest `meta` JSON in bytes.
pub const MAX_META_BYTES: usize = 64 << 10;
/// Deepest nesting of arrays and objects in `meta` (`{"a": [1]}` is 2).
pub const MAX_META_DEPTH: usize = 32;
/// Longest file name in bytes (a common file system's limit for one path component).
pub const MAX_FILE_NAME_BYTES: usize = 255;

pub fn field_too_long(name: &str, limit: usize) -> ApiError {
    ApiError::bad_request(
        "field_too_long",
        format!("the {name} field is limited to {limit} bytes"),
    )
}

/// Control characters make ids and names unreadable in logs and ambiguous on screen.
fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A video id as given by the client: 1 to [`MAX_ID_BYTES`] bytes of UTF-8 without control
/// characters (any other Unicode, `/` and `..` included, is fine: ids never become paths).
pub fn parse_id(text: &str) -> Result<String, ApiError> {
    if text.len() > MAX_ID_BYTES {
        return Err(field_too_long("id", MAX_ID_BYTES));
    }
    if text.is_empty() {
        return Err(ApiError::bad_request("bad_id", "the id field is empty"));
    }
    if has_control(text) {
        return Err(ApiError::bad_request(
            "bad_id",
            "the id holds a control character",
        ));
    }
    Ok(text.to_string())
}

/// Nesting depth of arrays and objects, without recursion (the input is untrusted).
fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

/// The `meta` JSON kept with a video: at most [`MAX_META_BYTES`], nested at most
/// [`MAX_META_DEPTH`] deep.
pub fn parse_meta(text: &str) -> Result<Value, ApiError> {
    if text.len() > MAX_META_BYTES {
        return Err(field_too_long("meta", MAX_META_BYTES));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request("bad_meta", format!("meta is not JSON: {e}")))?;
    if depth(&v) > MAX_META_DEPTH {
        return Err(ApiError::bad_request(
            "bad_meta",
            format!("meta is nested deeper than {MAX_META_DEPTH} levels"),
        ));
    }
    Ok(v)
}

/// The file name a client gave its video (`None` when it gave none).
pub fn parse_file_name(name: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name.len() > MAX_FILE_NAME_BYTES {
        return Err(field_too_long("file name", MAX_FILE_NAME_BYTES));
    }
    if has_control(name) {
        return Err(ApiError::bad_request(
            "bad_file_name",
            "the file name holds a control character",
        ));
    }
    Ok(Some(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        "[".repeat(levels) + &"]".repeat(levels)
    }

    #[test]
    fn meta_depth_is_bounded_below_what_the_log_reads_back() {
        assert_eq!(depth(&serde_json::json!(1)), 0);
        assert_eq!(depth(&serde_json::json!({"a": [1]})), 2);
        assert!(parse_meta(&nested(MAX_META_DEPTH)).is_ok());
        let e = parse_meta(&nested(MAX_META_DEPTH + 1)).unwrap_err();
        assert_eq!(e.code, "bad_meta");
        // What the issue reproduced: 127 levels were accepted, and the stored record (one level
        // deeper) no longer parsed at replay.
        assert_eq!(parse_meta(&nested(127)).unwrap_err().code, "bad_meta");
        assert_eq!(parse_meta(&nested(500)).unwrap_err().code, "bad_meta");
    }

    #[test]
    fn ids_and_names_refuse_control_characters_and_length() {
        assert!(parse_id("ünï/../cödé 🎬").is_ok());
        assert_eq!(parse_id("a\u{0}b").unwrap_err().code, "bad_id");
        assert_eq!(parse_id("a\nb").unwrap_err().code, "bad_id");
        assert_eq!(parse_id("").unwrap_err().code, "bad_id");
        assert_eq!(
            parse_id(&"é".repeat(129)).unwrap_err().code,
            "field_too_long"
        );
        assert_eq!(parse_file_name(None).unwrap(), None);
        assert_eq!(parse_file_name(Some("")).unwrap(), None);
        assert_eq!(
            parse_file_name(Some("clip.mp4")).unwrap().as_deref(),
            Some("clip.mp4")
        );
        assert!(parse_file_name(Some("a\rb")).is_err());
        assert!(parse_file_name(Some(&"x".repeat(256))).is_err());
    }
}
