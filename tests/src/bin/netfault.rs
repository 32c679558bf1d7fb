//! `netfault`: the bad network as a process (`tests::netfault`), to run inside a network
//! namespace between a hub and its fleet (`ip netns exec NS netfault ...`).
//!
//! Usage: `netfault [--seed N] [--loss P] [--dup P] [--reorder P] [--delay-ms N]
//! [--jitter-ms N] [--audit] [--udp LISTEN=TARGET]... [--tcp LISTEN=TARGET]...`
//!
//! It prints `READY {"udp":[...],"tcp":[...]}` once every service is bound, then reads
//! commands on standard input, one per line, and answers each with one line:
//! `partition MS` → `PARTITIONED`, `heal` → `HEALED`, `calm` (only the delay from now on) →
//! `CALMED`, `rough` (impaired as configured again) → `ROUGHENED`, `stats` → `STATS {json}`,
//! `audit` → `AUDIT {json}`. It exits when standard input closes.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use tests::netfault::{Forward, NetRelay, RelayConfig};

fn parse(args: &[String]) -> Result<RelayConfig, String> {
    let mut c = RelayConfig::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--audit" {
            c.audit = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v:?}: {e}"));
        let int = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v:?}: {e}"));
        match flag.as_str() {
            "--seed" => c.seed = int(value)?,
            "--loss" => c.impairment.loss = num(value)?,
            "--dup" => c.impairment.duplicate = num(value)?,
            "--reorder" => c.impairment.reorder = num(value)?,
            "--delay-ms" => c.impairment.delay_ms = int(value)?,
            "--jitter-ms" => c.impairment.jitter_ms = int(value)?,
            "--udp" => c.udp.push(value.parse::<Forward>()?),
            "--tcp" => c.tcp.push(value.parse::<Forward>()?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(c)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netfault: {e}");
            return ExitCode::FAILURE;
        }
    };
    let relay = match NetRelay::start(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netfault: cannot bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    let list = |v: &[std::net::SocketAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    println!("READY {}", serde_json::json!({"udp": list(&relay.udp), "tcp": list(&relay.tcp)}));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<u64>)) {
            (Some("partition"), Some(Ok(ms))) => {
                relay.partition(Duration::from_millis(ms));
                println!("PARTITIONED");
            }
            (Some("calm"), None) => {
                relay.calm(true);
                println!("CALMED");
            }
            (Some("rough"), None) => {
                relay.calm(false);
                println!("ROUGHENED");
            }
            (Some("heal"), None) => {
                relay.heal();
                println!("HEALED");
            }
            (Some("stats"), None) => println!("STATS {}", relay.stats()),
            (Some("audit"), None) => {
                println!("AUDIT {}", relay.audit().map(|a| a.json()).unwrap_or_default());
            }
            _ => println!("ERROR unknown command {line:?}"),
        }
    }
    ExitCode::SUCCESS
}
