//! The payload index of one task's store: for each key path and scalar value in the records'
//! metadata, the live slots that hold it (as Qdrant keeps an index per payload key).
//!
//! Owns the inverted index (`PayloadIndex`), its upkeep (a slot added, removed, or renumbered by
//! a rebuild) and turning a filter into the slots that can pass it (`PayloadIndex::candidates`),
//! so that a selective filter costs the records it passes rather than a walk of every record's
//! metadata. It is not persisted: `Index::insert` feeds it, and opening a store re-inserts every
//! record from the snapshot and the log, so it is derived state with no format of its own and
//! nothing on disk to keep in step. Does not own the filter language (`filter`) nor the
//! search plan that uses the candidates (`index`).
//!
//! What is indexed: every string (up to [`MAX_STR`] bytes), number and boolean reached through
//! objects only (not arrays), at most [`MAX_PATH`] keys deep. A query the index cannot answer
//! completely (a longer string, a deeper path, `ne`/`not`/`exists`) says so (`None`) and the
//! caller falls back to evaluating the filter on every record.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use serde_json::{Number, Value};

use super::filter::{Expr, Filter, Ord, Scalar};

/// Longest string indexed, in bytes; a longer one cannot equal a query value the index answers.
const MAX_STR: usize = 256;
/// Deepest key path indexed: a filter's own limit plus the object the server wraps `meta` in.
const MAX_PATH: usize = super::filter::MAX_KEY_SEGMENTS + 1;
/// Integers of smaller magnitude convert to f64 exactly, so comparing as f64 is comparing them.
const EXACT_INT: f64 = 9_007_199_254_740_992.0; // 2^53

/// A sorted list of live slots.
type Posting = Vec<u32>;

#[derive(Default)]
pub(crate) struct PayloadIndex {
    keys: HashMap<Vec<String>, KeyIndex>,
}

#[derive(Default)]
struct KeyIndex {
    strs: HashMap<Box<str>, Posting>,
    /// `[false, true]`.
    bools: [Posting; 2],
    /// By value as f64: numbers the filter calls equal (`2020 == 2020.0`) share a bucket; ones
    /// that only round to the same f64 share it too, which `Candidates::exact` accounts for.
    nums: BTreeMap<NumKey, Posting>,
    /// A number here had no f64 value, so this key's numeric queries are not answered.
    unindexed_num: bool,
}

impl KeyIndex {
    fn is_empty(&self) -> bool {
        self.strs.is_empty() && self.bools.iter().all(Vec::is_empty) && self.nums.is_empty()
    }
}

/// An f64 as a u64 whose integer order is the f64 order (-0 is folded into 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct NumKey(u64);

impl NumKey {
    fn new(f: f64) -> NumKey {
        let f = if f == 0.0 { 0.0 } else { f };
        let b = f.to_bits();
        NumKey(if b >> 63 == 1 { !b } else { b | 1 << 63 })
    }
}

/// The slots a filter can pass, sorted. When `exact`, every one of them passes; otherwise the
/// filter still has to be checked on each.
#[derive(Debug, PartialEq)]
pub(crate) struct Candidates {
    pub slots: Vec<u32>,
    pub exact: bool,
}

enum Edit {
    Add,
    Remove,
}

impl PayloadIndex {
    pub(crate) fn add(&mut self, slot: usize, meta: &Value) {
        self.walk(meta, &mut Vec::new(), slot as u32, &Edit::Add);
    }

    pub(crate) fn remove(&mut self, slot: usize, meta: &Value) {
        self.walk(meta, &mut Vec::new(), slot as u32, &Edit::Remove);
    }

    /// Renumbers every slot after a rebuild: `new_of_old[old]` is the old slot's new number.
    /// Indexed slots are live, and a rebuild keeps every live slot in order, so each posting
    /// stays sorted.
    pub(crate) fn renumber(&mut self, new_of_old: &[u32]) {
        for k in self.keys.values_mut() {
            let postings = k
                .strs
                .values_mut()
                .chain(k.bools.iter_mut())
                .chain(k.nums.values_mut());
            for p in postings {
                for s in p.iter_mut() {
                    *s = new_of_old[*s as usize];
                }
            }
        }
    }

