//! Malformed GGUF files must give a typed error, never a panic, an out-of-bounds read or a huge
//! allocation; well-formed files written by [`GgufWriter`] must read back exactly.

use pema_backbone::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue, quantize};

/// A hand encoder for GGUF bytes, so that every field can be set to a bad value.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn string(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn header(n_tensors: u64, n_kv: u64) -> Self {
        Raw::default()
            .bytes(b"GGUF")
            .u32(3)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.string(key).u32(4).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.string(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    fn pad(mut self, align: usize) -> Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn open(self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0)
    }
}

fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String("llama".into()));
    w.add_metadata("llama.block_count", MetaValue::U32(2));
    w.add_metadata("llama.rope.freq_base", MetaValue::F32(10000.0));
    w.add_metadata(
        "tokenizer.ggml.tokens",
        MetaValue::Array(vec![
            MetaValue::String("<s>".into()),
            MetaValue::String("a".into()),
        ]),
    );
    w.add_metadata(
        "x.nested",
        MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::I16(-3)])]),
    );
    w.add_metadata("x.flag", MetaValue::Bool(true));
    let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
    w.add_tensor("a", &[2, 3], &a, GgmlType::F32)
        .expect("F32 tensor");
    let b: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
    w.add_tensor("b", &[2, 32], &b, GgmlType::Q8_0)
        .expect("Q8_0 tensor");
    let c: Vec<f32> = (0..256).map(|i| (i as f32).sin()).collect();
    w.add_tensor("c", &[256], &c, GgmlType::Q4_K)
        .expect("Q4_K tensor");
    w.to_bytes().expect("encode")
}

#[test]
fn writer_round_trip_reads_back() {
    let f = GgufFile::from_bytes(small_file()).expect("valid file");
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.architecture().expect("arch"), "llama");
    assert_eq!(f.get_u64("llama.block_count").expect("u32 key"), 2);
    assert_eq!(f.get_f64("llama.rope.freq_base").expect("f32 key"), 10000.0);
    assert_eq!(
        f.get_array("tokenizer.ggml.tokens").expect("array").len(),
        2
    );
    assert_eq!(f.get("x.flag").and_then(MetaValue::as_bool), Some(true));
    assert_eq!(
        f.get("x.nested"),
        Some(&MetaValue::Array(vec![MetaValue::Array(vec![
            MetaValue::I16(-3)
        ])]))
    );
    assert!(matches!(
        f.get_u64("missing"),
        Err(GgufError::MissingKey(_))
    ));
    assert!(matches!(
        f.get_str("llama.block_count"),
        Err(GgufError::WrongType { .. })
    ));
    assert_eq!(f.tensors().len(), 3);
    let a = f.tensor("a").expect("tensor a");
    assert_eq!(a.dims, vec![3, 2]);
    assert_eq!(a.shape(), vec![2, 3]);
    assert_eq!(a.n_elements(), 6);
    assert_eq!(a.n_bytes(), 24);
    assert_eq!(
        f.dequantize("a").expect("a"),
        vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    );
    let b = f.tensor("b").expect("tensor b");
    assert_eq!(
        (b.ggml_type, b.shape(), b.n_bytes()),
        (GgmlType::Q8_0, vec![2, 32], 68)
    );
    for t in f.tensors() {
        assert_eq!(t.offset % 32, 0);
        assert_eq!(f.tensor_bytes(&t.name).expect("bytes").len(), t.n_bytes());
        assert_eq!(
            f.dequantize(&t.name).expect("dequantize").len(),
            t.n_elements()
        );
    }
    assert!(matches!(
        f.dequantize("zzz"),
        Err(GgufError::UnknownTensor(_))
    ));
}

#[test]
fn writer_round_trip_from_disk_via_mmap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("small.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", MetaValue::U32(64));
    let v: Vec<f32> = (0..512).map(|i| i as f32 / 100.0).collect();
    w.add_tensor("t", &[2, 256], &v, GgmlType::Q6_K)
        .expect("tensor");
    w.add_tensor("u", &[512], &v, GgmlType::BF16)
        .expect("tensor");
    w.write(&path).expect("write");
    let f = GgufFile::open(&path).expect("open");
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_start() % 64, 0);
    assert_eq!(f.tensor("u").expect("u").offset % 64, 0);
    assert_eq!(
        f.dequantize("t").expect("t"),
        pema_backbone::gguf::dequantize(
            GgmlType::Q6_K,
            &quantize(GgmlType::Q6_K, &v).expect("q"),
            512
        )
        .expect("dq")
    );
    assert!(matches!(
        GgufFile::open(&dir.path().join("absent.gguf")),
        Err(GgufError::Io(_))
    ));
}

