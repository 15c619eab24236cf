//! The command line: `serve` runs the service; every other command except `check-config` and
//! `render` is a client of the JSON-RPC API, authenticated with `--token` or `APPROVALD_TOKEN`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};

use approvald_channel::Markup;

use crate::config::Config;
use crate::server::{self, BoundServer};
use crate::templates::{PromptContext, TemplateKind, Templates};

/// approvald: a human (or a policy) between an AI agent and its risky tool calls.
#[derive(Parser, Debug)]
#[command(name = "approvald", version, about)]
pub struct Cli {
    /// Configuration file (default: ./config.toml if present, else the embedded default).
    #[arg(long, global = true, env = "APPROVALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Server URL for client commands.
    #[arg(
        long,
        global = true,
        env = "APPROVALD_URL",
        default_value = "http://127.0.0.1:8001"
    )]
    pub url: String,
    /// API token for client commands.
    #[arg(long, global = true, env = "APPROVALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service.
    Serve,
    /// Load and check the configuration and templates, then exit.
    CheckConfig,
    /// Ask for approval; waits for the decision unless --no-wait.
    /// Exit code: 0 approved, 2 denied, 3 expired.
    Request {
        #[arg(long)]
        tool: String,
        #[arg(long)]
        command: Option<String>,
        #[arg(long)]
        summary: Option<String>,
        /// Tool arguments as JSON.
        #[arg(long)]
        args: Option<String>,
        /// low | medium | high | critical
        #[arg(long)]
        risk: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        session: Option<String>,
        /// Requester id (e.g. alice@example.com or telegram:5678).
        #[arg(long)]
        requester: Option<String>,
        #[arg(long)]
        timeout_ms: Option<u64>,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// List pending requests.
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Show one request in full.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (once, or --always to add a standing rule).
    Approve {
        id: String,
        #[arg(long)]
        always: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a request.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Abort an approved or running task (by task id or approval id/prefix); the executor is
    /// told through its abort signal.
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show a task: status, constraints, costs, times, logs.
    Task {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Task queue figures: counts by status, total cost and execution time, fallback mode.
    Queue {
        #[arg(long)]
        json: bool,
    },
    /// Print live events until interrupted.
    Watch {
        #[arg(long)]
        json: bool,
    },
    /// Print the audit log (admin token).
    Audit {
        /// Only this request (id or prefix).
        #[arg(long)]
        id: Option<String>,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// List or revoke rules.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Preview a template for a platform with sample data.
    Render {
        /// plain | telegram | discord | slack
        #[arg(long, default_value = "plain")]
        platform: String,
        /// request | resolved | expired | timeout_notice
        #[arg(long, default_value = "request")]
        template: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RulesAction {
    /// Configured rules and standing (approve-always) rules.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a standing rule (admin token).
    Revoke { id: String },
}

/// Run the parsed command; the exit code follows the outcome.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => {
            let (config, origin) = Config::load(cli.config.as_deref())?;
            tracing::info!(config = %origin, "starting approvald");
            warn_dev_tokens(&config);
            let channels = server::platform_channels(&config)?;
            let bound = BoundServer::bind(config, channels).await?;
            tracing::info!(addr = %bound.addr, "listening");
            bound.serve(crate::shutdown::signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let (config, origin) = Config::load(cli.config.as_deref())?;
            Templates::load(config.templates.dir.as_deref())?;
            server::platform_channels(&config)?;
            println!(
                "{origin}: OK ({} tokens, {} people, {} rules, {} targets)",
                config.tokens.len(),
                config.people.len(),
                config.rules.len(),
                config.delivery.targets.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { platform, template } => {
            let markup: Markup = platform.parse().map_err(anyhow::Error::msg)?;
            let kind: TemplateKind = template.parse().map_err(anyhow::Error::msg)?;
            let dir = match Config::load(cli.config.as_deref()) {
                Ok((c, _)) => c.templates.dir,
                Err(_) => None,
            };
            let templates = Templates::load(dir.as_deref())?;
            println!(
                "{}",
                templates.render(markup, kind, &PromptContext::sample())?
            );
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let client = Client::new(&cli.url, cli.token.as_deref())?;
            client_command(&client, command).await
        }
    }
}

fn warn_dev_tokens(config: &Config) {
    for t in &config.tokens {
        if t.token.expose().starts_with("dev-") {
            tracing::warn!(token = %t.name, "using the built-in development token; set a real one before exposing approvald");
        }
    }
}

async fn client_command(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Request {
            tool,
            command,
            summary,
            args,
            risk,
            agent,
            session,
            requester,
            timeout_ms,
            id,
            no_wait,
            json: as_json,
        } => {
            let args: Option<Value> = args
                .map(|a| serde_json::from_str(&a).context("--args is not valid JSON"))
                .transpose()?;
            let mut params = json!({ "tool": tool, "wait": !no_wait });
            for (k, v) in [
                ("command", command.map(Value::from)),
                ("summary", summary.map(Value::from)),
                ("args", args),
                ("risk_class", risk.map(Value::from)),
                ("agent_id", agent.map(Value::from)),
                ("session_key", session.map(Value::from)),
                ("requester", requester.map(|r| json!({ "id": r }))),
                ("timeout_ms", timeout_ms.map(Value::from)),
                ("id", id.map(Value::from)),
            ] {
                if let Some(v) = v {
                    params[k] = v;
                }
            }
            if !no_wait {
                eprintln!("waiting for a decision...");
            }
            let r = client.call("tool.approval.request", params).await?;
            if as_json {
                println!("{r}");
            } else {
                print_result(&r);
            }
            Ok(match r["status"].as_str() {
                Some("approved") | Some("pending") => ExitCode::SUCCESS,
                Some("denied") => ExitCode::from(2),
                Some("expired") => ExitCode::from(3),
                _ => ExitCode::from(1),
            })
        }
        Command::Pending { json: as_json } => {
            let r = client
                .call(
                    "tool.approval.list",
                    json!({ "status": "pending", "limit": 500 }),
                )
                .await?;
            let items = r["items"].as_array().cloned().unwrap_or_default();
            if as_json {
                for i in &items {
                    println!("{i}");
                }
            } else if items.is_empty() {
                println!("nothing pending");
            } else {
                for i in &items {
                    let req = &i["request"];
                    println!(
                        "{}  {:<8} {:<12} {}  expires {}",
                        i["id"].as_str().unwrap_or("?"),
                        req["risk_class"].as_str().unwrap_or(""),
                        req["tool"].as_str().unwrap_or(""),
                        req["command"]
                            .as_str()
                            .or(req["summary"].as_str())
                            .unwrap_or(""),
                        i["expires_at"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id, json: as_json } => {
            let r = client
                .call("tool.approval.get", json!({ "id": id }))
                .await?;
            if as_json {
                println!("{r}");
            } else {
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve { id, always, reason } => {
            let decision = if always {
                "approve-always"
            } else {
                "approve-once"
            };
            let r = client
                .call(
                    "tool.approval.resolve",
                    json!({ "id": id, "decision": decision, "reason": reason, "transport": "cli" }),
                )
                .await?;
            print_result(&r);
            Ok(ExitCode::SUCCESS)
        }
        Command::Deny { id, reason } => {
            let r = client
                .call(
                    "tool.approval.resolve",
                    json!({ "id": id, "decision": "deny", "reason": reason, "transport": "cli" }),
                )
                .await?;
            print_result(&r);
            Ok(ExitCode::SUCCESS)
        }
        Command::Abort { id, reason } => {
            let t = client
                .call(
                    "tool.task.abort",
                    json!({ "task_id": id, "reason": reason, "transport": "cli" }),
                )
                .await?;
            println!(
                "task {} {}",
                t["task_id"].as_str().unwrap_or("?"),
                t["execution_text"].as_str().unwrap_or("aborted")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Task { id, json: as_json } => {
            let t = client
                .call("tool.task.get", json!({ "task_id": id }))
                .await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print_task(&t);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { json: as_json } => {
            let q = client.call("tool.queue.status", json!({})).await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&q)?);
            } else {
                println!(
                    "tasks: {}  pending approval: {}  running: {}  total cost: ${:.4}  execution time: {} ms",
                    q["total_tasks"],
                    q["pending_approval"],
                    q["running"],
                    q["total_cost_usd"].as_f64().unwrap_or(0.0),
                    q["total_execution_time_ms"]
                );
                if let Some(by) = q["by_status"].as_object() {
                    for (status, n) in by {
                        println!("  {status:<17} {n}");
                    }
                }
                if q["fallback"]["in_fallback"] == true {
                    println!(
                        "FALLBACK MODE: the upstream assistant is unreachable ({})",
                        q["fallback"]["last_error"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { json: as_json } => {
            client.watch(as_json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { id, json: as_json } => {
            let mut after = 0i64;
            loop {
                let r = client
                    .call(
                        "audit.list",
                        json!({ "id": id, "after": after, "limit": 1000 }),
                    )
                    .await?;
                let entries = r["entries"].as_array().cloned().unwrap_or_default();
                for e in &entries {
                    if as_json {
                        println!("{e}");
                    } else {
                        println!(
                            "{:>6} {} {:<16} {} {} {}",
                            e["seq"],
                            e["at"].as_str().unwrap_or(""),
                            e["event"].as_str().unwrap_or(""),
                            e["approval_id"].as_str().unwrap_or("-"),
                            e["actor"]["display_name"]
                                .as_str()
                                .map(|n| format!(
                                    "by {n} via {}",
                                    e["transport"].as_str().unwrap_or("?")
                                ))
                                .unwrap_or_default(),
                            if e["detail"].is_null() {
                                String::new()
                            } else {
                                e["detail"].to_string()
                            }
                        );
                    }
                }
                match r["next_after"].as_i64() {
                    Some(n) if entries.len() == 1000 => after = n,
                    _ => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules { action } => match action {
            RulesAction::List { json: as_json } => {
                let r = client.call("rules.list", json!({})).await?;
                if as_json {
                    println!("{r}");
                } else {
                    println!("configured rules (first match wins):");
                    for rule in r["configured"].as_array().into_iter().flatten() {
                        println!(
                            "  {:<24} {:<5} tool={} command={} risk={} agent={}",
                            rule["name"].as_str().unwrap_or(""),
                            rule["action"].as_str().unwrap_or(""),
                            rule["tool"],
                            rule["command"],
                            rule["risk"],
                            rule["agent"]
                        );
                    }
                    println!("standing rules (approve-always):");
                    for rule in r["standing"].as_array().into_iter().flatten() {
                        let state = if rule["revoked_at"].is_null() {
                            "active"
                        } else {
                            "revoked"
                        };
                        println!(
                            "  {} {:<7} agent={} tool={} command={} by {}",
                            rule["id"].as_str().unwrap_or(""),
                            state,
                            rule["agent_id"],
                            rule["tool"],
                            rule["command"],
                            rule["created_by"]["display_name"].as_str().unwrap_or("?")
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            RulesAction::Revoke { id } => {
                let r = client.call("rules.revoke", json!({ "id": id })).await?;
                println!(
                    "revoked standing rule {}",
                    r["revoked"]["id"].as_str().unwrap_or("?")
                );
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Serve | Command::CheckConfig | Command::Render { .. } => {
            unreachable!("handled before a client is built")
        }
    }
}

fn print_result(r: &Value) {
    let id = r["id"].as_str().unwrap_or("?");
    match r["status"].as_str() {
        Some("pending") => {
            let to: Vec<String> = r["delivered_to"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    format!(
                        "{}:{}",
                        d["channel"].as_str().unwrap_or(""),
                        d["to"].as_str().unwrap_or("")
                    )
                })
                .collect();
            println!(
                "{id} pending until {} (prompt delivered to: {})",
                r["expires_at"].as_str().unwrap_or("?"),
                if to.is_empty() {
                    "nobody yet; see `approvald pending`".to_string()
                } else {
                    to.join(", ")
                }
            );
            if let Some(p) = r["approvals"].as_array().filter(|a| !a.is_empty()) {
                println!("  approvals so far: {}", p.len());
            }
        }
        Some(status) => {
            let by = r["decided_by"]["display_name"].as_str();
            let via = r["decided_by"]["transport"].as_str().unwrap_or("");
            match by {
                Some(by) => println!(
                    "{id} {status} ({}{}) by {by} via {via}{}",
                    r["decision"].as_str().unwrap_or(""),
                    r["scope"]
                        .as_str()
                        .map(|s| format!(", {s}"))
                        .unwrap_or_default(),
                    r["reason"]
                        .as_str()
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default()
                ),
                None => println!("{id} {status} ({})", r["decision"].as_str().unwrap_or("")),
            }
        }
        None => println!("{r}"),
    }
}

/// A small JSON-RPC client for the CLI.
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    pub fn new(url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow::anyhow!("no token: pass --token or set APPROVALD_TOKEN"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        let resp = self
            .http
            .post(format!("{}/rpc", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach approvald at {}: {} (is `approvald serve` running?)",
                    self.url,
                    e
                )
            })?;
        let status = resp.status();
        let answer: Value = resp
            .json()
            .await
            .with_context(|| format!("approvald answered HTTP {status} without JSON"))?;
        if let Some(err) = answer.get("error") {
            anyhow::bail!(
                "{} ({})",
                err["message"].as_str().unwrap_or("unknown error"),
                err["data"]["kind"].as_str().unwrap_or("error")
            );
        }
        Ok(answer["result"].clone())
    }

    async fn watch(&self, as_json: bool) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(format!("{}/events", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach approvald at {}: {e}", self.url))?;
        if !resp.status().is_success() {
            let text = resp.text().await.unwrap_or_default();
            anyhow::bail!("approvald refused the event stream: {text}");
        }
        eprintln!("watching events (Ctrl-C to stop)...");
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut event = "";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim());
                    }
                }
                if event.is_empty() {
                    continue;
                }
                if as_json {
                    println!(
                        "{}",
                        json!({ "event": event, "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null) })
                    );
                } else {
                    let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    let v = if v.get("approval").is_some() {
                        &v["approval"]
                    } else {
                        &v
                    };
                    println!(
                        "{} {} {} {} {}",
                        chrono::Utc::now().format("%H:%M:%S"),
                        event,
                        v["id"].as_str().unwrap_or(""),
                        v["tool"].as_str().unwrap_or(""),
                        v["status"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Ok(())
    }
}

fn print_task(t: &Value) {
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    println!("task        {}", text(&t["task_id"]));
    println!("approval    {}", text(&t["approval_id"]));
    println!("type        {}", text(&t["task_type"]));
    println!("status      {}", text(&t["status"]));
    if let Some(e) = t["execution_text"].as_str() {
        println!("execution   {e}");
    }
    println!(
        "cost        estimated {}  actual {}",
        t["estimated_cost"], t["actual_cost"]
    );
    for c in t["constraints"].as_array().into_iter().flatten() {
        println!(
            "constraint  {} = {} ({})",
            text(&c["type"]),
            c["value"],
            text(&c["reason"])
        );
    }
    for v in t["violations"].as_array().into_iter().flatten() {
        println!("VIOLATION   {}", text(v));
    }
    for h in t["history"].as_array().into_iter().flatten() {
        println!("  {}  {}", text(&h["at"]), text(&h["status"]));
    }
    for l in t["logs"].as_array().into_iter().flatten() {
        println!("  | {}", text(l));
    }
}
