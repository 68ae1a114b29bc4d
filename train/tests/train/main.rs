//! The trainer's integration tests, one binary (one link): parity with transformers + PEFT,
//! the vendored candle-core's backward, exact resume, the data pipeline against the Python
//! reference, sampling, the tiny generators and the real Qwen2.5 tokenizer. Goldens and the reference scripts are in `tests/reference/`,
//! fixtures in `tests/fixtures/`.

mod backprop;
mod checkpoint_resume;
mod data_pipeline;
mod generate;
mod parity;
mod tiny_generators;
mod tokenizer_qwen;
