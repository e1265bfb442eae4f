//! Fuzz target `ipc`: no bytes a child or the supervisor could receive may panic their
//! decoding, and no value that decodes may panic what the receiver does with it.
//!
//! ipc-channel encodes each message with postcard. Every message type without an OS
//! handle is decoded from arbitrary bytes and from mutated encodings of valid messages:
//! [`ToChild`], [`FromChild`] but its `Hello` (which carries an [`IpcSender`], whose
//! decoding needs the channels the message came with), [`Claim`], [`JobPayload`],
//! [`GrabberSettings`], [`WireBackoff`] and [`WireEnd`]. Values of any content are then
//! taken through what the receiver does with them: every `f64` through
//! [`bounds::duration`], every [`WireBackoff`] into a [`Backoff`] and its delays, and the
//! core events built from them through [`EventRecord`] into JSON lines and back.
//!
//! A short, seeded run by default; `scripts/fuzz` runs it for longer. Environment:
//! `SUPERVISOR_FUZZ_SECONDS` (run each test for this long instead of a fixed number of
//! cases), `SUPERVISOR_FUZZ_SEED` (a number, or `random`; printed, to replay a run).
//!
//! [`IpcSender`]: ipc_channel::ipc::IpcSender

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use supervisor_core::backoff::Backoff;
use supervisor_core::bounds;
use supervisor_core::spec::OnExhausted;
use supervisor_core::supervision::{Event, Outcome, ProcessEnd, Role};
use supervisor_core::SplitMix64;
use supervisor_store::Route;

use crate::record::{EventLine, EventRecord};
use crate::wire::{
    ClaimReport, FromChild, GrabberSettings, JobPayload, PassItem, ToChild, WireBackoff, WireEnd,
};

use harness::{broken, fuzz};

/// The most seconds any converted value may stand for.
const MAX: Duration = Duration::from_secs(1_000_000_000);

#[test]
fn ipc_decoding_never_panics_on_arbitrary_bytes() {
    fuzz(
        "ipc",
        "ipc_decoding_never_panics_on_arbitrary_bytes",
        4000,
        64,
        arbitrary_bytes(),
        |bytes| decode_every_type(&bytes),
    );
}

#[test]
fn ipc_decoding_never_panics_on_mutated_encodings() {
    fuzz(
        "ipc",
        "ipc_decoding_never_panics_on_mutated_encodings",
        3000,
        64,
        (encoding(), prop::collection::vec(byte_edit(), 1..5)),
        |(bytes, edits)| decode_every_type(&apply_byte_edits(bytes, &edits)),
    );
}

#[test]
fn ipc_decoded_values_convert_without_panics() {
    fuzz(
        "ipc",
        "ipc_decoded_values_convert_without_panics",
        2000,
        64,
        (encoding(), 0..12u32),
        |(bytes, n)| {
            // A valid message decodes as its own type, and what the receiver does with
            // it never panics nor leaves the bounds.
            let found = decode_every_type_with(&bytes, n)?;
            match found {
                0 => Err(broken(format!(
                    "a valid encoding decodes as no type: {bytes:?}"
                ))),
                _ => Ok(()),
            }
        },
    );
}

/// ipc-channel 0.23 indexes a message's channels with the index a `Hello` carries,
/// unchecked (`deserialize_os_ipc_sender`, marked FIXME there), so a `Hello` naming a
/// channel that did not come with it panics its deserialiser. The supervisor decodes every
/// child message under `ipc::decoding`, which turns that panic into an error (and its
/// panic hook leaves it alone): the child is killed as one that sent garbage.
#[test]
fn a_hello_with_a_bad_channel_index_is_a_bad_message_not_a_crash() {
    // Variant 0 (`Hello`), channel index 5 (none came with it), pid 7.
    let decoded = crate::ipc::decoding(|| postcard::from_bytes::<FromChild>(&[0, 5, 7]));
    let error = decoded.expect_err("its decoding panics inside ipc-channel");
    assert!(error.starts_with("undecodable message"), "{error}");
    assert!(!crate::ipc::decoding_now());
}

