//! Input generators shared by the fuzz targets.
//!
//! Raw bytes reach serde_json's tokenizer but rarely a well-formed object with the field names
//! the parsers look at, so each target also takes a structured input: a JSON object built from
//! the parsers' own key names and values of every JSON type. Strings that stand for secrets are
//! wrapped in [`MARK`], a character that is removed from every other generated string, so a
//! target can check that no part of a secret reached an error: any `MARK` in an error's text
//! came from a secret.

use arbitrary::{Arbitrary, Unstructured};
use serde_json::{Map, Number, Value};
use time::OffsetDateTime;

/// Marks secret strings. Printable, so `Debug` shows it as is; never produced otherwise.
pub const MARK: char = '\u{1F511}';

/// Deepest nesting generated for JSON values.
const MAX_DEPTH: u32 = 4;

/// A secret: `MARK a MARK b MARK`, where `a` and `b` are arbitrary text (quotes, backslashes
/// and control characters included), so a partial leak still shows a `MARK`.
#[derive(Debug, Clone)]
pub struct Secret(pub String);

impl<'a> Arbitrary<'a> for Secret {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let a = plain(String::arbitrary(u)?);
        let b = plain(String::arbitrary(u)?);
        Ok(Self(format!("{MARK}{a}{MARK}{b}{MARK}")))
    }
}

/// Any generated text that is not a secret: `MARK` removed.
pub fn plain(text: String) -> String {
    if text.contains(MARK) {
        text.replace(MARK, "")
    } else {
        text
    }
}

/// True when `text` shows any part of a secret.
pub fn shows_secret(text: &str) -> bool {
    text.contains(MARK)
}

/// A JSON value of any type, possibly a secret string.
#[derive(Debug, Clone)]
pub struct JsonValue(pub Value);

impl<'a> Arbitrary<'a> for JsonValue {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        value(u, 0).map(Self)
    }
}

fn value(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
    let leaf_only = depth >= MAX_DEPTH;
    let choices = if leaf_only { 9 } else { 11 };
    Ok(match u.choose_index(choices)? {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => Value::from(i64::arbitrary(u)?),
        3 => Value::from(u64::arbitrary(u)?),
        4 => Number::from_f64(f64::arbitrary(u)?).map_or(Value::Null, Value::Number),
        // Small numbers and numeric strings, where the bounds checks are.
        5 => Value::from(i64::from(i32::arbitrary(u)?)),
        6 => Value::String(number_like(u)?),
        7 => Value::String(plain(String::arbitrary(u)?)),
        8 => Value::String(Secret::arbitrary(u)?.0),
        9 => {
            let n = u.int_in_range(0..=6)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(value(u, depth + 1)?);
            }
            Value::Array(items)
        }
        _ => Value::Object(object(u, depth + 1)?),
    })
}

/// Text that is likely to parse as a number: digits, sign, point, exponent, spaces.
fn number_like(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    const ALPHABET: &[u8] = b"0123456789+-.eE infINFNaN";
    let n = u.int_in_range(0..=24)?;
    let mut s = String::with_capacity(n);
    for _ in 0..n {
        s.push(char::from(*u.choose(ALPHABET)?));
    }
    Ok(s)
}

/// Key names used by the parsers under test, plus anything else.
const KEYS: &[&str] = &[
    "access_token",
    "refresh_token",
    "token_type",
    "expires_in",
    "expires_at",
    "refresh_expires_in",
    "refresh_token_expires_in",
    "scope",
    "scopes",
    "error",
    "error_description",
    "error_type",
    "error_message",
    "error_subcode",
    "code",
    "message",
    "type",
    "metadata",
    "max_retries",
    "initial_delay_ms",
    "max_delay_ms",
];

fn key(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    if u.ratio(1u8, 8)? {
        Ok(plain(String::arbitrary(u)?))
    } else {
        Ok((*u.choose(KEYS)?).to_owned())
    }
}

fn object(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Map<String, Value>> {
    let n = u.int_in_range(0..=8)?;
    let mut map = Map::new();
    for _ in 0..n {
        let k = key(u)?;
        let v = value(u, depth)?;
        map.insert(k, v);
    }
    Ok(map)
}

/// A JSON object with the parsers' key names at the top level.
#[derive(Debug, Clone)]
pub struct JsonObject(pub Map<String, Value>);

impl<'a> Arbitrary<'a> for JsonObject {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        object(u, 1).map(Self)
    }
}

/// A point in time anywhere in `time`'s default range (years -9999..=9999).
pub fn any_time(seconds: i64) -> OffsetDateTime {
    const MIN: i64 = -377_705_116_800; // -9999-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let span = (MAX - MIN) as u64 + 1;
    let offset = (seconds as u64) % span;
    OffsetDateTime::from_unix_timestamp(MIN + offset as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The fixed "now" most checks use (the date of the first fuzz runs).
pub fn t0() -> OffsetDateTime {
    time::macros::datetime!(2026-11-26 12:00 UTC)
}
