//! What a training request written as text would run: the workbench's Train form (field values
//! as typed, plus what the checkpoints folder and the judge list hold under the names it gives)
//! checked field by field in the form's order, and turned into a [`TrainConfig`] with the
//! adapter's folder. It reads no files, so each refusal is a plain function of its inputs and
//! names the field at fault.

use super::reward::RewardSpec;
use super::{Data, Method, TrainConfig};
use std::path::{Path, PathBuf};

/// What the checkpoints folder already holds under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// A LoRA adapter (a pass may resume into it).
    Adapter,
    /// A full checkpoint (a pass must not write into it).
    Checkpoint,
}

/// GRPO's own fields.
#[derive(Debug, Clone, Copy)]
pub struct GrpoRequest<'a> {
    /// Rollouts per prompt, as typed.
    pub rollouts: &'a str,
    /// The reward judge's name (`embedding` is the default judge, which needs no file).
    pub reward: &'a str,
    /// The judge of that name as the judge list has it: its file, or why it cannot be used;
    /// `None` when the list has no judge of that name.
    pub judge: Option<Result<&'a Path, &'a str>>,
    /// The cap on a rollout's new tokens, when the caller has one.
    pub max_new_tokens: Option<usize>,
}

/// A training request: the fields as typed, and what the caller knows of the names.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The base checkpoint's name, or an `endpoint:` spec (refused).
    pub base: &'a str,
    /// Whether the base is an adapter (refused: training starts from full weights).
    pub base_is_adapter: bool,
    /// A scenario file or folder.
    pub scenarios: &'a str,
    /// The adapter's folder name under `checkpoints`; empty for [`default_output`].
    pub output: &'a str,
    /// What `checkpoints` holds under the output name already.
    pub existing: Option<Existing>,
    /// Whether an existing adapter of that name is resumed.
    pub resume: bool,
    pub steps: &'a str,
    pub rank: &'a str,
    /// The learning rate; empty for the method's default.
    pub lr: &'a str,
    /// `None` for SFT.
    pub grpo: Option<GrpoRequest<'a>>,
    /// `None`: no validation during the pass.
    pub validation: Option<ValRequest<'a>>,
    /// The checkpoints folder the adapter is written under.
    pub checkpoints: &'a Path,
}

/// Validation during the pass: held-out scenarios evaluated at step 0, every few steps and at
/// the end, the best step kept in `best/` (so it can be loaded instead of the last).
#[derive(Debug, Clone, Copy)]
pub struct ValRequest<'a> {
    /// A scenario file or folder.
    pub scenarios: &'a str,
    /// Steps between passes (0: only at step 0 and at the end).
    pub every: &'a str,
    /// Cap on each validation call's new tokens (`None`: the paper protocol's, or GRPO's cap).
    pub max_tokens: Option<usize>,
}

/// What a start of the request would run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub config: TrainConfig,
    /// The adapter's folder name, and its path under `checkpoints`.
    pub name: String,
    pub out: PathBuf,
    /// The reward judge's name (GRPO).
    pub judge: Option<String>,
}

/// Why a request is refused, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("base checkpoint: training needs local weights, not an endpoint")]
    EndpointBase,
    #[error("base checkpoint: {base} is an adapter; train from its base (or merge it first)")]
    AdapterBase { base: String },
    #[error("scenarios: a scenario file or folder (e.g. scenarios)")]
    NoScenarios,
    #[error("output name '{name}': a folder name under {} (letters, digits, - _ .)", checkpoints.display())]
    OutputName { name: String, checkpoints: PathBuf },
    #[error("output name '{name}': that is a checkpoint, not an adapter this pass may write")]
    OutputIsCheckpoint { name: String },
    #[error(
        "output name '{name}': it exists; choose another name, or set 'if it exists' to resume"
    )]
    OutputExists { name: String },
    #[error("{field} '{value}': a whole number ≥ {min}")]
    Number {
        field: &'static str,
        value: String,
        min: usize,
    },
    #[error("reward judge {name}: {why}")]
    JudgeUnavailable { name: String, why: String },
    #[error("reward judge '{name}': not in prompts/judges/")]
    UnknownJudge { name: String },
    #[error("learning rate '{value}': a positive number such as 1e-4")]
    LearningRate { value: String },
}

/// The adapter's folder name when none is given: `BASE-METHOD-lora`.
pub fn default_output(base: &str, grpo: bool) -> String {
    format!("{base}-{}-lora", if grpo { "grpo" } else { "sft" })
}

