//! Logs and metrics plumbing: the JSON log subscriber and its line format, the per-request
//! span and access line, the Prometheus recorder (installed once per process), metric
//! descriptions, and the series exported from the start.
//!
//! The library records its metrics through the `metrics` facade; this module only installs
//! the recorder and pre-registers series whose labels are known at start, so dashboards and
//! alerts see zeros instead of missing series.
//!
//! Log lines keep the shape of `tracing-subscriber`'s JSON format (`timestamp`, `level`,
//! `fields`, `target`, and `span` with the current span's fields and `name`), but are written
//! by [`JsonLines`] and [`JsonFields`] here: at the default level every request writes one
//! line, and the library's formatter spent more on it than the rest of the request did (it
//! re-parsed the span's fields from JSON for every line and checked UTF-8 on every fragment;
//! see BENCHMARKS.md, "HTTP fast path").

use std::fmt::{self, Write as _};
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{HeaderName, Request, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokenwarden::ErrorCode;
use tokenwarden::metrics as m;
use tower_http::trace::OnResponse;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::error::SERVER_CODES;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the global recorder on first use. Tests start
/// several apps in one process; they share this recorder.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(m::REFRESH_DURATION_SECONDS.to_owned()),
                    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::REFRESH_ATTEMPTS.to_owned()),
                        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 11.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::COMMIT_ROWS.to_owned()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::PROXY_DURATION_SECONDS.to_owned()),
                        &[
                            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0, 30.0,
                        ],
                    )
                });
            let builder = match builder {
                Ok(builder) => builder,
                Err(error) => {
                    tracing::warn!(error = %error, "histogram buckets rejected; using summaries");
                    PrometheusBuilder::new()
                }
            };
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    handle
                }
                Err(error) => {
                    // Another recorder owns the process (an embedding application): serve an
                    // empty exposition rather than fail to start.
                    tracing::warn!(error = %error, "metrics recorder already installed elsewhere");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(m::REFRESH_TOTAL, "Refreshes by provider and outcome");
    metrics::describe_histogram!(m::REFRESH_ATTEMPTS, "Upstream attempts per refresh");
    metrics::describe_histogram!(
        m::REFRESH_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of a refresh, retries included"
    );
    metrics::describe_counter!(
        m::AUTO_REFRESH_TOTAL,
        "Refreshes started without being asked"
    );
    metrics::describe_counter!(m::ERRORS_TOTAL, "Errors returned, by code");
    metrics::describe_gauge!(
        m::CIRCUIT_OPEN,
        "1 while a provider's circuit breaker is open"
    );
    metrics::describe_counter!(m::TOKEN_REQUESTS_TOTAL, "Access-token requests by outcome");
    metrics::describe_gauge!(m::CONNECTIONS, "Connections by status");
    metrics::describe_gauge!(
        m::REFRESH_QUEUE,
        "Connections in the refresh schedule: scheduled, due, retrying"
    );
    metrics::describe_histogram!(
        m::COMMIT_ROWS,
        "Connection writes per durable commit (refreshes that finish together share one)"
    );
    metrics::describe_counter!(
        m::UPSTREAM_REQUESTS_TOTAL,
        "Calls to provider token endpoints by provider and HTTP status"
    );
    metrics::describe_counter!(
        m::PROXY_REQUESTS_TOTAL,
        "Calls through the proxy by provider and status class of the answer"
    );
    metrics::describe_histogram!(
        m::PROXY_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from a proxied call's arrival to its answer's headers, retry included"
    );
}

/// Registers, at zero, every series whose labels are known at start.
pub fn register_known_series<'a>(providers: impl IntoIterator<Item = &'a str>) {
    for code in ErrorCode::ALL {
        metrics::counter!(m::ERRORS_TOTAL, "code" => code.as_str()).increment(0);
    }
    for code in SERVER_CODES {
        metrics::counter!(m::ERRORS_TOTAL, "code" => code).increment(0);
    }
    for provider in providers {
        for trigger in ["on_demand", "scheduled"] {
            metrics::counter!(m::AUTO_REFRESH_TOTAL, "provider" => provider.to_owned(), "trigger" => trigger)
                .increment(0);
        }
    }
    for status in ["active", "needs_reconnect"] {
        // The real values arrive with the first gauge update; until then the series exists.
        metrics::gauge!(m::CONNECTIONS, "status" => status).increment(0.0);
    }
}

