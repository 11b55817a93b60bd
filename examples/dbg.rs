use candle_core::{Device, Tensor};
fn main() {
    let ck = humanlm::model::Checkpoint::resolve(
        "smollm2-135m-instruct",
        std::path::Path::new("checkpoints"),
    )
    .unwrap();
    let m = ck.load(&Default::default()).unwrap();
    let mut ids = m
        .tokenizer
        .encode_rendered("Once upon a time, in a small village by the sea,")
        .unwrap();
    ids.extend([665, 436, 253, 9357, 1573, 267, 19341, 3365]);
    let path = "checkpoints/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
    let mut f = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut r = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut f,
        &Device::Cpu,
    )
    .unwrap();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let theirs: Vec<f32> = r
        .forward(&input, 0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut cache = m.decoder.new_cache(1, 512).unwrap();
    let ours: Vec<f32> = m
        .decoder
        .forward(&input, Some(&mut cache), humanlm::model::Ops::Fast, false)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let all: Vec<f32> = m
        .decoder
        .forward(&input, None, humanlm::model::Ops::Diff, true)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .get(ids.len() - 1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let top = |v: &Vec<f32>| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|a, b| v[*b].total_cmp(&v[*a]));
        idx[..3].iter().map(|&i| (i, v[i])).collect::<Vec<_>>()
    };
    let maxd = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let maxd2 = ours
        .iter()
        .zip(&all)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "ours {:?}\ntheirs {:?}\ndiff {maxd} fast-vs-diff {maxd2}",
        top(&ours),
        top(&theirs)
    );
}
