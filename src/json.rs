//! JSON text for what is stored and answered per request: audit lines, request and decision
//! columns, RPC answers.

use serde::Serialize;

/// Room most of those texts fit in (an audit line is about 300 bytes, an answer with its
/// decision about 650): written into one buffer, where `serde_json::to_string` starts at 128
/// bytes and grows it two or three times.
const START: usize = 768;

/// `value` as compact JSON text, the same as `serde_json::to_string` writes.
pub fn text<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(START);
    serde_json::to_writer(&mut out, value)?;
    // serde_json writes UTF-8 only; the check is cheap next to writing it.
    String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.utf8_error()))
}

/// [`text`] for what is published and answered (events, RPC answers): built from maps with
/// string keys, which cannot fail to serialise, so there is no error to hand on.
pub fn text_or_null<T: Serialize + ?Sized>(value: &T) -> String {
    text(value).unwrap_or_else(|_| "null".to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn text_is_what_serde_json_writes() {
        let value = json!({
            "id": "0b9c7c1e", "quote\"and\\slash/": "line\nbreak\ttab\u{1}é😀",
            "n": [1, -2.5, null, true], "long": "x".repeat(2000),
        });
        let text = super::text(&value).expect("serialises");
        assert_eq!(text, serde_json::to_string(&value).expect("serialises"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("JSON"),
            value
        );
    }
}