/// JSON logs filtered by `RUST_LOG`: for the server on stdout (default `info`: one line per
/// request and the refresh log points), for operator commands on stderr (default `warn`), so
/// their stdout stays their output.
///
/// The server's lines are written by a thread of their own ([`crate::log_writer`]): a
/// request appends its line to a buffer and moves on, and the thread writes what gathered
/// every few milliseconds in one system call. Lines are never dropped (writers wait when the
/// thread falls far behind). Keep the returned guard alive until the process ends: dropping
/// it writes what is buffered.
#[must_use = "dropping the guard stops the log writer"]
pub fn init_logging(server: bool) -> Option<crate::log_writer::LogGuard> {
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .fmt_fields(JsonFields)
        .event_format(JsonLines)
        .with_env_filter(filter);
    if server {
        match crate::log_writer::spawn(std::io::stdout()) {
            Ok((writer, guard)) => {
                let _ = builder.with_writer(writer).try_init();
                Some(guard)
            }
            // No thread for the writer: write each line directly instead.
            Err(_) => {
                let _ = builder.with_writer(std::io::stdout).try_init();
                None
            }
        }
    } else {
        let _ = builder.with_writer(std::io::stderr).try_init();
        None
    }
}

/// The span every HTTP request runs in: `method`, `path` (no query: it may carry anything)
/// and `request_id`, so every line logged while serving it says which request it belongs to.
/// Headers, queries and bodies are never recorded.
pub fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = request.method().as_str(),
        path = logged_path(request.uri().path()),
        request_id = request_id,
    )
}

/// The path as logged: a connect link's token is a credential, so `/connect/{token}` is
/// logged as that pattern.
pub fn logged_path(path: &str) -> &str {
    match path.strip_prefix("/connect/") {
        Some("callback") | None => path,
        Some(_) => "/connect/{token}",
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The access line: one `info` event per response, in the request's span (which carries
/// `method`, `path` and `request_id`), with `status` and `latency_us`, both numbers.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLog;

impl<B> OnResponse<B> for AccessLog {
    fn on_response(self, response: &Response<B>, latency: Duration, _span: &tracing::Span) {
        tracing::info!(
            target: ACCESS_TARGET,
            status = response.status().as_u16(),
            latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            "finished processing request"
        );
    }
}

/// The access line's target: `RUST_LOG=warn,tokenwarden_server::access=info` keeps it alone.
pub const ACCESS_TARGET: &str = "tokenwarden_server::access";

/// Formats events as one JSON object per line:
///
/// ```text
/// {"timestamp":"2026-11-30T08:00:00.123456Z","level":"INFO","fields":{"message":"finished
/// processing request","status":200,"latency_us":412},"target":"tokenwarden_server::access",
/// "span":{"method":"GET","path":"/v1/…","request_id":"3f9a0c1e-17","name":"request"}}
/// ```
///
/// The span's fields were written as JSON once, when the span was created ([`JsonFields`]),
/// and are copied into each line as they are. Strings are escaped as JSON requires (quotes,
/// backslashes, control characters), so a value cannot break out of its line.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut writer, time::OffsetDateTime::now_utc())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_str("\",\"fields\":{")?;
        let mut fields = JsonVisitor::new(&mut writer);
        event.record(&mut fields);
        let (result, log_target) = (fields.result, fields.log_target);
        result?;
        writer.write_str("},\"target\":\"")?;
        // Records from the `log` crate arrive with target "log" and their own in a field.
        write_escaped(&mut writer, log_target.as_deref().unwrap_or(meta.target()))?;
        writer.write_char('"')?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                && !fields.fields.is_empty()
            {
                writer.write_str(&fields.fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":\"")?;
            write_escaped(&mut writer, span.name())?;
            writer.write_str("\"}")?;
        }
        writer.write_str("}\n")
    }
}

/// Formats a span's fields as the inside of a JSON object (`"method":"GET","path":"/x"`),
/// once when the span is created; [`JsonLines`] copies them into every line of the span.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = JsonVisitor::new(&mut writer);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut visitor = JsonVisitor::new_after(&mut current.fields);
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes visited fields as `"name":value` pairs separated by commas.
struct JsonVisitor<'a, W: fmt::Write> {
    writer: &'a mut W,
    /// Whether a pair was written already (the next one needs a comma).
    any: bool,
    result: fmt::Result,
    /// `log.target` of a record from the `log` crate.
    log_target: Option<String>,
}

