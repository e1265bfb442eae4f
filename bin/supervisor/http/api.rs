//! The routes: the JSON API, the event stream, the metrics and the dashboard's files.
//! Every store access runs on a blocking thread with a pooled connection, through the
//! same functions as the verbs; every error is a JSON `{"error": ...}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use supervisor_config::{Config, HttpConfig};
use supervisor_store::{CancelResult, GroupCount, JobState};
use tokio::sync::Semaphore;

use super::auth::{self, Access};
use super::conn::{Busy, ConnTag, Limited};
use super::feed::Feed;
use super::{assets, metrics, stream};
use crate::commands::{self, CommandError, JobLog, ReloadAnswer};
use crate::events_file::wall_now;
use crate::record::EventLine;
use crate::store::Store;

/// The largest request body (a submit of many jobs).
const MAX_BODY: usize = 1 << 20;
/// The most jobs one `POST /api/jobs` queues.
const MAX_JOBS_PER_SUBMIT: usize = 10_000;
/// `limit` of `GET /api/jobs`: its default and its most.
const JOBS_DEFAULT: u32 = 100;
const JOBS_MAX: u32 = 1000;
/// How long a request's handler may take (reading its body included); an answer that
/// streams is not counted, only the handler that starts it.
const HANDLER_WITHIN: Duration = Duration::from_secs(30);
/// The most event streams and log follows at once.
const MAX_STREAMS: usize = 64;
/// How long a count of the jobs serves, at least and at most.
const COUNTS_FOR: Duration = Duration::from_secs(1);
const COUNTS_AT_MOST: Duration = Duration::from_secs(15);
/// A count serves at least this many times as long as it took to make.
const COUNTS_SHARE: u32 = 100;
/// The most blocking threads (each with its store connection) requests use at once.
const BLOCKING_THREADS: usize = 8;

/// What every request handler shares.
pub struct App {
    pub feed: Arc<Feed>,
    http: HttpConfig,
    /// Store connections not in use.
    stores: Mutex<Vec<Store>>,
    streams: Arc<Semaphore>,
    /// The last count of jobs by state and group, and when it was made: one query a
    /// second at most, whatever the number of dashboards and scrapers (it reads every
    /// job).
    counts: Mutex<Option<Counts>>,
}

/// A count of the jobs by state and group, when it was made and how long it took.
#[derive(Debug)]
struct Counts {
    at: std::time::Instant,
    took: Duration,
    counts: Arc<Vec<GroupCount>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn new(feed: Arc<Feed>, http: HttpConfig) -> App {
        App {
            feed,
            http,
            stores: Mutex::new(Vec::new()),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            counts: Mutex::new(None),
        }
    }

    /// Jobs by state and group, made at most [`COUNTS_FOR`] ago, or longer ago when the
    /// query is slow (a deep store): never more than 1/[`COUNTS_SHARE`] of a thread's
    /// time goes to counting. Call on a blocking thread.
    fn group_counts(&self, store: &mut Store) -> Result<Arc<Vec<GroupCount>>, CommandError> {
        let mut cached = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = &*cached {
            let serves = (c.took * COUNTS_SHARE).clamp(COUNTS_FOR, COUNTS_AT_MOST);
            if c.at.elapsed() < serves {
                return Ok(c.counts.clone());
            }
        }
        let started = std::time::Instant::now();
        let counts = Arc::new(store.counts_by_group(wall_now())?);
        *cached = Some(Counts {
            at: std::time::Instant::now(),
            took: started.elapsed(),
            counts: counts.clone(),
        });
        Ok(counts)
    }

    /// Run `f` with the config and a store connection (a pooled one, else a new one); a
    /// connection whose call failed is dropped, not pooled. Call on a blocking thread.
    pub fn with_store<T>(
        &self,
        f: impl FnOnce(&Config, &mut Store) -> Result<T, CommandError>,
    ) -> Result<T, CommandError> {
        let config = self.feed.config();
        let pooled = self
            .stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut store = match pooled {
            Some(s) => s,
            None => commands::open_store(&config.store)?,
        };
        let result = f(&config, &mut store);
        if !matches!(result, Err(CommandError::Failed(_))) {
            let mut pool = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < BLOCKING_THREADS {
                pool.push(store);
            }
        }
        result
    }
}

