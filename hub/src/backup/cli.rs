//! `hub backup` and `hub restore` on the command line: the passphrase from a file, the
//! environment or standard input (never an argument: it would show in the process list).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::{Passphrase, Summary};

/// Environment variable that may hold the passphrase (for scripts).
pub const PASSPHRASE_ENV: &str = "HEARTH_BACKUP_PASSPHRASE";

/// `hub backup`'s arguments.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup file to write (replaced atomically if it exists).
    file: PathBuf,
    /// The hub's data directory (default: $HEARTH_DATA_DIR or ~/.local/state/hearth). When no
    /// hub runs on it, the backup is made from the directory itself.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A file whose first line is the passphrase (else $HEARTH_BACKUP_PASSPHRASE, else one
    /// line on standard input).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// The configuration file, when no hub runs (a running hub adds the one it runs with).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// `hub restore`'s arguments.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The new hub's data directory: missing or empty.
    #[arg(long)]
    data_dir: PathBuf,
    /// A file whose first line is the passphrase (else $HEARTH_BACKUP_PASSPHRASE, else one
    /// line on standard input).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

fn passphrase(file: Option<&Path>) -> Result<Passphrase, String> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        return Ok(Passphrase::new(text.lines().next().unwrap_or_default()));
    }
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(Passphrase::new(&p));
    }
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Backup passphrase (shown as typed): ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).map_err(|e| format!("standard input: {e}"))?;
    Ok(Passphrase::new(&line))
}

fn print(summary: &Summary, what: &str, file: &Path) {
    println!(
        "{what} {}: {} devices, {} log segments, {} other files, {} bytes",
        file.display(),
        summary.devices,
        summary.segments,
        summary.files,
        summary.bytes
    );
}

/// Backs up the hub: through its control socket when it runs (the running hub makes the
/// snapshot), else from its data directory.
pub async fn backup(args: BackupArgs) -> ExitCode {
    let pass = match passphrase(args.passphrase_file.as_deref()) {
        Ok(p) => p,
        Err(e) => return fail(&e, 2),
    };
    if let Err(e) = pass.check() {
        return fail(&e.to_string(), 2);
    }
    let data_dir = args.data_dir.unwrap_or_else(crate::config::default_data_dir);
    // The hub writes the file: give it a path that does not depend on our directory.
    let file = match absolute(&args.file) {
        Ok(f) => f,
        Err(e) => return fail(&format!("{}: {e}", args.file.display()), 2),
    };
    let socket = data_dir.join("control.sock");
    let req = crate::api::request::Backup { path: file.clone(), passphrase: pass.clone() };
    match crate::control::request(&socket, &req.into()).await {
        Ok(v) => {
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                return fail(e, 1);
            }
            match serde_json::from_value::<Summary>(v) {
                Ok(s) => {
                    print(&s, "backed up the running hub to", &file);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("unexpected answer: {e}"), 1),
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            // No hub runs here (its store would be locked if one did).
            let config = args.config;
            let r = tokio::task::spawn_blocking(move || {
                super::create_offline(&data_dir, config.as_deref(), &file, &pass).map(|s| (s, file))
            })
            .await;
            match r {
                Ok(Ok((s, file))) => {
                    print(&s, "backed up (hub not running) to", &file);
                    ExitCode::SUCCESS
                }
                Ok(Err(e)) => fail(&e.to_string(), 1),
                Err(e) => fail(&e.to_string(), 1),
            }
        }
        Err(e) => fail(&format!("{}: {e}", socket.display()), 1),
    }
}

/// Restores a backup into a new data directory.
pub fn restore(args: RestoreArgs) -> ExitCode {
    let pass = match passphrase(args.passphrase_file.as_deref()) {
        Ok(p) => p,
        Err(e) => return fail(&e, 2),
    };
    match super::restore(&args.file, &args.data_dir, &pass) {
        Ok(s) => {
            print(&s, "restored into", &args.data_dir);
            let config = args.data_dir.join(super::RESTORED_CONFIG).join("hub.toml");
            if config.exists() {
                println!("the old hub's configuration is {}", config.display());
            }
            println!(
                "start the hub on it; every sensor's link is renewed at its first message (no \
                 pairing needed)"
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), 1),
    }
}

fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    std::path::absolute(p)
}

fn fail(e: &str, code: u8) -> ExitCode {
    eprintln!("hub: {e}");
    ExitCode::from(code)
}
