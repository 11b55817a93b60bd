//! Training choices that follow from what was asked as a whole rather than from one field, so
//! a run means the same whichever face (CLI or workbench) started it.

use super::TrainConfig;

/// A full-weight run's default learning rate is the method's LoRA rate divided by this: every
/// weight moves, and LoRA's rates would wreck a full model within a few steps.
const FULL_LR_DIVISOR: f64 = 50.0;

impl TrainConfig {
    /// Chooses full-weight training or LoRA, and the peak learning rate with it (the default
    /// depends on which): `lr` if given, else the method's default from [`TrainConfig::new`],
    /// a fiftieth of it for full weights.
    pub fn set_full(&mut self, full: bool, lr: Option<f64>) {
        self.full = full;
        let default = TrainConfig::new(self.method.clone(), &self.base, self.data.clone()).lr;
        self.lr = match lr {
            Some(lr) => lr,
            None if full => default / FULL_LR_DIVISOR,
            None => default,
        };
    }
}