/// Run `f` on a blocking thread with a store connection.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&Config, &mut Store) -> Result<T, CommandError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || app.with_store(f))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the request failed"))?
        .map_err(ApiError::from)
}

/// Serve `app` on `listener` until the process ends (on the calling thread).
pub fn serve(listener: std::net::TcpListener, app: App) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("http-blocking")
        .thread_keep_alive(Duration::from_secs(10))
        .build()?;
    runtime.block_on(async move {
        let listener = Limited::new(tokio::net::TcpListener::from_std(listener)?);
        let service = router(Arc::new(app)).into_make_service_with_connect_info::<ConnTag>();
        axum::serve(listener, service).await?;
        Ok(())
    })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(status))
        .route("/api/jobs", get(jobs).post(submit))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/log", get(job_log))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/retry", post(retry))
        .route("/api/groups/{name}/pause", post(pause))
        .route("/api/groups/{name}/resume", post(resume))
        .route("/api/reload", post(reload))
        .route("/api/events", get(events))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// An error answer: its status and `{"error": message}` (and more fields, if any).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        let text = e.to_string();
        let message = text
            .strip_prefix("supervisor: ")
            .unwrap_or(&text)
            .to_string();
        let status = match e {
            CommandError::Usage(_) | CommandError::JobFile { .. } => StatusCode::BAD_REQUEST,
            CommandError::UnknownJob(_) => StatusCode::NOT_FOUND,
            CommandError::NotRunning(_) => StatusCode::SERVICE_UNAVAILABLE,
            CommandError::Config(_) | CommandError::Failed(_) => {
                log::warn!("http: {message}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, message)
    }
}

type Answer = Result<Response, ApiError>;

/// A verb's usage error (400) that can mean only one thing where it is called: answered
/// as `status`.
fn usage_means(status: StatusCode) -> impl FnOnce(ApiError) -> ApiError {
    move |e| match e.status {
        StatusCode::BAD_REQUEST => ApiError { status, ..e },
        _ => e,
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Before every route: the `Host` (no DNS rebinding), the token (reads on a non-loopback
/// address, every write), and after it JSON for axum's own bare answers (405) and the
/// headers every answer carries.
async fn guard(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    // The connection is busy until the answer is made (a stream's, until it ends: its
    // handler takes a `Busy` of its own from the tag).
    let tag = (req.extensions())
        .get::<axum::extract::ConnectInfo<ConnTag>>()
        .map(|c| c.0.clone());
    let _busy = tag.as_ref().map(Busy::new);
    req.extensions_mut().insert(Hold(tag));
    if !auth::host_is_allowed(req.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the Host header names this server by a name other than an address or \
             localhost; use its address",
        )
        .into_response();
    }
    let access = match *req.method() {
        Method::GET | Method::HEAD => Access::Read,
        _ => Access::Write,
    };
    let query_token = req.uri().query().and_then(|q| {
        serde_urlencoded::from_str::<BTreeMap<String, String>>(q)
            .ok()
            .and_then(|mut m| m.remove("token"))
    });
    // The dashboard's own files carry nothing secret: they load without the token,
    // which the page then asks for.
    let is_asset = matches!(req.uri().path(), "/" | "/app.js" | "/style.css");
    if !is_asset {
        if let Err(e) = auth::check(&app.http, req.headers(), query_token.as_deref(), access) {
            return e.into_response();
        }
    }
    // A body said to be too large is refused before it is waited for: a client that
    // declares 100 GB and sends 2 bytes must not hold a connection open.
    let declared = (req.headers().get(header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        let mut r = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY} bytes"),
        )
        .into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let mut r = match tokio::time::timeout(HANDLER_WITHIN, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            let mut r = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request took over {} s (its body too slow to come?)",
                    HANDLER_WITHIN.as_secs()
                ),
            )
            .into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    };
    if r.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allow = r.headers().get(header::ALLOW).cloned();
        r = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
            .into_response();
        if let Some(a) = allow {
            r.headers_mut().insert(header::ALLOW, a);
        }
    }
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// The connection a request came on (none when served without connect info): a stream
/// keeps it busy while it lasts.
#[derive(Clone, Debug)]
struct Hold(Option<ConnTag>);

impl Hold {
    fn busy(&self) -> Option<Busy> {
        self.0.as_ref().map(Busy::new)
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The path's one parameter, or a 400 that says what is wrong with it.
fn path_param(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(p)| p)
        .map_err(|e| bad_request(format!("bad path: {}", e.body_text())))
}

/// The job id of a path (`/api/jobs/{id}...`), read as the verbs read one (an id no
/// job has is a 404).
struct JobIdPath(i64);

impl<S: Send + Sync> FromRequestParts<S> for JobIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let text = path_param(Path::<String>::from_request_parts(parts, state).await)?;
        Ok(JobIdPath(commands::parse_id(&text)?))
    }
}

