//! Text as the full-text index sees it: lowercase words, common words left out, each reduced
//! to its English stem, so "moved to Lisbon" and "moves to lisbon" share their terms.

use rust_stemmers::{Algorithm, Stemmer};

/// Words too common to tell memories apart.
const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "been", "but", "by", "did", "do", "does",
    "for", "from", "had", "has", "have", "he", "her", "his", "i", "in", "is", "it", "its", "me",
    "my", "of", "on", "or", "our", "she", "so", "that", "the", "their", "them", "they", "this",
    "to", "was", "we", "were", "what", "when", "where", "which", "who", "will", "with", "you",
    "your",
];

/// Splits text into index terms.
pub struct Analyzer {
    stemmer: Stemmer,
}

impl Default for Analyzer {
    fn default() -> Self {
        Analyzer {
            stemmer: Stemmer::create(Algorithm::English),
        }
    }
}

impl Analyzer {
    /// The terms of `text`, in order, repeats kept (their count is the term frequency).
    pub fn terms(&self, text: &str) -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .filter(|w| !STOPWORDS.contains(&w.as_str()))
            .filter(|w| w.chars().count() > 1 || w.chars().all(|c| c.is_numeric()))
            .map(|w| self.stemmer.stem(&w).into_owned())
            .collect()
    }
}

/// The names `text` may mention, as entity keys: every run of one to three words (possessives
/// dropped: "Jon's" is Jon), at most `max` of them, shortest runs first.
pub fn name_candidates(text: &str, max: usize) -> Vec<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            let w = w.trim_matches(|c: char| !c.is_alphanumeric());
            let w = w
                .strip_suffix("'s")
                .or_else(|| w.strip_suffix("\u{2019}s"))
                .unwrap_or(w);
            w.to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let mut out: Vec<String> = Vec::new();
    for n in 1..=3 {
        for run in words.windows(n) {
            if out.len() == max {
                return out;
            }
            let key = run.join(" ");
            if !out.contains(&key) {
                out.push(key);
            }
        }
    }
    out
}

/// About how many tokens a model counts in `text`: a quarter of its bytes, rounded up — the
/// usual rule of thumb for English with BPE tokenizers; budgets are sized with it.
pub fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflections_share_a_stem_and_common_words_are_left_out() {
        let a = Analyzer::default();
        assert_eq!(a.terms("She moved to Lisbon."), ["move", "lisbon"]);
        assert_eq!(a.terms("moves to LISBON"), ["move", "lisbon"]);
        assert_eq!(a.terms("the a of"), Vec::<String>::new());
    }

    #[test]
    fn numbers_and_other_scripts_are_words_too() {
        let a = Analyzer::default();
        assert_eq!(
            a.terms("room 7, 2024-05-01"),
            ["room", "7", "2024", "05", "01"]
        );
        assert_eq!(a.terms("Zürich café"), ["zürich", "café"]);
        assert_eq!(
            a.terms("x"),
            Vec::<String>::new(),
            "single letters say nothing"
        );
    }

    #[test]
    fn names_are_runs_of_up_to_three_words() {
        assert_eq!(
            name_candidates("Where does Jon's sister live?", 100),
            [
                "where",
                "does",
                "jon",
                "sister",
                "live",
                "where does",
                "does jon",
                "jon sister",
                "sister live",
                "where does jon",
                "does jon sister",
                "jon sister live"
            ]
        );
        assert_eq!(name_candidates("a b c d", 3), ["a", "b", "c"]);
        assert!(name_candidates(" ?! ", 10).is_empty());
    }

    #[test]
    fn tokens_are_estimated_from_length() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}
