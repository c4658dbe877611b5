//! The answer's JSON schema enforced while sampling, with llguidance (the engine behind
//! llama.cpp's and vLLM's structured output): before each token, the grammar's mask of allowed
//! tokens; after it, the grammar advances. Output is compact JSON (no free whitespace, where a
//! small model could loop) and a call always matches its tool's argument schema.
use std::collections::HashMap;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use toktrie::{InferenceCapabilities, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::LlmError;

fn engine(what: &str, e: impl std::fmt::Display) -> LlmError {
    LlmError::Engine(format!("{what}: {e}"))
}

/// The tokenizer as llguidance sees it: each token's bytes, and exact tokenization of bytes the
/// grammar forces.
struct GgufTokEnv {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for GgufTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    // Forced bytes must tokenize exactly (they may start inside a UTF-8 character): valid UTF-8
    // through the model's tokenizer, the rest byte by byte.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| match self.tokenizer.encode(text, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(_) => self.trie.greedy_tokenize(text.as_bytes()),
        })
    }
}

/// GPT-2's byte-level alphabet back to bytes (`Ġ` → space, `Ċ` → newline, ...).
fn byte_level_alphabet() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        let c = char::from(b);
        if matches!(c, '!'..='~' | '\u{A1}'..='\u{AC}' | '\u{AE}'..='\u{FF}') {
            map.insert(c, b);
        } else {
            if let Some(shifted) = char::from_u32(next) {
                map.insert(shifted, b);
            }
            next += 1;
        }
    }
    map
}

/// The grammar compiler of one tokenizer, shared by every generation of the model.
pub(crate) struct Grammars {
    factory: Arc<ParserFactory>,
}

impl Grammars {
    /// Builds the token trie from the vocabulary (control tokens marked special, so no grammar
    /// ever admits them as text) and the compiler over it.
    pub(crate) fn new(
        tokens: &[String],
        special: &[bool],
        eos: u32,
        tokenizer: tokenizers::Tokenizer,
    ) -> Result<Self, LlmError> {
        let alphabet = byte_level_alphabet();
        let words: Vec<Vec<u8>> = tokens
            .iter()
            .zip(special)
            .map(|(t, &is_special)| {
                if is_special {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(t.as_bytes());
                    w
                } else {
                    t.chars()
                        .map(|c| alphabet.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .unwrap_or_else(|| t.as_bytes().to_vec())
                }
            })
            .collect();
        let vocab = u32::try_from(words.len()).map_err(|e| engine("vocabulary", e))?;
        let trie = TokTrie::from(&TokRxInfo::new(vocab, eos), &words);
        let env: TokEnv = Arc::new(GgufTokEnv { trie, tokenizer });
        let mut factory =
            ParserFactory::new(&env, InferenceCapabilities::default(), &SlicedBiasComputer::general_slices())
                .map_err(|e| engine("grammar compiler", e))?;
        factory.quiet();
        Ok(Self { factory: Arc::new(factory) })
    }

    /// A constraint that admits exactly the JSON documents `schema` describes.
    pub(crate) fn constraint(&self, schema: &serde_json::Value) -> Result<JsonConstraint, LlmError> {
        if !schema.is_object() {
            return Err(LlmError::Engine("a response schema must be a JSON object".into()));
        }
        let mut schema = schema.clone();
        let options = JsonCompileOptions {
            whitespace_flexible: false,
            item_separator: ",".into(),
            key_separator: ":".into(),
            // The structured protocol's branches differ in their `tool` constant or keys, so
            // at most one matches: `oneOf` is `anyOf` here.
            coerce_one_of: true,
            ..Default::default()
        };
        options.apply_to(&mut schema);
        let parser =
            self.factory.create_parser(TopLevelGrammar::from_json_schema(schema)).map_err(|e| engine("schema", e))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(engine("schema", e));
        }
        Ok(JsonConstraint { matcher })
    }
}

/// One generation's grammar state.
pub(crate) struct JsonConstraint {
    matcher: Matcher,
}

impl JsonConstraint {
    /// The tokens allowed next (end-of-text once the document is complete).
    pub(crate) fn allowed(&mut self) -> Result<SimpleVob, LlmError> {
        self.matcher.compute_mask_or_eos().map_err(|e| engine("grammar", e))
    }

    /// Advances past `token` (one the mask allowed).
    pub(crate) fn consume(&mut self, token: u32) -> Result<(), LlmError> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| engine("grammar", e))
    }

    /// The document is complete: nothing may follow.
    pub(crate) fn done(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_level_alphabet_covers_every_byte() {
        let map = byte_level_alphabet();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }
}
