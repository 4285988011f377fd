//! Why a model config could not be imported.

/// The `architectures` entries this importer understands, as error messages list them.
pub const SUPPORTED_ARCHITECTURES: &str =
    "LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

/// The `model_type` values this importer understands, as error messages list them.
pub const SUPPORTED_MODEL_TYPES: &str = "llama, mistral, mixtral, qwen2, qwen3";

/// A Hugging Face `config.json` that could not be read, parsed or validated.
///
/// Every variant names the file (`file`: a path, or `models/<name>/config.json` for
/// bundled configs) and, where one is at fault, the JSON key (dotted for nested keys,
/// e.g. `rope_scaling.factor`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read model config: {err}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error (in the message, so not also a `source`).
        err: std::io::Error,
    },
    /// The text is not JSON.
    #[error("{file}: not valid JSON: {message}")]
    Json {
        /// The file.
        file: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The JSON value at the top (or of an object-valued key) is not an object.
    #[error("{file}: `{key}` must be a JSON object, found {found}")]
    NotAnObject {
        /// The file.
        file: String,
        /// `(top level)` or the key.
        key: String,
        /// What was there instead.
        found: String,
    },
    /// A required key is absent.
    #[error("{file}: missing key `{key}`")]
    MissingKey {
        /// The file.
        file: String,
        /// The key.
        key: String,
    },
    /// A key holds a value of the wrong JSON type.
    #[error("{file}: key `{key}` must be {expected}, found {found}")]
    WrongType {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// What the key must hold.
        expected: &'static str,
        /// What it holds.
        found: String,
    },
    /// An `architectures` entry this importer does not model.
    #[error("{file}: `architectures`: {found} is not supported; supported: {supported}")]
    UnsupportedArchitecture {
        /// The file.
        file: String,
        /// The entry.
        found: String,
        /// [`SUPPORTED_ARCHITECTURES`].
        supported: &'static str,
    },
    /// A `model_type` this importer does not model.
    #[error("{file}: `model_type`: {found} is not supported; supported: {supported}")]
    UnsupportedModelType {
        /// The file.
        file: String,
        /// The value.
        found: String,
        /// [`SUPPORTED_MODEL_TYPES`].
        supported: &'static str,
    },
    /// A key whose value would change the model's math in a way the accounting does not model.
    #[error("{file}: key `{key}` = {value} is not supported: {why}")]
    Unsupported {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// The value, as JSON.
        value: String,
        /// What is not modelled (and what is).
        why: String,
    },
    /// A value out of its legal range (zero sizes, non-positive eps, ...).
    #[error("{file}: key `{key}`: {why}")]
    Invalid {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// Values that contradict each other (heads not divisible by KV heads, ...).
    #[error("{file}: key `{key}` is inconsistent: {why}")]
    Inconsistent {
        /// The file.
        file: String,
        /// The key reported (the second of the pair).
        key: String,
        /// The contradiction.
        why: String,
    },
    /// No bundled config with that name.
    #[error("unknown bundled model `{name}`; known: {known} (or pass a config.json file)")]
    UnknownModel {
        /// The requested name.
        name: String,
        /// Comma-separated bundled names.
        known: String,
    },
}
