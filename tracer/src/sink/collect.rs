//! Explanations kept for the caller instead of printed (`probe` reads them to judge
//! its connection).
use std::io;

use crate::{
    base::record::Record,
    explain::Explanation,
    sink::{Sink, Take},
};

#[derive(Default)]
pub struct Collect {
    explanations: Vec<Explanation>,
}

impl Collect {
    /// The explanations so far, in order.
    pub fn explanations(&self) -> &[Explanation] {
        &self.explanations
    }

    /// The explanations so far, in order; the sink starts empty again.
    pub fn take(&mut self) -> Vec<Explanation> {
        std::mem::take(&mut self.explanations)
    }
}

impl Sink for Collect {
    fn takes(&self, _: &Record) -> Take {
        Take::No
    }

    fn record(&mut self, _: &Record) -> io::Result<()> {
        Ok(())
    }

    fn explanation(&mut self, e: &Explanation) -> io::Result<()> {
        self.explanations.push(e.clone());
        Ok(())
    }
}