// ----- decoding -----------------------------------------------------------------------

/// Decodes `bytes` as every handle-free message type, taking what decodes through the
/// receiver's conversions.
fn decode_every_type(bytes: &[u8]) -> Result<(), TestCaseError> {
    decode_every_type_with(bytes, 3).map(|_| ())
}

/// [`decode_every_type`], with delays computed up to the `n`-th; returns how many types
/// `bytes` decoded as.
fn decode_every_type_with(bytes: &[u8], n: u32) -> Result<usize, TestCaseError> {
    let mut found = 0;
    if let Ok(m) = postcard::from_bytes::<ToChild>(bytes) {
        found += 1;
        to_child(&m, n)?;
    }
    // Variant 0 is `Hello`, whose `IpcSender` only decodes within ipc-channel's receive
    // (see `hello_with_a_bad_channel_index_fails_to_decode`); the variant index is a
    // varint, read here exactly as postcard reads it for the enum.
    let hello = matches!(postcard::take_from_bytes::<u32>(bytes), Ok((0, _)));
    if !hello {
        if let Ok(m) = postcard::from_bytes::<FromChild>(bytes) {
            found += 1;
            from_child(&m, n)?;
        }
    }
    if let Ok(c) = postcard::from_bytes::<ClaimReport>(bytes) {
        found += 1;
        claim(&c)?;
    }
    if let Ok(p) = postcard::from_bytes::<JobPayload>(bytes) {
        found += 1;
        payload(&p)?;
    }
    if let Ok(s) = postcard::from_bytes::<GrabberSettings>(bytes) {
        found += 1;
        settings(&s, n)?;
    }
    if let Ok(b) = postcard::from_bytes::<WireBackoff>(bytes) {
        found += 1;
        backoff(b, n)?;
    }
    if let Ok(e) = postcard::from_bytes::<WireEnd>(bytes) {
        found += 1;
        let end = ProcessEnd::from(e);
        let _ = (end.code(), end.signal(), end.success());
    }
    Ok(found)
}

// ----- what the receivers do with a message -------------------------------------------

/// `bounds::duration`, never past its bound.
fn seconds(s: f64) -> Result<Duration, TestCaseError> {
    let d = bounds::duration(s);
    if d > MAX {
        return Err(broken(format!("{s} s became {d:?}")));
    }
    Ok(d)
}

/// The grabber's and the loop's use of a backoff: its delays, each within its band.
fn backoff(b: WireBackoff, n: u32) -> Result<Duration, TestCaseError> {
    let backoff = Backoff::from(b);
    let back = WireBackoff::from(backoff);
    for s in [back.initial_s, back.max_s] {
        seconds(s)?;
    }
    let mut rng = SplitMix64::new(u64::from(n));
    let mut last = None;
    for _ in 0..=n.min(12) {
        let d = backoff.next_delay(last, &mut rng);
        if d > MAX || d > backoff.max.max(backoff.initial) {
            return Err(broken(format!("{b:?}: delay {d:?}")));
        }
        last = Some(d);
    }
    let d = backoff.nth_delay(n, &mut rng);
    if d > MAX {
        return Err(broken(format!("{b:?}: delay {n} is {d:?}")));
    }
    Ok(d)
}

/// An event as the events file writes it: its record, as one JSON line, which reads
/// back as the same record.
fn record(event: &Event) -> Result<(), TestCaseError> {
    let line = EventLine {
        seq: 1,
        ts: 1_764_000_000.123,
        record: EventRecord::from(event),
    };
    let name = line.record.name();
    let text = (line.to_line()).map_err(|e| broken(format!("{name} does not serialise: {e}")))?;
    if text.contains('\n') {
        return Err(broken(format!("{name} takes more than one line")));
    }
    if EventLine::parse(&text).as_ref() != Some(&line) {
        return Err(broken(format!("{name} does not read back: {text}")));
    }
    Ok(())
}

