//! Who is who: API tokens, people linked across surfaces, and per-channel approver lists.
//!
//! Self-approval and quorum are decided on the linked person, so alice cannot approve her own
//! request from another app and cannot count twice by clicking in two places.

use std::sync::Arc;

use chrono::Utc;
use subtle::ConstantTimeEq;

use crate::config::{Config, PersonConfig, TokenScope};
use crate::domain::{ApprovalRequest, ApproverIdentity, Transport};
use crate::error::ApprovalError;
use approvald_channel::PlatformUser;

/// An authenticated API caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_name: String,
    pub scopes: Vec<TokenScope>,
    pub person: Option<String>,
}

impl Caller {
    pub fn has(&self, scope: TokenScope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&TokenScope::Admin)
    }

    pub fn require(&self, scope: TokenScope) -> Result<(), ApprovalError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApprovalError::Unauthorized(format!(
                "token {:?} lacks the {scope:?} scope",
                self.token_name
            )))
        }
    }
}

/// An identity together with whether it may decide and the token it used (if any).
#[derive(Debug, Clone)]
pub struct ResolvedActor {
    pub identity: ApproverIdentity,
    pub authorised: bool,
    pub why_not: Option<String>,
    pub token_name: Option<String>,
}

/// Lookups over the configuration's tokens, people and channel approver lists.
#[derive(Debug, Clone)]
pub struct Directory {
    config: Arc<Config>,
}

