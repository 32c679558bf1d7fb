//! A minimal client of the hub's control socket (JSON lines), for the owner's steps the
//! simulator automates: opening pairing and typing the PIN shown on a sensor's display.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket failed.
    #[error("control socket {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The hub answered with an error.
    #[error("hub refused: {0}")]
    Refused(String),
    /// The answer was not JSON.
    #[error("bad answer from hub")]
    BadAnswer,
}

/// One request, one answer.
pub async fn request(socket: &Path, req: &Value) -> Result<Value, CtlError> {
    let io = |e| CtlError::Io(socket.to_path_buf(), e);
    let stream = UnixStream::connect(socket).await.map_err(io)?;
    let (r, mut w) = stream.into_split();
    let mut line = req.to_string();
    line.push('\n');
    w.write_all(line.as_bytes()).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await.map_err(io)?;
    let v: Value = serde_json::from_str(&answer).map_err(|_| CtlError::BadAnswer)?;
    match v.get("error").and_then(Value::as_str) {
        Some(e) => Err(CtlError::Refused(e.to_string())),
        None => Ok(v),
    }
}

/// Opens the hub's pairing window.
pub async fn pair_open(socket: &Path, seconds: u64) -> Result<Value, CtlError> {
    request(socket, &json!({"cmd": "pair_open", "seconds": seconds})).await
}

/// Types `pin` for the sensor with `serial`, once the hub lists that sensor as waiting (its
/// hello may still be on the way when its display lights up). The simulated owner pairs
/// sensors the hub warns about (past their support period, under an advisory) anyway.
pub async fn pair_pin(socket: &Path, pin: &str, serial: &str) -> Result<Value, CtlError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = request(socket, &json!({"cmd": "pairing"})).await?;
        let waiting =
            status["waiting"].as_array().is_some_and(|w| w.iter().any(|s| s["serial"] == serial));
        if waiting || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let typed = json!({"cmd": "pair_pin", "pin": pin, "serial": serial, "accept_risk": true});
    request(socket, &typed).await
}
