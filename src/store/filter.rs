//! Metadata filters on search: a small expression language over a record's JSON metadata.
//!
//! Owns the language (its JSON form, limits and exact semantics), parsing and validating a filter
//! into a typed AST ([`Filter`]), evaluating it against one record's metadata
//! ([`Filter::matches`]), and translating it into a Milvus 2.3 boolean expression
//! ([`Filter::to_milvus`]). It knows nothing of how the server wraps the user's `meta` inside the
//! stored record, nor of how Milvus stores it: the server prefixes the paths
//! ([`Filter::under`]) and the Milvus backend names the JSON its paths start from.
//!
//! The language (the README's "Filters" section says the same for users):
//! - A filter is a JSON object with exactly one operator:
//!   `{"eq": [KEY, VALUE]}`, `{"ne": [KEY, VALUE]}`, `{"in": [KEY, [VALUE, ...]]}`,
//!   `{"lt"|"lte"|"gt"|"gte": [KEY, NUMBER]}`, `{"exists": KEY}`, `{"and": [FILTER, ...]}`,
//!   `{"or": [FILTER, ...]}`, `{"not": FILTER}`.
//! - KEY is a path into the metadata object: `"lang"`, or `"a.b"` for `{"a": {"b": ...}}`. A
//!   literal dot in a key is written `\.` and a literal backslash `\\` (in JSON text: `"a\\.b"`).
//!   Segments may not be empty and may not hold `/` or `~` (Milvus 2.3 looks JSON keys up through
//!   an unescaped JSON pointer; refusing them everywhere keeps one filter valid on both backends).
//! - VALUE is a string, a number or a boolean; `null` is not a value (use `exists`).
//! - Semantics: a missing key, a path through a non-object, or a value of another type does not
//!   match `eq`, `in`, `lt`..`gte`. Numbers compare by value: `2020` equals `2020.0`. `ne` is
//!   exactly `not eq`, so it matches records without the key (as MongoDB's `$ne`). `exists`
//!   matches a key that is present, whatever its value, `null` included. Strings compare exactly
//!   (no case folding, no Unicode normalisation); only numbers are ordered.
//! - Limits: at most [`MAX_FILTER_BYTES`] of text, [`MAX_DEPTH`] levels of nesting, [`MAX_CLAUSES`]
//!   operators in all, [`MAX_IN_VALUES`] values in one `in`, [`MAX_KEY_SEGMENTS`] segments in a
//!   key; `and`, `or` and `in` need at least one element.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::{Number, Value};
use thiserror::Error;

/// Longest filter text, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Deepest nesting of filter objects (the outermost is level 1).
pub const MAX_DEPTH: usize = 8;
/// Most operators in one filter, combinators included.
pub const MAX_CLAUSES: usize = 64;
/// Most values in one `in` list.
pub const MAX_IN_VALUES: usize = 256;
/// Most segments in one key path.
pub const MAX_KEY_SEGMENTS: usize = 8;

/// Why a filter was refused; the text names the problem for the client.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FilterError {
    #[error("the filter is {0} bytes; at most {MAX_FILTER_BYTES} are allowed")]
    TooLong(usize),
    #[error("the filter is not JSON: {0}")]
    NotJson(String),
    #[error("a filter is an object with exactly one operator, like {{\"eq\": [\"lang\", \"en\"]}}; got {0}")]
    NotAFilter(String),
    #[error("unknown operator `{0}` (known: eq, ne, in, lt, lte, gt, gte, exists, and, or, not)")]
    UnknownOperator(String),
    #[error("`{op}` needs {want}; got {got}")]
    Operands {
        op: &'static str,
        want: &'static str,
        got: String,
    },
    #[error("bad key {key:?}: {why}")]
    Key { key: String, why: &'static str },
    #[error("the filter nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the filter has more than {MAX_CLAUSES} operators")]
    TooManyClauses,
    #[error("`in` takes at most {MAX_IN_VALUES} values; got {0}")]
    TooManyValues(usize),
}

/// A validated filter. Build one with [`Filter::parse`]; evaluate it with [`Filter::matches`].
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    expr: Expr,
}

