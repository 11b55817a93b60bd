fn main() {
    let ck = humanlm::model::Checkpoint::resolve(
        "smollm2-135m-instruct",
        std::path::Path::new("checkpoints"),
    )
    .unwrap();
    let m = ck.load(&Default::default()).unwrap();
    for a in std::env::args().skip(1) {
        let ids = m.tokenizer.encode_rendered(&a).unwrap();
        let toks: Vec<String> = ids
            .iter()
            .map(|&i| m.tokenizer.id_to_token(i).unwrap())
            .collect();
        println!("{ids:?}\n{toks:?}");
    }
    println!("eos {:?} bos {:?}", m.tokenizer.eos_ids, m.tokenizer.bos_id);
}
