//! Whether an authenticated login may sign for a domain, at run time: the configuration's own
//! rules ([`crate::policy::authorization`]) and, only when they grant nothing, the
//! `[authorization]` callback, whose answers are kept for `cache_ttl` so that a busy
//! submission service does not ask the operator's database for every message.

use crate::config::authorization::{AuthorizationCallback, CallbackArg};
use crate::config::{AuthorizationSettings, CallbackSettings, Config};
use crate::keys::callback;
use crate::policy::{Denial, Grant, Login, Subject, denial, static_grant};
use std::sync::Arc;

/// Answers kept at most; a busy ESP's active (login, sender) pairs fit many times over.
const MAX_CACHED_ANSWERS: u64 = 100_000;

/// Why a login does not get to sign for a domain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Nothing grants it: `on_unauthorized` applies.
    #[error(transparent)]
    Denied(Denial),
    /// The callback could not answer: the signature's `on_error` applies, as for a key that
    /// cannot be had.
    #[error("cannot tell whether {login} may sign for {domain}: {reason}")]
    Unavailable {
        login: String,
        domain: String,
        reason: String,
    },
}

/// The run-time side of `[authorization]`; one per configuration generation.
pub struct Authorizer {
    callback: Option<Asker>,
}

/// The `[authorization]` callback and its remembered answers.
struct Asker {
    name: String,
    section: CallbackSettings,
    args: Vec<CallbackArg>,
    /// `(login key, address or @domain)` → granted. `None` when `cache_ttl = 0`.
    answers: Option<moka::future::Cache<(String, String), bool>>,
}

impl Authorizer {
    pub fn new(config: &Config) -> Self {
        let settings = &config.authorization;
        let callback = settings
            .callback
            .as_ref()
            .and_then(|cb: &AuthorizationCallback| {
                // Config loading checked that the section exists.
                let section = config.keys.callbacks.get(&cb.name)?.clone();
                let answers = (!settings.cache_ttl.is_zero()).then(|| {
                    moka::future::Cache::builder()
                        .max_capacity(MAX_CACHED_ANSWERS)
                        .time_to_live(settings.cache_ttl)
                        .build()
                });
                Some(Asker {
                    name: cb.name.clone(),
                    section,
                    args: cb.args.clone(),
                    answers,
                })
            });
        Authorizer { callback }
    }

    /// May `login` sign for `subject`?
    pub async fn authorize(
        &self,
        settings: &AuthorizationSettings,
        login: &Login,
        subject: Subject<'_>,
    ) -> Result<Grant, Refusal> {
        if let Some(grant) = static_grant(settings, login, subject) {
            return Ok(grant);
        }
        let Some(asker) = &self.callback else {
            return Err(Refusal::Denied(denial(settings, login, subject, None)));
        };
        // Boxed: the question's future (a child process or a SQLite query) is large, and an
        // unboxed one would be built and moved on every message, also those granted above
        // (measured: about 15,000 instructions a message, most of them memcpy).
        match Box::pin(asker.ask(login, subject)).await {
            Ok(true) => Ok(Grant::Callback(asker.name.clone())),
            Ok(false) => Err(Refusal::Denied(denial(
                settings,
                login,
                subject,
                Some(&asker.name),
            ))),
            Err(reason) => Err(Refusal::Unavailable {
                login: login.name.clone(),
                domain: subject.domain.to_string(),
                reason: format!("callback {}: {reason}", asker.name),
            }),
        }
    }
}

impl Asker {
    async fn ask(&self, login: &Login, subject: Subject<'_>) -> Result<bool, String> {
        let address = subject
            .address
            .map_or_else(|| format!("@{}", subject.domain), str::to_string);
        let args: Vec<String> = self
            .args
            .iter()
            .map(|arg| match arg {
                CallbackArg::Literal(text) => text.clone(),
                CallbackArg::Login => login.name.clone(),
                CallbackArg::Address => address.clone(),
                CallbackArg::Domain => subject.domain.to_string(),
            })
            .collect();
        let question = || async {
            Box::pin(callback::ask(&self.section, &args))
                .await
                .map_err(|e| e.to_string())
        };
        match &self.answers {
            // One question in flight per key; failures are not kept, so the next message asks
            // again. On a hit the question is never built.
            Some(answers) => answers
                .try_get_with((login.key.clone(), address), question())
                .await
                .map_err(|e: Arc<String>| e.to_string()),
            None => question().await,
        }
    }
}