fn to_child(m: &ToChild, n: u32) -> Result<(), TestCaseError> {
    match m {
        ToChild::Settings(s) => settings(s, n),
        ToChild::Run(p) => payload(p),
        ToChild::Grant {
            group,
            n: credits,
            epoch,
            poll,
            settle,
        } => {
            let _ = (
                group.len(),
                credits.saturating_add(1),
                epoch.saturating_add(1),
                poll.map(|p| p.saturating_add(1)),
            );
            // The grabber stores the sound ones as they are.
            for s in settle.iter().filter(|s| crate::wire::sound_settle(s)) {
                let _ = (s.job, s.attempt, s.owner, s.outcome.kind.as_str());
            }
            Ok(())
        }
        ToChild::Revoke { group, epoch } => {
            let _ = (group.len(), epoch.saturating_add(1));
            Ok(())
        }
        ToChild::Ping
        | ToChild::Stop
        | ToChild::Poll { .. }
        | ToChild::Wake
        | ToChild::Hold(_)
        | ToChild::SignalJob { .. } => Ok(()),
    }
}

fn from_child(m: &FromChild, n: u32) -> Result<(), TestCaseError> {
    match m {
        FromChild::Hello { .. } => Err(broken("decoded a Hello outside ipc-channel")),
        FromChild::Ready | FromChild::Pong => Ok(()),
        FromChild::Pass(found) => found.iter().try_for_each(pass_item),
        FromChild::SourceFailed { error, .. } => record(&Event::SupervisorStopping {
            reason: error.clone(),
        }),
        FromChild::JobExited { .. } => Ok(()),
        FromChild::JobStarted { job, pid } => record(&Event::JobStarted {
            job_id: *job,
            group: "g".into(),
            slot: 0,
            worker_pid: *pid,
            attempt: 1,
        }),
        FromChild::JobEnded {
            job,
            end,
            ran_for_s,
            start_error,
            reason,
            ..
        } => {
            let end = end.map(ProcessEnd::from);
            let ran_for = ran_for_s.map(seconds).transpose()?;
            record(&Event::JobFinished {
                job_id: *job,
                group: "g".into(),
                attempt: n,
                outcome: match end {
                    Some(e) if e.success() => Outcome::Succeeded,
                    _ => Outcome::Failed,
                },
                end,
                duration: ran_for.unwrap_or_default(),
                start_error: start_error.clone(),
                reason: reason.clone(),
            })?;
            record(&Event::ChildExited {
                role: Role::Worker {
                    group: "g".into(),
                    slot: n,
                },
                pid: Some(n),
                end,
                expected: false,
                job_id: Some(*job),
                reason: start_error.clone(),
                retired: false,
            })
        }
    }
}

/// The loop's use of one finding of a grabber's pass.
fn pass_item(item: &PassItem) -> Result<(), TestCaseError> {
    match item {
        PassItem::Claimed(c) => claim(c),
        PassItem::SourceReport { .. }
        | PassItem::CancelRequested { .. }
        | PassItem::Settled { .. } => Ok(()),
        PassItem::Refused {
            job,
            attempts,
            reason,
        } => record(&Event::JobDead {
            job_id: *job,
            attempts: *attempts,
            reason: Some(reason.clone()),
        }),
    }
}

/// The loop's use of a claim: its timeout as a duration, and its events.
fn claim(c: &ClaimReport) -> Result<(), TestCaseError> {
    let timeout = c.timeout_s.map(seconds).transpose()?;
    record(&Event::JobStarted {
        job_id: c.id,
        group: c.group.clone(),
        slot: 0,
        worker_pid: 1,
        attempt: c.attempt,
    })?;
    record(&Event::JobRetryScheduled {
        job_id: c.id,
        attempt: c.attempt,
        delay: timeout.unwrap_or_default(),
    })?;
    record(&Event::JobDead {
        job_id: c.id,
        attempts: c.max_attempts.unwrap_or(c.attempt),
        reason: None,
    })
}

