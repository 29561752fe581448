//! The query-latency measurement the benchmarks share: distinct ~30-word queries (each padded or
//! cut to a task's 32 tokens, so every one costs a full text-tower pass unless cached), sent one
//! at a time.

use std::time::Instant;

/// `n` distinct queries of about 30 words.
pub fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|q| format!("query {q}: a person in a red coat walks a small dog along a wet street at night while cars pass slowly and rain falls on the shop windows behind them"))
        .collect()
}

/// Runs `query` on each text in turn; the latencies in ms, sorted.
pub fn sorted_ms(texts: &[String], mut query: impl FnMut(&str)) -> Vec<f64> {
    let mut l: Vec<f64> = texts
        .iter()
        .map(|t| {
            let t0 = Instant::now();
            query(t);
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    l.sort_by(|a, b| a.total_cmp(b));
    l
}