    fn walk(&mut self, v: &Value, path: &mut Vec<String>, slot: u32, edit: &Edit) {
        match v {
            Value::Object(m) if path.len() < MAX_PATH => {
                for (k, child) in m {
                    path.push(k.clone());
                    self.walk(child, path, slot, edit);
                    path.pop();
                }
                return;
            }
            Value::String(s) if s.len() <= MAX_STR => {}
            Value::Number(_) | Value::Bool(_) => {}
            _ => return,
        }
        if path.is_empty() {
            return; // a bare scalar as the whole meta: no filter key reaches it
        }
        if !self.keys.contains_key(path.as_slice()) {
            if let Edit::Remove = edit {
                return;
            }
            self.keys.insert(path.clone(), KeyIndex::default());
        }
        let key = self.keys.get_mut(path.as_slice()).expect("just inserted");
        match v {
            Value::String(s) => match edit {
                Edit::Add => insert(key.strs.entry(s.as_str().into()).or_default(), slot),
                Edit::Remove => {
                    if let Some(p) = key.strs.get_mut(s.as_str()) {
                        if delete(p, slot) {
                            key.strs.remove(s.as_str());
                        }
                    }
                }
            },
            Value::Bool(b) => {
                let p = &mut key.bools[usize::from(*b)];
                match edit {
                    Edit::Add => insert(p, slot),
                    Edit::Remove => {
                        delete(p, slot);
                    }
                }
            }
            Value::Number(n) => match (n.as_f64(), edit) {
                (None, Edit::Add) => key.unindexed_num = true,
                (None, Edit::Remove) => {}
                (Some(f), Edit::Add) => insert(key.nums.entry(NumKey::new(f)).or_default(), slot),
                (Some(f), Edit::Remove) => {
                    let nk = NumKey::new(f);
                    if let Some(p) = key.nums.get_mut(&nk) {
                        if delete(p, slot) {
                            key.nums.remove(&nk);
                        }
                    }
                }
            },
            _ => unreachable!("only scalars get here"),
        }
        if key.is_empty() && !key.unindexed_num {
            // Keys with unique values (a file name) would otherwise pile up after deletes.
            self.keys.remove(path.as_slice());
        }
    }

    /// The slots that can pass `filter`; `None` when the index cannot narrow it down (the
    /// filter must then be evaluated on every record).
    pub(crate) fn candidates(&self, filter: &Filter) -> Option<Candidates> {
        self.expr(filter.expr())
    }

    fn expr(&self, e: &Expr) -> Option<Candidates> {
        match e {
            Expr::Eq(p, s) => self.equal(p, std::slice::from_ref(s)),
            Expr::In(p, list) => self.equal(p, list),
            Expr::Order(p, ord, n) => self.range(p, *ord, n),
            Expr::And(subs) => {
                let mut known: Vec<Candidates> = subs.iter().filter_map(|s| self.expr(s)).collect();
                // An unanswered conjunct only narrows further: the rest still bound the set.
                let exact = known.len() == subs.len() && known.iter().all(|c| c.exact);
                known.sort_by_key(|c| c.slots.len());
                let mut it = known.into_iter();
                let mut slots = it.next()?.slots;
                for c in it {
                    slots = intersect(&slots, &c.slots);
                }
                Some(Candidates { slots, exact })
            }
            Expr::Or(subs) => {
                let all = subs
                    .iter()
                    .map(|s| self.expr(s))
                    .collect::<Option<Vec<_>>>()?;
                let exact = all.iter().all(|c| c.exact);
                Some(Candidates {
                    slots: union(all.iter().map(|c| c.slots.as_slice())),
                    exact,
                })
            }
            Expr::Ne(..) | Expr::Exists(_) | Expr::Not(_) => None,
        }
    }

    fn key(&self, path: &[String]) -> Option<Option<&KeyIndex>> {
        // Too deep to be indexed: unknown. Indexed depth but absent: no record has a scalar there.
        (path.len() <= MAX_PATH).then(|| self.keys.get(path))
    }