/// The worker's first look at a job: what `execve` would be given.
fn payload(p: &JobPayload) -> Result<(), TestCaseError> {
    let _ = bounds::check_exec_size(
        p.command.iter().map(String::as_str),
        p.env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let _ = (p.id, p.attempt, p.cwd.as_deref().map(str::len));
    Ok(())
}

/// The grabber's use of its settings: its poll interval and error backoff, and the events
/// a restart of it would write.
fn settings(s: &GrabberSettings, n: u32) -> Result<(), TestCaseError> {
    let poll = seconds(s.poll_interval_s)?;
    let delay = backoff(s.error_backoff, n)?;
    let _ = supervisor_store::route(&s.routes, None, &BTreeMap::new());
    record(&Event::ChildRestartScheduled {
        role: Role::Grabber,
        delay,
        restarts_in_period: n,
    })?;
    record(&Event::GroupGaveUp {
        group: s.runnable.first().cloned(),
        restarts: n,
        period: poll,
        action: OnExhausted::Disable,
    })
}

// ----- generators ---------------------------------------------------------------------

/// Arbitrary bytes, short and long, with runs of the bytes varints are made of.
fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        2 => prop::collection::vec(
            prop::sample::select(vec![0x00, 0x01, 0x7f, 0x80, 0xff, 0x0f, 0x10]),
            0..64,
        ),
        1 => prop::collection::vec(any::<u8>(), 0..4096),
    ]
}

const FLOATS: &[f64] = &[
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    1e300,
    -1e300,
    -1.0,
    0.0,
    -0.0,
    1e-320,
    5e-324,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    f64::EPSILON,
    0.5,
    1.0,
    1e9,
    1e9 + 1.0,
    1.8e19,
    1.8446744073709552e19,
];

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![prop::sample::select(FLOATS), any::<f64>(), 0.0..2e9f64]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_]{0,8}",
        1 => prop::sample::select(vec!["", "\0", "a\0b", "=", "A=B", "\n", "\u{202e}"])
            .prop_map(String::from),
        2 => any::<String>(),
        1 => prop::sample::select(vec![131_072, 200_000]).prop_map(|n| "x".repeat(n)),
    ]
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(string(), 0..4)
}

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(string(), string(), 0..4)
}

fn wire_backoff() -> impl Strategy<Value = WireBackoff> {
    (float(), float(), float()).prop_map(|(initial_s, max_s, jitter)| WireBackoff {
        initial_s,
        max_s,
        jitter,
    })
}

fn wire_end() -> impl Strategy<Value = WireEnd> {
    prop_oneof![
        any::<i32>().prop_map(WireEnd::Code),
        any::<i32>().prop_map(WireEnd::Signal),
    ]
}

fn route() -> impl Strategy<Value = Route> {
    (
        string(),
        prop::option::of(prop::collection::btree_map(string(), strings(), 0..3)),
    )
        .prop_map(|(group, matches)| Route { group, matches })
}

fn grabber_settings() -> impl Strategy<Value = GrabberSettings> {
    (
        prop::collection::vec(route(), 0..3),
        float(),
        wire_backoff(),
        strings(),
    )
        .prop_map(
            |(routes, poll_interval_s, error_backoff, runnable)| GrabberSettings {
                routes,
                poll_interval_s,
                error_backoff,
                runnable,
            },
        )
}

fn claim_value() -> impl Strategy<Value = ClaimReport> {
    (
        (any::<i64>(), string(), any::<u32>()),
        (
            prop::option::of(float()),
            prop::option::of(any::<u32>()),
            any::<u64>(),
        ),
        (strings(), env(), prop::option::of(string())),
    )
        .prop_map(
            |((id, group, attempt), (timeout_s, max_attempts, epoch), (command, env, cwd))| {
                ClaimReport {
                    id,
                    group,
                    attempt,
                    timeout_s,
                    max_attempts,
                    epoch,
                    command,
                    env,
                    cwd,
                }
            },
        )
}

