//! AdamW with decoupled weight decay, whose moments can be saved and restored so a resumed run
//! continues exactly (candle-nn's AdamW keeps them private), plus the learning-rate schedule and
//! gradient clipping.

use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    pub params: AdamWParams,
    vars: Vec<(String, Var)>,
    /// Moments, in f32 whatever the parameters' dtype.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// f32 copies of half-precision parameters: updates accumulate here and the parameter gets
    /// the rounded value, so steps smaller than a bf16 ulp are not lost. None for f32/f64.
    master: Vec<Option<Tensor>>,
    /// Steps taken (for bias correction).
    pub t: usize,
}

/// The dtype optimizer state is kept in for a parameter of dtype `d`.
fn state_dtype(d: DType) -> DType {
    if d == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> candle_core::Result<AdamW> {
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like()?.to_dtype(state_dtype(v.dtype())))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let master = vars
            .iter()
            .map(|(_, v)| {
                let d = state_dtype(v.dtype());
                (v.dtype() != d)
                    .then(|| v.as_tensor().to_dtype(d))
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Storage of its own, not a clone of `m`'s: both are updated in place.
        let v = m
            .iter()
            .map(|t| t.copy())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            vars,
            m,
            v,
            master,
            t: 0,
        })
    }

    /// One update with gradients `grads[i]` for `vars[i]` at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> candle_core::Result<()> {
        self.t += 1;
        let p = self.params;
        let (b1t, b2t) = (
            1.0 - p.beta1.powi(self.t as i32),
            1.0 - p.beta2.powi(self.t as i32),
        );
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let g = grads[i].to_dtype(self.m[i].dtype())?;
            // f32 on the CPU: three passes in place, no temporaries. The expression below
            // allocates a dozen full-size tensors per parameter, which for full fine-tuning (135M
            // weights) cost more than the forward and backward passes themselves.
            let w = self.master[i].as_ref().unwrap_or(var.as_tensor());
            if in_place::applies(&[w, &self.m[i], &self.v[i], &g]) {
                self.m[i].inplace_op2(
                    &g,
                    &in_place::Moment {
                        beta: p.beta1,
                        square: false,
                    },
                )?;
                self.v[i].inplace_op2(
                    &g,
                    &in_place::Moment {
                        beta: p.beta2,
                        square: true,
                    },
                )?;
                let update = in_place::Update {
                    lr,
                    b1t,
                    b2t,
                    eps: p.eps,
                    decay: p.weight_decay,
                };
                w.inplace_op3(&self.m[i], &self.v[i], &update)?;
                if self.master[i].is_some() {
                    var.set(&w.to_dtype(var.dtype())?)?;
                }
                continue;
            }
            let m = ((&self.m[i] * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&m / b1t)? / ((&v / b2t)?.sqrt()? + p.eps)?)?;
            let current = match &self.master[i] {
                Some(w) => w.clone(),
                None => var.as_tensor().clone(),
            };
            let next = ((current * (1.0 - lr * p.weight_decay))? - (update * lr)?)?;
            match &mut self.master[i] {
                Some(w) => {
                    var.set(&next.to_dtype(var.dtype())?)?;
                    *w = next;
                }
                None => var.set(&next)?,
            }
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments keyed `m.<name>` / `v.<name>` (and `master.<name>` for half-precision
    /// parameters), lent to `f` for a checkpoint. Lent, not returned: the steps update this
    /// storage in place, and while `f` runs no step can (it holds `&self`), so no copy is made.
    pub fn with_state<R>(&self, f: impl FnOnce(&HashMap<String, Tensor>) -> R) -> R {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
            if let Some(w) = &self.master[i] {
                out.insert(format!("master.{name}"), w.clone());
            }
        }
        f(&out)
    }

    /// Continue from [`AdamW::with_state`]'s map (loaded on any device). A checkpoint without master
    /// copies (an f32 run resumed in bf16) starts them from the parameters.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, t: usize) -> Result<(), String> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let d = state_dtype(var.dtype());
            let load = |key: &str| -> Result<Option<Tensor>, String> {
                let k = format!("{key}.{name}");
                let Some(x) = state.get(&k) else {
                    return Ok(None);
                };
                if x.dims() != var.dims() {
                    return Err(format!("optimizer state '{k}' has the wrong shape"));
                }
                // A copy of its own: the steps update it in place.
                x.to_device(var.device())
                    .and_then(|x| x.to_dtype(d))
                    .and_then(|x| x.copy())
                    .map(Some)
                    .map_err(|e| e.to_string())
            };
            for key in ["m", "v"] {
                let x =
                    load(key)?.ok_or_else(|| format!("optimizer state lacks '{key}.{name}'"))?;
                if key == "m" {
                    self.m[i] = x;
                } else {
                    self.v[i] = x;
                }
            }
            if self.master[i].is_some() {
                if let Some(w) = load("master")? {
                    self.master[i] = Some(w);
                } else {
                    self.master[i] = Some(var.as_tensor().to_dtype(d).map_err(|e| e.to_string())?);
                }
            }
        }
        self.t = t;
        Ok(())
    }
}

