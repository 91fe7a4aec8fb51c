//! Exact k-nearest-neighbour search over the keys f(c) of a memory: the kNN-LM baseline's
//! retrieval and the ground truth for any approximate index.
//!
//! The keys are loaded once onto the chosen device in chunks of `chunk_rows` rows; a query batch
//! `Q [q, d]` is scored against each chunk by one matmul, `S = Q Kᵀ`, and
//! - L2: `‖q − k‖² = ‖q‖² − 2 q·k + ‖k‖²` (squared Euclidean distance),
//! - inner product: `−q·k`,
//!
//! so that smaller is always closer. The per-chunk scores are copied to the host, where a
//! bounded heap keeps the k best of each query across chunks (ties broken by entry id).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::MemorySource;
use crate::error::{MemoryError, Result};

/// Similarity used by the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Squared Euclidean distance ‖q − k‖² (kNN-LM uses −‖q − k‖² as the score).
    L2,
    /// Inner product q·k; reported as the distance −q·k.
    InnerProduct,
}

/// One neighbour of a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// Distance (smaller is closer): ‖q − k‖² for L2, −q·k for inner product.
    pub distance: f32,
    /// The entry's value y (gold token id).
    pub value: u32,
    /// The entry's global index in the memory.
    pub id: u64,
}

struct Chunk<B: Backend> {
    /// Keys transposed, `[d, m]`.
    keys_t: Tensor<B, 2>,
    /// ‖k‖² per key, `[1, m]`.
    sq_norms: Tensor<B, 2>,
    start: u64,
}

/// Exact kNN index: the whole key matrix resident on a device, in chunks.
pub struct ExactKnn<B: Backend> {
    metric: Metric,
    d: usize,
    chunks: Vec<Chunk<B>>,
    values: Vec<u32>,
    device: B::Device,
}

impl<B: Backend> std::fmt::Debug for ExactKnn<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactKnn")
            .field("metric", &self.metric)
            .field("d", &self.d)
            .field("n", &self.values.len())
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

/// Heap item ordered by (distance, id): the heap's top is the current worst of the k best.
#[derive(Clone, Copy)]
struct Cand(f32, u64);

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

impl<B: Backend> ExactKnn<B> {
    /// Loads every key of `source` onto `device` in chunks of `chunk_rows` rows (0 → 16384).
    pub fn new<S: MemorySource + ?Sized>(
        source: &S,
        metric: Metric,
        chunk_rows: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let n = source.len() as u64;
        let d = source.hidden_size();
        let chunk_rows = if chunk_rows == 0 { 16384 } else { chunk_rows } as u64;
        let mut chunks = Vec::new();
        let mut values = Vec::with_capacity(n as usize);
        let mut keys = Vec::new();
        let mut start = 0u64;
        while start < n {
            let end = (start + chunk_rows).min(n);
            let ids: Vec<u64> = (start..end).collect();
            keys.clear();
            source.gather(&ids, &mut keys, &mut values)?;
            let m = ids.len();
            // Norms in f64 on the host, keys transposed into a contiguous [d, m] buffer so
            // that every backend's matmul reads them with unit stride.
            let norms: Vec<f32> = keys
                .chunks_exact(d.max(1))
                .map(|r| r.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() as f32)
                .collect();
            let mut kt = vec![0f32; m * d];
            for (i, row) in keys.chunks_exact(d.max(1)).enumerate() {
                for (j, &x) in row.iter().enumerate() {
                    kt[j * m + i] = x;
                }
            }
            chunks.push(Chunk {
                keys_t: Tensor::from_data(TensorData::new(kt, [d, m]), device),
                sq_norms: Tensor::from_data(TensorData::new(norms, [1, m]), device),
                start,
            });
            start = end;
        }
        Ok(Self {
            metric,
            d,
            chunks,
            values,
            device: device.clone(),
        })
    }

    /// Number of keys N.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the index holds no keys.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Key width d.
    pub fn hidden_size(&self) -> usize {
        self.d
    }

    /// Checks that every value is below `vocab` (the model's vocabulary) before the values
    /// index the model's logits; the error names the first entry that is not.
    pub fn check_values(&self, vocab: usize) -> Result<()> {
        match self.values.iter().position(|&v| v as usize >= vocab) {
            Some(i) => Err(MemoryError::IndexValueOutOfVocab {
                entry: i as u64,
                value: self.values[i],
                vocab,
            }),
            None => Ok(()),
        }
    }