/// An outcome handed to the grabber, any times included.
fn settle() -> impl Strategy<Value = supervisor_store::Settle> {
    use supervisor_store::{AfterAttempt, OutcomeKind, OutcomeRecord, Settle};
    let kind = prop_oneof![
        Just(OutcomeKind::Succeeded),
        Just(OutcomeKind::Failed),
        Just(OutcomeKind::TimedOut),
        Just(OutcomeKind::Lost),
        Just(OutcomeKind::Canceled),
    ];
    let next = prop_oneof![
        Just(AfterAttempt::Done),
        Just(AfterAttempt::Dead),
        any::<f64>().prop_map(|at| AfterAttempt::Retry { at }),
    ];
    (
        (any::<i64>(), any::<u32>(), any::<i64>(), kind),
        (any::<Option<i32>>(), any::<Option<i32>>()),
        (prop::option::of(string()), prop::option::of(string())),
        (next, any::<f64>()),
    )
        .prop_map(
            |(
                (job, attempt, owner, kind),
                (exit_code, signal),
                (start_error, reason),
                (next, at),
            )| {
                Settle {
                    job,
                    attempt,
                    owner,
                    outcome: OutcomeRecord {
                        kind,
                        exit_code,
                        signal,
                        start_error,
                        reason,
                    },
                    next,
                    at,
                }
            },
        )
}

fn job_payload() -> impl Strategy<Value = JobPayload> {
    (
        any::<i64>(),
        any::<u32>(),
        strings(),
        env(),
        prop::option::of(string()),
    )
        .prop_map(|(id, attempt, command, env, cwd)| JobPayload {
            id,
            attempt,
            command,
            env,
            cwd,
            process: Default::default(),
        })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("a message without handles always encodes")
}

/// The encoding of a [`ToChild`] of any variant.
fn to_child_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        Just(encode(&ToChild::Ping)),
        Just(encode(&ToChild::Stop)),
        Just(encode(&ToChild::Wake)),
        any::<bool>().prop_map(|hold| encode(&ToChild::Hold(hold))),
        grabber_settings().prop_map(|s| encode(&ToChild::Settings(s))),
        (
            string(),
            any::<u32>(),
            any::<u64>(),
            prop::option::of(any::<u64>()),
            prop::collection::vec(settle(), 0..3),
        )
            .prop_map(|(group, n, epoch, poll, settle)| encode(&ToChild::Grant {
                group,
                n,
                epoch,
                poll,
                settle,
            })),
        (string(), any::<u64>())
            .prop_map(|(group, epoch)| encode(&ToChild::Revoke { group, epoch })),
        any::<u64>().prop_map(|epoch| encode(&ToChild::Poll { epoch })),
        job_payload().prop_map(|p| encode(&ToChild::Run(p))),
        (any::<i64>(), any::<bool>())
            .prop_map(|(job, kill)| encode(&ToChild::SignalJob { job, kill })),
    ]
    .boxed()
}

/// A finding of a grabber's pass, of any variant.
fn pass_item_value() -> BoxedStrategy<PassItem> {
    prop_oneof![
        claim_value().prop_map(PassItem::Claimed),
        (any::<u64>(), any::<bool>())
            .prop_map(|(epoch, empty)| PassItem::SourceReport { epoch, empty }),
        any::<i64>().prop_map(|job| PassItem::CancelRequested { job }),
        (any::<i64>(), any::<u32>(), string()).prop_map(|(job, attempts, reason)| {
            PassItem::Refused {
                job,
                attempts,
                reason,
            }
        }),
    ]
    .boxed()
}