impl Directory {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }

    /// Check a bearer token in constant time per candidate.
    pub fn authenticate(&self, presented: &str) -> Result<Caller, ApprovalError> {
        let found = self
            .config
            .tokens
            .iter()
            .find(|t| bool::from(t.token.expose().as_bytes().ct_eq(presented.as_bytes())));
        let Some(t) = found else {
            return Err(ApprovalError::Unauthorized(
                "unknown or missing bearer token".into(),
            ));
        };
        if let Some(expiry) = t.expires_at
            && expiry <= Utc::now()
        {
            return Err(ApprovalError::Unauthorized(format!(
                "token {:?} expired at {expiry}",
                t.name
            )));
        }
        Ok(Caller {
            token_name: t.name.clone(),
            scopes: t.scopes.clone(),
            person: t.person.clone(),
        })
    }

    /// The person signing in to the control UI with this token.
    pub fn person_by_ui_token(&self, presented: &str) -> Option<&PersonConfig> {
        self.config.people.iter().find(|p| {
            p.ui_token
                .as_ref()
                .is_some_and(|t| bool::from(t.expose().as_bytes().ct_eq(presented.as_bytes())))
        })
    }

    pub fn person(&self, name: &str) -> Option<&PersonConfig> {
        self.config.people.iter().find(|p| p.name == name)
    }

    pub fn person_by_platform_id(&self, transport: Transport, id: &str) -> Option<&PersonConfig> {
        self.config
            .people
            .iter()
            .find(|p| p.platform_ids(transport).iter().any(|x| x == id))
    }

    /// The person behind a requester id: a person's name, one of their `ids`, or
    /// `<surface>:<platform id>` (e.g. `telegram:5678`).
    pub fn person_by_requester_id(&self, id: &str) -> Option<&PersonConfig> {
        if let Some(p) = self
            .config
            .people
            .iter()
            .find(|p| p.name == id || p.ids.iter().any(|x| x == id))
        {
            return Some(p);
        }
        let (surface, rest) = id.split_once(':')?;
        let transport = surface.parse::<Transport>().ok()?;
        self.person_by_platform_id(transport, rest)
    }

    /// Who asked: the requester's linked person, else the person of the token that asked.
    pub fn requester_person(&self, req: &ApprovalRequest) -> Option<String> {
        if let Some(r) = &req.requester
            && let Some(p) = self.person_by_requester_id(&r.id)
        {
            return Some(p.name.clone());
        }
        let token = req.requested_via_token.as_deref()?;
        self.config
            .tokens
            .iter()
            .find(|t| t.name == token)
            .and_then(|t| t.person.clone())
    }

    fn person_identity(
        p: &PersonConfig,
        transport: Transport,
        platform_user_id: Option<String>,
        channel_id: Option<String>,
    ) -> ApproverIdentity {
        ApproverIdentity {
            approver_id: format!("person:{}", p.name),
            display_name: p.label().to_string(),
            transport,
            platform_user_id,
            channel_id,
            person: Some(p.name.clone()),
        }
    }

    /// The identity of an API caller deciding through `transport` (cli or api).
    pub fn actor_for_caller(&self, caller: &Caller, transport: Transport) -> ResolvedActor {
        let person = caller.person.as_deref().and_then(|n| self.person(n));
        let identity = match person {
            Some(p) => Self::person_identity(p, transport, None, None),
            None => ApproverIdentity {
                approver_id: format!("token:{}", caller.token_name),
                display_name: caller.token_name.clone(),
                transport,
                platform_user_id: None,
                channel_id: None,
                person: None,
            },
        };
        let (authorised, why_not) = if !caller.has(TokenScope::Resolve) {
            (
                false,
                Some(format!(
                    "token {:?} has no resolve scope",
                    caller.token_name
                )),
            )
        } else if person.is_some_and(|p| !p.approver) {
            (
                false,
                Some(format!("{} is not an approver", identity.display_name)),
            )
        } else {
            (true, None)
        };
        ResolvedActor {
            identity,
            authorised,
            why_not,
            token_name: Some(caller.token_name.clone()),
        }
    }

    /// The identity of someone pressing a button on a chat platform.
    pub fn actor_for_platform_user(
        &self,
        channel: &str,
        transport: Transport,
        user: &PlatformUser,
    ) -> ResolvedActor {
        let person = self.person_by_platform_id(transport, &user.id);
        let shown = user
            .display_name
            .clone()
            .or_else(|| user.username.clone())
            .unwrap_or_else(|| user.id.clone());
        let identity = match person {
            Some(p) => {
                Self::person_identity(p, transport, Some(user.id.clone()), user.chat_id.clone())
            }
            None => ApproverIdentity {
                approver_id: format!("{transport}:{}", user.id),
                display_name: shown.clone(),
                transport,
                platform_user_id: Some(user.id.clone()),
                channel_id: user.chat_id.clone(),
                person: None,
            },
        };
        let channel_cfg = self.config.channels.get(channel);
        let listed = channel_cfg.is_some_and(|c| {
            c.approvers.iter().any(|a| a == &user.id)
                || c.approver_roles.iter().any(|r| user.roles.contains(r))
        });
        let authorised = match person {
            Some(p) => p.approver || listed,
            None => listed,
        };
        ResolvedActor {
            why_not: (!authorised).then(|| format!("{shown} is not an approver")),
            identity,
            authorised,
            token_name: None,
        }
    }

    /// An identity relayed by an admin token (a gateway passing on a decision made elsewhere).
    /// It may decide only when it maps to a configured approver.
    pub fn actor_for_relay(&self, relayed: ApproverIdentity, admin: &Caller) -> ResolvedActor {
        let person = relayed
            .person
            .as_deref()
            .and_then(|n| self.person(n))
            .or_else(|| {
                relayed
                    .platform_user_id
                    .as_deref()
                    .and_then(|id| self.person_by_platform_id(relayed.transport, id))
            });
        let listed = relayed.platform_user_id.as_deref().is_some_and(|id| {
            self.config
                .channels
                .values()
                .any(|c| c.approvers.iter().any(|a| a == id))
        });
        let identity = match person {
            Some(p) => Self::person_identity(
                p,
                relayed.transport,
                relayed.platform_user_id.clone(),
                relayed.channel_id.clone(),
            ),
            None => relayed,
        };
        let authorised = person.is_some_and(|p| p.approver) || listed;
        ResolvedActor {
            why_not: (!authorised)
                .then(|| format!("{} is not a configured approver", identity.display_name)),
            identity,
            authorised,
            token_name: Some(admin.token_name.clone()),
        }
    }

    /// Whether this decision would be the requester approving their own request: same person,
    /// same token, or same platform id.
    pub fn is_self_approval(&self, req: &ApprovalRequest, actor: &ResolvedActor) -> bool {
        if let (Some(requester), Some(approver)) =
            (self.requester_person(req), actor.identity.person.as_deref())
            && requester == approver
        {
            return true;
        }
        if let (Some(a), Some(b)) = (
            actor.token_name.as_deref(),
            req.requested_via_token.as_deref(),
        ) && a == b
        {
            return true;
        }
        if let (Some(r), Some(pid)) = (&req.requester, &actor.identity.platform_user_id) {
            let qualified = format!("{}:{pid}", actor.identity.transport);
            if &r.id == pid || r.id == qualified {
                return true;
            }
        }
        false
    }
}
