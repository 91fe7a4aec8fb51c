//! Seeded shuffled or in-order batches of (f(c_t), y_t) as burn tensors on any backend.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::MemorySource;
use crate::error::Result;

/// The order in which entries are visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOrder {
    /// Entries 0, 1, …, N−1.
    InOrder,
    /// A permutation fixed by `seed` (use e.g. `base_seed + epoch` per epoch). The shuffle is
    /// pema's own SplitMix64 + Fisher–Yates, so it never changes with a dependency's version.
    Shuffled {
        /// The seed.
        seed: u64,
    },
}

/// One batch: keys `[b, d]`, values `[b]`, and the entry ids they came from.
#[derive(Debug, Clone)]
pub struct MemoryBatch<B: Backend> {
    /// Context representations f(c_t), `[b, d]`.
    pub keys: Tensor<B, 2>,
    /// Gold tokens y_t, `[b]`.
    pub values: Tensor<B, 1, Int>,
    /// Entry ids (global indices into the memory).
    pub ids: Vec<u64>,
}

pub use pema_common::SplitMix64;

/// The permutation of `0..n` that [`BatchOrder::Shuffled`] with `seed` visits.
pub fn permutation(n: u64, seed: u64) -> Vec<u64> {
    let mut p: Vec<u64> = (0..n).collect();
    let mut rng = SplitMix64(seed);
    for i in (1..p.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// Iterator over the batches of a memory; see [`batches`].
pub struct Batches<'a, B: Backend, S: MemorySource + ?Sized> {
    source: &'a S,
    order: Option<Vec<u64>>,
    n: u64,
    pos: u64,
    batch_size: usize,
    drop_last: bool,
    device: B::Device,
    keys: Vec<f32>,
    values: Vec<u32>,
}

impl<B: Backend, S: MemorySource + ?Sized> std::fmt::Debug for Batches<'_, B, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("n", &self.n)
            .field("pos", &self.pos)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// Batches of `batch_size` entries of `source` in `order`, as tensors on `device`.
/// The last batch is smaller unless `drop_last`. `batch_size` 0 is treated as 1.
pub fn batches<'a, B: Backend, S: MemorySource + ?Sized>(
    source: &'a S,
    batch_size: usize,
    order: BatchOrder,
    drop_last: bool,
    device: &B::Device,
) -> Batches<'a, B, S> {
    let n = source.len() as u64;
    Batches {
        source,
        order: match order {
            BatchOrder::InOrder => None,
            BatchOrder::Shuffled { seed } => Some(permutation(n, seed)),
        },
        n,
        pos: 0,
        batch_size: batch_size.max(1),
        drop_last,
        device: device.clone(),
        keys: Vec::new(),
        values: Vec::new(),
    }
}

impl<B: Backend, S: MemorySource + ?Sized> Batches<'_, B, S> {
    /// Number of batches the iterator yields in total.
    pub fn num_batches(&self) -> usize {
        let n = self.n as usize;
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }
}

impl<B: Backend, S: MemorySource + ?Sized> Iterator for Batches<'_, B, S> {
    type Item = Result<MemoryBatch<B>>;

    fn next(&mut self) -> Option<Self::Item> {
        let remaining = self.n - self.pos;
        if remaining == 0 || (self.drop_last && remaining < self.batch_size as u64) {
            return None;
        }
        let b = remaining.min(self.batch_size as u64);
        let ids: Vec<u64> = match &self.order {
            None => (self.pos..self.pos + b).collect(),
            Some(p) => p[self.pos as usize..(self.pos + b) as usize].to_vec(),
        };
        self.pos += b;
        self.keys.clear();
        self.values.clear();
        if let Err(e) = self.source.gather(&ids, &mut self.keys, &mut self.values) {
            return Some(Err(e));
        }
        let d = self.source.hidden_size();
        let b = ids.len();
        let keys = Tensor::from_data(
            TensorData::new(std::mem::take(&mut self.keys), [b, d]),
            &self.device,
        );
        let vals: Vec<i64> = self.values.iter().map(|&v| i64::from(v)).collect();
        let values = Tensor::from_data(TensorData::new(vals, [b]), &self.device);
        Some(Ok(MemoryBatch { keys, values, ids }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemory;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn mem(n: usize, d: usize) -> InMemory {
        InMemory {
            keys: (0..n * d).map(|i| i as f32).collect(),
            values: (0..n as u32).map(|i| i * 10).collect(),
            d,
            tag: "t".into(),
        }
    }

    #[test]
    fn permutation_is_seeded_and_complete() {
        let a = permutation(1000, 42);
        assert_eq!(a, permutation(1000, 42));
        assert_ne!(a, permutation(1000, 43));
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert!(permutation(0, 1).is_empty());
    }

    #[test]
    fn in_order_and_shuffled_batches() {
        let m = mem(10, 3);
        let dev = Default::default();
        let it = batches::<B, _>(&m, 4, BatchOrder::InOrder, false, &dev);
        assert_eq!(it.num_batches(), 3);
        let bs: Vec<_> = it.map(|b| b.expect("batch")).collect();
        assert_eq!(bs.len(), 3);
        assert_eq!(bs[2].ids, vec![8, 9]);
        assert_eq!(bs[0].keys.dims(), [4, 3]);
        let k = bs[1]
            .keys
            .clone()
            .into_data()
            .into_vec::<f32>()
            .expect("f32");
        assert_eq!(&k[..3], &[12.0, 13.0, 14.0]);
        let v = bs[1]
            .values
            .clone()
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .expect("int");
        assert_eq!(v, vec![40, 50, 60, 70]);

        let shuffled: Vec<_> = batches::<B, _>(&m, 4, BatchOrder::Shuffled { seed: 5 }, true, &dev)
            .map(|b| b.expect("batch"))
            .collect();
        assert_eq!(shuffled.len(), 2);
        let ids: Vec<u64> = shuffled.iter().flat_map(|b| b.ids.clone()).collect();
        assert_eq!(ids, permutation(10, 5)[..8].to_vec());
        for b in &shuffled {
            let v = b
                .values
                .clone()
                .into_data()
                .convert::<i64>()
                .into_vec::<i64>()
                .expect("int");
            let k = b.keys.clone().into_data().into_vec::<f32>().expect("f32");
            for (r, &id) in b.ids.iter().enumerate() {
                assert_eq!(v[r], id as i64 * 10);
                assert_eq!(k[r * 3], (id * 3) as f32);
            }
        }
    }
}