/// The encoding of a [`FromChild`] of any variant but `Hello`.
fn from_child_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        Just(encode(&FromChild::Ready)),
        Just(encode(&FromChild::Pong)),
        prop::collection::vec(pass_item_value(), 0..4)
            .prop_map(|found| encode(&FromChild::Pass(found))),
        string().prop_map(|error| encode(&FromChild::SourceFailed {
            error,
            claimed_before: 1.0
        })),
        (any::<i64>(), any::<u32>())
            .prop_map(|(job, pid)| encode(&FromChild::JobStarted { job, pid })),
        (any::<i64>(), wire_end())
            .prop_map(|(job, end)| encode(&FromChild::JobExited { job, end })),
        (
            any::<i64>(),
            prop::option::of(wire_end()),
            prop::option::of(float()),
            prop::option::of(string()),
            prop::option::of(string()),
            any::<bool>(),
        )
            .prop_map(
                |(job, end, ran_for_s, start_error, reason, exited_first)| encode(
                    &FromChild::JobEnded {
                        job,
                        end,
                        ran_for_s,
                        start_error,
                        reason,
                        exited_first,
                    }
                )
            ),
    ]
    .boxed()
}

/// The encoding of a valid message of any handle-free type.
fn encoding() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => to_child_bytes(),
        3 => from_child_bytes(),
        1 => claim_value().prop_map(|c| encode(&c)),
        1 => job_payload().prop_map(|p| encode(&p)),
        1 => grabber_settings().prop_map(|s| encode(&s)),
        1 => wire_backoff().prop_map(|b| encode(&b)),
        1 => wire_end().prop_map(|e| encode(&e)),
    ]
}

/// One change to an encoding; positions are taken modulo its length.
#[derive(Clone, Debug)]
enum ByteEdit {
    /// Flip one bit.
    Flip(usize, u8),
    /// Set one byte.
    Set(usize, u8),
    /// Insert bytes (often the longest varints: huge lengths and counts).
    Insert(usize, Vec<u8>),
    /// Delete up to `n` bytes.
    Delete(usize, usize),
    /// Cut the encoding short.
    Truncate(usize),
    /// Repeat a slice.
    Repeat(usize, usize),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let insert = prop_oneof![
        prop::sample::select(vec![
            vec![0xff, 0xff, 0xff, 0xff, 0x0f],
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
            vec![0xff; 16],
            vec![0x00; 8],
            vec![0x7f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0, 0x7f],
            vec![0xc0, 0x80],
            vec![0xed, 0xa0, 0x80],
        ]),
        prop::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| ByteEdit::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| ByteEdit::Set(at, b)),
        (any::<usize>(), insert).prop_map(|(at, bytes)| ByteEdit::Insert(at, bytes)),
        (any::<usize>(), 1..8usize).prop_map(|(at, n)| ByteEdit::Delete(at, n)),
        any::<usize>().prop_map(ByteEdit::Truncate),
        (any::<usize>(), 1..16usize).prop_map(|(at, n)| ByteEdit::Repeat(at, n)),
    ]
}

fn apply_byte_edits(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match edit {
            ByteEdit::Flip(at, bit) if len > 0 => bytes[at % len] ^= 1 << bit,
            ByteEdit::Set(at, b) if len > 0 => bytes[at % len] = *b,
            ByteEdit::Insert(at, more) => {
                let at = at % (len + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            ByteEdit::Delete(at, n) if len > 0 => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
            ByteEdit::Truncate(at) => bytes.truncate(at % (len + 1)),
            ByteEdit::Repeat(at, n) if len > 0 => {
                let at = at % len;
                let slice = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, slice);
            }
            _ => {}
        }
    }
    bytes
}

/// The time-budgeted, seeded proptest loop shared by the fuzz targets (each test crate
/// holds its own copy).
mod harness {
    use std::cell::Cell;
    use std::fmt::Debug;
    use std::time::{Duration, Instant};

    use proptest::strategy::Strategy;
    use proptest::test_runner::{
        Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
    };