/// The store's payload index reads the tree to find candidates (`payload`).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    Eq(Path, Scalar),
    Ne(Path, Scalar),
    In(Path, Vec<Scalar>),
    Order(Path, Ord, Number),
    Exists(Path),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
}

/// Object keys from the root of the metadata, outermost first.
type Path = Vec<String>;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Ord {
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Str(String),
    Num(Number),
    Bool(bool),
}

impl Filter {
    /// Parses and validates filter text (the `filter` query parameter, the gRPC field).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong(text.len()));
        }
        let v: Value =
            serde_json::from_str(text).map_err(|e| FilterError::NotJson(e.to_string()))?;
        Filter::from_json(&v)
    }

    /// Validates a filter already parsed as JSON (no length limit: the caller bounds it).
    pub fn from_json(v: &Value) -> Result<Filter, FilterError> {
        let mut clauses = 0;
        let expr = parse_expr(v, 1, &mut clauses)?;
        Ok(Filter { expr })
    }

    /// The same filter with every key path starting below `key`: for metadata that a caller
    /// keeps inside a wrapper object (the server keeps the user's `meta` under `"meta"`).
    pub fn under(mut self, key: &str) -> Filter {
        self.expr.prefix(key);
        self
    }

    pub(super) fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether the record whose metadata is `meta` passes.
    pub fn matches(&self, meta: &Value) -> bool {
        self.expr.matches(meta)
    }

    /// The filter as a Milvus 2.3 boolean expression whose key paths start at `root`, an
    /// expression naming a JSON object (e.g. `meta["v"]`). Only forms checked against Milvus
    /// 2.3.5 are used: `==`, `in [...]` with values of one type (mixed lists fail an assertion
    /// inside Milvus, so values are grouped by type and the groups or-ed), `<`..`>=`,
    /// `exists`, `not`, `and`, `or`.
    pub fn to_milvus(&self, root: &str) -> String {
        let mut out = String::new();
        self.expr.milvus(root, &mut out);
        out
    }
}

fn describe(v: &Value) -> String {
    const MAX: usize = 80;
    let s = v.to_string();
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn parse_expr(v: &Value, depth: usize, clauses: &mut usize) -> Result<Expr, FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError::TooDeep);
    }
    *clauses += 1;
    if *clauses > MAX_CLAUSES {
        return Err(FilterError::TooManyClauses);
    }
    let (op, arg) = match v.as_object() {
        Some(m) if m.len() == 1 => m.iter().next().expect("one entry"),
        _ => return Err(FilterError::NotAFilter(describe(v))),
    };
    let operands = |op: &'static str, want: &'static str| FilterError::Operands {
        op,
        want,
        got: describe(arg),
    };
    match op.as_str() {
        "eq" | "ne" => {
            let op = if op == "eq" { "eq" } else { "ne" };
            let want = "[key, value] with a string, number or boolean value";
            let (path, value) = pair(arg).ok_or_else(|| operands(op, want))?;
            let value = scalar(value).ok_or_else(|| operands(op, want))?;
            Ok(if op == "eq" {
                Expr::Eq(path?, value)
            } else {
                Expr::Ne(path?, value)
            })
        }
        "in" => {
            let want = "[key, [value, ...]] with at least one string, number or boolean";
            let (path, list) = pair(arg).ok_or_else(|| operands("in", want))?;
            let list = list
                .as_array()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| operands("in", want))?;
            if list.len() > MAX_IN_VALUES {
                return Err(FilterError::TooManyValues(list.len()));
            }
            let values = list
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| operands("in", want))?;
            Ok(Expr::In(path?, values))
        }
        "lt" | "lte" | "gt" | "gte" => {
            let (op, ord): (&'static str, Ord) = match op.as_str() {
                "lt" => ("lt", Ord::Lt),
                "lte" => ("lte", Ord::Lte),
                "gt" => ("gt", Ord::Gt),
                _ => ("gte", Ord::Gte),
            };
            let want = "[key, number]: it compares numbers only";
            let (path, value) = pair(arg).ok_or_else(|| operands(op, want))?;
            let n = value.as_number().ok_or_else(|| operands(op, want))?;
            Ok(Expr::Order(path?, ord, n.clone()))
        }
        "exists" => match arg.as_str() {
            Some(k) => Ok(Expr::Exists(parse_key(k)?)),
            None => Err(operands("exists", "a key (a string)")),
        },
        "and" | "or" => {
            let name = if op == "and" { "and" } else { "or" };
            let list = arg
                .as_array()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| operands(name, "an array of at least one filter"))?;
            let subs = list
                .iter()
                .map(|s| parse_expr(s, depth + 1, clauses))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if name == "and" {
                Expr::And(subs)
            } else {
                Expr::Or(subs)
            })
        }
        "not" => Ok(Expr::Not(Box::new(parse_expr(arg, depth + 1, clauses)?))),
        other => Err(FilterError::UnknownOperator(other.to_string())),
    }
}