#[test]
fn every_truncation_errors() {
    let bytes = small_file();
    assert!(GgufFile::from_bytes(bytes.clone()).is_ok());
    for len in 0..bytes.len() {
        let r = GgufFile::from_bytes(bytes[..len].to_vec());
        assert!(r.is_err(), "prefix of {len} / {} bytes parsed", bytes.len());
    }
}

#[test]
fn random_corruption_never_panics() {
    let bytes = small_file();
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut ok = 0;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..(1 + next() % 4) {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        if let Ok(f) = GgufFile::from_bytes(b) {
            ok += 1;
            for t in f.tensors() {
                let _ = f.dequantize(&t.name);
            }
        }
    }
    println!("{ok} / 3000 corrupted files still parsed");
}

#[test]
fn bad_magic_and_versions() {
    let r = Raw::default().bytes(b"GGUG").u32(3).u64(0).u64(0).open();
    assert!(matches!(r, Err(GgufError::BadMagic(_))));
    for v in [0, 1, 4, 0x0300_0000] {
        let r = Raw::default().bytes(b"GGUF").u32(v).u64(0).u64(0).open();
        assert!(
            matches!(r, Err(GgufError::UnsupportedVersion(x)) if x == v),
            "version {v}"
        );
    }
    let f = Raw::default()
        .bytes(b"GGUF")
        .u32(2)
        .u64(0)
        .u64(0)
        .open()
        .expect("empty v2");
    assert_eq!((f.version(), f.tensors().len()), (2, 0));
}

#[test]
fn huge_counts_fail_fast() {
    for (nt, nkv) in [
        (1u64 << 60, 0u64),
        (0, 1 << 60),
        (u64::MAX, u64::MAX),
        (0, 2),
    ] {
        let r = Raw::header(nt, nkv).kv_u32("k", 1).open();
        assert!(r.is_err(), "counts ({nt}, {nkv})");
    }
    assert!(matches!(
        Raw::header(1 << 60, 0).open(),
        Err(GgufError::TooLarge { .. })
    ));
    // A key claiming 2^40 bytes.
    let r = Raw::header(0, 1)
        .u64(1 << 40)
        .bytes(b"abc")
        .zeros(16)
        .open();
    assert!(matches!(r, Err(GgufError::Truncated { needed, .. }) if needed == 1 << 40));
    // A string value claiming u64::MAX bytes.
    let r = Raw::header(0, 1).string("k").u32(8).u64(u64::MAX).open();
    assert!(matches!(r, Err(GgufError::Truncated { .. })));
    // An array claiming 2^50 u32 elements / 2^62 strings.
    let r = Raw::header(0, 1)
        .string("k")
        .u32(9)
        .u32(4)
        .u64(1 << 50)
        .u32(0)
        .open();
    assert!(matches!(r, Err(GgufError::TooLarge { .. })));
    let r = Raw::header(0, 1)
        .string("k")
        .u32(9)
        .u32(8)
        .u64(1 << 62)
        .open();
    assert!(matches!(r, Err(GgufError::TooLarge { .. })));
    // Unknown value types, top level and in an array.
    let r = Raw::header(0, 1).string("k").u32(13).u32(0).open();
    assert!(matches!(
        r,
        Err(GgufError::BadValueType { type_id: 13, .. })
    ));
    let r = Raw::header(0, 1).string("k").u32(9).u32(99).u64(0).open();
    assert!(matches!(
        r,
        Err(GgufError::BadValueType { type_id: 99, .. })
    ));
}

#[test]
fn deeply_nested_arrays_are_rejected() {
    let mut r = Raw::header(0, 1).string("k").u32(9);
    for _ in 0..10_000 {
        r = r.u32(9).u64(1);
    }
    assert!(matches!(
        r.u32(0).u64(0).open(),
        Err(GgufError::TooLarge { .. })
    ));
}

