//! The model's own chat template (Jinja, from the GGUF), rendered with minijinja.
use minijinja::{Environment, context};
use serde::Serialize;

use crate::LlmError;

/// One message as chat templates expect it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TemplateMessage {
    pub role: &'static str,
    pub content: String,
}

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; `bos` / `eos` are the texts of the special tokens templates may name.
    pub(crate) fn new(source: String, bos: Option<String>, eos: String) -> Result<Self, LlmError> {
        let mut env = Environment::new();
        // Templates written for Hugging Face's renderer call Python string methods.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(NAME, source)
            .map_err(|e| LlmError::Config(format!("the model's chat template does not compile: {e}")))?;
        Ok(Self { env, bos: bos.unwrap_or_default(), eos })
    }

    /// The prompt text for `messages`, ending where the assistant's answer begins.
    pub(crate) fn render(&self, messages: &[TemplateMessage]) -> Result<String, LlmError> {
        let template = self.env.get_template(NAME).map_err(|e| LlmError::Engine(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| LlmError::Engine(format!("chat template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_with_a_generation_prompt() {
        let source = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
            {{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}\
            {{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n'}}{% endfor %}\
            {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(source.into(), None, "<|im_end|>".into()).unwrap();
        let out = t.render(&[TemplateMessage { role: "user", content: " hi ".into() }]).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
