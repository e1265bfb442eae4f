//! `/metrics`: the Prometheus text format (version 0.0.4) of the contract's families.
//! Job counts come from the store at each scrape; the rest from the feed. Every group of
//! the config has its series, zeros included, so that a dashboard's queries never see a
//! series come and go.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use supervisor_store::{GroupCount, JobState};

use super::feed::{FeedState, DURATION_BUCKETS};

/// The worker states always given for every group (others appear when a worker is in
/// them).
const WORKER_STATES: [&str; 3] = ["idle", "busy", "starting"];

/// The text of `/metrics`.
pub fn render(feed: &FeedState, counts: &[GroupCount]) -> String {
    let mut out = String::with_capacity(4096);
    let groups: Vec<&str> = feed.config.groups.iter().map(|g| g.name.as_str()).collect();

    family(&mut out, "supervisor_jobs", "gauge", "Jobs in the store by state and group (the group that ran the job, else the one it is routed to; \"\" for none of the config's).");
    let mut jobs: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for g in &groups {
        for s in JobState::ALL {
            jobs.insert((s.as_str(), g), 0);
        }
    }
    for c in counts {
        // A group the config does not have (a job naming one, a group removed) is "":
        // a series per name a job gave would grow without bound.
        let group = c
            .group
            .as_deref()
            .filter(|g| groups.contains(g))
            .unwrap_or("");
        *jobs.entry((c.state.as_str(), group)).or_default() += c.jobs;
    }
    for ((state, group), n) in &jobs {
        sample(
            &mut out,
            "supervisor_jobs",
            &[("state", state), ("group", group)],
            *n as f64,
        );
    }

    family(
        &mut out,
        "supervisor_queue_depth",
        "gauge",
        "Queued jobs by the group they are routed to (\"\" for jobs no group takes yet).",
    );
    for ((state, group), n) in &jobs {
        if *state == JobState::Queued.as_str() {
            sample(
                &mut out,
                "supervisor_queue_depth",
                &[("group", group)],
                *n as f64,
            );
        }
    }

    family(
        &mut out,
        "supervisor_workers",
        "gauge",
        "Worker processes by group and state.",
    );
    let mut workers: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for g in &groups {
        for s in WORKER_STATES {
            workers.insert((g, s), 0);
        }
    }
    let by_group = feed.workers_by_group();
    for (g, states) in &by_group {
        for (s, n) in states {
            *workers.entry((g.as_str(), s.as_str())).or_default() += n;
        }
    }
    for ((group, state), n) in &workers {
        sample(
            &mut out,
            "supervisor_workers",
            &[("group", group), ("state", state)],
            *n as f64,
        );
    }

    family(
        &mut out,
        "supervisor_job_duration_seconds",
        "histogram",
        "How long attempts ran, by group and outcome, since the supervisor started.",
    );
    for ((group, outcome), h) in &feed.durations {
        let labels = [("group", group.as_str()), ("outcome", *outcome)];
        let mut cumulative = 0;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i];
            let le = bound.to_string();
            sample(
                &mut out,
                "supervisor_job_duration_seconds_bucket",
                &[labels[0], labels[1], ("le", &le)],
                cumulative as f64,
            );
        }
        sample(
            &mut out,
            "supervisor_job_duration_seconds_bucket",
            &[labels[0], labels[1], ("le", "+Inf")],
            h.count as f64,
        );
        sample(
            &mut out,
            "supervisor_job_duration_seconds_sum",
            &labels,
            h.sum,
        );
        sample(
            &mut out,
            "supervisor_job_duration_seconds_count",
            &labels,
            h.count as f64,
        );
    }

    family(&mut out, "supervisor_child_restarts_total", "counter", "Child restarts scheduled since the supervisor started, by role and group (\"\" for the grabber).");
    let mut restarts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    restarts.insert(("grabber", ""), 0);
    for g in &groups {
        restarts.insert(("worker", g), 0);
    }
    for ((role, group), n) in &feed.restarts {
        *restarts.entry((role, group.as_str())).or_default() += n;
    }
    for ((role, group), n) in &restarts {
        sample(
            &mut out,
            "supervisor_child_restarts_total",
            &[("role", role), ("group", group)],
            *n as f64,
        );
    }

    family(
        &mut out,
        "supervisor_events_total",
        "counter",
        "Events written to the events file since the supervisor started, by event.",
    );
    for (event, n) in &feed.events {
        sample(
            &mut out,
            "supervisor_events_total",
            &[("event", event)],
            *n as f64,
        );
    }
    out
}

/// Queued jobs routed to `group`.
pub fn queued_in(counts: &[GroupCount], group: &str) -> u64 {
    (counts.iter())
        .filter(|c| c.state == JobState::Queued && c.group.as_deref() == Some(group))
        .map(|c| c.jobs)
        .sum()
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape(help, false));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v, true));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value (`\`, `"` and newlines escaped) or a help text (`\` and newlines).
fn escape(text: &str, quotes: bool) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '"' if quotes => s.push_str("\\\""),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("group", "a\"b\\c\nd")], 1.0);
        assert_eq!(out, "m{group=\"a\\\"b\\\\c\\nd\"} 1\n");
        let mut out = String::new();
        sample(&mut out, "m", &[], 0.5);
        assert_eq!(out, "m 0.5\n");
    }
}
