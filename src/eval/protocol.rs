//! Evaluation presets: what the HumanLM recipe's evaluation run did, as one choice.
//!
//! Read from the recipe's `train_rl_humanlm.sh` evaluation settings and its agent loop: the
//! reply alone, under the evaluation state config (`r`, imported with `humanlm prompts import
//! … --config r`), thinking as the set says (on for the recipe's configs), one sample at
//! temperature 0.4, at most 1,024 new tokens (512 for the base model), stopping at
//! `</response>`, judged by the evaluation judge at temperature 0.
//!
//! Where the paper's text and the code that produced its numbers disagree, the preset follows
//! the code: the recipe's command line sets the no-repeat-n-gram size to 0, so the 4-gram ban
//! the paper describes never ran. `--no-repeat-ngram 4` asks for the paper's version.

use super::{Error, Result};
use crate::judge::JudgeConfig;
use crate::prompts::PromptSet;
use crate::sim::SamplingChoice;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The recipe's evaluation of a trained simulator (1,024 new tokens).
    Paper,
    /// The same for the untrained base model (512 new tokens, as the recipe gives it).
    PaperBase,
}

/// The evaluation judge the paper used, under the prompt-set root (`prompts/judges/…`).
pub const PAPER_JUDGE: &str = "judges/rubric-anthropic.toml";

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Paper => "paper",
            Protocol::PaperBase => "paper-base",
        }
    }

    fn max_tokens(self) -> usize {
        match self {
            Protocol::Paper => 1024,
            Protocol::PaperBase => 512,
        }
    }

    /// The preset's sampling. What the user left unset is filled; what the user set to
    /// something else is refused (a run labelled with the preset must be the preset), except
    /// the n-gram size, which is how the paper's 4-gram ban is asked for.
    pub fn apply(self, c: &SamplingChoice) -> Result<SamplingChoice> {
        let conflict = |what: &str, want: &str| {
            Error::Msg(format!(
                "--protocol {} samples with {what} {want}; drop the option that sets it \
                 otherwise, or evaluate without the preset",
                self.name()
            ))
        };
        if c.n != 1 {
            return Err(conflict("--n", "1"));
        }
        if c.top_p != 1.0 {
            return Err(conflict("--top-p", "1.0"));
        }
        if c.temperature.is_some_and(|t| t != 0.4) {
            return Err(conflict("--temperature", "0.4"));
        }
        if c.repetition_penalty.is_some_and(|r| r != 1.0) {
            return Err(conflict("--repetition-penalty", "1.0"));
        }
        if c.max_tokens.is_some_and(|m| m != self.max_tokens()) {
            return Err(conflict("--max-tokens", &self.max_tokens().to_string()));
        }
        Ok(SamplingChoice {
            temperature: Some(0.4),
            repetition_penalty: Some(1.0),
            no_repeat_ngram: Some(c.no_repeat_ngram.unwrap_or(0)),
            max_tokens: Some(self.max_tokens()),
            ..c.clone()
        })
    }

    /// The preset judges the reply alone: a set with state dimensions would generate them.
    pub fn check_set(self, set: &PromptSet) -> Result<()> {
        if set.dimensions().next().is_some() {
            return Err(Error::Msg(format!(
                "--protocol {}: prompt set '{}' generates states before the reply; the \
                 recipe's evaluation writes the reply alone under its `r` state config \
                 (import it: humanlm prompts import RECIPE_DIR --name humanlm-r --config r, \
                 then --prompts humanlm-r)",
                self.name(),
                set.name
            )));
        }
        Ok(())
    }

    /// The evaluation judge is a language model at temperature 0.
    pub fn check_judge(self, judge: &JudgeConfig, path: &std::path::Path) -> Result<()> {
        match judge {
            JudgeConfig::Rubric(c) if c.sampling.temperature == 0.0 => Ok(()),
            JudgeConfig::Rubric(c) => Err(Error::file(
                path,
                format!(
                    "--protocol {} judges at temperature 0, as the paper's evaluation did; \
                     this judge sets {}",
                    self.name(),
                    c.sampling.temperature
                ),
            )),
            _ => Err(Error::file(
                path,
                format!(
                    "--protocol {} scores with the rubric judge (kind = \"rubric\"), as the \
                     paper did",
                    self.name()
                ),
            )),
        }
    }

    /// What run.json records of the preset.
    pub fn describe(self, sampling: &SamplingChoice, set: &PromptSet) -> serde_json::Value {
        let ngram = sampling.no_repeat_ngram.unwrap_or(0);
        serde_json::json!({
            "name": self.name(),
            "calls": "response only",
            "thinking": set.response_thinking,
            "n": 1,
            "temperature": 0.4,
            "max_new_tokens": self.max_tokens(),
            "stop": "</response>",
            "judge_temperature": 0.0,
            "no_repeat_ngram": ngram,
            "no_repeat_ngram_follows": if ngram == 0 {
                "the recipe's code (its command line sets the size to 0)"
            } else {
                "the paper's text (a 4-gram ban), not the code that produced its numbers"
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preset_fills_unset_values_and_refuses_conflicting_ones() {
        let p = Protocol::Paper.apply(&SamplingChoice::default()).unwrap();
        assert_eq!(p.temperature, Some(0.4));
        assert_eq!(p.no_repeat_ngram, Some(0));
        assert_eq!(p.max_tokens, Some(1024));
        assert_eq!(p.repetition_penalty, Some(1.0));
        let base = Protocol::PaperBase
            .apply(&SamplingChoice::default())
            .unwrap();
        assert_eq!(base.max_tokens, Some(512));
        // The paper's 4-gram ban is a choice, not a conflict.
        let ban = SamplingChoice {
            no_repeat_ngram: Some(4),
            ..Default::default()
        };
        assert_eq!(
            Protocol::Paper.apply(&ban).unwrap().no_repeat_ngram,
            Some(4)
        );
        for bad in [
            SamplingChoice {
                n: 4,
                ..Default::default()
            },
            SamplingChoice {
                temperature: Some(1.0),
                ..Default::default()
            },
            SamplingChoice {
                top_p: 0.9,
                ..Default::default()
            },
            SamplingChoice {
                max_tokens: Some(512),
                ..Default::default()
            },
            SamplingChoice {
                repetition_penalty: Some(1.2),
                ..Default::default()
            },
        ] {
            let e = Protocol::Paper.apply(&bad).unwrap_err().to_string();
            assert!(e.contains("--protocol paper samples with"), "{e}");
        }
        assert!(Protocol::PaperBase
            .apply(&SamplingChoice {
                max_tokens: Some(512),
                ..Default::default()
            })
            .is_ok());
    }
}