/// AdamW's arithmetic as in-place passes over contiguous f32 CPU storage.
mod in_place {
    use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
    use rayon::prelude::*;

    /// Elements per parallel chunk: large enough that scheduling is noise.
    const CHUNK: usize = 1 << 16;

    pub fn applies(ts: &[&Tensor]) -> bool {
        ts.iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
            && ts.iter().all(|t| t.dims() == ts[0].dims())
    }

    fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("optimizer state is not contiguous".into()))?;
        Ok(&s.as_slice::<f32>()?[a..b])
    }

    fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("a parameter is not contiguous".into()))?;
        match s {
            CpuStorage::F32(v) => Ok(&mut v[a..b]),
            _ => Err(candle_core::Error::Msg("expected f32 storage".into())),
        }
    }

    /// m ← β·m + (1 − β)·g, or with g² for the second moment.
    pub struct Moment {
        pub beta: f64,
        pub square: bool,
    }

    impl InplaceOp2 for Moment {
        fn name(&self) -> &'static str {
            "adamw-moment"
        }
        fn cpu_fwd(
            &self,
            dst: &mut CpuStorage,
            dst_l: &Layout,
            g: &CpuStorage,
            gl: &Layout,
        ) -> Result<()> {
            let (b, c) = (self.beta as f32, (1.0 - self.beta) as f32);
            let (m, g) = (slice_mut(dst, dst_l)?, slice(g, gl)?);
            let square = self.square;
            m.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .for_each(|(m, g)| {
                    for (m, &g) in m.iter_mut().zip(g) {
                        *m = *m * b + if square { g * g } else { g } * c;
                    }
                });
            Ok(())
        }
    }

    /// w ← w·(1 − lr·λ) − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε).
    pub struct Update {
        pub lr: f64,
        pub b1t: f64,
        pub b2t: f64,
        pub eps: f64,
        pub decay: f64,
    }

    impl InplaceOp3 for Update {
        fn name(&self) -> &'static str {
            "adamw-update"
        }
        fn cpu_fwd(
            &self,
            dst: &mut CpuStorage,
            dst_l: &Layout,
            m: &CpuStorage,
            ml: &Layout,
            v: &CpuStorage,
            vl: &Layout,
        ) -> Result<()> {
            let keep = (1.0 - self.lr * self.decay) as f32;
            let (lr, b1t, b2t, eps) = (
                self.lr as f32,
                self.b1t as f32,
                self.b2t as f32,
                self.eps as f32,
            );
            let (w, m, v) = (slice_mut(dst, dst_l)?, slice(m, ml)?, slice(v, vl)?);
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
                .for_each(|(w, (m, v))| {
                    for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                        *w = *w * keep - (m / b1t) / ((v / b2t).sqrt() + eps) * lr;
                    }
                });
            Ok(())
        }
    }
}