#[test]
fn duplicate_keys_and_tensors() {
    let r = Raw::header(0, 2).kv_u32("k", 1).kv_u32("k", 2).open();
    assert!(matches!(r, Err(GgufError::DuplicateKey(_))));
    let r = Raw::header(2, 0)
        .tensor("t", &[8], 0, 0)
        .tensor("t", &[8], 0, 32)
        .pad(32)
        .zeros(64)
        .open();
    assert!(matches!(r, Err(GgufError::DuplicateTensor(_))));
}

#[test]
fn invalid_utf8_names() {
    let r = Raw::header(0, 1)
        .u64(2)
        .bytes(&[0xFF, 0xFE])
        .u32(4)
        .u32(0)
        .open();
    assert!(matches!(r, Err(GgufError::BadUtf8 { .. })));
}

#[test]
fn bad_shapes() {
    // Five dims.
    let r = Raw::header(1, 0)
        .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
        .pad(32)
        .zeros(4)
        .open();
    assert!(matches!(r, Err(GgufError::TooLarge { .. })));
    // n_dims = u32::MAX must not allocate.
    let r = Raw::header(1, 0).string("t").u32(u32::MAX).zeros(32).open();
    assert!(matches!(r, Err(GgufError::TooLarge { .. })));
    // Product overflow.
    let r = Raw::header(1, 0)
        .tensor("t", &[1 << 40, 1 << 40], 0, 0)
        .pad(32)
        .open();
    assert!(matches!(r, Err(GgufError::BadShape { .. })));
    // A dim above i64::MAX.
    let r = Raw::header(1, 0)
        .tensor("t", &[u64::MAX], 24, 0)
        .pad(32)
        .open();
    assert!(matches!(r, Err(GgufError::BadShape { .. })));
    // Byte size overflow while the element count fits.
    let r = Raw::header(1, 0)
        .tensor("t", &[1 << 62], 0, 0)
        .pad(32)
        .open();
    assert!(r.is_err());
    // Row not a multiple of the block size (Q8_0 has 32 per block).
    let r = Raw::header(1, 0)
        .tensor("t", &[16, 2], 8, 0)
        .pad(32)
        .zeros(68)
        .open();
    assert!(matches!(r, Err(GgufError::BadShape { .. })));
    // Huge but representable tensor whose data is not in the file.
    let r = Raw::header(1, 0)
        .tensor("t", &[1 << 20, 1 << 20], 0, 0)
        .pad(32)
        .zeros(64)
        .open();
    assert!(matches!(r, Err(GgufError::BadOffset { .. })));
}

#[test]
fn unknown_type_ids() {
    for ty in [4u32, 5, 31, 36, 1000, u32::MAX] {
        let r = Raw::header(1, 0)
            .tensor("t", &[256], ty, 0)
            .pad(32)
            .zeros(2048)
            .open();
        assert!(
            matches!(r, Err(GgufError::UnsupportedType { type_id, .. }) if type_id == ty),
            "type {ty}"
        );
    }
    // A known type without a dequantiser opens, but dequantising it is a typed error.
    let f = Raw::header(1, 0)
        .tensor("t", &[256], 10, 0)
        .pad(32)
        .zeros(84)
        .open()
        .expect("Q2_K opens");
    assert_eq!(f.tensor_bytes("t").expect("bytes").len(), 84);
    assert!(matches!(
        f.dequantize("t"),
        Err(GgufError::UnsupportedType { type_id: 10, ref tensor }) if tensor == "t"
    ));
}

