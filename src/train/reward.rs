//! GRPO rewards, pluggable: a judge (any judge file: embedding, lexical, the HumanLM rubric on
//! a local model or an endpoint) scoring each rollout's parsed state against the real reply, or
//! a simple verifiable reward for testing the trainer itself.

use super::{Error, Result};
use crate::judge::{Group, Item, Judge, JudgeConfig};
use crate::prompts::PromptSet;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Which reward a GRPO run uses (saved in its configuration).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RewardSpec {
    /// The judge's score of the rollout's state against the real reply, in one call per group;
    /// a rollout that breaks the strict format scores 0 without asking. No file: the default
    /// embedding judge.
    Judge {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<PathBuf>,
    },
    /// Verifiable: 1 when the rollout contains `word` (case-insensitive, as a whole word) within
    /// at most `max_tokens` generated tokens, else 0.
    Contains { word: String, max_tokens: usize },
}

impl Default for RewardSpec {
    fn default() -> Self {
        RewardSpec::Judge { config: None }
    }
}

impl RewardSpec {
    /// Parse the CLI form: a judge file path, `judge` (the default judge), or
    /// `contains:WORD:MAX_TOKENS`.
    pub fn parse(s: &str) -> Result<RewardSpec> {
        if s == "judge" {
            return Ok(RewardSpec::default());
        }
        if let Some(rest) = s.strip_prefix("contains:") {
            let (word, n) = rest.rsplit_once(':').ok_or_else(|| {
                Error::Msg(format!("--reward {s}: expected contains:WORD:MAX_TOKENS"))
            })?;
            let max_tokens = n
                .parse()
                .map_err(|_| Error::Msg(format!("--reward {s}: '{n}' is not a token count")))?;
            if word.trim().is_empty() {
                return Err(Error::Msg(format!("--reward {s}: the word is empty")));
            }
            return Ok(RewardSpec::Contains {
                word: word.trim().to_string(),
                max_tokens,
            });
        }
        Ok(RewardSpec::Judge {
            config: Some(PathBuf::from(s)),
        })
    }

    /// The judge that scores what this reward scores, for validation passes: the judge file (or
    /// the default judge), or the contains judge of the verifiable reward.
    pub fn judge_config(&self) -> Result<JudgeConfig> {
        Ok(match self {
            RewardSpec::Judge { config: Some(p) } => JudgeConfig::read(p)?,
            RewardSpec::Judge { config: None } => JudgeConfig::default_config(),
            RewardSpec::Contains { word, max_tokens } => JudgeConfig::Contains {
                word: word.clone(),
                max_tokens: *max_tokens,
            },
        })
    }

    pub fn build(
        &self,
        roots: &crate::roots::Roots,
        set: Arc<PromptSet>,
    ) -> Result<Box<dyn Reward>> {
        Ok(match self {
            RewardSpec::Judge { .. } => Box::new(JudgeReward {
                judge: self.judge_config()?.build(roots, set.clone())?,
                set,
            }),
            RewardSpec::Contains { word, max_tokens } => Box::new(ContainsReward {
                judge: crate::judge::ContainsJudge::new(word, *max_tokens),
            }),
        })
    }
}

/// One rollout as a reward sees it.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Everything the model wrote, with the pre-filled tag and a stripped stop string put back.
    pub text: String,
    /// The state's value (or the reply) when the strict format held; `None` otherwise.
    pub value: Option<String>,
    /// Generated tokens.
    pub tokens: usize,
}

/// What is being rewarded: one state call of one scenario.
pub struct Target<'a> {
    /// `stance`, ..., or `response`.
    pub state: &'a str,
    pub context: &'a str,
    pub reference: &'a str,
}

pub trait Reward {
    fn name(&self) -> String;
    /// One score per rollout of a group, in order. An error means the reward could not be
    /// computed (after the judge's own retries): the run stops with a resumable checkpoint.
    fn score_group(&self, target: &Target, rollouts: &[Rollout]) -> Result<Vec<f64>>;
}

struct JudgeReward {
    judge: Box<dyn Judge>,
    set: Arc<PromptSet>,
}

impl Reward for JudgeReward {
    fn name(&self) -> String {
        self.judge.name()
    }

    fn score_group(&self, target: &Target, rollouts: &[Rollout]) -> Result<Vec<f64>> {
        let spec = self.set.state(target.state).ok_or_else(|| {
            Error::Msg(format!(
                "prompt set '{}' has no state '{}'",
                self.set.name, target.state
            ))
        })?;
        let valid: Vec<usize> = (0..rollouts.len())
            .filter(|&i| rollouts[i].value.is_some())
            .collect();
        let mut out = vec![0.0; rollouts.len()];
        if valid.is_empty() {
            return Ok(out);
        }
        let group = Group {
            dimension: spec,
            context: target.context,
            reference: target.reference,
            items: valid
                .iter()
                .map(|&i| Item {
                    text: rollouts[i].value.as_deref().unwrap_or_default(),
                    valid: true,
                    tokens: Some(rollouts[i].tokens),
                })
                .collect(),
        };
        let scores = self.judge.score_group(&group)?;
        if let Some(e) = scores.iter().find_map(|s| s.error.as_ref()) {
            return Err(Error::Msg(format!(
                "judge {} failed: {e}",
                self.judge.name()
            )));
        }
        for (&i, s) in valid.iter().zip(scores) {
            out[i] = s.score;
        }
        Ok(out)
    }
}

/// The verifiable reward: the contains judge on the whole rollout (the pre-filled tag, any
/// thinking and the reply), whether or not it kept the strict format.
struct ContainsReward {
    judge: crate::judge::ContainsJudge,
}

impl Reward for ContainsReward {
    fn name(&self) -> String {
        self.judge.name()
    }

    fn score_group(&self, _: &Target, rollouts: &[Rollout]) -> Result<Vec<f64>> {
        Ok(rollouts
            .iter()
            .map(|r| f64::from(u8::from(self.judge.holds(&r.text, r.tokens))))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cli_forms() {
        assert_eq!(RewardSpec::parse("judge").unwrap(), RewardSpec::default());
        assert_eq!(
            RewardSpec::parse("contains:great:20").unwrap(),
            RewardSpec::Contains {
                word: "great".into(),
                max_tokens: 20
            }
        );
        assert!(RewardSpec::parse("contains:great").is_err());
        assert!(RewardSpec::parse("contains::4").is_err());
        assert_eq!(
            RewardSpec::parse("prompts/judges/embedding.toml").unwrap(),
            RewardSpec::Judge {
                config: Some("prompts/judges/embedding.toml".into())
            }
        );
    }

    #[test]
    fn contains_needs_the_whole_word_within_the_budget() {
        let r = ContainsReward {
            judge: crate::judge::ContainsJudge::new("great", 5),
        };
        let t = Target {
            state: "response",
            context: "",
            reference: "",
        };
        let ro = |text: &str, tokens| Rollout {
            text: text.into(),
            value: None,
            tokens,
        };
        let s = r
            .score_group(
                &t,
                &[
                    ro("That is Great!", 4),
                    ro("greatness", 2),
                    ro("great but long", 9),
                ],
            )
            .unwrap();
        assert_eq!(s, vec![1.0, 0.0, 0.0]);
    }
}