/// `[KEY, X]`: the parsed key (or why it is bad) and X; `None` when not that shape.
fn pair(arg: &Value) -> Option<(Result<Path, FilterError>, &Value)> {
    match arg.as_array()?.as_slice() {
        [Value::String(k), x] => Some((parse_key(k), x)),
        _ => None,
    }
}

fn scalar(v: &Value) -> Option<Scalar> {
    match v {
        Value::String(s) => Some(Scalar::Str(s.clone())),
        Value::Number(n) => Some(Scalar::Num(n.clone())),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        _ => None,
    }
}

/// Splits a dotted key: `.` separates segments, `\.` is a literal dot, `\\` a literal backslash.
fn parse_key(key: &str) -> Result<Path, FilterError> {
    let bad = |why| FilterError::Key {
        key: key.to_string(),
        why,
    };
    let mut path = Vec::new();
    let mut seg = String::new();
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('.' | '\\')) => seg.push(e),
                _ => return Err(bad("a backslash must be followed by `.` or `\\`")),
            },
            '.' => path.push(std::mem::take(&mut seg)),
            '/' | '~' => return Err(bad("keys may not contain `/` or `~`")),
            c => seg.push(c),
        }
    }
    path.push(seg);
    if path.iter().any(String::is_empty) {
        return Err(bad("empty key segment"));
    }
    if path.len() > MAX_KEY_SEGMENTS {
        return Err(bad("too many segments (at most 8)"));
    }
    Ok(path)
}

fn lookup<'a>(meta: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(meta, |v, k| v.as_object()?.get(k))
}

/// Numbers by value: exactly as integers when both are, else as f64 (so `2020 == 2020.0`).
fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

fn scalar_eq(v: &Value, s: &Scalar) -> bool {
    match (v, s) {
        (Value::String(a), Scalar::Str(b)) => a == b,
        (Value::Number(a), Scalar::Num(b)) => num_cmp(a, b) == Some(Ordering::Equal),
        (Value::Bool(a), Scalar::Bool(b)) => a == b,
        _ => false,
    }
}

impl Expr {
    fn matches(&self, meta: &Value) -> bool {
        match self {
            Expr::Eq(p, s) => lookup(meta, p).is_some_and(|v| scalar_eq(v, s)),
            Expr::Ne(p, s) => !lookup(meta, p).is_some_and(|v| scalar_eq(v, s)),
            Expr::In(p, list) => {
                lookup(meta, p).is_some_and(|v| list.iter().any(|s| scalar_eq(v, s)))
            }
            Expr::Order(p, ord, n) => {
                let Some(Value::Number(v)) = lookup(meta, p) else {
                    return false;
                };
                match (num_cmp(v, n), ord) {
                    (None, _) => false,
                    (Some(o), Ord::Lt) => o == Ordering::Less,
                    (Some(o), Ord::Lte) => o != Ordering::Greater,
                    (Some(o), Ord::Gt) => o == Ordering::Greater,
                    (Some(o), Ord::Gte) => o != Ordering::Less,
                }
            }
            Expr::Exists(p) => lookup(meta, p).is_some(),
            Expr::And(subs) => subs.iter().all(|s| s.matches(meta)),
            Expr::Or(subs) => subs.iter().any(|s| s.matches(meta)),
            Expr::Not(s) => !s.matches(meta),
        }
    }

