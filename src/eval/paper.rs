//! The paper's published numbers (`paper.toml`, compiled in), which an evaluation report shows
//! beside a run's own when the run names the method it reproduces.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The column of the macro average in tables and in `paper.toml`.
pub const MACRO: &str = "macro";

/// One method's published numbers: metric (`response`, `embedding`) → column (a domain or
/// [`MACRO`]) → value ×100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperMethod {
    pub name: String,
    pub label: String,
    pub source: String,
    #[serde(flatten)]
    pub values: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Deserialize)]
struct File {
    method: Vec<PaperMethod>,
}

/// Every method in `paper.toml`.
pub fn methods() -> Vec<PaperMethod> {
    toml::from_str::<File>(include_str!("paper.toml"))
        .expect("paper.toml parses (checked by its test)")
        .method
}

/// The method named `name`, or an error listing the names there are.
pub fn find(name: &str) -> Result<PaperMethod, String> {
    let all = methods();
    let names: Vec<String> = all.iter().map(|m| m.name.clone()).collect();
    all.into_iter().find(|m| m.name == name).ok_or_else(|| {
        format!(
            "--paper {name}: no published numbers under that name (there are: {})",
            names.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_names_a_known_metric_and_column() {
        let all = methods();
        assert!(all.len() >= 4);
        for m in &all {
            assert!(!m.values.is_empty(), "{}", m.name);
            for (metric, cols) in &m.values {
                assert!(
                    ["response", "embedding"].contains(&metric.as_str()),
                    "{metric}"
                );
                for (col, v) in cols {
                    assert!(
                        col == MACRO || crate::scenario::Domain::parse(col).is_some(),
                        "{}: {col}",
                        m.name
                    );
                    assert!((0.0..=100.0).contains(v));
                }
            }
        }
        assert_eq!(find("humanlm").unwrap().values["response"]["opinion"], 25.6);
        assert!(find("nope").unwrap_err().contains("humanlm-recipe"));
    }
}