    fn equal(&self, path: &[String], values: &[Scalar]) -> Option<Candidates> {
        let key = self.key(path)?;
        let mut exact = true;
        let mut lists: Vec<&[u32]> = Vec::with_capacity(values.len());
        for v in values {
            let found = match v {
                Scalar::Str(s) if s.len() > MAX_STR => return None,
                Scalar::Str(s) => key.and_then(|k| k.strs.get(s.as_str())),
                Scalar::Bool(b) => key.map(|k| &k.bools[usize::from(*b)]),
                Scalar::Num(n) => {
                    if key.is_some_and(|k| k.unindexed_num) {
                        return None;
                    }
                    exact &= compares_exactly(n);
                    key.and_then(|k| k.nums.get(&NumKey::new(n.as_f64()?)))
                }
            };
            lists.extend(found.map(Vec::as_slice));
        }
        Some(Candidates {
            slots: union(lists.into_iter()),
            exact,
        })
    }

    fn range(&self, path: &[String], ord: Ord, n: &Number) -> Option<Candidates> {
        let key = self.key(path)?;
        if key.is_some_and(|k| k.unindexed_num) {
            return None;
        }
        let f = NumKey::new(n.as_f64()?);
        let exact = compares_exactly(n);
        // Without exactness, a strict bound is widened to include the bound's own bucket (a
        // large integer may round onto it) and the filter checks the candidates.
        let strict = |b| {
            if exact {
                Bound::Excluded(b)
            } else {
                Bound::Included(b)
            }
        };
        let (lo, hi) = match ord {
            Ord::Lt => (Bound::Unbounded, strict(f)),
            Ord::Lte => (Bound::Unbounded, Bound::Included(f)),
            Ord::Gt => (strict(f), Bound::Unbounded),
            Ord::Gte => (Bound::Included(f), Bound::Unbounded),
        };
        let slots = match key {
            Some(k) => union(k.nums.range((lo, hi)).map(|(_, p)| p.as_slice())),
            None => Vec::new(),
        };
        Some(Candidates { slots, exact })
    }
}

/// Whether comparing any stored number with `n` as f64 gives what the filter's own comparison
/// (exact for integers) gives: `n` is a float (then the filter compares as f64 too), or an
/// integer small enough that no other integer rounds onto it.
fn compares_exactly(n: &Number) -> bool {
    n.is_f64() || n.as_f64().is_some_and(|f| f.abs() < EXACT_INT)
}

fn insert(p: &mut Posting, slot: u32) {
    // Slots grow as records are added, so this is nearly always a push.
    match p.last() {
        Some(&last) if last >= slot => {
            if let Err(at) = p.binary_search(&slot) {
                p.insert(at, slot);
            }
        }
        _ => p.push(slot),
    }
}

/// Removes `slot`; true when the posting is left empty.
fn delete(p: &mut Posting, slot: u32) -> bool {
    if let Ok(at) = p.binary_search(&slot) {
        p.remove(at);
    }
    p.is_empty()
}

