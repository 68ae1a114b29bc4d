//! The synthetic no_robots rows: a line-by-line port of `train/tests/reference/tiny_data.py`
//! (same splitmix64 stream, word lists and order of draws), so the committed fixture rows can be
//! regenerated from either side. The text has learnable structure (fixed capitals, sums,
//! upper-case rewrites, fixed answer formats), so a LoRA run's loss falls on it.

use std::path::{Path, PathBuf};

use crate::{
    TrainError,
    data::{Message, Row},
    rng::SplitMix64,
};

/// XORed into the seed for the test split's stream (`tiny_data.TEST_SEED_XOR`).
const TEST_SEED_XOR: u64 = 0xA5A5_A5A5_A5A5_A5A5;

// The word lists and their order must match `tiny_data.py` entry for entry: the fixture rows
// (and `tests/tiny_generators.rs`) depend on it.
const CATEGORIES: [&str; 10] = [
    "Generation",
    "Open QA",
    "Brainstorm",
    "Chat",
    "Rewrite",
    "Summarize",
    "Coding",
    "Classify",
    "Closed QA",
    "Extract",
];
const COUNTRIES: [(&str, &str); 8] = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
];
const ANIMALS: [&str; 8] = ["cat", "dog", "horse", "owl", "fox", "whale", "rabbit", "otter"];
const BIRDS: [&str; 1] = ["owl"];
const COLORS: [&str; 6] = ["red", "blue", "green", "yellow", "purple", "orange"];
const ADJECTIVES: [&str; 8] = ["happy", "quiet", "brave", "small", "bright", "gentle", "clever", "sleepy"];
const PLACES: [&str; 7] = ["forest", "river", "city", "garden", "mountain", "beach", "café"];
const NAMES: [&str; 6] = ["Ana", "Ben", "Chloé", "Dev", "Emma", "Felix"];

