//! A GitHub-like MCP server over in-memory data: one public and one private repository.

use std::sync::{Arc, Mutex, MutexGuard};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use serde::{Deserialize, Serialize};

use super::tool_error;

#[derive(Debug, Clone, Serialize)]
pub struct Repository {
    /// `owner/name`.
    pub name: String,
    pub description: String,
    /// Private repositories are what resource policies protect.
    pub private: bool,
    pub issues: Vec<Issue>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    pub state: String,
}

/// Repositories shared by every session of one server, so a created issue stays visible.
#[derive(Debug, Clone)]
pub struct GithubData {
    repositories: Arc<Mutex<Vec<Repository>>>,
}

impl Default for GithubData {
    fn default() -> Self {
        let issue = |number, title: &str| Issue { number, title: title.to_owned(), state: "open".to_owned() };
        Self {
            repositories: Arc::new(Mutex::new(vec![
                Repository {
                    name: "acme/website".to_owned(),
                    description: "Public website of Acme".to_owned(),
                    private: false,
                    issues: vec![issue(1, "Broken link on the home page"), issue(2, "Add dark mode")],
                },
                Repository {
                    name: "acme/payroll".to_owned(),
                    description: "Salary computation (confidential)".to_owned(),
                    private: true,
                    issues: vec![issue(1, "Bonus rounding error"), issue(2, "Rotate the bank API key")],
                },
            ])),
        }
    }
}

impl GithubData {
    fn lock(&self) -> MutexGuard<'_, Vec<Repository>> {
        self.repositories.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RepositoryArgs {
    /// `owner/name`, e.g. `acme/website`.
    pub repository: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateIssueArgs {
    /// `owner/name`, e.g. `acme/website`.
    pub repository: String,
    pub title: String,
}

#[derive(Debug, Clone)]
pub struct GithubServer {
    data: GithubData,
    tool_router: ToolRouter<Self>,
}

impl GithubServer {
    pub fn new(data: GithubData) -> Self {
        Self { data, tool_router: Self::tool_router() }
    }
}

#[tool_router]
impl GithubServer {
    #[tool(description = "Describe a repository (name, description, visibility, open issues).")]
    fn get_repository(&self, Parameters(args): Parameters<RepositoryArgs>) -> CallToolResult {
        let repositories = self.data.lock();
        match repositories.iter().find(|r| r.name == args.repository) {
            Some(repository) => json_result(&serde_json::json!({
                "name": repository.name,
                "description": repository.description,
                "private": repository.private,
                "open_issues": repository.issues.iter().filter(|i| i.state == "open").count(),
            })),
            None => not_found(&args.repository),
        }
    }

    #[tool(description = "List the issues of a repository.")]
    fn list_issues(&self, Parameters(args): Parameters<RepositoryArgs>) -> CallToolResult {
        let repositories = self.data.lock();
        match repositories.iter().find(|r| r.name == args.repository) {
            Some(repository) => json_result(&repository.issues),
            None => not_found(&args.repository),
        }
    }

    #[tool(description = "Open an issue; returns its number.")]
    fn create_issue(&self, Parameters(args): Parameters<CreateIssueArgs>) -> CallToolResult {
        let mut repositories = self.data.lock();
        let Some(repository) = repositories.iter_mut().find(|r| r.name == args.repository) else {
            return not_found(&args.repository);
        };
        let number = repository.issues.iter().map(|i| i.number).max().unwrap_or(0) + 1;
        repository.issues.push(Issue { number, title: args.title, state: "open".to_owned() });
        json_result(&serde_json::json!({ "repository": repository.name, "number": number }))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for GithubServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("github", env!("CARGO_PKG_VERSION")))
            .with_instructions("Repositories and issues of the Acme demo organisation.")
    }
}

fn json_result(value: &impl Serialize) -> CallToolResult {
    match serde_json::to_string_pretty(value) {
        Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
        Err(e) => tool_error(format!("cannot encode result: {e}")),
    }
}

fn not_found(repository: &str) -> CallToolResult {
    tool_error(format!("repository not found: {repository}"))
}
