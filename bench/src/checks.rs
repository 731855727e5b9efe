//! Collecting what the end-of-scenario checks found, shortly: a count and a few examples.

use futures::{Stream, StreamExt};

/// How many examples a failed check names.
const EXAMPLES: usize = 3;

/// How many reads the checks keep in flight.
pub const CHECK_CONCURRENCY: usize = 32;

/// Problems found by one check, e.g. "lost update".
#[derive(Debug, Default)]
pub struct Findings {
    what: &'static str,
    count: usize,
    examples: Vec<String>,
}

impl Findings {
    /// An empty set of findings of kind `what`.
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            ..Self::default()
        }
    }

    /// Adds one problem.
    pub fn add(&mut self, example: String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example);
        }
    }

    /// Collects the problems a stream of per-key checks yields (None: that key is fine).
    pub async fn collect(what: &'static str, results: impl Stream<Item = Option<String>>) -> Self {
        let mut f = Self::new(what);
        let mut results = std::pin::pin!(results);
        while let Some(r) = results.next().await {
            if let Some(e) = r {
                f.add(e);
            }
        }
        f
    }

    /// Appends one summary line to `failures` when anything was found.
    pub fn report_into(self, failures: &mut Vec<String>) {
        if self.count > 0 {
            failures.push(format!("{}: {} ({})", self.what, self.count, self.examples.join("; ")));
        }
    }
}

/// Checks that `seqs` is exactly 1..=n in order; the first gap or duplicate otherwise.
pub fn gapless(seqs: impl IntoIterator<Item = u64>) -> Result<u64, String> {
    let mut last = 0;
    for s in seqs {
        if s != last + 1 {
            return Err(format!("seq {s} after {last}"));
        }
        last = s;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gapless_finds_gaps_and_duplicates() {
        assert_eq!(gapless([1, 2, 3]), Ok(3));
        assert_eq!(gapless([]), Ok(0));
        assert_eq!(gapless([1, 3]), Err("seq 3 after 1".into()));
        assert_eq!(gapless([1, 1]), Err("seq 1 after 1".into()));
    }

    #[tokio::test]
    async fn findings_count_everything_but_name_a_few() {
        let items = (0..10).map(|i| (i % 2 == 0).then(|| format!("key {i}")));
        let f = Findings::collect("lost update", futures::stream::iter(items)).await;
        let mut out = vec![];
        f.report_into(&mut out);
        assert_eq!(out, vec!["lost update: 5 (key 0; key 2; key 4)".to_string()]);
        let mut none = vec![];
        Findings::new("gap").report_into(&mut none);
        assert!(none.is_empty());
    }
}