/// Upper-cases the first character (Python `word[:1].upper() + word[1:]`).
fn cap(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn messages_for(category: &str, rng: &mut SplitMix64) -> Vec<(&'static str, String)> {
    match category {
        "Generation" => {
            let (adj, animal, place, color) =
                (rng.pick(&ADJECTIVES), rng.pick(&ANIMALS), rng.pick(&PLACES), rng.pick(&COLORS));
            vec![
                ("user", format!("Write a short poem about a {adj} {animal} in the {place}.")),
                (
                    "assistant",
                    format!(
                        "The {adj} {animal} walks by the {place},\nit dreams of {color} skies.\nThe {place} is {adj} tonight."
                    ),
                ),
            ]
        }
        "Open QA" => {
            let (country, capital) = rng.pick(&COUNTRIES);
            vec![
                ("user", format!("What is the capital of {country}?")),
                ("assistant", format!("The capital of {country} is {capital}.")),
            ]
        }
        "Brainstorm" => {
            let (color, animal) = (rng.pick(&COLORS), rng.pick(&ANIMALS));
            let (a, b, c) = (rng.pick(&ADJECTIVES), rng.pick(&ADJECTIVES), rng.pick(&ADJECTIVES));
            vec![
                ("user", format!("Give me three names for a {color} {animal}.")),
                (
                    "assistant",
                    format!(
                        "1. {} {}\n2. {} {}\n3. {} the {}",
                        cap(a),
                        cap(color),
                        cap(b),
                        cap(animal),
                        cap(c),
                        cap(animal)
                    ),
                ),
            ]
        }
        "Chat" => {
            let (animal, color, place) = (rng.pick(&ANIMALS), rng.pick(&COLORS), rng.pick(&PLACES));
            vec![
                ("system", format!("You are a friendly assistant who loves {animal}s.")),
                ("user", "Hi! What is your favourite color?".to_owned()),
                ("assistant", format!("Hello! I like {color}, like a {color} {animal}.")),
                ("user", "Why?".to_owned()),
                ("assistant", format!("Because {color} reminds me of the {place}.")),
            ]
        }
        "Rewrite" => {
            let (adj, animal, color, place) =
                (rng.pick(&ADJECTIVES), rng.pick(&ANIMALS), rng.pick(&COLORS), rng.pick(&PLACES));
            let sentence = format!("the {adj} {animal} sees a {color} {place}.");
            vec![
                ("user", format!("Rewrite this sentence in capital letters: {sentence}")),
                ("assistant", sentence.to_uppercase()),
            ]
        }
        "Summarize" => {
            let (animal, place, color, adj) =
                (rng.pick(&ANIMALS), rng.pick(&PLACES), rng.pick(&COLORS), rng.pick(&ADJECTIVES));
            vec![
                (
                    "user",
                    format!(
                        "Summarize: The {animal} went to the {place}. It found a {color} stone. Then it went home feeling {adj}."
                    ),
                ),
                ("assistant", format!("A {adj} {animal} found a {color} stone at the {place}.")),
            ]
        }
        "Coding" => {
            let (a, b) = (rng.below(20), rng.below(20));
            vec![
                ("user", format!("Write a Python function that adds {a} and {b}.")),
                ("assistant", format!("```python\ndef add_{a}_{b}():\n    return {a} + {b}  # = {}\n```", a + b)),
            ]
        }
        "Classify" => {
            let animal = rng.pick(&ANIMALS);
            let kind = if BIRDS.contains(&animal) { "bird" } else { "mammal" };
            vec![
                ("user", format!("Is the {animal} a mammal or a bird?")),
                ("assistant", format!("The {animal} is a {kind}.")),
            ]
        }
        "Closed QA" => {
            let (name, a, b) = (rng.pick(&NAMES), rng.below(10), rng.below(10));
            vec![
                ("user", format!("{name} has {a} apples and buys {b} more. How many apples does {name} have?")),
                ("assistant", format!("{name} has {} apples.", a + b)),
            ]
        }
        // "Extract", the last category; `make_row` only passes names from CATEGORIES.
        _ => {
            let (c1, animal, c2, place) = (rng.pick(&COLORS), rng.pick(&ANIMALS), rng.pick(&COLORS), rng.pick(&PLACES));
            vec![
                ("user", format!("Extract the colors from: The {c1} {animal} sat on a {c2} mat near the {place}.")),
                ("assistant", format!("{c1}, {c2}")),
            ]
        }
    }
}

fn make_row(rng: &mut SplitMix64) -> Row {
    let category = rng.pick(&CATEGORIES);
    let messages = messages_for(category, rng);
    let prompt_id: String = (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect();
    let prompt =
        messages.iter().find(|(role, _)| *role == "user").map(|(_, content)| content.clone()).unwrap_or_default();
    Row {
        prompt,
        prompt_id,
        messages: messages.into_iter().map(|(role, content)| Message { role: role.to_owned(), content }).collect(),
        category: category.to_owned(),
    }
}

/// Synthetic no_robots rows `(train, test)`: train from splitmix64(`seed`), test from
/// splitmix64(`seed ^ 0xA5A5…`), exactly as `tiny_data.generate_rows`.
pub fn generate_rows(seed: u64, n_train: usize, n_test: usize) -> (Vec<Row>, Vec<Row>) {
    let mut rng = SplitMix64::new(seed);
    let train = (0..n_train).map(|_| make_row(&mut rng)).collect();
    let mut rng = SplitMix64::new(seed ^ TEST_SEED_XOR);
    let test = (0..n_test).map(|_| make_row(&mut rng)).collect();
    (train, test)
}

pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    std::fs::write(path, bytes).map_err(|e| TrainError::io(path, e))
}

/// Writes `train.jsonl` and `test.jsonl` of [`generate_rows`] into `dir` (created if needed).
/// Returns the two paths.
///
/// # Errors
/// [`TrainError::Io`] when the directory or a file cannot be written.
pub fn write_data(dir: &Path, seed: u64, n_train: usize, n_test: usize) -> Result<[PathBuf; 2], TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let (train, test) = generate_rows(seed, n_train, n_test);
    let mut paths = Vec::with_capacity(2);
    for (name, rows) in [("train.jsonl", train), ("test.jsonl", test)] {
        let path = dir.join(name);
        let mut out = Vec::new();
        for row in &rows {
            serde_json::to_writer(&mut out, row).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
            out.push(b'\n');
        }
        write_file(&path, &out)?;
        paths.push(path);
    }
    Ok([paths[0].clone(), paths[1].clone()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::format_example;

    #[test]
    fn capitalises_like_python() {
        assert_eq!(cap("owl"), "Owl");
        assert_eq!(cap(""), "");
        assert_eq!(cap("élan"), "Élan");
    }

    #[test]
    fn generator_is_deterministic_and_varied() {
        let (a, b) = generate_rows(7, 50, 5);
        assert_eq!((a.len(), b.len()), (50, 5));
        assert_eq!(generate_rows(7, 50, 5), (a.clone(), b.clone()));
        assert_ne!(generate_rows(8, 50, 5).0, a);
        let categories: std::collections::HashSet<_> = a.iter().map(|r| r.category.as_str()).collect();
        assert!(categories.len() >= 8, "{categories:?}");
        for row in &a {
            assert_eq!(row.prompt_id.len(), 64);
            assert_eq!(
                row.prompt,
                row.messages.iter().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default()
            );
            format_example(&row.messages).expect("known roles");
        }
    }
}
