//! SFT targets token for token: what `sft_examples` trains is the HumanLM recipe's SFT generation
//! (bare under `r_no_tag`, `<response>`-tagged under `r`, think block then tagged reply under
//! `think_r`), continuing the prompt without repeating what it already ends with, then the
//! tokenizer's end-of-sequence token. The expected texts are written out literally; each names
//! the recipe file and statement it follows. Sources (read through the code index):
//! - R = verl-project/verl-recipe `humanlm/` (process_dataset.py at 6a7dbd3,
//!   train_sft_humanlm.sh at 6acdffa);
//! - the multi-role chat template, read at zou-group/humanlm
//!   `user_study/qwen3_multi_role_template_think.jinja` (446366);
//! - the SFT dataset the run script's `data.kwargs.multirole_chat_template_path` belongs to, read
//!   in the verl fork ehejin/HumanLM `verl/utils/dataset/sft_dataset.py` (fd1a7b4).

use crate::common;
use humanlm::prompts::recipe::{import, ImportSpec};
use humanlm::prompts::PromptSet;
use humanlm::scenario::Scenario;
use humanlm::train::{sft_examples, Data, Example};
use std::collections::HashMap;
use std::path::Path;

/// The reply of the scenario the tests train on.
const REPLY: &str = "Signs won't fix people who never read anything.";
/// A second reply, with a line break inside and one at the end: the recipe keeps the completion
/// as stored (make_map_fn_sft formats `response` without stripping it).
const REPLY_2: &str = "Fortnightly?\nMy bin is full in four days, mate.\n";
/// The trace as a judge might return it, with space around it (the recipe strips the trace
/// writer's output: `generate_thinking_trace` returns `...content.strip()`).
const TRACE: &str = "  Here we go again, another rule nobody will follow. I'm not angry, just tired of it, so a dry one-liner will do.\n";
const TRACE_STRIPPED: &str = "Here we go again, another rule nobody will follow. I'm not angry, just tired of it, so a dry one-liner will do.";