/// The group name of a path (`/api/groups/{name}/...`).
struct GroupPath(String);

impl<S: Send + Sync> FromRequestParts<S> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(GroupPath(path_param(
            Path::<String>::from_request_parts(parts, state).await,
        )?))
    }
}

/// A query that holds nothing but the token, if anything: any other key is a 400.
struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        query(Query::<Plain>::from_request_parts(parts, state).await)?;
        Ok(NoQuery)
    }
}

/// A query string, or a 400 that says what is wrong with it.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| bad_request(format!("bad query: {}", e.body_text())))
}

// ---- reads ---------------------------------------------------------------------------

async fn status(State(app): State<Arc<App>>, _: NoQuery) -> Answer {
    let (live, last_ts, last_seq, workers, disabled, restarts) = {
        let f = app.feed.state();
        let now = wall_now();
        let restarts: BTreeMap<String, Vec<u64>> = (f.config.groups.iter())
            .map(|g| (g.name.clone(), f.restarts_per_minute(&g.name, now)))
            .collect();
        let workers = f.workers_by_group();
        (
            f.replay.clone(),
            f.last_ts,
            f.last_seq,
            workers,
            f.disabled.clone(),
            restarts,
        )
    };
    let reads_need_token = !super::reads_are_open(&app.http);
    let app2 = app.clone();
    let mut body = tokio::task::spawn_blocking(move || {
        let config = app2.feed.config();
        // The child table is worth having when the store is not: its counts are then
        // zeros, with a warning, as in `status`.
        let read = app2.with_store(|_, store| Ok((app2.group_counts(store)?, store.paused()?)));
        let (counts, paused) = match read {
            Ok((counts, paused)) => (Ok(counts), Ok(paused)),
            Err(e) => {
                let e = anyhow::anyhow!("{e}");
                (Err(anyhow::anyhow!("{e}")), Err(e))
            }
        };
        let groups_counts = counts.as_ref().map(|c| c.to_vec()).unwrap_or_default();
        let by_state = counts.map(|c| {
            let mut by_state: BTreeMap<JobState, u64> =
                JobState::ALL.iter().map(|s| (*s, 0)).collect();
            for g in c.iter() {
                *by_state.entry(g.state).or_default() += g.jobs;
            }
            by_state
        });
        let paused_list = paused.as_ref().cloned().unwrap_or_default();
        let mut report = commands::running_json(&live, last_ts, by_state, paused);
        let groups: Vec<Value> = (config.groups.iter())
            .map(|g| {
                json!({
                    "name": g.name,
                    "max_workers": g.max_workers,
                    "workers": workers.get(&g.name).cloned().unwrap_or_default(),
                    "queued": metrics::queued_in(&groups_counts, &g.name),
                    "paused": paused_list.contains(&g.name),
                    "disabled": disabled.contains(&g.name),
                    "restarts_per_minute": restarts.get(&g.name),
                })
            })
            .collect();
        report["groups"] = Value::Array(groups);
        report
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the request failed"))?;
    body["last_seq"] = json!(last_seq);
    body["now"] = json!(wall_now());
    body["auth"] = json!({ "reads_need_token": reads_need_token });
    Ok(Json(body).into_response())
}

/// A query that takes nothing but the token (which [`guard`] reads).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain {
    #[serde(rename = "token")]
    _token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    state: Option<String>,
    group: Option<String>,
    outcome: Option<String>,
    limit: Option<String>,
    /// Read by [`guard`] (an `EventSource` cannot send the header).
    #[serde(rename = "token")]
    _token: Option<String>,
}

async fn jobs(State(app): State<Arc<App>>, q: Result<Query<JobsQuery>, QueryRejection>) -> Answer {
    let q = query(q)?;
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => JOBS_DEFAULT,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if n <= JOBS_MAX => n,
            _ => {
                return Err(bad_request(format!(
                    "limit: `{l}` is not a number from 0 to {JOBS_MAX}"
                )))
            }
        },
    };
    let empty_none = |v: Option<String>| v.filter(|s| !s.is_empty());
    let filter = commands::job_filter(
        empty_none(q.state).as_deref(),
        empty_none(q.group).as_deref(),
        empty_none(q.outcome).as_deref(),
        limit,
    )
    .map_err(|e| bad_request(e.trim_start_matches("--").to_string()))?;
    let list = blocking(&app, move |config, store| {
        let jobs = store.list_newest(&filter, wall_now())?;
        Ok(jobs
            .iter()
            .map(|j| commands::job_json(config, j))
            .collect::<Vec<Value>>())
    })
    .await?;
    Ok(Json(list).into_response())
}

