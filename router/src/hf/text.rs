//! `text-generation` and `conversational`: the Inference API's text tasks over TGI's
//! parameters (`params.rs`) and the core's batch generation.

use axum::response::Response;
use rill_proto::api::GenerateRequest;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::params::{TextGenerationParameters, TextRequest};
use super::{Ctx, HfError, InferenceRequest, Wanted, answer, cache_key, task_parameters, texts};
use crate::chat_template::ChatInput;
use crate::infer::{Finished, InferError};
use crate::tgi::{self, Options, TgiError};

/// One answer of `text-generation`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratedText {
    generated_text: String,
    /// TGI's details, when `details` was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<rill_proto::api::Details>)]
    details: Option<rill_proto::api::Details>,
}

/// `conversational`'s inputs: the turns so far and the new user text.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct Conversation {
    #[serde(default)]
    pub past_user_inputs: Vec<String>,
    #[serde(default)]
    pub generated_responses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `conversational`'s answer: the reply and the conversation with it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationalAnswer {
    generated_text: String,
    conversation: Conversation,
}

/// Run every request's answers side by side (a full server refuses them all), each
/// until it ends or its `max_time` passes.
async fn generate(
    ctx: &Ctx,
    requests: Vec<TextRequest>,
) -> Result<Vec<Vec<GeneratedText>>, HfError> {
    let options: Vec<_> = requests.iter().map(|r| r.options).collect();
    let asks = requests.into_iter().map(|r| r.ask).collect();
    let answers = ctx.state.generate_all(asks).await.map_err(|e| ctx.err(e))?;
    let answer = |inputs: &str, options: Options, f: Finished| GeneratedText {
        generated_text: if options.return_full_text {
            format!("{inputs}{}", f.text)
        } else {
            f.text.clone()
        },
        details: options.details.then(|| tgi::details(f, None)),
    };
    Ok(answers
        .into_iter()
        .zip(options)
        .map(|(a, o)| a.finished.into_iter().map(|f| answer(&a.inputs, o, f)).collect())
        .collect())
}

pub(super) async fn text_generation(
    ctx: Ctx,
    request: InferenceRequest,
    wanted: Wanted,
) -> Result<Response, HfError> {
    let params: TextGenerationParameters = task_parameters(request.parameters)?;
    let (inputs, listed) = texts(&request.inputs)?;
    let limits = ctx.infer()?.limits.clone();
    if request.stream {
        if listed {
            return Err(HfError::bad_request("a list of `inputs` cannot be streamed"));
        }
        params.text_request(inputs[0].clone(), true, true, &limits)?;
        let (parameters, _) = params.to_tgi(&limits)?;
        let inner = GenerateRequest { inputs: inputs[0].clone(), parameters: Some(parameters) };
        return tgi::stream_response(&ctx.state, inner).await.map_err(|e| match e {
            TgiError::Infer(e) => ctx.err(e),
            TgiError::Body(r) => HfError::bad_request(r.body_text()),
        });
    }
    let requests = inputs
        .into_iter()
        .map(|text| params.text_request(text, true, false, &limits))
        .collect::<Result<Vec<_>, _>>()?;
    let key = requests.iter().all(|r| r.deterministic).then(|| {
        let normalised = (params.to_tgi(&limits).ok(), &params.max_time);
        cache_key(&ctx.model, "text-generation", &request.inputs, &normalised)
    });
    answer(&ctx, key, wanted, async {
        let mut answers = generate(&ctx, requests).await?;
        let value = if listed { json!(answers) } else { json!(answers.remove(0)) };
        Ok(value)
    })
    .await
}

pub(super) async fn conversational(
    ctx: Ctx,
    request: InferenceRequest,
    wanted: Wanted,
) -> Result<Response, HfError> {
    let params: TextGenerationParameters = task_parameters(request.parameters)?;
    let conversation: Conversation = match &request.inputs {
        Value::String(s) => Conversation { text: Some(s.clone()), ..Default::default() },
        v => serde_json::from_value(v.clone()).map_err(|e| {
            HfError::bad_request(format!(
                "`inputs` must be {{\"past_user_inputs\", \"generated_responses\", \"text\"}}: {e}"
            ))
        })?,
    };
    let Some(text) = conversation.text.clone().filter(|t| !t.is_empty()) else {
        return Err(HfError::bad_request("`inputs.text` is required"));
    };
    if conversation.past_user_inputs.len() != conversation.generated_responses.len() {
        return Err(HfError::bad_request(
            "`past_user_inputs` and `generated_responses` must have the same length",
        ));
    }
    if params.num_return_sequences.is_some_and(|n| n != 1) {
        return Err(HfError::bad_request("`conversational` answers one reply"));
    }
    let templates = ctx.state.chat_templates.clone().ok_or_else(|| {
        HfError::bad_request("This model has no chat template: give one with --chat-template")
    })?;
    let mut messages = Vec::new();
    for (user, assistant) in
        conversation.past_user_inputs.iter().zip(&conversation.generated_responses)
    {
        messages.push(json!({"role": "user", "content": user}));
        messages.push(json!({"role": "assistant", "content": assistant}));
    }
    messages.push(json!({"role": "user", "content": text}));
    let prompt = ctx
        .state
        .on_validation_worker(move |_| {
            templates
                .render(&ChatInput::new(&messages))
                .map_err(|e| Rendered::Template(HfError::bad_request(e.to_string())))
        })
        .await
        .map_err(|e| match e {
            Rendered::Core(e) => ctx.err(e),
            Rendered::Template(e) => e,
        })?;
    let limits = ctx.infer()?.limits.clone();
    let mut params = params;
    params.tgi.return_full_text = Some(false);
    params.tgi.details = false;
    let request_text = params.text_request(prompt, false, false, &limits)?;
    let key = request_text.deterministic.then(|| {
        cache_key(&ctx.model, "conversational", &request.inputs, &params.to_tgi(&limits).ok())
    });
    answer(&ctx, key, wanted, async {
        let reply = generate(&ctx, vec![request_text]).await?.remove(0).remove(0).generated_text;
        let mut conversation = conversation;
        conversation.past_user_inputs.push(text);
        conversation.generated_responses.push(reply.clone());
        conversation.text = None;
        Ok(json!(ConversationalAnswer { generated_text: reply, conversation }))
    })
    .await
}

/// A template failure or the core's, from a validation worker.
enum Rendered {
    Core(InferError),
    Template(HfError),
}

impl From<InferError> for Rendered {
    fn from(e: InferError) -> Self {
        Rendered::Core(e)
    }
}
