//! Precision and recall per entity on the labelled corpus (`scripts/gen-pii-corpus.py`).
//!
//! A finding is a true positive when it overlaps a labelled span of the same entity that no
//! other finding has claimed; unclaimed findings are false positives, unclaimed labels false
//! negatives. `PII_ACCURACY_VERBOSE=1` prints every miss and false alarm.
//!
//! A unit-test module rather than an integration test: integration tests link the cdylib's
//! proxy-wasm glue, which cannot load outside Envoy when the tests run in V8.

use crate::{scan, BuiltIn, EntitySet};
use std::collections::BTreeMap;

const CORPUS: &str = include_str!("../tests/corpus.jsonl");

#[derive(Default, Clone, Copy)]
struct Score {
    tp: u32,
    fp: u32,
    fn_: u32,
}

impl Score {
    fn precision(self) -> f64 {
        if self.tp + self.fp == 0 {
            1.0
        } else {
            f64::from(self.tp) / f64::from(self.tp + self.fp)
        }
    }
    fn recall(self) -> f64 {
        if self.tp + self.fn_ == 0 {
            1.0
        } else {
            f64::from(self.tp) / f64::from(self.tp + self.fn_)
        }
    }
}

#[test]
fn precision_and_recall_meet_the_bar() {
    let verbose = std::env::var_os("PII_ACCURACY_VERBOSE").is_some();
    let mut scores: BTreeMap<BuiltIn, Score> = BTreeMap::new();
    let mut found = Vec::new();
    let mut records = 0;
    for line in CORPUS.lines().filter(|l| !l.trim().is_empty()) {
        records += 1;
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        let labels: Vec<(usize, usize, BuiltIn)> = v["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["start"].as_u64().unwrap() as usize,
                    s["end"].as_u64().unwrap() as usize,
                    BuiltIn::from_name(s["entity"].as_str().unwrap()).unwrap(),
                )
            })
            .collect();
        found.clear();
        scan(text, 0, EntitySet::all(), &mut found);
        let mut claimed = vec![false; labels.len()];
        for f in &found {
            let hit = labels.iter().enumerate().position(|(i, &(s, e, ent))| {
                !claimed[i] && ent == f.entity && f.start < e && s < f.end
            });
            let score = scores.entry(f.entity).or_default();
            match hit {
                Some(i) => {
                    claimed[i] = true;
                    score.tp += 1;
                }
                None => {
                    score.fp += 1;
                    if verbose {
                        println!("FP {:?}: {:?}", f.entity, &text[f.start..f.end]);
                    }
                }
            }
        }
        for (i, &(s, e, ent)) in labels.iter().enumerate() {
            if !claimed[i] {
                scores.entry(ent).or_default().fn_ += 1;
                if verbose {
                    println!("FN {ent:?}: {:?}", &text[s..e]);
                }
            }
        }
    }
    println!("{records} records");
    println!(
        "{:<16} {:>5} {:>4} {:>4} {:>9} {:>7}",
        "entity", "tp", "fp", "fn", "precision", "recall"
    );
    let mut failures = Vec::new();
    for e in BuiltIn::ALL {
        let s = scores.get(&e).copied().unwrap_or_default();
        println!(
            "{:<16} {:>5} {:>4} {:>4} {:>9.4} {:>7.4}",
            e.name(),
            s.tp,
            s.fp,
            s.fn_,
            s.precision(),
            s.recall()
        );
        let (min_p, min_r) = if e == BuiltIn::Phone {
            (0.95, 0.95)
        } else {
            (0.98, 0.99)
        };
        assert!(s.tp > 100, "{}: too few labelled examples", e.name());
        if s.precision() < min_p || s.recall() < min_r {
            failures.push(format!(
                "{}: precision {:.4} (min {min_p}), recall {:.4} (min {min_r})",
                e.name(),
                s.precision(),
                s.recall()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