    /// Run each test for this many seconds (instead of its fixed number of cases).
    pub const SECONDS_VAR: &str = "SUPERVISOR_FUZZ_SECONDS";
    /// The seed: a number, or `random`; unset, a fixed one.
    pub const SEED_VAR: &str = "SUPERVISOR_FUZZ_SEED";
    const DEFAULT_SEED: u64 = 0x5EED_F022;
    /// How a failed check (not a panic) starts its message.
    const BROKEN: &str = "broken invariant: ";

    /// A case that broke an invariant without panicking.
    pub fn broken(what: impl std::fmt::Display) -> TestCaseError {
        TestCaseError::fail(format!("{BROKEN}{what}"))
    }

    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn first_seed() -> u64 {
        match std::env::var(SEED_VAR) {
            Err(_) => DEFAULT_SEED,
            Ok(s) if s.trim() == "random" => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                mix(nanos ^ u64::from(std::process::id()).rotate_left(32))
            }
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_VAR}: a number or `random`, not {s:?}")),
        }
    }

    fn budget() -> Option<Duration> {
        let s = std::env::var(SECONDS_VAR).ok()?;
        let secs: f64 = s
            .trim()
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite() && *x >= 0.0)
            .unwrap_or_else(|| panic!("{SECONDS_VAR}: a number of seconds, not {s:?}"));
        Some(Duration::from_secs_f64(secs))
    }

    /// Runs `check` on values of `strategy` in batches of `batch` cases, each batch from
    /// its own seed (the first from [`SEED_VAR`], each next one derived from the last),
    /// until `default_cases` have passed or, with [`SECONDS_VAR`] set, until that time is
    /// up. A panic or a failed check is shrunk by proptest and fails the test, naming the
    /// seed that replays its batch first. Prints one `fuzz-result` line for `scripts/fuzz`.
    pub fn fuzz<S>(
        target: &str,
        test: &str,
        default_cases: u64,
        batch: u32,
        strategy: S,
        check: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S: Strategy,
        S::Value: Debug,
    {
        let deadline = budget().map(|b| Instant::now() + b);
        let first = first_seed();
        let mut seed = first;
        let passed = Cell::new(0u64);
        let started = Instant::now();
        loop {
            let done = match deadline {
                Some(deadline) => Instant::now() >= deadline,
                None => passed.get() >= default_cases,
            };
            if done {
                break;
            }
            let mut bytes = [0u8; 32];
            let mut s = seed;
            for chunk in bytes.chunks_mut(8) {
                s = mix(s);
                chunk.copy_from_slice(&s.to_le_bytes());
            }
            let config = Config {
                cases: batch,
                failure_persistence: None,
                rng_algorithm: RngAlgorithm::ChaCha,
                ..Config::default()
            };
            let mut runner =
                TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
            let result = runner.run(&strategy, |value| {
                let result = check(value);
                if result.is_ok() {
                    passed.set(passed.get() + 1);
                }
                result
            });
            let (why, input) = match result {
                Ok(()) => {
                    seed = mix(seed);
                    continue;
                }
                Err(TestError::Fail(why, input)) => {
                    (why.message().to_string(), format!("{input:#?}"))
                }
                Err(TestError::Abort(why)) => (why.message().to_string(), String::new()),
            };
            let (panics, broken) = match why.starts_with(BROKEN) {
                true => (0, 1),
                false => (1, 0),
            };
            eprintln!(
                "fuzz-result target={target} test={test} cases={} panics={panics} broken={broken} seed={first} secs={:.1}",
                passed.get(),
                started.elapsed().as_secs_f64()
            );
            let input: String = input.chars().take(20_000).collect();
            panic!(
                "{target}/{test}: {why}\nminimal input: {input}\n\
                 replay: {SEED_VAR}={seed} (the failing batch then runs first)"
            );
        }
        eprintln!(
            "fuzz-result target={target} test={test} cases={} panics=0 broken=0 seed={first} secs={:.1}",
            passed.get(),
            started.elapsed().as_secs_f64()
        );
    }
}