    fn prefix(&mut self, key: &str) {
        match self {
            Expr::Eq(p, _) | Expr::Ne(p, _) | Expr::In(p, _) | Expr::Order(p, _, _) => {
                p.insert(0, key.to_string())
            }
            Expr::Exists(p) => p.insert(0, key.to_string()),
            Expr::And(subs) | Expr::Or(subs) => subs.iter_mut().for_each(|s| s.prefix(key)),
            Expr::Not(s) => s.prefix(key),
        }
    }

    fn milvus(&self, root: &str, out: &mut String) {
        let path = |p: &Path| {
            let mut s = root.to_string();
            for k in p {
                let _ = write!(s, "[{}]", milvus_string(k));
            }
            s
        };
        let join = |subs: &[Expr], op: &str, out: &mut String| {
            out.push('(');
            for (i, s) in subs.iter().enumerate() {
                if i > 0 {
                    let _ = write!(out, " {op} ");
                }
                out.push('(');
                s.milvus(root, out);
                out.push(')');
            }
            out.push(')');
        };
        match self {
            Expr::Eq(p, s) => {
                let _ = write!(out, "{} == {}", path(p), milvus_scalar(s));
            }
            Expr::Ne(p, s) => {
                let _ = write!(out, "not ({} == {})", path(p), milvus_scalar(s));
            }
            Expr::In(p, list) => {
                // One `in` per type: Milvus 2.3 asserts that a JSON `in` list has one type (and
                // an integer list matches stored floats of equal value, as `==` does).
                let p = path(p);
                let mut groups: Vec<(u8, Vec<String>)> = Vec::new();
                for s in list {
                    let kind = match s {
                        Scalar::Str(_) => 0,
                        Scalar::Num(n) if n.is_f64() => 1,
                        Scalar::Num(_) => 2,
                        Scalar::Bool(_) => 3,
                    };
                    match groups.iter_mut().find(|g| g.0 == kind) {
                        Some(g) => g.1.push(milvus_scalar(s)),
                        None => groups.push((kind, vec![milvus_scalar(s)])),
                    }
                }
                let terms: Vec<String> = groups
                    .iter()
                    .map(|(_, vals)| format!("{p} in [{}]", vals.join(", ")))
                    .collect();
                if terms.len() == 1 {
                    out.push_str(&terms[0]);
                } else {
                    let _ = write!(out, "(({}))", terms.join(") or ("));
                }
            }
            Expr::Order(p, ord, n) => {
                let op = match ord {
                    Ord::Lt => "<",
                    Ord::Lte => "<=",
                    Ord::Gt => ">",
                    Ord::Gte => ">=",
                };
                let _ = write!(out, "{} {op} {}", path(p), milvus_number(n));
            }
            Expr::Exists(p) => {
                let _ = write!(out, "exists {}", path(p));
            }
            Expr::And(subs) => join(subs, "and", out),
            Expr::Or(subs) => join(subs, "or", out),
            Expr::Not(s) => {
                out.push_str("not (");
                s.milvus(root, out);
                out.push(')');
            }
        }
    }
}

fn milvus_scalar(s: &Scalar) -> String {
    match s {
        Scalar::Str(s) => milvus_string(s),
        Scalar::Num(n) => milvus_number(n),
        Scalar::Bool(b) => b.to_string(),
    }
}

/// Integers as written; other numbers in Rust's `Debug` form, which always has a `.` or an
/// exponent (`2020.0`, `1e300`), as Milvus's grammar needs to read a float.
fn milvus_number(n: &Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    format!("{:?}", n.as_f64().unwrap_or(0.0))
}