/// Linear warm-up to `peak`, then cosine decay to zero at `total` steps.
pub fn learning_rate(step: usize, peak: f64, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The global L2 norm of `grads`; scales them down to `max_norm` when above it.
pub fn clip(grads: &mut [Tensor], max_norm: f64) -> candle_core::Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.iter() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(0, 1.0, 4, 20) - 0.25).abs() < 1e-12);
        assert!((learning_rate(3, 1.0, 4, 20) - 1.0).abs() < 1e-12);
        assert!((learning_rate(4, 1.0, 4, 20) - 1.0).abs() < 1e-12);
        assert!((learning_rate(12, 1.0, 4, 20) - 0.5).abs() < 1e-12);
        assert!(learning_rate(20, 1.0, 4, 20).abs() < 1e-12);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_clip_bounds_the_norm() {
        let x = Var::new(&[3.0f32, -2.0], &candle_core::Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], Default::default()).unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let mut grads = vec![g.get(x.as_tensor()).unwrap().clone()];
            let n = clip(&mut grads, 1.0).unwrap();
            assert!(n >= 0.0);
            opt.step(&grads, 0.05).unwrap();
        }
        let v: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &candle_core::Device::Cpu).unwrap()];
        assert!((clip(&mut g, 1.0).unwrap() - 5.0).abs() < 1e-9);
        let after: Vec<f32> = g[0].to_vec1().unwrap();
        assert!(((after[0].powi(2) + after[1].powi(2)).sqrt() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn half_precision_parameters_accumulate_small_steps_in_f32() {
        let dev = candle_core::Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::new(&[1.0f32], &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], Default::default()).unwrap();
        let g = Tensor::new(&[1.0f32], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        // Each step moves x by about 1e-4, an eightieth of bf16's spacing at 1.0.
        for _ in 0..100 {
            opt.step(std::slice::from_ref(&g), 1e-4).unwrap();
        }
        let v: Vec<f32> = x
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((v[0] - 0.99).abs() < 0.004, "{v:?}");
        let state = opt.with_state(|s| {
            s.iter()
                .map(|(k, t)| (k.clone(), t.copy().unwrap()))
                .collect::<HashMap<_, _>>()
        });
        assert_eq!(state["master.x"].dtype(), DType::F32);
        assert_eq!(state["m.x"].dtype(), DType::F32);
        // A resume picks the master copy up again.
        let mut again = AdamW::new(vec![("x".into(), x.clone())], Default::default()).unwrap();
        again.restore(&state, opt.t).unwrap();
        let m: Vec<f32> = again.master[0].as_ref().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = state["master.x"].to_vec1().unwrap();
        assert_eq!(m, want);
    }

    /// The in-place f32 path (CPU) computes what the tensor expression computes (run here in
    /// f64, which takes the expression), weight decay and bias correction included; a resumed
    /// optimizer has storage of its own.
    #[test]
    fn in_place_steps_match_the_expression_and_a_restored_state_is_its_own() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let n = 200_003; // several parallel chunks and a ragged tail
        let init: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let params = AdamWParams {
            weight_decay: 0.01,
            ..Default::default()
        };
        let dev = candle_core::Device::Cpu;
        let x64 = Var::from_tensor(&Tensor::new(init.as_slice(), &dev).unwrap()).unwrap();
        let x32 = Var::from_tensor(&x64.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
        let mut o64 = AdamW::new(vec![("x".into(), x64.clone())], params).unwrap();
        let mut o32 = AdamW::new(vec![("x".into(), x32.clone())], params).unwrap();
        let mut saved = None;
        for step in 0..4 {
            let g: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let g64 = Tensor::new(g.as_slice(), &dev).unwrap();
            o64.step(std::slice::from_ref(&g64), 1e-2).unwrap();
            o32.step(&[g64.to_dtype(DType::F32).unwrap()], 1e-2)
                .unwrap();
            if step == 1 {
                let state = o32.with_state(|s| s.clone());
                saved = Some(state["m.x"].to_vec1::<f32>().unwrap());
                // Restored from that map, then stepped: the map's tensors are not touched.
                let y = Var::from_tensor(&x32.as_tensor().copy().unwrap()).unwrap();
                let mut other = AdamW::new(vec![("x".into(), y)], params).unwrap();
                other.restore(&state, o32.t).unwrap();
                other
                    .step(&[g64.to_dtype(DType::F32).unwrap()], 1e-2)
                    .unwrap();
                assert_eq!(
                    saved.as_ref().unwrap(),
                    &state["m.x"].to_vec1::<f32>().unwrap()
                );
            }
        }
        let a: Vec<f64> = x64.as_tensor().to_vec1().unwrap();
        let b: Vec<f32> = x32.as_tensor().to_vec1().unwrap();
        let worst = a
            .iter()
            .zip(&b)
            .map(|(a, b)| (a - *b as f64).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "largest difference {worst}");
        assert!((a[0] - init[0]).abs() > 1e-3, "the parameters moved");
        assert_ne!(saved.unwrap(), o32.m[0].to_vec1::<f32>().unwrap());
    }
}
