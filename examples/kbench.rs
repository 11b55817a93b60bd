use candle_core::{
    quantized::{GgmlDType, QTensor},
    Device, Tensor,
};
fn main() {
    let dev = Device::Cpu;
    for (n, k) in [(1536usize, 576usize), (576, 1536), (49152, 576)] {
        let w = Tensor::randn(0f32, 0.5, (n, k), &dev).unwrap();
        let dt = if n == 49152 {
            GgmlDType::Q8_0
        } else {
            GgmlDType::Q4_1
        };
        let q = QTensor::quantize(&w, dt).unwrap();
        let p = humanlm::model::packed::Packed::from_qtensor(&q)
            .unwrap()
            .unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, k), &dev).unwrap();
        for _ in 0..10 {
            p.forward(&x).unwrap();
        }
        let iters = if n == 49152 { 50 } else { 500 };
        let t = std::time::Instant::now();
        for _ in 0..iters {
            p.forward(&x).unwrap();
        }
        let dt_s = t.elapsed().as_secs_f64() / iters as f64;
        let blocks = n * k / 32;
        println!(
            "{n}x{k} {dt:?}: {:.1} us/call, {:.2} ns/block, {:.1} GB/s",
            dt_s * 1e6,
            dt_s * 1e9 / blocks as f64,
            (blocks as f64 * if n == 49152 { 34.0 } else { 20.0 }) / dt_s / 1e9
        );
    }
}