async fn job(State(app): State<Arc<App>>, JobIdPath(id): JobIdPath, _: NoQuery) -> Answer {
    // Which groups gave up, as the feed has followed them (not the whole events file).
    let disabled = app.feed.state().disabled.clone();
    let body = blocking(&app, move |config, store| {
        let now = wall_now();
        let j = store.get(id, now)?.ok_or(CommandError::UnknownJob(id))?;
        let mut body = commands::job_json(config, &j);
        let disabled = |g: &str| disabled.contains(g);
        body["explain"] = json!(commands::reasons(config, store, &j, now, &disabled)?);
        Ok(body)
    })
    .await?;
    Ok(Json(body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    follow: Option<String>,
    attempt: Option<String>,
    /// Read by [`guard`] (an `EventSource` cannot send the header).
    #[serde(rename = "token")]
    _token: Option<String>,
}

async fn job_log(
    State(app): State<Arc<App>>,
    axum::Extension(hold): axum::Extension<Hold>,
    JobIdPath(id): JobIdPath,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let follow = match q.follow.as_deref() {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => return Err(bad_request(format!("follow: `{other}` is not 1 or 0"))),
    };
    let attempt = match q.attempt.as_deref() {
        None | Some("") => None,
        Some(a) => Some(
            a.parse::<u32>()
                .map_err(|_| bad_request(format!("attempt: `{a}` is not an attempt number")))?,
        ),
    };
    let permit = if follow {
        Some(app.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many streams open; try later",
            )
        })?)
    } else {
        None
    };
    let log = blocking(&app, move |config, store| {
        JobLog::open(config, store, id, follow, attempt)
    })
    .await?;
    let body = stream::log(&app, log, (permit, hold.busy()));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<String>,
    /// Read by [`guard`] (an `EventSource` cannot send the header).
    #[serde(rename = "token")]
    _token: Option<String>,
}

async fn events(
    State(app): State<Arc<App>>,
    axum::Extension(hold): axum::Extension<Hold>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    // A reconnecting EventSource says where it was; that wins over the URL's `after`.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let after = match resumed.or(q.after.as_deref().filter(|a| !a.is_empty())) {
        None => None,
        Some(a) => Some(
            a.trim()
                .parse::<u64>()
                .map_err(|_| bad_request(format!("after: `{a}` is not an event seq")))?,
        ),
    };
    let permit = app.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many streams open; try later",
        )
    })?;
    let path = app.feed.config().events.path.clone();
    let body = stream::events(&app, path, after, (permit, hold.busy()));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

