//! The API a run drives: where a streamed request goes and what it carries, and how a
//! prompt's length is measured, for TGI's routes or OpenAI's.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{Api, Args, count};

/// The endpoint and body of one streamed request for `prompt` in the chosen API.
pub fn request_for(target: &Target, args: &Args, prompt: &str) -> (String, Value) {
    match &target.model {
        None => (
            format!("{}/generate_stream", target.url),
            json!({
                "inputs": prompt,
                "parameters": {"max_new_tokens": args.max_new_tokens, "ignore_eos": true},
            }),
        ),
        Some(model) => (
            format!("{}/v1/completions", target.url),
            json!({
                "model": model, "prompt": prompt, "max_tokens": args.max_new_tokens,
                "temperature": 0.0, "ignore_eos": true, "stream": true,
                "stream_options": {"include_usage": true},
            }),
        ),
    }
}

/// A server under test: its URL and, for the OpenAI API, the model to name.
pub struct Target {
    pub url: String,
    pub model: Option<String>,
}

impl Target {
    pub async fn new(client: &reqwest::Client, url: &str, args: &Args) -> Result<Target> {
        let model = match (args.api, &args.model) {
            (Api::Tgi, _) => None,
            (Api::Openai, Some(m)) => Some(m.clone()),
            (Api::Openai, None) => {
                let models: Value =
                    client.get(format!("{url}/v1/models")).send().await?.json().await?;
                Some(
                    models["data"][0]["id"]
                        .as_str()
                        .context("/v1/models named no model")?
                        .to_string(),
                )
            }
        };
        Ok(Target { url: url.to_string(), model })
    }

    /// How many tokens `text` is on this server's tokenizer.
    pub async fn count(&self, client: &reqwest::Client, text: &str) -> Result<usize> {
        let Some(model) = &self.model else { return count(client, &self.url, text).await };
        let r: Value = client
            .post(format!("{}/v1/completions", self.url))
            .json(&json!({"model": model, "prompt": text, "max_tokens": 1}))
            .send()
            .await?
            .json()
            .await?;
        let n = r["usage"]["prompt_tokens"].as_u64().context("no usage.prompt_tokens")?;
        Ok(n as usize)
    }
}
