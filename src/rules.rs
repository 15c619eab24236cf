//! The rules-based approver: config rules and the standing rules people add with
//! "approve-always". Rules decide before any person is asked; `ask` means "ask a person".

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{RuleAction, RuleConfig};
use crate::domain::{ApprovalRequest, ApproverIdentity};

/// A rule added when someone answered approve-always: this agent may run this exact call
/// (same tool, same command, or same args when there is no command) without asking again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandingRule {
    pub id: String,
    pub agent_id: Option<String>,
    pub tool: String,
    pub command: Option<String>,
    pub args: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub created_by: ApproverIdentity,
    /// The request whose approval created it.
    pub source_approval: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl StandingRule {
    pub fn from_request(req: &ApprovalRequest, by: &ApproverIdentity) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            agent_id: req.agent_id.clone(),
            tool: req.tool.clone(),
            command: req.command.clone(),
            args: if req.command.is_some() {
                None
            } else {
                req.args.clone()
            },
            created_at: Utc::now(),
            created_by: by.clone(),
            source_approval: req.id.clone(),
            revoked_at: None,
        }
    }

    pub fn matches(&self, req: &ApprovalRequest) -> bool {
        self.revoked_at.is_none()
            && self.agent_id == req.agent_id
            && self.tool == req.tool
            && self.command == req.command
            && (self.command.is_some() || self.args == req.args)
    }
}

/// What the rules say about a request, and which rule said it.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleVerdict {
    Allow { rule: String },
    Deny { rule: String },
    Ask,
}

impl RuleVerdict {
    pub fn identity(&self) -> Option<ApproverIdentity> {
        match self {
            RuleVerdict::Allow { rule } | RuleVerdict::Deny { rule } => {
                Some(ApproverIdentity::rules(rule))
            }
            RuleVerdict::Ask => None,
        }
    }
}

fn config_rule_matches(rule: &RuleConfig, req: &ApprovalRequest) -> bool {
    if let Some(tool) = &rule.tool
        && !tool.matches_exact(&req.tool)
    {
        return false;
    }
    if let Some(re) = &rule.command {
        match &req.command {
            Some(cmd) if re.0.is_match(cmd) => {}
            _ => return false,
        }
    }
    if !rule.risk.is_empty() && !rule.risk.contains(&req.risk_class) {
        return false;
    }
    if let Some(agent) = &rule.agent {
        match &req.agent_id {
            Some(a) if agent.matches(a) => {}
            _ => return false,
        }
    }
    true
}

/// Evaluate config rules first (first match wins, so an operator's deny beats a standing
/// allow), then standing rules.
pub fn evaluate(
    config_rules: &[RuleConfig],
    standing: &[StandingRule],
    req: &ApprovalRequest,
) -> RuleVerdict {
    for (i, rule) in config_rules.iter().enumerate() {
        if config_rule_matches(rule, req) {
            let name = rule.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
            return match rule.action {
                RuleAction::Allow => RuleVerdict::Allow { rule: name },
                RuleAction::Deny => RuleVerdict::Deny { rule: name },
                RuleAction::Ask => RuleVerdict::Ask,
            };
        }
    }
    if let Some(s) = standing.iter().find(|s| s.matches(req)) {
        return RuleVerdict::Allow {
            rule: format!("standing:{}", s.id),
        };
    }
    RuleVerdict::Ask
}
