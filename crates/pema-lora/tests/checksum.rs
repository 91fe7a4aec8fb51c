//! LoRA weights carry their sha256 in `lora.json`: a changed weights file is refused on load,
//! and a directory written before the checksum existed still loads.

use burn::backend::NdArray;
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use pema_backbone::Family;
use pema_backbone::testing::{pseudo_random, tiny_model};
use pema_lora::lora::{META_FILE, WEIGHTS_FILE};
use pema_lora::{LORA_FORMAT, Lora, LoraConfig, LoraMeta, LoraTarget};

type B = NdArray<f32>;

#[test]
fn lora_weights_are_checksummed_on_load() {
    let dev = Default::default();
    let m = tiny_model::<B>(Family::Llama, 2, &dev).expect("model");
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: LoraTarget::parse_list("q,v").expect("targets"),
        ..LoraConfig::default()
    };
    let mut lora = Lora::init(&m, &cfg).expect("init");
    for b in &mut lora.b {
        let n = b.dims();
        *b = Param::from_tensor(Tensor::from_data(
            TensorData::new(pseudo_random(9, n[0] * n[1]), n),
            &dev,
        ));
    }
    let meta = LoraMeta {
        format: LORA_FORMAT.into(),
        model: m.config.name.clone(),
        weights_sha256: "ab".repeat(32),
        config: cfg,
        slots: lora.slots.clone(),
        report: None,
        lora_sha256: None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    lora.save(dir.path(), &meta).expect("save");
    let (_, back) = Lora::<B>::load(dir.path(), &dev).expect("load");
    assert!(back.lora_sha256.is_some());
    let w = dir.path().join(WEIGHTS_FILE);
    let mut bytes = std::fs::read(&w).expect("read");
    let at = bytes.len() - 4;
    bytes[at] ^= 0x01;
    std::fs::write(&w, bytes).expect("write");
    let e = Lora::<B>::load(dir.path(), &dev).expect_err("corrupt");
    assert!(e.to_string().contains("sha256"), "{e}");
    // Without a recorded checksum (an older directory) the file loads unchecked.
    let p = dir.path().join(META_FILE);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
    json.as_object_mut().expect("object").remove("lora_sha256");
    std::fs::write(&p, json.to_string()).expect("write");
    Lora::<B>::load(dir.path(), &dev).expect("older directory loads");
}