#[test]
fn bad_offsets() {
    // Misaligned.
    let r = Raw::header(1, 0)
        .tensor("t", &[4], 0, 4)
        .pad(32)
        .zeros(64)
        .open();
    assert!(matches!(r, Err(GgufError::BadOffset { .. })));
    // Past the end of the file.
    let r = Raw::header(1, 0)
        .tensor("t", &[4], 0, 32)
        .pad(32)
        .zeros(40)
        .open();
    assert!(matches!(r, Err(GgufError::BadOffset { .. })));
    // Offset near u64::MAX (overflow when added to the data start).
    let r = Raw::header(1, 0)
        .tensor("t", &[4], 0, u64::MAX - 31)
        .pad(32)
        .zeros(64)
        .open();
    assert!(matches!(r, Err(GgufError::BadOffset { .. })));
    // Overlapping tensors.
    let r = Raw::header(2, 0)
        .tensor("a", &[16], 0, 0)
        .tensor("b", &[16], 0, 32)
        .pad(32)
        .zeros(128)
        .open();
    assert!(
        matches!(r, Err(GgufError::BadOffset { ref reason, .. }) if reason.contains("overlaps"))
    );
    // Identical offsets.
    let r = Raw::header(2, 0)
        .tensor("a", &[8], 0, 0)
        .tensor("b", &[8], 0, 0)
        .pad(32)
        .zeros(64)
        .open();
    assert!(matches!(r, Err(GgufError::BadOffset { .. })));
    // Adjacent (touching) tensors are fine.
    let f = Raw::header(2, 0)
        .tensor("a", &[8], 0, 0)
        .tensor("b", &[8], 0, 32)
        .pad(32)
        .zeros(64)
        .open()
        .expect("adjacent tensors");
    assert_eq!(f.tensors().len(), 2);
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48, u32::MAX] {
        let r = Raw::header(0, 1).kv_u32("general.alignment", a).open();
        assert!(
            matches!(r, Err(GgufError::BadAlignment(x)) if x == u64::from(a)),
            "alignment {a}"
        );
    }
    let r = Raw::header(0, 1)
        .string("general.alignment")
        .u32(8)
        .string("x")
        .open();
    assert!(matches!(r, Err(GgufError::WrongType { .. })));
    // Alignment 8: a tensor at offset 8 is fine, one at 4 is not.
    let ok = Raw::header(1, 1)
        .kv_u32("general.alignment", 8)
        .tensor("t", &[2], 0, 8)
        .pad(8)
        .zeros(16)
        .open()
        .expect("aligned to 8");
    assert_eq!(ok.alignment(), 8);
    assert_eq!(ok.dequantize("t").expect("t"), vec![0.0, 0.0]);
    let bad = Raw::header(1, 1)
        .kv_u32("general.alignment", 8)
        .tensor("t", &[2], 0, 4)
        .pad(8)
        .zeros(16)
        .open();
    assert!(matches!(bad, Err(GgufError::BadOffset { .. })));
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    assert!(
        w.add_tensor("t", &[2, 3], &[0.0; 5], GgmlType::F32)
            .is_err()
    );
    assert!(
        w.add_tensor("t", &[2, 16], &[0.0; 32], GgmlType::Q8_0)
            .is_err()
    );
    assert!(
        w.add_tensor("t", &[2, 256], &[0.0; 512], GgmlType::Q2_K)
            .is_err()
    );
    w.add_tensor("t", &[32], &[0.0; 32], GgmlType::Q8_0)
        .expect("ok");
    assert!(matches!(
        w.add_tensor("t", &[32], &[0.0; 32], GgmlType::Q8_0),
        Err(GgufError::DuplicateTensor(_))
    ));
    w.add_metadata(
        "m",
        MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]),
    );
    assert!(w.to_bytes().is_err());
}

/// Fuzz regressions (`fuzz/regressions/gguf/`): absurd sizes in the metadata are config errors,
/// found before anything is multiplied per layer or allocated: a head count × head size that
/// overflows `usize` (a panic in `n_params`), and a block count of 4 × 10⁹ (a loop over every
/// layer's tensor names that never ends).
#[test]
fn absurd_model_sizes_are_config_errors() {
    let config = |edit: &[(&str, u32)]| {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", MetaValue::String("llama".into()));
        let mut kv = vec![
            ("embedding_length", 32),
            ("block_count", 2),
            ("feed_forward_length", 64),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 2),
            ("vocab_size", 16),
        ];
        for &(k, v) in edit {
            match kv.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => kv.push((k, v)),
            }
        }
        for (k, v) in kv {
            w.add_metadata(format!("llama.{k}"), MetaValue::U32(v));
        }
        let file = GgufFile::from_bytes(w.to_bytes().expect("bytes")).expect("parses");
        pema_backbone::ModelConfig::from_gguf(&file, "t")
    };
    let ok = config(&[]).expect("the plain config is valid");
    assert!(ok.n_params() > 0);
    for edit in [
        &[("block_count", u32::MAX)][..],
        &[("block_count", 100_000)],
        &[
            ("attention.head_count", 0xFFFF_FFF0),
            ("attention.key_length", 0xFFFF_FFF0),
        ],
        &[("embedding_length", u32::MAX), ("vocab_size", u32::MAX)],
    ] {
        match config(edit) {
            Err(pema_backbone::BackboneError::Config(_)) => {}
            other => panic!("{edit:?}: expected a config error, got {other:?}"),
        }
    }
}