impl<'a, W: fmt::Write> JsonVisitor<'a, W> {
    fn new(writer: &'a mut W) -> Self {
        Self {
            writer,
            any: false,
            result: Ok(()),
            log_target: None,
        }
    }

    /// A visitor appending to pairs already written (a span's later `record` calls).
    fn new_after(fields: &'a mut W) -> Self
    where
        W: AsRef<str>,
    {
        let any = !fields.as_ref().is_empty();
        Self {
            any,
            ..Self::new(fields)
        }
    }

    /// Writes `"name":` (with a comma before it if needed) and then `value`.
    fn pair(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if self.any {
                self.writer.write_char(',')?;
            }
            self.any = true;
            self.writer.write_char('"')?;
            write_escaped(self.writer, field.name())?;
            self.writer.write_str("\":")?;
            value(self.writer)
        })();
    }

    fn string(&mut self, field: &Field, value: impl FnOnce(&mut Escaped<'_, W>) -> fmt::Result) {
        self.pair(field, |w| {
            w.write_char('"')?;
            value(&mut Escaped(w))?;
            w.write_char('"')
        });
    }

    /// Fields of `log` records that `tracing-log` adds: the target is kept, the rest (module,
    /// file, line) is left out, as `tracing-subscriber`'s JSON format does.
    fn log_metadata(&mut self, field: &Field, value: &dyn fmt::Debug) -> bool {
        let Some(name) = field.name().strip_prefix("log.") else {
            return false;
        };
        if name == "target" {
            self.log_target = Some(format!("{value:?}"));
        }
        true
    }
}

