//! `hub`: run the daemon, or control a running one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hub::config::{self, Config};
use tokio_util::sync::CancellationToken;

/// jemalloc with background purging: memory freed after a burst of readings goes back to the
/// system within seconds, so a long-running hub's RSS follows its heap (glibc kept it).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "hub", version, about = "Hearth, a security-first smart-home hub")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub.
    Run {
        /// Data directory (default: $HEARTH_DATA_DIR or ~/.local/state/hearth).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Configuration file (TOML); every setting has a default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Control a running hub through its socket.
    Ctl(hub::ctl::CtlArgs),
    /// Back up everything the owner set up, encrypted under a passphrase (while the hub runs).
    Backup(hub::backup::cli::BackupArgs),
    /// Restore a backup into a new data directory (for a new gateway).
    Restore(hub::backup::cli::RestoreArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.cmd {
        // rumqttd logs every connection at info and refused logins as errors; the fronts
        // count and log those (rate-limited) themselves.
        Cmd::Run { .. } => "info,rumqttd=warn,rumqttd::server::broker=off",
        Cmd::Ctl(_) | Cmd::Backup(_) | Cmd::Restore(_) => "warn",
    };
    hub::logs::init("hub", default_level);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Run { data_dir, config } => run(data_dir, config).await,
            Cmd::Ctl(args) => hub::ctl::run(args).await,
            Cmd::Backup(args) => hub::backup::cli::backup(args).await,
            Cmd::Restore(args) => hub::backup::cli::restore(args),
        }
    });
    // Blocking work still running (a password hash) is not waited for long.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run(data_dir: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hub: {e}");
            return ExitCode::from(2);
        }
    };
    let data_dir = data_dir.unwrap_or_else(config::default_data_dir);
    let shutdown = CancellationToken::new();
    let running = match hub::daemon::start(config, &data_dir, shutdown.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hub: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(p) = &running.moved_aside {
        eprintln!(
            "hub: the store was corrupt and was moved aside to {}; starting empty",
            p.display()
        );
    }
    // One machine-readable line for supervisors and tests.
    let ready = serde_json::json!({
        "coap": running.coap.to_string(),
        "control": running.control.display().to_string(),
        "devices": running.devices,
        "mqtt": running.mqtt.map(|(plain, _)| plain.to_string()),
        "mqtt_tls": running.mqtt.and_then(|(_, tls)| tls).map(|a| a.to_string()),
        "web": running.web.to_string(),
        "pid": std::process::id(),
    });
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        coap = %running.coap,
        web = %running.web,
        devices = running.devices,
        "hub running"
    );
    // SIGTERM/SIGINT are taken on a thread of their own, which also bounds the stop: a stuck
    // subsystem on this runtime cannot keep the process alive. Installed before READY, so a
    // supervisor that stops the hub as soon as it is ready gets a clean stop.
    if let Err(e) = hub::daemon::stop_on_signal(shutdown.clone(), running.link_stopped()) {
        eprintln!("hub: {e}");
        return ExitCode::FAILURE;
    }
    println!("READY {ready}");
    let reset = running.reset.clone();
    let factory_reset = tokio::select! {
        () = shutdown.cancelled() => false,
        () = reset.cancelled() => true,
    };
    if !factory_reset {
        running.join().await;
        return ExitCode::SUCCESS;
    }
    // Factory reset: recorded durably first (a stop that does not finish is completed by the
    // next start), then the hub stops, its data directory is erased and it starts anew in this
    // process (same pid and arguments: a supervisor sees one service).
    if let Err(e) = hub::daemon::mark_factory_reset(&data_dir) {
        eprintln!("hub: factory reset not started: {e}");
        return ExitCode::FAILURE;
    }
    shutdown.cancel();
    running.join().await;
    if let Err(e) = hub::daemon::erase_data_dir(&data_dir) {
        eprintln!("hub: factory reset: {e}; the next start completes the erase");
        return ExitCode::FAILURE;
    }
    tracing::warn!("factory reset: the data directory was erased; starting as a new hub");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("hub: factory reset done; start the hub again ({e})");
            return ExitCode::FAILURE;
        }
    };
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
    eprintln!(
        "hub: factory reset done, but the hub could not start itself again ({err}); start it"
    );
    ExitCode::FAILURE
}
