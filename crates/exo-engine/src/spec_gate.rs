//! Whether a scheduler step speculates.
//!
//! Speculation pays while the work it adds to a step (drafting, verifying the drafts) costs
//! less than the sequential passes its accepted tokens save. On a CPU that holds for one
//! sequence and stops holding as the batch grows: a batched pass already shares each weight
//! read among its sequences, so the passes speculation adds are no longer cheap next to the
//! tokens they yield (BENCHMARKS.md, issue 8: with four clients 0.80x with a draft model and
//! 0.92x with prompt lookup, against 1.07x and 1.13x for one).
//!
//! So the gate measures, per batch size (decoding sequences in the step), the wall seconds per
//! generated token of steps that only decode, exponentially averaged, with and without
//! speculation, and picks the cheaper mode. The other mode is probed for a few steps now and
//! then, since the answer moves with the text (acceptance) and the load; each probe that
//! confirms the choice doubles the wait before the next one, so a mode that keeps losing costs
//! little. A batch size not measured yet follows the sizes measured around it (speculation's
//! relative gain only shrinks as the batch grows), or speculates when there are none.
//!
//! Either mode emits tokens from the target's own distribution (verification preserves it), so
//! switching between them changes speed only, never what a request may answer.

/// Weight of the newest measurement in the running average of the mode in use.
const ALPHA: f64 = 0.15;
/// Measured steps a probe collects before it is judged.
const PROBE_SAMPLES: usize = 4;
/// Steps after which a probe ends even with fewer measurements (prompts kept arriving).
const PROBE_STEPS: usize = 16;
/// Steps at one batch size between probes, at first and at most.
const PERIOD_MIN: u64 = 16;
const PERIOD_MAX: u64 = 1024;

/// What the gate knows about one batch size.
#[derive(Clone, Copy, Debug)]
struct Size {
    /// Seconds per generated token: `[plain, speculative]`.
    cost: [Option<f64>; 2],
    /// Steps run at this size since its last probe.
    since_probe: u64,
    /// Steps to wait between probes.
    period: u64,
}

/// A probe under way: a few steps of the mode not chosen at one batch size.
#[derive(Clone, Copy, Debug)]
struct Probe {
    size: usize,
    speculate: bool,
    steps: usize,
    sum: f64,
    samples: usize,
}

/// Chooses per step between speculative and plain decoding by their measured cost.
#[derive(Debug)]
pub(crate) struct SpecGate {
    /// Indexed by batch size; larger batches share the last entry.
    sizes: Vec<Size>,
    probe: Option<Probe>,
    /// The mode of the previous step: the first step after a switch is not measured (a draft
    /// model then catches up on the tokens it missed).
    last: Option<bool>,
    /// Steps run in each mode: `[plain, speculative]`.
    pub(crate) steps: [u64; 2],
}

impl SpecGate {
    /// A gate for batches of up to `max_batch` sequences.
    pub(crate) fn new(max_batch: usize) -> Self {
        let size = Size { cost: [None; 2], since_probe: 0, period: PERIOD_MIN };
        Self { sizes: vec![size; max_batch.max(1) + 1], probe: None, last: None, steps: [0; 2] }
    }

    fn index(&self, batch: usize) -> usize {
        batch.min(self.sizes.len() - 1)
    }

    /// The mode a size's measurements favour; `None` before any.
    fn best(size: &Size) -> Option<bool> {
        match size.cost {
            [Some(plain), Some(spec)] => Some(spec < plain),
            [Some(_), None] => Some(false),
            [None, Some(_)] => Some(true),
            [None, None] => None,
        }
    }

    /// Whether the next step, which decodes `batch` sequences, speculates.
    pub(crate) fn decide(&mut self, batch: usize) -> bool {
        let b = self.index(batch);
        if let Some(p) = &mut self.probe {
            if p.size == b {
                p.steps += 1;
                let speculate = p.speculate;
                return self.chose(speculate);
            }
            // The batch changed under the probe: it measured nothing comparable.
            self.probe = None;
        }
        let inherited = self.inherited(b);
        let size = &mut self.sizes[b];
        let own = Self::best(size);
        let best = own.or(inherited).unwrap_or(true);
        size.since_probe += 1;
        // A size on its own is compared as soon as it has measured one mode; one that follows
        // its neighbours waits for the periodic probe.
        let first_comparison = inherited.is_none() && own.is_some() && size.cost[usize::from(!best)].is_none();
        if first_comparison || size.since_probe >= size.period {
            size.since_probe = 0;
            self.probe = Some(Probe { size: b, speculate: !best, steps: 1, sum: 0.0, samples: 0 });
            return self.chose(!best);
        }
        self.chose(best)
    }

