//! `supervisor`: a multi-process job supervisor. This file is the command line and the
//! one place where a verb's error becomes an exit code; `run` lives in its own module,
//! every other verb in a file of its own under `commands/`, each child role in its own
//! module (`grabber`, `worker`).

mod checkpointer;
mod commands;
mod events_file;
mod grabber;
mod http;
mod instances;
mod ipc;
mod joblog;
mod journal;
mod lease;
mod mailbox;
mod notify;
mod pending;
mod record;
mod retention;
mod run;
mod store;
mod wire;
#[cfg(test)]
mod wire_fuzz;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use commands::CommandError;

/// A multi-process job supervisor: a grabber claims jobs from a durable store, worker
/// pools run them, and everything that happens goes to an events file.
#[derive(Debug, Parser)]
// `version` on the top level only: subcommands have no `--version` of their own (with
// `propagate_version`, `supervisor run --version` printed `supervisor-run 0.1.0`).
#[command(name = "supervisor", version, about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    command: Verb,
}

/// `-c FILE`, shared by every verb.
#[derive(Debug, Args)]
pub(crate) struct ConfigArg {
    /// The config file [default: $SUPERVISOR_CONFIG, then ./supervisor.json]; before or
    /// after the verb.
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub(crate) config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        supervisor_config::default_config_path(self.config.as_deref())
    }
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Run the supervisor in the foreground until stopped.
    ///
    /// Example: supervisor run -c supervisor.json --until-empty
    Run {
        /// Exit (code 0) once no runnable job is queued and none is running.
        #[arg(long)]
        until_empty: bool,
    },
    /// Queue one job (or a file of JSON lines) and print its id.
    ///
    /// Example: supervisor submit --group x86_64 --tag arch=x86_64 --timeout 60 -- make -j4
    Submit(commands::SubmitArgs),
    /// Show the supervisor, every child and job counts.
    ///
    /// Example: supervisor status --json
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List jobs.
    ///
    /// Example: supervisor jobs --state failed
    Jobs(commands::JobsFilter),
    /// Show one job.
    ///
    /// Example: supervisor job 17 --json
    Job {
        /// The job's id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's log: every attempt's output, or one attempt's.
    ///
    /// Example: supervisor logs 17 --follow
    Logs {
        /// The job's id.
        id: String,
        /// Keep printing as the job writes, until it is final (across its retries).
        #[arg(long)]
        follow: bool,
        /// Only this attempt's output (1 is the first).
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// Queue jobs that ended otherwise than succeeded again, with a fresh attempt budget.
    ///
    /// Example: supervisor retry 17 18
    Retry {
        /// The jobs' ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete finished jobs and their logs; print how many.
    ///
    /// Example: supervisor purge --before 7d --state succeeded
    Purge {
        /// Only those finished before this time (RFC 3339, or a duration ago like 7d or 1d12h).
        #[arg(long, value_name = "TIME")]
        before: Option<String>,
        /// Only those in this state (succeeded, failed, timed_out, dead, canceled).
        #[arg(long)]
        state: Option<String>,
    },
    /// Stop claiming for these groups (all without names), on every supervisor of the
    /// store, until resumed; running jobs go on.
    ///
    /// Example: supervisor pause x86_64
    Pause {
        /// The groups.
        groups: Vec<String>,
    },
    /// Claim again for these paused groups (all without names).
    ///
    /// Example: supervisor resume
    Resume {
        /// The groups.
        groups: Vec<String>,
    },
    /// Why a job is where it is: for a queued job, every reason it is not running.
    ///
    /// Example: supervisor explain 17
    Explain {
        /// The job's id.
        id: String,
    },
    /// Cancel a queued job at once, or stop a running one (SIGTERM, then SIGKILL).
    ///
    /// Example: supervisor cancel 17
    Cancel {
        /// The job's id.
        id: String,
    },
    /// Print the events file (human form on a terminal, JSON lines otherwise).
    ///
    /// Example: supervisor events --follow --json
    Events {
        /// Keep printing new events, across rotations.
        #[arg(long)]
        follow: bool,
        /// Print JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running supervisor to reload its config (SIGHUP).
    ///
    /// Example: supervisor reload
    Reload,
    /// Ask the running supervisor to stop gracefully (SIGTERM).
    ///
    /// Example: supervisor stop --wait
    Stop {
        /// Wait until it has exited.
        #[arg(long)]
        wait: bool,
    },
    /// Validate the config and print a summary.
    ///
    /// Example: supervisor check -c supervisor.json
    Check,
}

fn main() -> ExitCode {
    supervisor_os::keep_freed_memory();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    // A child of a running supervisor (its arguments on stdin, see `ipc::CHILD_VAR`): no
    // command line to parse (clap would build every verb's definition first; 1,000
    // workers start at once).
    if std::env::var_os(ipc::CHILD_VAR).is_some_and(|v| v == "stdin")
        && std::env::args_os().len() == 1
    {
        return ExitCode::from(child() as u8);
    }
    let cli = Cli::parse();
    // Whatever a verb or the supervisor creates under the state dir (the store, logs,
    // events) is private to its user, whatever the umask; jobs get the umask the
    // supervisor was started with back (`SUPERVISOR_JOB_UMASK`, for its workers).
    let started_with = supervisor_os::set_umask(0o077);
    if matches!(cli.command, Verb::Run { .. }) {
        std::env::set_var("SUPERVISOR_JOB_UMASK", format!("{started_with:03o}"));
    }
    // A verb whose output is closed early (`supervisor jobs | head`) ends quietly, killed
    // by SIGPIPE like any Unix tool. The supervisor and its children keep SIGPIPE
    // ignored (Rust's default): a closed pipe must never take them down.
    if !matches!(cli.command, Verb::Run { .. }) {
        if let Err(e) = supervisor_os::default_sigpipe() {
            log::debug!("cannot restore SIGPIPE's default action: {e}");
        }
    }
    let config = cli.config.path();
    let result = match cli.command {
        Verb::Run { until_empty } => match run::run(&config, until_empty) {
            // `run` ends with the contract's codes of its own (3: a group gave up).
            Ok(code) => return ExitCode::from(code as u8),
            Err(e) => Err(CommandError::Failed(e)),
        },
        Verb::Submit(args) => commands::submit(&config, args),
        Verb::Status { json } => commands::status(&config, json),
        Verb::Jobs(filter) => commands::jobs(&config, &filter),
        Verb::Job { id, json } => commands::job(&config, &id, json),
        Verb::Logs {
            id,
            follow,
            attempt,
        } => commands::logs(&config, &id, follow, attempt),
        Verb::Cancel { id } => commands::cancel(&config, &id),
        Verb::Explain { id } => commands::explain(&config, &id),
        Verb::Retry { ids } => commands::retry(&config, &ids),
        Verb::Purge { before, state } => {
            commands::purge(&config, before.as_deref(), state.as_deref())
        }
        Verb::Pause { groups } => commands::pause(&config, &groups, true),
        Verb::Resume { groups } => commands::pause(&config, &groups, false),
        Verb::Events { follow, json } => commands::events(&config, follow, json),
        Verb::Reload => commands::signal(&config, commands::Control::Reload),
        Verb::Stop { wait } => commands::signal(&config, commands::Control::Stop { wait }),
        Verb::Check => commands::check(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(exit_code(&e) as u8)
        }
    }
}

/// The contract's exit code for a verb's error: 2 for what the operator can correct in
/// the command line or the config, 1 when no supervisor runs or anything else failed.
fn exit_code(e: &CommandError) -> i32 {
    match e {
        CommandError::Config(_)
        | CommandError::Usage(_)
        | CommandError::JobFile { .. }
        | CommandError::UnknownJob(_) => run::EXIT_USAGE,
        CommandError::NotRunning(_) | CommandError::Failed(_) => run::EXIT_FAILURE,
    }
}

/// Run as a child of a supervisor, in the role its arguments name.
fn child() -> i32 {
    use std::io::Read;
    let mut text = String::new();
    if let Err(e) = std::io::stdin()
        .lock()
        .take(ipc::MAX_CHILD_ARGS)
        .read_to_string(&mut text)
    {
        eprintln!("supervisor: cannot read child arguments on stdin: {e}");
        return run::EXIT_USAGE;
    }
    let args: wire::ChildArgs = match serde_json::from_str(&text) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("supervisor: bad child arguments on stdin: {e}");
            return run::EXIT_USAGE;
        }
    };
    // The supervisor may have died between our fork and PR_SET_PDEATHSIG.
    if nix::unistd::getppid().as_raw() as u32 != args.parent {
        return 1;
    }
    match args.role {
        wire::ChildRole::Grabber {
            store,
            instance,
            poll_interval_s,
            error_backoff,
            routes,
            store_wait_s,
        } => grabber::main(
            store_wait_s,
            &args.ipc,
            store,
            instance,
            poll_interval_s,
            error_backoff.into(),
            routes,
        ),
        // The core times a job's TERM-to-KILL grace; the worker only sends the signals.
        wire::ChildRole::Worker { logs, group, slot } => {
            worker::main(&args.ipc, logs, &group, slot)
        }
    }
}