fn union<'a>(lists: impl Iterator<Item = &'a [u32]>) -> Vec<u32> {
    let lists: Vec<&[u32]> = lists.collect();
    match lists.as_slice() {
        [] => Vec::new(),
        [one] => one.to_vec(),
        _ => {
            let mut all: Vec<u32> = lists.concat();
            all.sort_unstable();
            all.dedup();
            all
        }
    }
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Filter {
        Filter::from_json(&v).unwrap()
    }

    /// The slots of `metas` (slot = position; `None` = removed) that `filter` passes, by
    /// evaluating it on each.
    fn scan(metas: &[Option<Value>], filter: &Filter) -> Vec<u32> {
        (0..metas.len() as u32)
            .filter(|&s| {
                metas[s as usize]
                    .as_ref()
                    .is_some_and(|m| filter.matches(m))
            })
            .collect()
    }

    /// The index's answer, checked against the scan: exact candidates equal it, inexact ones
    /// contain it.
    fn check(idx: &PayloadIndex, metas: &[Option<Value>], filter: &Filter) -> Option<bool> {
        let want = scan(metas, filter);
        let c = idx.candidates(filter)?;
        if c.exact {
            assert_eq!(c.slots, want, "{filter:?}");
        } else {
            assert!(want.iter().all(|s| c.slots.contains(s)), "{filter:?}");
        }
        Some(c.exact)
    }

    fn filters() -> Vec<Filter> {
        [
            json!({"eq": ["m.lang", "en"]}),
            json!({"eq": ["n", 2]}),
            json!({"eq": ["n", 2.0]}),
            json!({"in": ["n", [1, 3, "x"]]}),
            json!({"eq": ["ok", true]}),
            json!({"lt": ["n", 2]}),
            json!({"lte": ["n", 2]}),
            json!({"gt": ["n", 1.5]}),
            json!({"gte": ["n", -1]}),
            json!({"and": [{"eq": ["m.lang", "en"]}, {"gte": ["n", 2]}]}),
            json!({"and": [{"eq": ["m.lang", "en"]}, {"ne": ["n", 2]}]}),
            json!({"or": [{"eq": ["m.lang", "de"]}, {"eq": ["ok", false]}]}),
            json!({"eq": ["missing", 1]}),
        ]
        .into_iter()
        .map(f)
        .collect()
    }

    fn meta(i: usize) -> Value {
        let lang = ["en", "de", "fr"][i % 3];
        json!({"m": {"lang": lang}, "n": (i % 5) as i64 - 1, "ok": i.is_multiple_of(2), "u": format!("file{i}")})
    }

    #[test]
    fn candidates_match_the_scan_through_adds_removes_and_renumbering() {
        let mut idx = PayloadIndex::default();
        let mut metas: Vec<Option<Value>> = Vec::new();
        for i in 0..40 {
            idx.add(i, &meta(i));
            metas.push(Some(meta(i)));
        }
        // Delete every third, and re-add some of them under new slots (a replace).
        for i in (0..40).step_by(3) {
            idx.remove(i, metas[i].as_ref().unwrap());
            metas[i] = None;
        }
        for i in (0..40).step_by(6) {
            idx.add(metas.len(), &meta(i));
            metas.push(Some(meta(i)));
        }
        for flt in filters() {
            check(&idx, &metas, &flt);
        }
        assert_eq!(check(&idx, &metas, &f(json!({"eq": ["n", 2]}))), Some(true));
        assert_eq!(check(&idx, &metas, &f(json!({"ne": ["n", 2]}))), None);

        // A rebuild keeps the live slots in order and renumbers them densely.
        let mut new_of_old = vec![u32::MAX; metas.len()];
        let live: Vec<Value> = metas.iter().flatten().cloned().collect();
        let mut next = 0;
        for (old, m) in metas.iter().enumerate() {
            if m.is_some() {
                new_of_old[old] = next;
                next += 1;
            }
        }
        idx.renumber(&new_of_old);
        let metas: Vec<Option<Value>> = live.into_iter().map(Some).collect();
        for flt in filters() {
            check(&idx, &metas, &flt);
        }
    }

    #[test]
    fn removing_everything_leaves_no_keys() {
        let mut idx = PayloadIndex::default();
        for i in 0..10 {
            idx.add(i, &meta(i));
        }
        for i in 0..10 {
            idx.remove(i, &meta(i));
        }
        assert!(idx.keys.is_empty());
    }

    #[test]
    fn numbers_that_round_together_are_checked_not_trusted() {
        let mut idx = PayloadIndex::default();
        let metas = vec![
            Some(json!({"n": 9_007_199_254_740_993u64})),
            Some(json!({"n": 9_007_199_254_740_992u64})),
        ];
        for (s, m) in metas.iter().enumerate() {
            idx.add(s, m.as_ref().unwrap());
        }
        let big = f(json!({"eq": ["n", 9_007_199_254_740_992u64]}));
        assert_eq!(check(&idx, &metas, &big), Some(false));
        let gt = f(json!({"gt": ["n", 9_007_199_254_740_992u64]}));
        assert_eq!(check(&idx, &metas, &gt), Some(false));
    }

    #[test]
    fn long_strings_and_deep_paths_are_not_answered() {
        let mut idx = PayloadIndex::default();
        let long = "x".repeat(MAX_STR + 1);
        idx.add(0, &json!({"s": long}));
        assert!(idx.candidates(&f(json!({"eq": ["s", long]}))).is_none());
        assert_eq!(
            idx.candidates(&f(json!({"eq": ["s", "x"]}))),
            Some(Candidates {
                slots: vec![],
                exact: true
            })
        );
        let deep = f(json!({"eq": ["a.b.c.d.e.f.g.h", 1]}))
            .under("m")
            .under("n");
        assert!(idx.candidates(&deep).is_none());
    }
}