/// A prompts root with the shipped `humanlm` and `instruct` sets (imported sets inherit from the
/// first), and the recipe fixture imported under `config` as the set `config`.
fn root_with(configs: &[(&str, bool)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_prompt_set("humanlm", &dir.path().join("humanlm"));
    common::copy_prompt_set("instruct", &dir.path().join("instruct"));
    for &(config, thinking) in configs {
        let spec = ImportSpec {
            recipe: common::fixture("recipe/humanlm"),
            config: config.into(),
            name: if thinking {
                config.to_string()
            } else {
                format!("{config}-nothink")
            },
            chat_template: None,
            thinking,
            overwrite: false,
        };
        import(&spec, dir.path()).unwrap_or_else(|e| panic!("{config}: {e}"));
    }
    dir
}

/// Two scenarios (ids `gym` and `bins`), loaded as training reads them.
fn scenarios(dir: &Path) -> Vec<Scenario> {
    std::fs::write(
        dir.join("gym.toml"),
        format!(
            "id = \"gym\"\ndomain = \"opinion\"\ntitle = \"t\"\n[[turns]]\nauthor = \"op\"\ntext = \"Should gyms put up signs asking people to wipe benches?\"\n[target]\nauthor = \"grumpy\"\nresponse = {REPLY:?}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("bins.toml"),
        format!(
            "id = \"bins\"\ndomain = \"opinion\"\ntitle = \"t\"\n[[turns]]\nauthor = \"op\"\ntext = \"The council wants fortnightly bin collections. Thoughts?\"\n[target]\nauthor = \"grumpy\"\nresponse = {REPLY_2:?}\n"
        ),
    )
    .unwrap();
    let mut s = Data::Scenarios { path: dir.into() }.load().unwrap().0;
    s.sort_by(|a, b| b.id.cmp(&a.id));
    assert_eq!(
        s.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["gym", "bins"]
    );
    s
}

/// The examples `set` gives for the two scenarios, in scenario order.
fn examples(set: &PromptSet, traces: Option<&HashMap<String, String>>) -> Vec<Example> {
    let data = tempfile::tempdir().unwrap();
    let (ex, skipped) = sft_examples(
        common::default_model(),
        set,
        &scenarios(data.path()),
        4096,
        traces,
    )
    .unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(ex.len(), 2);
    ex
}

/// The ids of `text` as the recipe's SFT dataset tokenizes its response string
/// (`tokenizer(response + tokenizer.eos_token, add_special_tokens=False)`: special tokens in the
/// text matched, nothing added).
fn ids(text: &str) -> Vec<u32> {
    common::default_model()
        .tokenizer
        .encode_rendered(text)
        .unwrap()
}

fn decode(ids: &[u32]) -> String {
    common::default_model().tokenizer.decode(ids).unwrap()
}

fn traces() -> HashMap<String, String> {
    ["gym", "bins"]
        .iter()
        .map(|id| (id.to_string(), TRACE.to_string()))
        .collect()
}

/// Plain SFT as the recipe's run script does it (train_sft_humanlm.sh, `no_thinking`:
/// STATE_DIR=r_no_tag, ENABLE_THINKING=false): under the untagged system prompt, the reply bare.
#[test]
fn plain_sft_under_r_no_tag_trains_the_bare_reply() {
    let root = root_with(&[("r_no_tag", true)]);
    let set = PromptSet::load("r_no_tag", root.path()).unwrap();
    assert!(set.untagged_reply);
    let ex = examples(&set, None);
    // process_dataset.py make_map_fn_sft, `elif self.no_tag: response = response`; then
    // sft_dataset.py __getitem__, `response_chat_str = response + tokenizer.eos_token`
    // (SmolLM2's eos_token is <|im_end|>).
    assert_eq!(
        ex[0].target,
        ids("Signs won't fix people who never read anything.<|im_end|>")
    );
    assert_eq!(
        ex[1].target,
        ids("Fortnightly?\nMy bin is full in four days, mate.\n<|im_end|>")
    );
    // The prompt: the no-tag system prompt (the state's description as the whole task block,
    // no tag in it), and the template's generation prompt with thinking off
    // (qwen3_multi_role_template_think.jinja: `<think>\n\n</think>\n\n` when enable_thinking is
    // false).
    let prompt = decode(&ex[0].prompt);
    assert!(
        prompt.contains("The words HUMAN actually posts") && !prompt.contains("<response>"),
        "{prompt}"
    );
    assert!(
        prompt.ends_with("<|im_start|>user\n<name>HUMAN</name>\n<think>\n\n</think>\n\n"),
        "{prompt}"
    );
}

/// Tagged SFT (process_dataset.py without --no_tag or --thinking_sft) under the `r` config, and
/// the same framing under the workbench's own tagged sets.
#[test]
fn tagged_sft_under_r_frames_the_reply_as_the_recipe() {
    let root = root_with(&[("r", true)]);
    let set = PromptSet::load("r", root.path()).unwrap();
    assert!(!set.untagged_reply && !set.prefill_tag);
    let ex = examples(&set, None);
    // process_dataset.py make_map_fn_sft, `else: response = f"<response>\n{response}\n</response>"`,
    // plus the eos token (sft_dataset.py __getitem__).
    assert_eq!(
        ex[0].target,
        ids("<response>\nSigns won't fix people who never read anything.\n</response><|im_end|>")
    );
    assert_eq!(
        ex[1].target,
        ids(
            "<response>\nFortnightly?\nMy bin is full in four days, mate.\n\n</response><|im_end|>"
        )
    );
    let prompt = decode(&ex[0].prompt);
    assert!(prompt.contains("<response>\n<The words HUMAN"), "{prompt}");
    assert!(prompt.ends_with("<think>\n\n</think>\n\n"), "{prompt}");

    // The shipped humanlm set frames its reply the same way.
    let humanlm = PromptSet::load("humanlm", root.path()).unwrap();
    let ex = examples(&humanlm, None);
    assert_eq!(
        ex[0].target,
        ids("<response>\nSigns won't fix people who never read anything.\n</response><|im_end|>")
    );
    // The instruct set pre-fills `<response>`: the target continues after it.
    let instruct = PromptSet::load("instruct", root.path()).unwrap();
    let ex = examples(&instruct, None);
    assert!(decode(&ex[0].prompt).ends_with("<|im_start|>assistant\n<response>"));
    assert_eq!(
        ex[0].target,
        ids("\nSigns won't fix people who never read anything.\n</response><|im_end|>")
    );
}

/// SFT-think as the run script does it (`thinking`: STATE_DIR=think_r, ENABLE_THINKING=true):
/// the generation prompt already ends with `<think>`, and the target continues it with the rest
/// of the recipe's thinking generation, the tag not repeated.
#[test]
fn sft_think_continues_the_open_think_block() {
    let root = root_with(&[("think_r", true)]);
    let set = PromptSet::load("think_r", root.path()).unwrap();
    let by_id = traces();
    for set in [set, PromptSet::load("humanlm", root.path()).unwrap()] {
        let ex = examples(&set, Some(&by_id));
        let prompt = decode(&ex[0].prompt);
        // qwen3_multi_role_template_think.jinja: `<think>` when enable_thinking is true.
        assert!(
            prompt.ends_with("<|im_start|>user\n<name>HUMAN</name>\n<think>"),
            "{}: {prompt}",
            set.name
        );
        // process_dataset.py make_map_fn_sft, `if thinking_sft:
        // response = f"<think>\n{thinking}\n</think>\n<response>\n{response}\n</response>"`,
        // less the `<think>` the prompt holds, plus the eos token.
        assert_eq!(
            ex[0].target,
            ids("\nHere we go again, another rule nobody will follow. I'm not angry, just tired of it, so a dry one-liner will do.\n</think>\n<response>\nSigns won't fix people who never read anything.\n</response><|im_end|>"),
            "{}",
            set.name
        );
        // Prompt and target together: the recipe's generation after the generation prompt's
        // opening, with one <think>.
        let joined = decode(&[ex[1].prompt.clone(), ex[1].target.clone()].concat());
        let turn = &joined[joined.rfind("<|im_start|>user\n").unwrap()..];
        assert_eq!(
            turn,
            format!(
                "<|im_start|>user\n<name>HUMAN</name>\n<think>\n{TRACE_STRIPPED}\n</think>\n<response>\n{REPLY_2}\n</response><|im_end|>"
            ),
            "{}",
            set.name
        );
        // (The think_r system prompt names the <think> tag too; the reply's turn opens it once.)
        assert_eq!(turn.matches("<think>").count(), 1, "{turn}");
    }
}

/// SFT-think is refused where the recipe has no such data (a no-tag set: process_dataset.py
/// asserts --thinking_sft is not combined with --no_tag) and where the prompt leaves no open
/// think block (a set with the reply's tag pre-filled, or its thinking off).
#[test]
fn sft_think_is_refused_without_an_open_think_block_or_tags() {
    let root = root_with(&[("r_no_tag", true), ("r", false)]);
    let data = tempfile::tempdir().unwrap();
    let scenarios = scenarios(data.path());
    let by_id = traces();
    for (name, says) in [
        ("r_no_tag", "--no_tag"),
        ("r-nothink", "thinking off"),
        ("instruct", "pre-fills"),
    ] {
        let set = PromptSet::load(name, root.path()).unwrap();
        let e = sft_examples(
            common::default_model(),
            &set,
            &scenarios,
            4096,
            Some(&by_id),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(says), "{name}: {e}");
    }
}