impl<W: fmt::Write> Visit for JsonVisitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.log_metadata(field, &format_args!("{value}")) {
            self.string(field, |w| w.write_str(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.log_metadata(field, value) {
            self.string(field, |w| write!(w, "{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.string(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.log_metadata(field, &value) {
            self.pair(field, |w| write!(w, "{value}"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pair(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pair(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; serde_json writes null for them too.
        if value.is_finite() {
            self.pair(field, |w| write!(w, "{value}"));
        } else {
            self.pair(field, |w| w.write_str("null"));
        }
    }
}

/// A writer that escapes what goes through it as the inside of a JSON string.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s)
    }
}

/// Writes `s` escaped for the inside of a JSON string: runs of plain characters in one write,
/// `"`, `\` and control characters as escapes (so a value cannot end its line early).
fn write_escaped(w: &mut (impl fmt::Write + ?Sized), s: &str) -> fmt::Result {
    let bytes = s.as_bytes();
    let mut start = 0;
    // A table lookup per byte: the plain run is most of every line (paths, messages).
    while let Some(offset) = bytes[start..]
        .iter()
        .position(|&b| NEEDS_ESCAPE[usize::from(b)])
    {
        let i = start + offset;
        // Escaped bytes are ASCII, so `start..i` falls on character boundaries.
        w.write_str(&s[start..i])?;
        match bytes[i] {
            b'"' => w.write_str("\\\"")?,
            b'\\' => w.write_str("\\\\")?,
            b'\n' => w.write_str("\\n")?,
            b'\r' => w.write_str("\\r")?,
            b'\t' => w.write_str("\\t")?,
            b => write!(w, "\\u{b:04x}")?,
        }
        start = i + 1;
    }
    w.write_str(&s[start..])
}

/// The bytes [`write_escaped`] escapes: `"`, `\`, control characters and DEL.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0x7f] = true;
    table
};

/// `2026-11-30T08:00:00.123456Z`: what `tracing-subscriber`'s JSON format wrote, without its
/// `write!` per part.
fn write_timestamp(w: &mut impl fmt::Write, t: time::OffsetDateTime) -> fmt::Result {
    fn digits(out: &mut [u8], mut value: u32) {
        for byte in out.iter_mut().rev() {
            // `value % 10` is a single digit, so the cast is exact.
            *byte = b'0' + u8::try_from(value % 10).unwrap_or(0);
            value /= 10;
        }
    }
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside four digits: the general path (never, on a working clock).
        return write!(
            w,
            "{year}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        );
    }
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    digits(&mut out[0..4], year.unsigned_abs());
    digits(&mut out[5..7], u32::from(u8::from(t.month())));
    digits(&mut out[8..10], u32::from(t.day()));
    digits(&mut out[11..13], u32::from(t.hour()));
    digits(&mut out[14..16], u32::from(t.minute()));
    digits(&mut out[17..19], u32::from(t.second()));
    digits(&mut out[20..26], t.microsecond());
    // Only ASCII digits and separators were written.
    w.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<Value> {
            let bytes = self.0.lock().expect("lock").clone();
            String::from_utf8(bytes)
                .expect("utf-8")
                .lines()
                .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
                .collect()
        }
    }

    /// Runs `f` with our formatter and with `tracing-subscriber`'s JSON format (as configured
    /// before: current span, no span list) and returns both outputs.
    fn both(f: impl Fn()) -> (Vec<Value>, Vec<Value>) {
        let ours = Buffer::default();
        let writer = ours.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, &f);
        let theirs = Buffer::default();
        let writer = theirs.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, &f);
        (ours.lines(), theirs.lines())
    }

    /// The timestamps differ between the two runs; everything else must not.
    fn without_timestamps(mut lines: Vec<Value>) -> Vec<Value> {
        for line in &mut lines {
            let stamp = line
                .as_object_mut()
                .and_then(|o| o.remove("timestamp"))
                .expect("a timestamp");
            let stamp = stamp.as_str().expect("a string");
            assert_eq!(stamp.len(), 27, "{stamp}");
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339");
        }
        lines
    }

    #[test]
    fn lines_have_the_shape_of_tracing_subscribers_json() {
        let awkward = "quote \" backslash \\ newline \n tab \t escape \u{1b}[31m nul \0 ü 🦀";
        let (ours, theirs) = both(|| {
            tracing::info!(addr = "127.0.0.1:1", "listening");
            let span = tracing::info_span!(
                "request",
                method = "GET",
                path = awkward,
                request_id = "abc-1",
                pending = tracing::field::Empty,
            );
            let _guard = span.enter();
            tracing::warn!(
                error = %"a \"display\" value",
                debug = ?vec!["a", "b"],
                count = 3_u64,
                delta = -4_i64,
                ok = true,
                ratio = 0.5_f64,
                "refresh failed: {}",
                awkward
            );
            span.record("pending", "later");
            tracing::info!(
                target: ACCESS_TARGET,
                status = 200_u16,
                latency_us = 412_u64,
                "finished processing request"
            );
        });
        assert_eq!(ours.len(), 3);
        assert_eq!(without_timestamps(ours.clone()), without_timestamps(theirs));
        assert_eq!(
            ours[2]["span"],
            json!({"method": "GET", "path": awkward, "request_id": "abc-1", "pending": "later",
                   "name": "request"})
        );
        assert_eq!(ours[2]["fields"]["status"], 200);
        assert!(ours[0].get("span").is_none(), "no span, no key");
    }

    #[test]
    fn non_finite_numbers_are_null() {
        let (ours, _) = both(|| tracing::info!(nan = f64::NAN, inf = f64::INFINITY, "x"));
        assert_eq!(ours[0]["fields"]["nan"], Value::Null);
        assert_eq!(ours[0]["fields"]["inf"], Value::Null);
    }

    #[test]
    fn escaping_keeps_every_character() {
        let all: String = (0..=0x80_u8)
            .map(char::from)
            .chain(['ü', '\u{2028}'])
            .collect();
        let mut out = String::new();
        write_escaped(&mut out, &all).expect("writes");
        assert!(!out.contains('\n') && !out.contains('\u{1b}'));
        let back: String = serde_json::from_str(&format!("\"{out}\"")).expect("valid JSON");
        assert_eq!(back, all);
    }

    #[test]
    fn timestamps_match_the_previous_format() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.000678 UTC);
        let mut out = String::new();
        write_timestamp(&mut out, t).expect("writes");
        assert_eq!(out, "2026-01-02T03:04:05.000678Z");
        let reference = tracing_subscriber::fmt::time::SystemTime;
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::FormatTime::format_time(
            &reference,
            &mut Writer::new(&mut theirs),
        )
        .expect("formats");
        let mut ours = String::new();
        write_timestamp(&mut ours, time::OffsetDateTime::now_utc()).expect("writes");
        let parse = |s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339")
        };
        assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
        assert!((parse(&ours) - parse(&theirs)).abs() < time::Duration::seconds(5));
    }
}
