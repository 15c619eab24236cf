//! approvald: puts a human (or a policy) between an AI agent and its risky tool calls.
//!
//! An agent gateway asks through the JSON-RPC API ([`api`]); the [`engine`] records the request
//! in the [`store`], lets [`rules`] decide where they can, fans prompts rendered from the shared
//! [`templates`] out to chat channels, collects decisions with identity ([`directory`]),
//! enforces quorum, self-approval and expiry, and answers the waiting caller. Operators watch
//! and decide in the control [`ui`].

pub mod api;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod domain;
pub mod engine;
pub mod error;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod tasks;
pub mod templates;
pub mod ui;
pub mod upstream;

pub use engine::ToolApprovalForwarder;