/// The adapter's folder name `output` gives (trimmed), or [`default_output`].
pub fn output_name(output: &str, base: &str, grpo: bool) -> String {
    match output.trim() {
        "" => default_output(base, grpo),
        name => name.to_string(),
    }
}

/// Whether `name` is one plain folder name (no separators, not hidden).
fn plain_name(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

fn number(field: &'static str, v: &str, min: usize) -> Result<usize, PlanError> {
    match v.trim().parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(PlanError::Number {
            field,
            value: v.trim().to_string(),
            min,
        }),
    }
}

/// Check `req` field by field (base, scenarios, output, steps, rank, GRPO's rollouts and
/// judge, learning rate) and build what it would run.
pub fn plan(req: &Request) -> Result<Plan, PlanError> {
    let base = req.base;
    if base.starts_with("endpoint:") {
        return Err(PlanError::EndpointBase);
    }
    if req.base_is_adapter {
        return Err(PlanError::AdapterBase { base: base.into() });
    }
    let scenarios = req.scenarios.trim();
    if scenarios.is_empty() {
        return Err(PlanError::NoScenarios);
    }
    let name = output_name(req.output, base, req.grpo.is_some());
    if !plain_name(&name) {
        return Err(PlanError::OutputName {
            name,
            checkpoints: req.checkpoints.to_path_buf(),
        });
    }
    match req.existing {
        Some(Existing::Checkpoint) => return Err(PlanError::OutputIsCheckpoint { name }),
        Some(Existing::Adapter) if !req.resume => return Err(PlanError::OutputExists { name }),
        _ => {}
    }
    let steps = number("steps", req.steps, 1)?;
    let rank = number("LoRA rank", req.rank, 1)?;
    let data = Data::Scenarios {
        path: PathBuf::from(scenarios),
    };
    let mut judge = None;
    let mut cfg = match &req.grpo {
        None => TrainConfig::sft(base, data),
        Some(g) => {
            let mut cfg = TrainConfig::grpo(base, data);
            let n = number("rollouts per prompt", g.rollouts, 2)?;
            let config = match (g.judge, g.reward) {
                (Some(Ok(path)), _) => Some(path.to_path_buf()),
                (Some(Err(why)), name) => {
                    return Err(PlanError::JudgeUnavailable {
                        name: name.into(),
                        why: why.into(),
                    })
                }
                // The default embedding judge needs no file.
                (None, "embedding") => None,
                (None, name) => return Err(PlanError::UnknownJudge { name: name.into() }),
            };
            if let Method::Grpo(p) = &mut cfg.method {
                p.n = n;
                p.reward = RewardSpec::Judge { config };
                if let Some(m) = g.max_new_tokens {
                    p.max_new_tokens = m;
                }
            }
            judge = Some(g.reward.to_string());
            cfg
        }
    };
    cfg.steps = steps;
    cfg.set_rank(rank, None);
    let lr = req.lr.trim();
    if !lr.is_empty() {
        match lr.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => cfg.lr = v,
            _ => return Err(PlanError::LearningRate { value: lr.into() }),
        }
    }
    if let Some(v) = &req.validation {
        cfg.val = Some(super::ValConfig {
            data: Data::Scenarios {
                path: PathBuf::from(v.scenarios.trim()),
            },
            every: number("validate every", v.every, 0)?,
            judge: None,
            limit: None,
            max_tokens: v.max_tokens,
            keep_best: true,
        });
    }
    let out = req.checkpoints.join(&name);
    Ok(Plan {
        config: cfg,
        name,
        out,
        judge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sft() -> Request<'static> {
        Request {
            base: "smollm2-135m-instruct",
            base_is_adapter: false,
            scenarios: "scenarios",
            output: "",
            existing: None,
            resume: false,
            steps: "20",
            rank: "8",
            lr: "",
            grpo: None,
            validation: None,
            checkpoints: Path::new("checkpoints"),
        }
    }

    fn grpo(
        judge: Option<Result<&'static Path, &'static str>>,
        reward: &'static str,
    ) -> Request<'static> {
        Request {
            grpo: Some(GrpoRequest {
                rollouts: "4",
                reward,
                judge,
                max_new_tokens: Some(32),
            }),
            ..sft()
        }
    }

    #[test]
    fn a_plain_sft_request_plans_the_default_adapter() {
        let p = plan(&sft()).unwrap();
        assert_eq!(p.name, "smollm2-135m-instruct-sft-lora");
        assert_eq!(
            p.out,
            Path::new("checkpoints/smollm2-135m-instruct-sft-lora")
        );
        assert_eq!((p.config.steps, p.config.rank), (20, 8));
        assert_eq!(p.config.method.name(), "sft");
        assert_eq!(p.judge, None);
        let lr = plan(&Request {
            lr: " 3e-4 ",
            ..sft()
        })
        .unwrap();
        assert_eq!(lr.config.lr, 3e-4);
    }

    #[test]
    fn validation_keeps_the_best_step_and_checks_its_interval() {
        let v = |every| ValRequest {
            scenarios: " heldout ",
            every,
            max_tokens: Some(48),
        };
        let p = plan(&Request {
            validation: Some(v("5")),
            ..sft()
        })
        .unwrap();
        let val = p.config.val.unwrap();
        assert_eq!(val.data.path(), Path::new("heldout"));
        assert_eq!(
            (val.every, val.max_tokens, val.keep_best),
            (5, Some(48), true)
        );
        let e = plan(&Request {
            validation: Some(v("often")),
            ..sft()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "validate every 'often': a whole number ≥ 0");
        assert!(plan(&sft()).unwrap().config.val.is_none());
    }

    #[test]
    fn grpo_takes_its_judge_rollouts_and_token_cap() {
        let p = plan(&grpo(None, "embedding")).unwrap();
        assert_eq!(p.name, "smollm2-135m-instruct-grpo-lora");
        assert_eq!(p.judge.as_deref(), Some("embedding"));
        let Method::Grpo(g) = &p.config.method else {
            panic!("not grpo")
        };
        assert_eq!((g.n, g.max_new_tokens), (4, 32));
        assert_eq!(g.reward, RewardSpec::Judge { config: None });
        let file = Path::new("prompts/judges/rubric.toml");
        let p = plan(&grpo(Some(Ok(file)), "rubric")).unwrap();
        let Method::Grpo(g) = &p.config.method else {
            panic!("not grpo")
        };
        assert_eq!(
            g.reward,
            RewardSpec::Judge {
                config: Some(file.into())
            }
        );
    }

    #[test]
    fn each_field_is_refused_by_name() {
        let err = |r: Request| plan(&r).unwrap_err().to_string();
        assert!(err(Request {
            base: "endpoint:http://h/v1#m",
            ..sft()
        })
        .contains("local weights"));
        assert!(err(Request {
            base_is_adapter: true,
            ..sft()
        })
        .contains("is an adapter"));
        assert!(err(Request {
            scenarios: " ",
            ..sft()
        })
        .starts_with("scenarios"));
        assert_eq!(
            err(Request {
                output: "../x",
                ..sft()
            }),
            "output name '../x': a folder name under checkpoints (letters, digits, - _ .)"
        );
        assert!(err(Request {
            output: ".hidden",
            ..sft()
        })
        .starts_with("output name"));
        let exists = Request {
            existing: Some(Existing::Adapter),
            ..sft()
        };
        assert!(err(exists).contains("it exists"));
        assert!(plan(&Request {
            resume: true,
            ..exists
        })
        .is_ok());
        let full = Request {
            existing: Some(Existing::Checkpoint),
            resume: true,
            ..sft()
        };
        assert!(err(full).contains("that is a checkpoint"));
        assert_eq!(
            err(Request {
                steps: "0",
                ..sft()
            }),
            "steps '0': a whole number ≥ 1"
        );
        assert!(err(Request { rank: "x", ..sft() }).starts_with("LoRA rank 'x'"));
        assert!(err(Request { lr: "-1", ..sft() }).starts_with("learning rate '-1'"));
        let mut one = grpo(None, "embedding");
        if let Some(g) = &mut one.grpo {
            g.rollouts = "1";
        }
        assert!(err(one).starts_with("rollouts per prompt '1': a whole number ≥ 2"));
        assert_eq!(
            err(grpo(Some(Err("needs OPENAI_API_KEY")), "llm")),
            "reward judge llm: needs OPENAI_API_KEY"
        );
        assert_eq!(
            err(grpo(None, "nope")),
            "reward judge 'nope': not in prompts/judges/"
        );
    }

    #[test]
    fn fields_are_checked_in_the_forms_order() {
        // A bad base is reported before a bad step count, a bad step count before a bad judge.
        let both = Request {
            base_is_adapter: true,
            steps: "x",
            ..sft()
        };
        assert!(matches!(plan(&both), Err(PlanError::AdapterBase { .. })));
        let judge_and_steps = Request {
            steps: "x",
            ..grpo(None, "nope")
        };
        assert!(matches!(
            plan(&judge_and_steps),
            Err(PlanError::Number { field: "steps", .. })
        ));
    }
}
