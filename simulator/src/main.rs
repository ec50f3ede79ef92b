//! `simulator`: run seeds, sweep many, replay one.

use clap::{Parser, Subcommand};
use simulator::{RunReport, run_seed, world::Coverage};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(version, about = "Multi-device sync simulator: deterministic faults, invariants, reports")]
struct Cli {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run many seeds, each with its own draw of devices, work and faults.
    Fuzz {
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// Plant a bug to see the sweep catch it: ack-before-durable, drop-change,
        /// keep-failed-write, ignore-relay-identity.
        #[arg(long)]
        plant: Option<String>,
        /// Where shrunk reproductions of failures are written.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
        /// Failures shrunk to scenario files (the first ones).
        #[arg(long, default_value_t = 3)]
        shrink: usize,
        /// First seed of the sweep.
        #[arg(long, default_value_t = 0)]
        start: u64,
    },
    /// Run scenario files (TOML timelines; see simulator/scenarios/).
    Run {
        /// One or more scenario files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Print every traced event.
        #[arg(long)]
        trace: bool,
    },
    /// Replay scenario files live: the relay as a process, real engines
    /// with their WebSocket drivers, a TCP fault proxy per device, real time.
    Live {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// The relay binary (default: `relay`, else `sim-relay`, beside this one).
        #[arg(long)]
        relay: Option<std::path::PathBuf>,
    },
    /// Shrink a failing seed to a small scenario file.
    Shrink {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        plant: Option<String>,
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
    },
    /// Run one seed and print its report (and the end of its trace).
    Replay {
        #[arg(long)]
        seed: u64,
        /// Print every traced event, not only the last ones of a failure.
        #[arg(long)]
        trace: bool,
        /// Write an SVG timeline of the run to this file.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
}

fn print_report(r: &RunReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    println!("{}", r.params.summary());
    println!(
        "{} after {} events, {:.1} s of virtual time; trace {}",
        if r.passed() { "PASSED" } else { "FAILED" },
        r.steps,
        r.virtual_ms as f64 / 1000.0,
        &r.trace_hash[..16.min(r.trace_hash.len())]
    );
    for f in &r.failures {
        println!("  - {f}");
    }
    if !r.passed() {
        println!("last events:");
        for line in &r.tail {
            println!("  {line}");
        }
        println!("rerun: {}", r.rerun());
    }
}

/// Shrinks a failure to a scenario file and says where it is.
fn write_shrunk(r: &RunReport, out: &std::path::Path) {
    if simulator::reproduce(r).run().passed() {
        println!("  not shrunk: the failure needs this run's exact timing (replay the seed instead)");
        return;
    }
    let small = simulator::shrink_run(r, 400);
    let path = out.join(format!("shrunk-seed-{}.toml", r.seed));
    match std::fs::write(&path, small.to_toml()) {
        Ok(()) => println!(
            "  shrunk to {} steps: {} (rerun: cargo run -p simulator -- run {} --trace)",
            small.step.len(),
            path.display(),
            path.display()
        ),
        Err(e) => println!("  could not write {}: {e}", path.display()),
    }
}

/// A scenario file, or `None` after saying why not.
fn load(file: &std::path::Path) -> Option<simulator::scenario::Scenario> {
    simulator::scenario::Scenario::load(file).map_err(|e| eprintln!("{e}")).ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { files, trace } => {
            let mut failed = 0;
            for file in &files {
                let Some(scenario) = load(file) else {
                    failed += 1;
                    continue;
                };
                let r = scenario.run();
                if cli.json {
                    print_report(&r, true);
                } else {
                    println!(
                        "{} {}: {} ({} events)",
                        if r.passed() { "PASSED" } else { "FAILED" },
                        file.display(),
                        scenario.name,
                        r.steps
                    );
                    for f in &r.failures {
                        println!("  - {f}");
                    }
                    if trace || !r.passed() {
                        for line in &r.tail {
                            println!("  {line}");
                        }
                    }
                    if !r.passed() {
                        println!("  rerun: cargo run -p simulator -- run {} --trace", file.display());
                    }
                }
                failed += usize::from(!r.passed());
            }
            if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Live { files, relay } => {
            let relay = relay.or_else(|| {
                let dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
                ["relay", "sim-relay"].iter().map(|n| dir.join(n)).find(|p| p.exists())
            });
            let Some(relay) = relay else {
                eprintln!("no relay binary found: build it (cargo build --release -p relay) or pass --relay PATH");
                return ExitCode::FAILURE;
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start tokio: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut failed = 0;
            for file in &files {
                let Some(scenario) = load(file) else {
                    failed += 1;
                    continue;
                };
                let r = runtime.block_on(simulator::live::run(&scenario, &relay));
                println!(
                    "{} {} live against {} in {:.1} s",
                    if r.failures.is_empty() { "PASSED" } else { "FAILED" },
                    file.display(),
                    relay.display(),
                    r.seconds
                );
                for f in &r.failures {
                    println!("  - {f}");
                }
                for s in &r.skipped {
                    println!("  skipped {s}");
                }
                failed += usize::from(!r.failures.is_empty());
            }
            if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Shrink { seed, plant, out } => {
            let bug = match simulator::scenario::planted_bug(plant.as_deref()) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let r = simulator::run_planted(seed, bug);
            if r.passed() {
                println!("seed {seed} passes: nothing to shrink");
                return ExitCode::SUCCESS;
            }
            println!("seed {seed} FAILED: {}", r.failures.join("; "));
            write_shrunk(&r, &out);
            ExitCode::FAILURE
        }
        Command::Replay { seed, trace, svg } => {
            if let Some(path) = &svg {
                let (_, picture) = simulator::run_seed_svg(seed);
                match std::fs::write(path, picture) {
                    Ok(()) => eprintln!("timeline written to {}", path.display()),
                    Err(e) => eprintln!("cannot write {}: {e}", path.display()),
                }
            }
            let r = simulator::run_seed_with(seed, if trace { usize::MAX } else { 40 });
            print_report(&r, cli.json);
            if trace && r.passed() && !cli.json {
                for line in &r.tail {
                    println!("  {line}");
                }
            }
            if r.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Fuzz { seeds, start, plant, out, shrink } => {
            use simulator::scenario::Plant;
            let bug = match simulator::scenario::planted_bug(plant.as_deref()) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let started = Instant::now();
            let bar = if cli.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(seeds)
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {msg} eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let mut coverage = Coverage::default();
            let mut failed = Vec::new();
            let mut events = 0;
            for seed in start..start + seeds {
                let r = if bug == Plant::None { run_seed(seed) } else { simulator::run_planted(seed, bug) };
                coverage.add(&r.coverage);
                events += r.steps;
                bar.inc(1);
                if !r.passed() {
                    bar.set_message(format!("{} failed", failed.len() + 1));
                    if !cli.json {
                        bar.suspend(|| {
                            println!("seed {seed} FAILED: {}", r.failures.join("; "));
                            println!("  rerun: {}", r.rerun());
                        });
                        if failed.len() < shrink {
                            write_shrunk(&r, &out);
                        }
                    }
                    failed.push(r);
                }
                // Off a terminal (CI logs), a line every 50 seeds instead of the bar.
                if !cli.json && bar.is_hidden() && (seed - start + 1) % 50 == 0 {
                    eprintln!(
                        "{} / {seeds} seeds, {} failed, {:.1} s",
                        seed - start + 1,
                        failed.len(),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            bar.finish_and_clear();
            let zeros = coverage.zeros();
            if cli.json {
                let out = serde_json::json!({
                    "seeds": seeds, "start": start, "failed": failed.iter().map(|r| r.seed).collect::<Vec<_>>(),
                    "seconds": started.elapsed().as_secs_f64(), "events": events, "coverage": coverage,
                    "coverage_zero": zeros,
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                println!(
                    "{seeds} seeds ({start}..{}), {events} events in {:.1} s: {} passed, {} failed",
                    start + seeds,
                    started.elapsed().as_secs_f64(),
                    seeds as usize - failed.len(),
                    failed.len()
                );
                println!("coverage: {}", serde_json::to_string(&coverage).unwrap_or_default());
                if !zeros.is_empty() {
                    println!("never exercised: {}", zeros.join(", "));
                }
            }
            if failed.is_empty() && zeros.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}
