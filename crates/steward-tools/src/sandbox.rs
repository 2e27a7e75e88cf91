//! Code execution for managed agents, in the run's own sandbox: `sandbox_exec` runs a shell
//! command there (a fresh, isolated process tree each time, on the run's persistent
//! workspace), `sandbox_write_file` and `sandbox_read_file` move files in and out of that
//! workspace. The isolation itself is the engine's (`ToolHost`), from `steward-sandbox`.

use serde_json::{json, Value};

use steward_types::RunId;

use crate::{
    str_arg, AlsoDecided, Annotations, Meter, Result, Tool, ToolContext, ToolError, ToolInfo,
    SANDBOX_CPU_MS,
};

pub struct SandboxExec;
pub struct SandboxWriteFile;
pub struct SandboxReadFile;

#[async_trait::async_trait]
impl Tool for SandboxExec {
    fn annotations(&self) -> Annotations {
        Annotations {
            read_only: false,
            destructive: true,
            idempotent: false,
            open_world: false,
        }
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "sandbox_exec".into(),
            description: "Runs a shell command in this run's isolated sandbox (no network; the workspace persists between calls; bash, python3 and the host's other interpreters). Returns the exit code, stdout and stderr.".into(),
            parameters: json!({"type": "object", "required": ["command"],
                "properties": {
                    "command": {"type": "string", "description": "a /bin/sh command line"},
                    "stdin": {"type": "string"}}}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        false // a command may do anything to its workspace
    }
    fn also_decided(&self, run: &RunId, _: &Value) -> Option<AlsoDecided> {
        Some(AlsoDecided {
            action: "sandbox.exec",
            resource: format!("run:{run}"),
        })
    }
    fn meter(&self) -> Option<Meter> {
        Some(Meter {
            name: SANDBOX_CPU_MS,
            used: |result| result.get("cpu_ms").and_then(Value::as_u64).unwrap_or(0),
        })
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        let command = str_arg(&args, "command")?;
        let stdin = match args.get("stdin") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s,
            Some(_) => return Err(ToolError::InvalidArgs("`stdin` must be a string".into())),
        };
        ctx.host
            .sandbox_exec(ctx.run()?, ctx.seq, command, stdin)
            .await
    }
}

#[async_trait::async_trait]
impl Tool for SandboxWriteFile {
    fn annotations(&self) -> Annotations {
        Annotations::LOCAL_OVERWRITE
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "sandbox_write_file".into(),
            description:
                "Writes a text file into this run's sandbox workspace (a path relative to it)."
                    .into(),
            parameters: json!({"type": "object", "required": ["path", "content"],
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true // the same content at the same path
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        let path = str_arg(&args, "path")?;
        let content = str_arg(&args, "content")?;
        ctx.host
            .workspace_write(ctx.run()?, ctx.seq, path, content.as_bytes())
            .await?;
        Ok(json!({"path": path, "bytes": content.len()}))
    }
}

#[async_trait::async_trait]
impl Tool for SandboxReadFile {
    fn annotations(&self) -> Annotations {
        Annotations::LOCAL_READ
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "sandbox_read_file".into(),
            description:
                "Reads a text file from this run's sandbox workspace (a path relative to it)."
                    .into(),
            parameters: json!({"type": "object", "required": ["path"],
                "properties": {"path": {"type": "string"}}}),
        }
    }
    fn idempotent(&self, _: &Value) -> bool {
        true
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        let path = str_arg(&args, "path")?;
        let bytes = ctx.host.workspace_read(ctx.run()?, ctx.seq, path).await?;
        Ok(json!({"path": path, "content": String::from_utf8_lossy(&bytes)}))
    }
}