/// A Milvus string literal (for keys and values): `super::milvus` owns the escaping.
fn milvus_string(s: &str) -> String {
    super::milvus::string_literal(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn f(v: Value) -> Filter {
        Filter::from_json(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn err(text: &str) -> FilterError {
        Filter::parse(text).expect_err(text)
    }

    #[test]
    fn every_operator_matches_as_documented() {
        let m = json!({"lang": "en", "year": 2020, "score": 0.5, "kids": true, "none": null,
                       "a": {"b": "x", "c.d": 1}, "list": ["en"]});
        let yes = [
            json!({"eq": ["lang", "en"]}),
            json!({"eq": ["year", 2020.0]}),
            json!({"eq": ["kids", true]}),
            json!({"ne": ["lang", "de"]}),
            json!({"ne": ["missing", "x"]}),
            json!({"ne": ["year", "2020"]}),
            json!({"in": ["lang", ["de", "en"]]}),
            json!({"in": ["year", ["x", 2020]]}),
            json!({"lt": ["score", 1]}),
            json!({"lte": ["year", 2020]}),
            json!({"gt": ["year", 2019.5]}),
            json!({"gte": ["year", 2020]}),
            json!({"exists": "none"}),
            json!({"exists": "a.b"}),
            json!({"eq": ["a.b", "x"]}),
            json!({"eq": ["a.c\\.d", 1]}),
            json!({"and": [{"eq": ["lang", "en"]}, {"gte": ["year", 2020]}]}),
            json!({"or": [{"eq": ["lang", "de"]}, {"exists": "kids"}]}),
            json!({"not": {"eq": ["lang", "de"]}}),
            json!({"not": {"exists": "missing"}}),
        ];
        for v in yes {
            assert!(f(v.clone()).matches(&m), "{v} should match");
        }
        let no = [
            json!({"eq": ["lang", "EN"]}),
            json!({"eq": ["year", "2020"]}),
            json!({"eq": ["kids", 1]}),
            json!({"eq": ["list", "en"]}),
            json!({"eq": ["missing", "en"]}),
            json!({"eq": ["lang.x", "en"]}),
            json!({"ne": ["lang", "en"]}),
            json!({"in": ["lang", ["de"]]}),
            json!({"in": ["missing", ["de"]]}),
            json!({"lt": ["year", 2020]}),
            json!({"gt": ["lang", 1]}),
            json!({"gte": ["missing", 0]}),
            json!({"exists": "missing"}),
            json!({"exists": "a.b.c"}),
            json!({"and": [{"eq": ["lang", "en"]}, {"lt": ["year", 2020]}]}),
            json!({"or": [{"eq": ["lang", "de"]}, {"exists": "x"}]}),
            json!({"not": {"eq": ["lang", "en"]}}),
        ];
        for v in no {
            assert!(!f(v.clone()).matches(&m), "{v} should not match");
        }
        // Not an object at all: nothing but `ne` and `not` match.
        assert!(!f(json!({"exists": "lang"})).matches(&json!(null)));
        assert!(f(json!({"ne": ["lang", "en"]})).matches(&json!("en")));
    }

    #[test]
    fn large_integers_compare_exactly() {
        let m = json!({"n": 9_007_199_254_740_993u64, "u": u64::MAX});
        assert!(!f(json!({"eq": ["n", 9_007_199_254_740_992u64]})).matches(&m));
        assert!(f(json!({"eq": ["n", 9_007_199_254_740_993u64]})).matches(&m));
        assert!(f(json!({"gt": ["u", -1]})).matches(&m));
        assert!(f(json!({"lt": ["n", 1e300]})).matches(&m));
    }

    #[test]
    fn under_moves_every_path_below_a_key() {
        let flt = f(json!({"and": [{"eq": ["lang", "en"]}, {"not": {"exists": "x.y"}}]}));
        let stored = json!({"meta": {"lang": "en"}, "lang": "de", "file_name": "a.mp4"});
        assert!(!flt.matches(&stored));
        assert!(flt.clone().under("meta").matches(&stored));
        assert!(!flt
            .under("meta")
            .matches(&json!({"meta": {"lang": "en", "x": {"y": 1}}})));
    }

    #[test]
    fn keys_split_on_unescaped_dots() {
        assert_eq!(parse_key("a").unwrap(), vec!["a"]);
        assert_eq!(parse_key("a.b").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_key("a\\.b").unwrap(), vec!["a.b"]);
        assert_eq!(parse_key("a\\\\.b").unwrap(), vec!["a\\", "b"]);
        assert_eq!(parse_key("ключ.🎬").unwrap(), vec!["ключ", "🎬"]);
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a\\b",
            "a\\",
            "a/b",
            "a~0",
            "1.2.3.4.5.6.7.8.9",
        ] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_filters_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("{", "not JSON"),
            ("[]", "exactly one operator"),
            ("{}", "exactly one operator"),
            (
                r#"{"eq": ["a", 1], "ne": ["a", 2]}"#,
                "exactly one operator",
            ),
            (r#"{"xx": 1}"#, "unknown operator `xx`"),
            (r#"{"gte": ["year", "2020"]}"#, "`gte` needs [key, number]"),
            (r#"{"lt": ["year"]}"#, "`lt` needs"),
            (r#"{"eq": ["lang", null]}"#, "`eq` needs"),
            (r#"{"eq": ["lang", ["en"]]}"#, "`eq` needs"),
            (r#"{"eq": [1, "en"]}"#, "`eq` needs"),
            (r#"{"in": ["lang", []]}"#, "`in` needs"),
            (r#"{"in": ["lang", "en"]}"#, "`in` needs"),
            (r#"{"in": ["lang", [{"a": 1}]]}"#, "`in` needs"),
            (r#"{"exists": 1}"#, "`exists` needs a key"),
            (r#"{"and": []}"#, "`and` needs"),
            (r#"{"or": {"eq": ["a", 1]}}"#, "`or` needs"),
            (r#"{"not": [{"eq": ["a", 1]}]}"#, "exactly one operator"),
            (r#"{"eq": ["a..b", 1]}"#, "empty key segment"),
            (r#"{"exists": "a/b"}"#, "may not contain"),
        ];
        for (text, want) in cases {
            let e = err(text).to_string();
            assert!(e.contains(want), "{text}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let long = format!(r#"{{"eq": ["a", "{}"]}}"#, "x".repeat(MAX_FILTER_BYTES));
        assert!(matches!(err(&long), FilterError::TooLong(_)));
        let mut deep = json!({"eq": ["a", 1]});
        for _ in 0..MAX_DEPTH - 1 {
            deep = json!({"not": deep});
        }
        assert!(Filter::from_json(&deep).is_ok());
        assert_eq!(
            Filter::from_json(&json!({"not": deep})),
            Err(FilterError::TooDeep)
        );
        let many: Vec<Value> = (0..MAX_CLAUSES).map(|i| json!({"eq": ["a", i]})).collect();
        assert_eq!(
            Filter::from_json(&json!({"or": many})),
            Err(FilterError::TooManyClauses)
        );
        let values: Vec<u32> = (0..=MAX_IN_VALUES as u32).collect();
        assert_eq!(
            Filter::from_json(&json!({"in": ["a", values]})),
            Err(FilterError::TooManyValues(MAX_IN_VALUES + 1))
        );
        // serde_json's own recursion limit ends absurd nesting before our depth check.
        let brackets = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(matches!(err(&brackets), FilterError::NotJson(_)));
    }

    #[test]
    fn milvus_expressions_escape_and_group() {
        let root = r#"meta["v"]"#;
        let m = |v: Value| f(v).to_milvus(root);
        assert_eq!(
            m(json!({"eq": ["lang", "en"]})),
            r#"meta["v"]["lang"] == "en""#
        );
        assert_eq!(
            m(json!({"eq": ["a.b\\.c", "q\"\\\n"]})),
            r#"meta["v"]["a"]["b.c"] == "q\"\\\n""#
        );
        assert_eq!(
            m(json!({"ne": ["y", 2020.5]})),
            r#"not (meta["v"]["y"] == 2020.5)"#
        );
        assert_eq!(m(json!({"gte": ["y", 2020]})), r#"meta["v"]["y"] >= 2020"#);
        assert_eq!(m(json!({"lt": ["y", 1e300]})), r#"meta["v"]["y"] < 1e300"#);
        assert_eq!(m(json!({"lt": ["y", -2.0]})), r#"meta["v"]["y"] < -2.0"#);
        assert_eq!(m(json!({"exists": "y"})), r#"exists meta["v"]["y"]"#);
        assert_eq!(
            m(json!({"in": ["y", ["a", 1, "b", true, 2.5]]})),
            r#"((meta["v"]["y"] in ["a", "b"]) or (meta["v"]["y"] in [1]) or (meta["v"]["y"] in [true]) or (meta["v"]["y"] in [2.5]))"#
        );
        assert_eq!(
            m(
                json!({"and": [{"eq": ["a", 1]}, {"not": {"or": [{"exists": "b"}, {"eq": ["c", false]}]}}]})
            ),
            r#"((meta["v"]["a"] == 1) and (not (((exists meta["v"]["b"]) or (meta["v"]["c"] == false)))))"#
        );
    }

    /// Any JSON value either parses into a filter or is refused with an error; never a panic.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|n| json!(n)),
            prop_oneof![
                Just("eq"),
                Just("ne"),
                Just("in"),
                Just("lt"),
                Just("gte"),
                Just("exists"),
                Just("and"),
                Just("or"),
                Just("not"),
                Just("a"),
                Just("a.b"),
                Just("x\\.y"),
                Just("")
            ]
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(6, 48, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("eq"),
                            Just("in"),
                            Just("gt"),
                            Just("exists"),
                            Just("and"),
                            Just("or"),
                            Just("not"),
                            Just("zz")
                        ],
                        inner
                    ),
                    0..3
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    /// Metadata over a small set of keys and values, so that generated filters hit often.
    fn meta() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(json!("en")),
            Just(json!("de")),
            Just(json!(1)),
            Just(json!(1.0)),
            Just(json!(2.5)),
            Just(json!(true)),
            Just(json!(null)),
        ];
        prop::collection::btree_map(
            prop_oneof![Just("a".to_string()), Just("b".to_string())],
            prop_oneof![
                scalar.clone(),
                prop::collection::btree_map(Just("c".to_string()), scalar, 0..2)
                    .prop_map(|m| json!(m))
            ],
            0..3,
        )
        .prop_map(|m| json!(m))
    }

    fn filter() -> impl Strategy<Value = Filter> {
        let key = prop_oneof![Just("a"), Just("b"), Just("a.c"), Just("b.c")];
        let val = prop_oneof![
            Just(json!("en")),
            Just(json!(1)),
            Just(json!(1.0)),
            Just(json!(2)),
            Just(json!(true))
        ];
        let leaf = prop_oneof![
            (key.clone(), val.clone()).prop_map(|(k, v)| json!({"eq": [k, v]})),
            (key.clone(), val.clone()).prop_map(|(k, v)| json!({"ne": [k, v]})),
            (key.clone(), prop::collection::vec(val, 1..3))
                .prop_map(|(k, v)| json!({"in": [k, v]})),
            (key.clone(), prop_oneof![Just("lt"), Just("gte")], -1..3i32)
                .prop_map(|(k, op, n)| json!({op: [k, n]})),
            key.prop_map(|k| json!({"exists": k})),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"and": v})),
                prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"or": v})),
                inner.prop_map(|v| json!({"not": v})),
            ]
        })
        .prop_map(|v| Filter::from_json(&v).unwrap())
    }

    proptest! {
        #[test]
        fn arbitrary_json_parses_or_is_refused(v in any_json()) {
            let text = v.to_string();
            if let Ok(flt) = Filter::parse(&text) {
                // What parses evaluates and translates without panicking.
                let _ = flt.matches(&v);
                let _ = flt.to_milvus("m");
            }
        }

        #[test]
        fn ne_is_not_eq_and_not_inverts(m in meta(), flt in filter(), k in prop_oneof![Just("a"), Just("a.c")], v in -1..3i64) {
            let eq = Filter::from_json(&json!({"eq": [k, v]})).unwrap();
            let ne = Filter::from_json(&json!({"ne": [k, v]})).unwrap();
            prop_assert_eq!(ne.matches(&m), !eq.matches(&m));
            let not = Filter { expr: Expr::Not(Box::new(flt.expr.clone())) };
            prop_assert_eq!(not.matches(&m), !flt.matches(&m));
            // Moving every path under a wrapper object changes nothing.
            prop_assert_eq!(flt.clone().under("meta").matches(&json!({"meta": m.clone()})), flt.matches(&m));
        }
    }
}
