//! A filesystem MCP server confined to a sandbox directory.
//!
//! Tool paths are absolute within the sandbox: `/public/readme.md` is
//! `<sandbox>/public/readme.md`. `.` and `..` are resolved lexically, as a real file server
//! would, so `/public/../private/salaries.csv` *is* the salaries file: the gateway has to
//! normalize paths before checking them. Escaping the sandbox is refused with a tool error.

use std::io;
use std::path::{Component, Path, PathBuf};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use serde::Deserialize;

use super::tool_error;

/// Files a fresh sandbox starts with: public docs, a private file, per-user homes.
const SEED_FILES: &[(&str, &str)] = &[
    ("public/readme.md", "# Acme handbook\n\nWelcome to Acme. Start with the guide in /public/guide.md.\n"),
    ("public/guide.md", "# Guide\n\n1. Read the handbook.\n2. Ask your manager for access.\n"),
    ("private/salaries.csv", "name,salary\nalice,120000\nbob,95000\n"),
    ("user/alice/notes.md", "# Alice's notes\n\nShip the gateway.\n"),
    ("user/bob/notes.md", "# Bob's notes\n\nReview the RBAC policy.\n"),
];

/// Creates the sandbox directory and any missing seed file; existing files are left alone.
pub fn ensure_sandbox(root: &Path) -> io::Result<()> {
    for (relative, contents) in SEED_FILES {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !path.exists() {
            std::fs::write(&path, contents)?;
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PathArgs {
    /// Absolute path inside the sandbox, e.g. `/public/readme.md`.
    pub file_path: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WriteArgs {
    /// Absolute path inside the sandbox, e.g. `/user/alice/notes.md`.
    pub file_path: String,
    /// New contents of the file (UTF-8 text).
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct FilesystemServer {
    /// Canonical sandbox root, so symlinks inside cannot point outside unnoticed.
    root: PathBuf,
    tool_router: ToolRouter<Self>,
}

impl FilesystemServer {
    /// `root` must exist (see [`ensure_sandbox`]).
    pub fn new(root: &Path) -> io::Result<Self> {
        Ok(Self { root: root.canonicalize()?, tool_router: Self::tool_router() })
    }

    /// Maps a sandbox path to a host path, or explains why it is refused.
    fn resolve(&self, file_path: &str) -> Result<PathBuf, String> {
        if !file_path.starts_with('/') {
            return Err(format!("path must be absolute: {file_path}"));
        }
        let mut inside = PathBuf::new();
        for component in Path::new(file_path).components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(part) => inside.push(part),
                Component::ParentDir => {
                    if !inside.pop() {
                        return Err(format!("path escapes the sandbox: {file_path}"));
                    }
                }
                Component::Prefix(_) => return Err(format!("invalid path: {file_path}")),
            }
        }
        let host_path = self.root.join(&inside);
        // Follow symlinks through the deepest part that exists already, so neither a read nor
        // a write (which creates directories) can leave the sandbox through a link.
        if let Some(existing) = host_path.ancestors().find(|p| p.exists()) {
            let real = existing.canonicalize().map_err(|e| format!("cannot resolve {file_path}: {e}"))?;
            if !real.starts_with(&self.root) {
                return Err(format!("path escapes the sandbox: {file_path}"));
            }
        }
        Ok(host_path)
    }
}

#[tool_router]
impl FilesystemServer {
    #[tool(description = "Read a text file. Paths are absolute within the sandbox, e.g. /public/readme.md.")]
    async fn read_file(&self, Parameters(args): Parameters<PathArgs>) -> CallToolResult {
        let path = match self.resolve(&args.file_path) {
            Ok(path) => path,
            Err(message) => return tool_error(message),
        };
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(e) => tool_error(format!("cannot read {}: {e}", args.file_path)),
        }
    }

    #[tool(description = "List a directory: one entry per line, directories end with '/'.")]
    async fn list_directory(&self, Parameters(args): Parameters<PathArgs>) -> CallToolResult {
        let path = match self.resolve(&args.file_path) {
            Ok(path) => path,
            Err(message) => return tool_error(message),
        };
        match list(&path).await {
            Ok(entries) => CallToolResult::success(vec![ContentBlock::text(entries.join("\n"))]),
            Err(e) => tool_error(format!("cannot list {}: {e}", args.file_path)),
        }
    }

    #[tool(description = "Create or replace a text file; missing parent directories are created.")]
    async fn write_file(&self, Parameters(args): Parameters<WriteArgs>) -> CallToolResult {
        let path = match self.resolve(&args.file_path) {
            Ok(path) => path,
            Err(message) => return tool_error(message),
        };
        let written = async {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::write(&path, args.content.as_bytes()).await
        };
        match written.await {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text(format!(
                "wrote {} bytes to {}",
                args.content.len(),
                args.file_path
            ))]),
            Err(e) => tool_error(format!("cannot write {}: {e}", args.file_path)),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for FilesystemServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("filesystem", env!("CARGO_PKG_VERSION")))
            .with_instructions("Files of the Acme demo sandbox. Paths are absolute, e.g. /public/readme.md.")
    }
}

async fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut reader = tokio::fs::read_dir(dir).await?;
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry().await? {
        let mut name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().await?.is_dir() {
            name.push('/');
        }
        entries.push(name);
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (tempfile::TempDir, FilesystemServer) {
        let dir = tempfile::tempdir().unwrap();
        ensure_sandbox(dir.path()).unwrap();
        let server = FilesystemServer::new(dir.path()).unwrap();
        (dir, server)
    }

    #[test]
    fn sandbox_paths_map_into_the_sandbox() {
        let (_dir, server) = server();
        let cases = [
            ("/public/readme.md", "public/readme.md"),
            ("/public/./guide.md", "public/guide.md"),
            ("/public/../private/salaries.csv", "private/salaries.csv"),
            ("/", ""),
            ("/user/alice/new.md", "user/alice/new.md"),
        ];
        for (input, expected) in cases {
            assert_eq!(server.resolve(input).unwrap(), server.root.join(expected), "{input}");
        }
    }

    #[test]
    fn paths_that_escape_or_are_relative_are_refused() {
        let (_dir, server) = server();
        for input in ["/..", "/../etc/passwd", "/public/../../x", "public/readme.md", ""] {
            assert!(server.resolve(input).is_err(), "{input}");
        }
    }

    #[test]
    fn symlinks_out_of_the_sandbox_are_refused() {
        let (dir, server) = server();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("public/escape")).unwrap();
        assert!(server.resolve("/public/escape/secret").is_err());
        assert!(server.resolve("/public/escape").is_err());
        assert!(server.resolve("/public/escape/a/b/new.md").is_err());
    }

    #[test]
    fn ensure_sandbox_keeps_existing_files() {
        let (dir, _server) = server();
        let notes = dir.path().join("user/alice/notes.md");
        std::fs::write(&notes, "changed").unwrap();
        ensure_sandbox(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(notes).unwrap(), "changed");
    }
}
