//! approvald: puts a human (or a policy) between an AI agent and its risky tool calls.
//!
//! An agent gateway asks through the JSON-RPC API ([`api`]); the [`engine`] records the request
//! in the [`store`], lets [`rules`] decide where they can, fans prompts rendered from the shared
//! [`templates`] out to chat channels, collects decisions with identity ([`directory`]),
//! enforces quorum, self-approval and expiry, and answers the waiting caller. Operators watch
//! and decide in the control [`ui`].

/// Every binary linking approvald (the service, the bench's server, the tests) allocates with
/// mimalloc: a request's life allocates and frees many small strings and maps on the tokio
/// threads, and the writer thread frees what they allocated; glibc's malloc spent ~15 % of the
/// server's samples there (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
pub mod json;
pub mod limits;
pub mod metrics;
pub mod rfc3339;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod tasks;
pub mod templates;
pub mod ui;
pub mod upstream;

pub use engine::ToolApprovalForwarder;
