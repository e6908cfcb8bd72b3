//! `[routes.ai]`: a route that speaks the OpenAI-compatible API to its
//! clients and sends each request to an ordered list of LLM provider
//! targets (`crate::proxy::ai`). Provider keys are the gateway's (in the
//! file, or `env:NAME` for an environment variable), never a client's;
//! clients authenticate with consumer keys of their own.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::route::rate_limit::{Fail, LimitKey, RateLimit, Scope};

use super::units::{ByteSize, ConfigDuration};
use super::{invalid, ConfigError, UpstreamGroup};

/// `[routes.ai]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAi {
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    #[serde(default)]
    pub providers: std::collections::BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, RawModel>,
    pub default_max_tokens: Option<u64>,
    pub first_byte_timeout: Option<ConfigDuration>,
    pub idle_timeout: Option<ConfigDuration>,
    pub max_body: Option<ByteSize>,
    /// Who counts the tokens and requests per minute: `node` or `cluster`.
    pub limit_scope: Option<String>,
    /// What cluster-counted limits do while Redis cannot answer.
    pub limit_fail: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub name: String,
    /// Not with `[routes.auth]`: the token's subject names the consumer.
    pub key: Option<String>,
    pub tokens_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// `openai` (any OpenAI-compatible API) or `anthropic`.
    pub kind: Option<String>,
    pub upstream: String,
    pub base_path: Option<String>,
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub targets: Vec<RawTarget>,
    pub tokens_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
    /// Completions kept this long (none: not cached).
    pub cache_ttl: Option<ConfigDuration>,
    /// Cache completions whatever their temperature (default: only 0).
    pub cache_any_temperature: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub provider: String,
    pub model: String,
}

/// A secret (a key): compared, sent, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI's, or one compatible with it (Mistral, vLLM, Ollama, LM Studio).
    OpenAi,
    /// Anthropic's Messages API, translated.
    Anthropic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Index into `Config::upstreams`: its servers, TLS and pool.
    pub upstream: usize,
    /// Prepended to the API's paths (`/v1` for OpenAI's own).
    pub base_path: String,
    /// Sent as the provider's key, balanced over; none for a local server.
    pub keys: Vec<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into `AiRoute::providers`.
    pub provider: usize,
    /// The provider's name for the model.
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: String,
    /// The consumer's API key; none on a route with `[routes.auth]`, where
    /// the verified token's subject is the consumer's name.
    pub key: Option<Secret>,
    pub limits: Budget,
}

/// Tokens and requests per minute (each a GCRA whose burst is a minute's
/// worth), on the node's rate-limit table or, with `limit_scope =
/// "cluster"`, the cluster's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    pub tokens: Option<RateLimit>,
    pub requests: Option<RateLimit>,
}

/// A model clients ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub name: String,
    /// Tried in order.
    pub targets: Vec<Target>,
    /// For every consumer together.
    pub limits: Budget,
    /// The completion cache, when on for this model.
    pub cache: Option<CompletionCache>,
}

/// `cache_ttl` and `cache_any_temperature` of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletionCache {
    pub ttl: Duration,
    /// Without it, only requests with `temperature` 0 are answered from or
    /// stored in the cache.
    pub any_temperature: bool,
}

/// A validated `[routes.ai]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiRoute {
    /// Who may call (`Authorization: Bearer <key>`); none: anyone who
    /// passes the route's `[routes.auth]`, or anyone.
    pub consumers: Vec<Consumer>,
    pub providers: Vec<Provider>,
    /// The models clients may ask for.
    pub models: Vec<Model>,
    /// `max_tokens` for a provider that needs one when the client gave none.
    pub default_max_tokens: u64,
    /// How long a target has to send its response head (then the next is tried).
    pub first_byte_timeout: Duration,
    /// Longest wait between two pieces of a streamed response.
    pub idle_timeout: Duration,
    /// Largest request body read.
    pub max_body: u64,
    /// Who counts the budgets (`limit_scope`).
    pub limit_scope: crate::route::rate_limit::Scope,
}

impl AiRoute {
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// A key as written: the value itself, or `env:NAME`.
fn secret(key: String, value: &str) -> Result<Secret, ConfigError> {
    match value.strip_prefix("env:") {
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Secret(v)),
            _ => Err(invalid(
                key,
                format!("the environment variable {var} is not set"),
            )),
        },
        None if value.is_empty() => Err(invalid(key, "must not be empty")),
        None => Ok(Secret(value.to_string())),
    }
}

/// Per-minute limits as GCRAs with a minute's burst, counted by `counted`
/// (scope and fail mode).
fn budget(
    at: &str,
    tokens: Option<u64>,
    requests: Option<u64>,
    counted: (Scope, Fail),
) -> Result<Budget, ConfigError> {
    let per_minute = |field: &str, n: Option<u64>| -> Result<Option<RateLimit>, ConfigError> {
        let Some(n) = n else { return Ok(None) };
        if n == 0 || n > 1_000_000_000 {
            return Err(invalid(format!("{at}.{field}"), "from 1 to 1000000000"));
        }
        let burst = u32::try_from(n - 1).unwrap_or(u32::MAX);
        let mut limit = RateLimit::new(n as f64 / 60.0, burst, LimitKey::Route)
            .map_err(|reason| invalid(format!("{at}.{field}"), reason))?;
        (limit.scope, limit.fail) = counted;
        Ok(Some(limit))
    };
    Ok(Budget {
        tokens: per_minute("tokens_per_minute", tokens)?,
        requests: per_minute("requests_per_minute", requests)?,
    })
}