    /// The `k` nearest entries of each query row of `queries` (`[q, d]`), closest first.
    /// `k` is clamped to the number of entries N: fewer than `k` are returned when the memory
    /// has fewer entries (and no memory is reserved for more).
    pub fn search(&self, queries: Tensor<B, 2>, k: usize) -> Result<Vec<Vec<Neighbor>>> {
        let k = k.min(self.values.len());
        let [nq, d] = queries.dims();
        if d != self.d {
            return Err(MemoryError::Invalid(format!(
                "queries have width {d}, the keys {}",
                self.d
            )));
        }
        let mut heaps: Vec<BinaryHeap<Cand>> =
            (0..nq).map(|_| BinaryHeap::with_capacity(k + 1)).collect();
        if k > 0 {
            let q_norms = match self.metric {
                Metric::L2 => Some(queries.clone().powi_scalar(2).sum_dim(1)),
                Metric::InnerProduct => None,
            };
            for c in &self.chunks {
                let s = queries.clone().matmul(c.keys_t.clone());
                let dist = match &q_norms {
                    Some(qn) => (qn.clone() + c.sq_norms.clone()) - s.mul_scalar(2.0),
                    None => s.neg(),
                };
                let m = dist.dims()[1];
                let host = dist
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| MemoryError::PlmOutput(format!("kNN scores: {e:?}")))?;
                for (qi, heap) in heaps.iter_mut().enumerate() {
                    let row = &host[qi * m..(qi + 1) * m];
                    for (j, &dv) in row.iter().enumerate() {
                        let dv = if self.metric == Metric::L2 {
                            dv.max(0.0)
                        } else {
                            dv
                        };
                        let cand = Cand(dv, c.start + j as u64);
                        if heap.len() < k {
                            heap.push(cand);
                        } else if let Some(top) = heap.peek()
                            && cand < *top
                        {
                            heap.pop();
                            heap.push(cand);
                        }
                    }
                }
            }
        }
        Ok(heaps
            .into_iter()
            .map(|h| {
                h.into_sorted_vec()
                    .into_iter()
                    .map(|Cand(distance, id)| Neighbor {
                        distance,
                        value: self.values[id as usize],
                        id,
                    })
                    .collect()
            })
            .collect())
    }

    /// [`Self::search`] for host queries, row-major `[q, d]`.
    pub fn search_host(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>> {
        if self.d == 0 || !queries.len().is_multiple_of(self.d) {
            return Err(MemoryError::Invalid(format!(
                "{} query floats is not a multiple of d = {}",
                queries.len(),
                self.d
            )));
        }
        let q = queries.len() / self.d;
        let t = Tensor::from_data(TensorData::new(queries.to_vec(), [q, self.d]), &self.device);
        self.search(t, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::SplitMix64;
    use crate::{InMemory, KeyDtype, MemoryStore};
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn gauss(r: &mut SplitMix64) -> f32 {
        // Sum of uniforms: approximately normal, plenty for distinct distances.
        (0..4)
            .map(|_| (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
            .sum::<f32>()
            - 2.0
    }

    fn brute(keys: &[f32], d: usize, q: &[f32], k: usize, metric: Metric) -> Vec<(f64, u64)> {
        let n = keys.len() / d;
        let mut all: Vec<(f64, u64)> = (0..n)
            .map(|i| {
                let row = &keys[i * d..(i + 1) * d];
                let dist = match metric {
                    Metric::L2 => row
                        .iter()
                        .zip(q)
                        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                        .sum(),
                    Metric::InnerProduct => -row
                        .iter()
                        .zip(q)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>(),
                };
                (dist, i as u64)
            })
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.truncate(k);
        all
    }

    #[test]
    fn equals_brute_force() {
        let (n, d, nq, k) = (1037, 16, 9, 10);
        let mut r = SplitMix64(11);
        let keys: Vec<f32> = (0..n * d).map(|_| gauss(&mut r)).collect();
        let queries: Vec<f32> = (0..nq * d).map(|_| gauss(&mut r)).collect();
        let mem = InMemory {
            keys: keys.clone(),
            values: (0..n as u32).map(|i| i + 100).collect(),
            d,
            tag: String::new(),
        };
        let dev = Default::default();
        for metric in [Metric::L2, Metric::InnerProduct] {
            for chunk in [100, 0] {
                let idx = ExactKnn::<B>::new(&mem, metric, chunk, &dev).expect("index");
                assert_eq!(idx.len(), n);
                let res = idx.search_host(&queries, k).expect("search");
                for qi in 0..nq {
                    let want = brute(&keys, d, &queries[qi * d..(qi + 1) * d], k, metric);
                    let got = &res[qi];
                    assert_eq!(got.len(), k);
                    let ids: Vec<u64> = got.iter().map(|x| x.id).collect();
                    let wids: Vec<u64> = want.iter().map(|x| x.1).collect();
                    assert_eq!(ids, wids, "{metric:?} chunk {chunk} query {qi}");
                    for (g, w) in got.iter().zip(&want) {
                        assert!((f64::from(g.distance) - w.0).abs() < 1e-3 * (1.0 + w.0.abs()));
                        assert_eq!(g.value, g.id as u32 + 100);
                    }
                }
            }
        }
    }

    #[test]
    fn small_memories_and_bad_queries() {
        let mem = InMemory {
            keys: vec![0.0, 0.0, 1.0, 1.0, 3.0, 3.0],
            values: vec![5, 6, 7],
            d: 2,
            tag: String::new(),
        };
        let dev = Default::default();
        let idx = ExactKnn::<B>::new(&mem, Metric::L2, 2, &dev).expect("index");
        let r = idx.search_host(&[0.9, 0.9], 10).expect("search");
        assert_eq!(
            r[0].iter().map(|x| x.value).collect::<Vec<_>>(),
            vec![6, 5, 7]
        );
        assert!(idx.search_host(&[1.0, 2.0, 3.0], 1).is_err());
        assert!(idx.search_host(&[1.0, 2.0], 0).expect("k=0")[0].is_empty());
    }

    #[test]
    fn works_on_a_store_with_f16_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (keys, _, _) = crate::test_util::synthetic(dir.path(), 8, KeyDtype::F16, 40, 7, 9);
        let s = MemoryStore::open(dir.path()).expect("open");
        let dev = Default::default();
        let idx = ExactKnn::<B>::new(&s, Metric::L2, 13, &dev).expect("index");
        let q = &keys[8 * 5..8 * 6];
        let r = idx.search_host(q, 3).expect("search");
        assert_eq!(r[0][0].id, 5);
        assert!(r[0][0].distance < 1e-4);
        assert_eq!(
            r[0].iter().map(|x| x.id).collect::<Vec<_>>(),
            brute(&keys, 8, q, 3, Metric::L2)
                .iter()
                .map(|x| x.1)
                .collect::<Vec<_>>()
        );
    }
}
