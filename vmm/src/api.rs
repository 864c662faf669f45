//! JSON-over-unix-socket control endpoint.
//!
//! One JSON object per line in, one per line out:
//! `{"command":"status"}` -> vCPUs, memory, devices with their socket and
//! connection state; `{"command":"shutdown"}` -> ends the VMM. A bare
//! `status` / `shutdown` line works too.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::exit::{ExitReason, ExitSignal};
use crate::vm::VmInfo;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on API socket {0}")]
    Bind(String, #[source] std::io::Error),
    #[error("API socket {0} is in use by a running process")]
    InUse(String),
    #[error("API socket path {0} exists and is not a socket")]
    NotASocket(String),
}

pub struct ApiServer {
    path: PathBuf,
}

impl ApiServer {
    pub fn start(path: &Path, info: Arc<VmInfo>, exit: ExitSignal) -> Result<Self, ApiError> {
        let name = path.display().to_string();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ApiError::NotASocket(name));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ApiError::InUse(name));
            }
            // A stale socket from an earlier run.
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|e| ApiError::Bind(name.clone(), e))?;
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let info = info.clone();
                    let exit = exit.clone();
                    let _ = std::thread::Builder::new()
                        .name("api-conn".into())
                        .spawn(move || serve(conn, &info, &exit));
                }
            })
            .map_err(|e| ApiError::Bind(name, e))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn cleanup(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, info: &VmInfo, exit: &ExitSignal) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let (reply, shutdown) = handle(&line, info);
        let mut text = reply.to_string();
        text.push('\n');
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        if shutdown {
            exit.trigger(ExitReason::ApiShutdown);
            return;
        }
    }
}

/// Answers one request line; the bool says "shut down now".
pub fn handle(line: &str, info: &VmInfo) -> (Value, bool) {
    let command = match serde_json::from_str::<Value>(line) {
        Ok(v) => v.get("command").and_then(Value::as_str).map(str::to_string),
        Err(_) => Some(line.trim().to_string()),
    };
    match command.as_deref() {
        Some("status") => (status(info), false),
        Some("shutdown") => (json!({"ok": true, "result": "shutting down"}), true),
        Some(other) => (
            json!({"ok": false, "error": format!("unknown command `{other}` (try status, shutdown)")}),
            false,
        ),
        None => (
            json!({"ok": false, "error": "request needs a \"command\" field"}),
            false,
        ),
    }
}

fn status(info: &VmInfo) -> Value {
    let devices: Vec<Value> = info
        .devices
        .iter()
        .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).describe())
        .collect();
    json!({
        "ok": true,
        "state": "running",
        "vcpus": info.cpus,
        "memory_bytes": info.memory,
        "devices": devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> VmInfo {
        VmInfo {
            cpus: 2,
            memory: 512 << 20,
            devices: vec![],
        }
    }

    #[test]
    fn status_and_shutdown() {
        let (v, stop) = handle(r#"{"command":"status"}"#, &info());
        assert!(!stop);
        assert_eq!(v["vcpus"], 2);
        assert_eq!(v["memory_bytes"], 512u64 << 20);
        let (_, stop) = handle("shutdown", &info());
        assert!(stop);
        let (v, stop) = handle(r#"{"command":"frobnicate"}"#, &info());
        assert!(!stop);
        assert_eq!(v["ok"], false);
    }
}