pub(super) fn validate_ai(
    i: usize,
    raw: &RawAi,
    upstreams: &[UpstreamGroup],
    has_auth: bool,
) -> Result<Arc<AiRoute>, ConfigError> {
    let key = |field: &str| format!("routes[{i}].ai.{field}");
    let counted = super::routes::scope_and_fail(
        (key("limit_scope"), raw.limit_scope.as_deref()),
        (key("limit_fail"), raw.limit_fail.as_deref()),
    )?;
    let mut providers = Vec::new();
    for (name, p) in &raw.providers {
        let pkey = |field: &str| key(&format!("providers.{name}.{field}"));
        let kind = match p.kind.as_deref().unwrap_or("openai") {
            "openai" => ProviderKind::OpenAi,
            "anthropic" => ProviderKind::Anthropic,
            other => {
                return Err(invalid(
                    pkey("kind"),
                    format!("`{other}` is not one of openai, anthropic"),
                ))
            }
        };
        let upstream = upstreams
            .iter()
            .position(|g| g.name == p.upstream)
            .ok_or_else(|| {
                invalid(
                    pkey("upstream"),
                    format!("no upstream group named `{}`", p.upstream),
                )
            })?;
        let base_path = p.base_path.clone().unwrap_or_else(|| "/v1".to_string());
        if !base_path.starts_with('/') || base_path.ends_with('/') || base_path.contains(['?', '#'])
        {
            return Err(invalid(
                pkey("base_path"),
                "a path starting with / and not ending with one (\"/v1\")",
            ));
        }
        let keys = p
            .keys
            .iter()
            .enumerate()
            .map(|(j, k)| secret(pkey(&format!("keys[{j}]")), k))
            .collect::<Result<Vec<_>, _>>()?;
        providers.push(Provider {
            name: name.clone(),
            kind,
            upstream,
            base_path,
            keys,
        });
    }
    let mut models = Vec::new();
    for (name, m) in &raw.models {
        if m.targets.is_empty() {
            return Err(invalid(
                key(&format!("models.{name}.targets")),
                "at least one target",
            ));
        }
        let mut targets = Vec::new();
        for (j, t) in m.targets.iter().enumerate() {
            let provider = providers
                .iter()
                .position(|p| p.name == t.provider)
                .ok_or_else(|| {
                    invalid(
                        key(&format!("models.{name}.targets[{j}].provider")),
                        format!("no provider named `{}` in this route", t.provider),
                    )
                })?;
            targets.push(Target {
                provider,
                model: t.model.clone(),
            });
        }
        let cache = match m.cache_ttl {
            None if m.cache_any_temperature.is_some() => {
                return Err(invalid(
                    key(&format!("models.{name}.cache_any_temperature")),
                    "only with cache_ttl",
                ))
            }
            None => None,
            Some(ttl) if ttl.0 < Duration::from_secs(1) => {
                return Err(invalid(
                    key(&format!("models.{name}.cache_ttl")),
                    "at least 1s",
                ))
            }
            Some(ttl) => Some(CompletionCache {
                ttl: ttl.0,
                any_temperature: m.cache_any_temperature.unwrap_or(false),
            }),
        };
        models.push(Model {
            name: name.clone(),
            cache,
            targets,
            limits: budget(
                &key(&format!("models.{name}")),
                m.tokens_per_minute,
                m.requests_per_minute,
                counted,
            )?,
        });
    }
    if models.is_empty() {
        return Err(invalid(
            key("models"),
            "at least one model ([routes.ai.models.NAME] targets = [...])",
        ));
    }
    let mut consumers = Vec::new();
    for (j, c) in raw.consumers.iter().enumerate() {
        if c.name.is_empty() || !c.name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                key(&format!("consumers[{j}].name")),
                "non-empty visible ASCII",
            ));
        }
        let at = key(&format!("consumers[{j}].key"));
        let consumer_key = match (&c.key, has_auth) {
            (Some(k), false) => Some(secret(at, k)?),
            (None, true) => None,
            (None, false) => return Err(invalid(
                at,
                "a consumer's API key (or [routes.auth], whose token subject names the consumer)",
            )),
            (Some(_), true) => {
                return Err(invalid(
                    at,
                    "with [routes.auth] the verified token's subject names the consumer: no key",
                ))
            }
        };
        if consumers.iter().any(|d: &Consumer| d.name == c.name) {
            return Err(invalid(
                key(&format!("consumers[{j}].name")),
                format!("`{}` is named twice", c.name),
            ));
        }
        consumers.push(Consumer {
            name: c.name.clone(),
            key: consumer_key,
            limits: budget(
                &key(&format!("consumers[{j}]")),
                c.tokens_per_minute,
                c.requests_per_minute,
                counted,
            )?,
        });
    }
    let positive = |field: &str, d: Option<&ConfigDuration>, default: u64| {
        let d = d.map_or(Duration::from_secs(default), |d| d.0);
        if d.is_zero() {
            return Err(invalid(key(field), "must be longer than zero"));
        }
        Ok(d)
    };
    Ok(Arc::new(AiRoute {
        consumers,
        providers,
        models,
        default_max_tokens: raw.default_max_tokens.unwrap_or(1024).max(1),
        first_byte_timeout: positive("first_byte_timeout", raw.first_byte_timeout.as_ref(), 60)?,
        idle_timeout: positive("idle_timeout", raw.idle_timeout.as_ref(), 60)?,
        max_body: raw.max_body.map_or(4 << 20, |b| b.0),
        limit_scope: counted.0,
    }))
}
