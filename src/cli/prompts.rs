//! `humanlm prompts`: list the prompt sets, or import one from the HumanLM recipe's files.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub(super) enum PromptsAction {
    /// List the prompt sets under prompts/ (or $HUMANLM_PROMPTS).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make a prompt set from a copy of the HumanLM verl recipe: reads
    /// state_config/<config>.json, the system prompts it names, system_prompts/base.txt (the
    /// prompt stored in dataset rows), process_dataset.py (its tagged-mode notes) and the chat
    /// template; writes prompts/<name>/ with the sha256 of every file read (source.toml).
    Import {
        /// The recipe's humanlm/ folder.
        recipe: PathBuf,
        /// The new set's name (a folder under prompts/).
        #[arg(long)]
        name: String,
        /// The state config (sebvgcr, r, r_no_tag, think_r, or any other in state_config/);
        /// a name ending in _no_tag is the recipe's --no_tag mode.
        #[arg(long, default_value = "sebvgcr")]
        config: String,
        /// The chat template, relative to the recipe folder.
        #[arg(long, default_value = crate::prompts::recipe::DEFAULT_CHAT_TEMPLATE)]
        chat_template: PathBuf,
        /// Generate the reply with thinking off (the recipe's base-model evaluation); by
        /// default it is on, as in the recipe's HumanLM training and evaluation.
        #[arg(long)]
        no_thinking: bool,
        /// Replace a set of that name.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn prompts_cmd(action: PromptsAction) -> anyhow::Result<()> {
    let root = crate::prompts::default_root();
    match action {
        PromptsAction::List { json } => {
            let mut rows = vec![];
            for name in crate::prompts::list(&root) {
                match crate::prompts::PromptSet::load(&name, &root) {
                    Ok(set) => rows.push(serde_json::json!({
                        "name": set.name, "hash": set.hash, "description": set.description,
                        "states": set.states.iter().map(|s| &s.key).collect::<Vec<_>>(),
                    })),
                    Err(e) => {
                        rows.push(serde_json::json!({ "name": name, "error": e.to_string() }))
                    }
                }
            }
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in rows {
                    match r.get("error") {
                        Some(e) => println!(
                            "{:<20} ERROR {}",
                            r["name"].as_str().unwrap_or(""),
                            e.as_str().unwrap_or("")
                        ),
                        None => println!(
                            "{:<20} {}  {}",
                            r["name"].as_str().unwrap_or(""),
                            r["hash"].as_str().unwrap_or(""),
                            r["description"].as_str().unwrap_or("")
                        ),
                    }
                }
            }
            Ok(())
        }
        PromptsAction::Import {
            recipe,
            name,
            config,
            chat_template,
            no_thinking,
            force,
            json,
        } => {
            let spec = crate::prompts::recipe::ImportSpec {
                recipe,
                config,
                name,
                chat_template: Some(chat_template),
                thinking: !no_thinking,
                overwrite: force,
            };
            let done = crate::prompts::recipe::import(&spec, &root)?;
            if json {
                println!("{}", serde_json::to_string(&done)?);
            } else {
                println!(
                    "wrote {} (states: {}; {} source files, sha256 in source.toml)",
                    done.dir.display(),
                    done.states.join(", "),
                    done.sources.len()
                );
            }
            Ok(())
        }
    }
}