    /// The choice an unmeasured size `b` takes from the measured ones: plain if plain already
    /// wins with fewer sequences, speculative if speculation still wins with more, else the
    /// nearest smaller measured size's choice (or the nearest larger one's).
    fn inherited(&self, b: usize) -> Option<bool> {
        let below = (1..b).rev().find_map(|s| Self::best(&self.sizes[s]));
        let above = (b + 1..self.sizes.len()).find_map(|s| Self::best(&self.sizes[s]));
        match (below, above) {
            (Some(false), _) => Some(false),
            (_, Some(true)) => Some(true),
            (below, above) => below.or(above),
        }
    }

    fn chose(&mut self, speculate: bool) -> bool {
        self.steps[usize::from(speculate)] += 1;
        speculate
    }

    /// Records a step that decoded `batch` sequences in `speculated` mode, taking `secs` for
    /// `tokens` generated tokens. `clean`: the step did only that (no prompt evaluated, no draft
    /// catching up), so its cost speaks for the mode.
    pub(crate) fn record(&mut self, batch: usize, speculated: bool, secs: f64, tokens: usize, clean: bool) {
        let switched = self.last.is_some_and(|l| l != speculated);
        self.last = Some(speculated);
        let b = self.index(batch);
        let measured = clean && !switched && tokens > 0;
        let cost = secs / tokens.max(1) as f64;
        if let Some(p) = &mut self.probe {
            if p.size == b && p.speculate == speculated {
                if measured {
                    p.sum += cost;
                    p.samples += 1;
                }
                if p.samples >= PROBE_SAMPLES || p.steps >= PROBE_STEPS {
                    let p = self.probe.take().expect("probe under way");
                    self.judge(p);
                }
                return;
            }
        }
        if measured {
            let c = &mut self.sizes[b].cost[usize::from(speculated)];
            *c = Some(c.map_or(cost, |old| old + ALPHA * (cost - old)));
        }
    }

    /// Takes a finished probe's mean as its mode's cost at its size; backs off the next probe
    /// if the choice stands.
    fn judge(&mut self, p: Probe) {
        if p.samples == 0 {
            return;
        }
        let size = &mut self.sizes[p.size];
        let before = Self::best(size);
        size.cost[usize::from(p.speculate)] = Some(p.sum / p.samples as f64);
        let after = Self::best(size);
        size.period = if before.is_some() && before == after { (size.period * 2).min(PERIOD_MAX) } else { PERIOD_MIN };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `steps` steps at `batch`, each costing what `cost` says for its mode.
    fn run(gate: &mut SpecGate, batch: usize, steps: usize, cost: impl Fn(bool) -> f64) -> [usize; 2] {
        let mut counts = [0; 2];
        for _ in 0..steps {
            let s = gate.decide(batch);
            counts[usize::from(s)] += 1;
            gate.record(batch, s, cost(s) * batch as f64, batch, true);
        }
        counts
    }

    #[test]
    fn speculates_where_it_pays_and_stops_where_it_loses() {
        let mut gate = SpecGate::new(8);
        // One sequence: speculation 30% cheaper per token; four: 20% dearer.
        let one = |s: bool| if s { 0.7 } else { 1.0 };
        let four = |s: bool| if s { 1.2 } else { 1.0 };
        let [plain, spec] = run(&mut gate, 1, 2000, one);
        assert!(spec > 1900 && plain > 0, "one sequence: {plain} plain, {spec} speculative steps");
        let [plain, spec] = run(&mut gate, 4, 2000, four);
        assert!(plain > 1900 && spec > 0, "four sequences: {plain} plain, {spec} speculative steps");
        // An unmeasured size between them starts from the nearest smaller one's choice.
        assert!(!gate.decide(6), "six sequences should start as four do");
    }

    #[test]
    fn a_probe_brings_speculation_back_when_it_pays_again() {
        let mut gate = SpecGate::new(4);
        run(&mut gate, 2, 500, |s| if s { 1.5 } else { 1.0 });
        let [_, spec] = run(&mut gate, 2, 100, |s| if s { 1.5 } else { 1.0 });
        assert!(spec < 10, "losing speculation still ran {spec} of 100 steps");
        // The text turns repetitive: drafts are accepted and speculation halves the cost.
        let [plain, spec] = run(&mut gate, 2, 3000, |s| if s { 0.5 } else { 1.0 });
        assert!(spec > 2500, "speculation came back for only {spec} steps ({plain} plain)");
    }

    #[test]
    fn steps_that_also_did_other_work_are_not_measured() {
        let mut gate = SpecGate::new(2);
        for _ in 0..200 {
            let s = gate.decide(1);
            // Unclean steps claim speculation is very cheap; they must not count.
            gate.record(1, s, if s { 0.01 } else { 1.0 }, 1, false);
        }
        assert_eq!(gate.sizes[1].cost, [None, None]);
    }
}
