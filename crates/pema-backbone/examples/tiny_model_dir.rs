//! Writes the tiny random model directory the command-line tests use:
//! `cargo run -p pema-backbone --example tiny_model_dir -- DIR [SEED]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: tiny_model_dir DIR [SEED]")?;
    let seed = args.next().map(|s| s.parse()).transpose()?.unwrap_or(7);
    pema_backbone::testing::write_tiny_model_dir(std::path::Path::new(&dir), seed)?;
    println!("wrote {dir}/model.gguf and {dir}/tokenizer.json");
    Ok(())
}