async fn metrics_text(State(app): State<Arc<App>>, _: NoQuery) -> Answer {
    let app2 = app.clone();
    let counts = blocking(&app, move |_, store| app2.group_counts(store)).await?;
    let text = metrics::render(&app.feed.state(), &counts);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

// ---- writes --------------------------------------------------------------------------

async fn submit(
    State(app): State<Arc<App>>,
    _: NoQuery,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("cannot read the body: {}", e.body_text()),
        )
    })?;
    let jobs = supervisor_store::parse_jobs_json(&body, MAX_JOBS_PER_SUBMIT).map_err(|errors| {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "error": format!("nothing was queued: {}", errors.join("; ")),
                "errors": errors,
            }),
        }
    })?;
    if let Some((n, j)) = jobs.iter().enumerate().find(|(_, j)| {
        j.cwd
            .as_deref()
            .is_some_and(|c| !std::path::Path::new(c).is_absolute())
    }) {
        return Err(bad_request(format!(
            "nothing was queued: job {}: cwd {:?} is relative; over HTTP it must be absolute",
            n + 1,
            j.cwd.as_deref().unwrap_or_default()
        )));
    }
    let single = jobs.len() == 1;
    let (ids, warning) = blocking(&app, move |config, store| {
        commands::queue(config, store, &jobs, |index, message| {
            commands::CommandError::Usage(match single {
                true => format!("job: {message}"),
                false => format!("job {}: {message}", index + 1),
            })
        })
    })
    .await?;
    let body = json!({ "ids": ids, "warnings": warning.into_iter().collect::<Vec<_>>() });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn cancel(State(app): State<Arc<App>>, JobIdPath(id): JobIdPath, _: NoQuery) -> Answer {
    let result = blocking(&app, move |config, store| {
        commands::cancel_job(config, store, id)
    })
    .await?;
    let (result, state) = match result {
        CancelResult::Canceled => ("canceled", JobState::Canceled),
        CancelResult::Requested => ("stopping", JobState::Running),
        CancelResult::AlreadyFinished(s) => ("already_finished", s),
        CancelResult::Unknown => return Err(CommandError::UnknownJob(id).into()),
    };
    Ok(Json(json!({ "id": id, "result": result, "state": state.as_str() })).into_response())
}

async fn retry(State(app): State<Arc<App>>, JobIdPath(id): JobIdPath, _: NoQuery) -> Answer {
    let ids = blocking(&app, move |config, store| {
        commands::retry_jobs(config, store, &[id])
    })
    .await
    // Known, but not a job that can be retried.
    .map_err(usage_means(StatusCode::CONFLICT))?;
    Ok(Json(json!({ "ids": ids })).into_response())
}

async fn pause(State(app): State<Arc<App>>, GroupPath(name): GroupPath, _: NoQuery) -> Answer {
    set_paused(&app, name, true).await
}

async fn resume(State(app): State<Arc<App>>, GroupPath(name): GroupPath, _: NoQuery) -> Answer {
    set_paused(&app, name, false).await
}

async fn set_paused(app: &Arc<App>, name: String, pause: bool) -> Answer {
    let paused = blocking(app, move |config, store| {
        commands::set_paused(config, store, std::slice::from_ref(&name), pause)?;
        Ok(store.paused()?)
    })
    .await
    // The only usage error here: no such group.
    .map_err(usage_means(StatusCode::NOT_FOUND))?;
    Ok(Json(json!({ "paused": paused })).into_response())
}

/// `POST /api/reload`: SIGHUP to ourselves, as `supervisor reload` sends it, and the
/// answer from the events that follow.
async fn reload(State(app): State<Arc<App>>, _: NoQuery) -> Answer {
    let mut live = app.feed.subscribe();
    supervisor_os::signal_pid(std::process::id(), supervisor_os::Sig::SIGHUP).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot signal: {e}"),
        )
    })?;
    let answer = tokio::time::timeout(commands::RELOAD_ANSWER_WITHIN, async {
        loop {
            match live.recv().await {
                Ok(l) => {
                    let answer = EventLine::parse(&l.line).and_then(|e| ReloadAnswer::of(e.record));
                    if let Some(a) = answer {
                        return Some(a);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    })
    .await;
    match answer {
        Ok(Some(ReloadAnswer::Accepted {
            generation,
            changes,
        })) => Ok(Json(json!({ "generation": generation, "changes": changes })).into_response()),
        Ok(Some(ReloadAnswer::Rejected { error })) => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({
                "error": format!("the config was rejected; the supervisor runs on as before: {error}"),
                "errors": error.lines().collect::<Vec<_>>(),
            }),
        }),
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the supervisor has not answered the reload in time",
        )),
    }
}
