//! The parts of a Discord interaction approvald reads, parsed leniently.
//!
//! serenity's own `Interaction` type insists on every documented field (locale, entitlements,
//! the whole message...); a payload Discord changes slightly would then fail to parse and
//! buttons would stop working. These structs take only what is needed and default the rest.
//! Gateway interactions (serenity's type) are converted through JSON into the same structs,
//! so both receive modes share one code path.

use approvald_channel::PlatformUser;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Interaction types (Discord's numbering).
pub const PING: u8 = 1;
pub const APPLICATION_COMMAND: u8 = 2;
pub const MESSAGE_COMPONENT: u8 = 3;
pub const AUTOCOMPLETE: u8 = 4;

/// One interaction: a ping, a button press, a slash command or an autocomplete request.
#[derive(Debug, Clone, Deserialize)]
pub struct Interaction {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(deserialize_with = "id")]
    pub id: String,
    #[serde(default)]
    pub token: String,
    #[serde(default, deserialize_with = "opt_id")]
    pub guild_id: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    pub channel_id: Option<String>,
    #[serde(default)]
    pub channel: Option<PartialChannel>,
    /// Present in guilds.
    #[serde(default)]
    pub member: Option<Member>,
    /// Present in DMs (serenity also fills it in guilds).
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub data: Option<Data>,
    /// The message a pressed button is on.
    #[serde(default)]
    pub message: Option<Message>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PartialChannel {
    #[serde(deserialize_with = "id")]
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default, deserialize_with = "ids")]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    #[serde(deserialize_with = "id")]
    pub id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub global_name: Option<String>,
}

/// Button data (`custom_id`) or a command with its options.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Data {
    #[serde(default)]
    pub custom_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub options: Vec<CommandOption>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CommandOption {
    pub name: String,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub focused: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    #[serde(deserialize_with = "id")]
    pub id: String,
    #[serde(default, deserialize_with = "opt_id")]
    pub channel_id: Option<String>,
}

impl Interaction {
    /// Who acted, as approvald's identity mapping needs them: id, username, global name,
    /// the channel, the guild, and (in guilds) their role ids.
    pub fn platform_user(&self) -> Option<PlatformUser> {
        let user = self
            .member
            .as_ref()
            .and_then(|m| m.user.as_ref())
            .or(self.user.as_ref())?;
        if user.id.is_empty() {
            return None;
        }
        Some(PlatformUser {
            id: user.id.clone(),
            username: user.username.clone().filter(|s| !s.is_empty()),
            display_name: user.global_name.clone().filter(|s| !s.is_empty()),
            chat_id: self.channel(),
            workspace_id: self.guild_id.clone(),
            roles: self
                .member
                .as_ref()
                .map(|m| m.roles.clone())
                .unwrap_or_default(),
        })
    }

    /// The channel (or thread, or DM) it happened in.
    pub fn channel(&self) -> Option<String> {
        self.channel_id
            .clone()
            .or_else(|| self.channel.as_ref().map(|c| c.id.clone()))
            .or_else(|| self.message.as_ref().and_then(|m| m.channel_id.clone()))
    }

    /// A command option's value as text.
    pub fn option(&self, name: &str) -> Option<String> {
        let opt = self
            .data
            .as_ref()?
            .options
            .iter()
            .find(|o| o.name == name)?;
        match opt.value.as_ref()? {
            Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The option being typed in an autocomplete request, and what has been typed.
    pub fn focused(&self) -> Option<(String, String)> {
        let opt = self.data.as_ref()?.options.iter().find(|o| o.focused)?;
        let typed = match &opt.value {
            Some(Value::String(s)) => s.trim().to_string(),
            _ => String::new(),
        };
        Some((opt.name.clone(), typed))
    }
}

/// Snowflakes arrive as strings, but accept numbers too.
fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected an id, got {other}"
        ))),
    }
}

fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected an id, got {other}"
        ))),
    }
}

fn ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let values = Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default();
    Ok(values
        .into_iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guild_press_carries_member_roles_and_global_name() {
        let i: Interaction = serde_json::from_value(json!({
            "type": 3, "id": "1", "token": "t", "guild_id": "900", "channel_id": "700",
            "member": { "roles": ["55", "66"], "user": { "id": "111", "username": "alice", "global_name": "Alice A" } },
            "data": { "custom_id": "v1:x:o", "component_type": 2 },
            "message": { "id": "800", "channel_id": "700", "embeds": [] },
            "locale": "en-US", "some_new_field": { "anything": true }
        }))
        .unwrap();
        let u = i.platform_user().unwrap();
        assert_eq!(u.id, "111");
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.display_name.as_deref(), Some("Alice A"));
        assert_eq!(u.chat_id.as_deref(), Some("700"));
        assert_eq!(u.workspace_id.as_deref(), Some("900"));
        assert_eq!(u.roles, ["55", "66"]);
    }

    #[test]
    fn dm_press_uses_user_and_options_read_as_text() {
        let i: Interaction = serde_json::from_value(json!({
            "type": 2, "id": 2, "channel": { "id": "701", "type": 1 },
            "user": { "id": "222", "username": "bob", "global_name": null },
            "data": { "name": "approve", "options": [
                { "name": "id", "type": 3, "value": " 0b9c4d2e " },
                { "name": "decision", "type": 3, "value": "always", "focused": true }
            ] }
        }))
        .unwrap();
        let u = i.platform_user().unwrap();
        assert_eq!((u.id.as_str(), u.display_name.as_deref()), ("222", None));
        assert_eq!(u.chat_id.as_deref(), Some("701"));
        assert!(u.roles.is_empty() && u.workspace_id.is_none());
        assert_eq!(i.option("id").as_deref(), Some("0b9c4d2e"));
        assert_eq!(i.option("reason"), None);
        assert_eq!(i.focused(), Some(("decision".into(), "always".into())));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            json!({}),
            json!({ "type": "x" }),
            json!({ "type": 3, "id": [1] }),
            json!([]),
        ] {
            assert!(serde_json::from_value::<Interaction>(bad).is_err());
        }
        let anonymous: Interaction =
            serde_json::from_value(json!({ "type": 3, "id": "1" })).unwrap();
        assert!(anonymous.platform_user().is_none());
    }
}
