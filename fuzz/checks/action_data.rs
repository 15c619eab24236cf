//! Button payloads: Telegram `callback_data`, Slack button `value`, Discord `custom_id`, all
//! read by `approvald_channel::ActionData`'s `FromStr`; plus the other small codecs a press or
//! a request carries (`Decision`, `Transport`, `Markup`, the Slack `action_id`).
//!
//! Input: the payload bytes (read as lossy UTF-8).

use approvald_channel::{ActionData, ActionDataError, Decision, Markup, Transport};

/// Telegram's limit for callback data, in bytes.
const TELEGRAM_CALLBACK_MAX: usize = 64;
/// The longest id a payload may name (`ActionData`'s own limit).
const ID_MAX: usize = 64;

pub fn check(data: &[u8]) {
    let text = super::common::lossy(data);
    check_str(&text);
    // The same bytes as an id: encoding then decoding gives it back, whenever it is one.
    check_id(&text);
    // Every decision word and alias parses to what it serialises to.
    if let Ok(d) = text.parse::<Decision>() {
        assert_eq!(d.as_str().parse::<Decision>(), Ok(d));
        let json = serde_json::to_string(&d).expect("serialise decision");
        assert_eq!(serde_json::from_str::<Decision>(&json).ok(), Some(d));
        assert!(approvald_slack::action_id(d).starts_with("approvald_"));
    }
    if let Ok(t) = text.parse::<Transport>() {
        assert_eq!(t.as_str().parse::<Transport>(), Ok(t), "{text:?}");
    }
    if let Ok(m) = text.parse::<Markup>() {
        assert_eq!(m.as_str().parse::<Markup>(), Ok(m), "{text:?}");
    }
}

fn check_str(text: &str) {
    match text.parse::<ActionData>() {
        Ok(a) => {
            // Only what we write is read: re-encoding gives the very same string.
            assert_eq!(a.to_string(), text, "accepted payload does not round-trip");
            assert!(!a.approval_id.is_empty() && a.approval_id.len() <= ID_MAX);
            assert!(
                a.approval_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "id {:?} has characters payloads never carry",
                a.approval_id
            );
            if a.abort {
                assert_eq!(a.decision, Decision::Deny, "an abort is styled as deny");
            }
        }
        Err(ActionDataError::OldVersion) => {
            assert!(
                text.starts_with('v') && !text.starts_with("v1:"),
                "{text:?} called an old version"
            );
        }
        Err(ActionDataError::Malformed) => {}
    }
}

fn check_id(id: &str) {
    let valid_id = !id.is_empty()
        && id.len() <= ID_MAX
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    for d in Decision::ALL {
        let encoded = ActionData::new(id, d).to_string();
        let decoded = encoded.parse::<ActionData>();
        if valid_id {
            assert_eq!(decoded, Ok(ActionData::new(id, d)), "{encoded:?}");
        } else {
            assert!(
                decoded.is_err(),
                "{encoded:?} decoded although its id is not valid"
            );
        }
    }
    let abort = ActionData::abort(id).to_string();
    assert_eq!(abort.parse::<ActionData>().is_ok(), valid_id, "{abort:?}");
    // approvald's own ids (UUIDs, 36 characters) always fit Telegram's 64 bytes.
    if valid_id && id.len() == 36 {
        assert!(abort.len() <= TELEGRAM_CALLBACK_MAX);
    }
}
