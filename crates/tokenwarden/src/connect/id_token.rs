//! OpenID Connect ID token checks for the connect flow, with `openidconnect`: the signature
//! against the issuer's JWKS, then `iss`, `aud` (and `azp`), `exp` and `nonce` (OpenID
//! Connect Core §3.1.3.7). We fetch the key set with our own HTTP client (its timeouts and
//! body cap) and keep it per provider; a token signed with a key we do not have makes us
//! fetch the set again once, as a provider rotating its keys publishes the new key first.

use std::collections::HashMap;
use std::sync::Mutex;

use openidconnect::core::{
    CoreGenderClaim, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AdditionalClaims, ClientId, ClientSecret, IdToken, IdTokenVerifier, IssuerUrl, Nonce,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use time::OffsetDateTime;
use url::Url;

use crate::connection::ProviderName;
use crate::provider::{HttpClient, ProviderSettings, discovery};

/// Every claim besides the standard ones, so the catalog may name any of them as the
/// account id (`id_token:oid`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OtherClaims(HashMap<String, Value>);
impl AdditionalClaims for OtherClaims {}

type AnyIdToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// Key sets by provider.
#[derive(Debug, Default)]
pub(crate) struct JwksCache {
    sets: Mutex<HashMap<ProviderName, Arc<(String, CoreJsonWebKeySet)>>>,
}

/// The checked claims we use.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedClaims {
    pub subject: String,
    others: HashMap<String, Value>,
}

impl VerifiedClaims {
    /// A claim as an account id: `sub`, or another string or number claim.
    pub fn account_claim(&self, claim: &str) -> Option<String> {
        if claim == "sub" {
            return Some(self.subject.clone());
        }
        match self.others.get(claim)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

impl JwksCache {
    /// Validates `raw` for the provider: signature (JWKS), issuer, audience, expiry, nonce.
    /// The error says what failed, never the token or the nonce.
    pub async fn verify(
        &self,
        settings: &ProviderSettings,
        http: &HttpClient,
        raw: &str,
        nonce: &str,
        now: OffsetDateTime,
    ) -> Result<VerifiedClaims, String> {
        let token: AnyIdToken = raw
            .parse()
            .map_err(|_| "the id_token is not a well-formed JWT".to_owned())?;
        let mut fresh = false;
        let mut keys = match self.cached(&settings.name) {
            Some(keys) => keys,
            None => {
                fresh = true;
                self.fetch(settings, http).await?
            }
        };
        loop {
            match check(settings, &token, &keys, nonce, now) {
                Ok(claims) => return Ok(claims),
                // A key we may not have yet: fetch the set once more.
                Err(Failure::Signature(_)) if !fresh => {
                    fresh = true;
                    keys = self.fetch(settings, http).await?;
                }
                Err(Failure::Signature(e) | Failure::Claims(e)) => return Err(e),
            }
        }
    }

    fn cached(&self, provider: &ProviderName) -> Option<Arc<(String, CoreJsonWebKeySet)>> {
        self.sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(provider)
            .cloned()
    }

    /// Fetches the issuer's key set: from the metadata discovered at start, else by
    /// discovering the issuer now (catalog providers need no network at start).
    async fn fetch(
        &self,
        settings: &ProviderSettings,
        http: &HttpClient,
    ) -> Result<Arc<(String, CoreJsonWebKeySet)>, String> {
        let (issuer, jwks_uri) = match &settings.metadata {
            Some(m) => (m.issuer.clone(), m.jwks_uri.clone()),
            None => {
                let Some(issuer) = &settings.oidc_issuer else {
                    return Err(format!(
                        "an id_token came back, but providers.{}.issuer is not set, so its \
                         signature cannot be checked",
                        settings.name
                    ));
                };
                let metadata = discovery::discover(http, issuer.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                (metadata.issuer, metadata.jwks_uri)
            }
        };
        let Some(jwks_uri) = jwks_uri else {
            return Err(format!("the issuer {issuer} publishes no jwks_uri"));
        };
        let url = Url::parse(&jwks_uri).map_err(|_| "the jwks_uri is not a URL".to_owned())?;
        let shown = crate::provider::common::display_url(&url);
        let raw = http
            .send(http.client().get(url))
            .await
            .map_err(|e| format!("fetching the JWKS at {shown} failed: {e}"))?;
        if raw.status != 200 {
            return Err(format!("the JWKS at {shown} answered HTTP {}", raw.status));
        }
        let set: CoreJsonWebKeySet = serde_json::from_slice(&raw.body)
            .map_err(|_| format!("the JWKS at {shown} is not a key set"))?;
        let entry = Arc::new((issuer, set));
        self.sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(settings.name.clone(), Arc::clone(&entry));
        Ok(entry)
    }
}

enum Failure {
    Signature(String),
    Claims(String),
}

fn check(
    settings: &ProviderSettings,
    token: &AnyIdToken,
    keys: &(String, CoreJsonWebKeySet),
    nonce: &str,
    now: OffsetDateTime,
) -> Result<VerifiedClaims, Failure> {
    let (issuer, set) = keys;
    let issuer = IssuerUrl::new(issuer.clone())
        .map_err(|_| Failure::Claims("the issuer is not a URL".to_owned()))?;
    let client_id = ClientId::new(settings.client_id.clone().unwrap_or_default());
    let verifier = match &settings.client_secret {
        // HS256 tokens are signed with the client secret.
        Some(secret) => IdTokenVerifier::new_confidential_client(
            client_id,
            ClientSecret::new(secret.expose_secret().to_owned()),
            issuer,
            set.clone(),
        ),
        None => IdTokenVerifier::new_public_client(client_id, issuer, set.clone()),
    };
    let at = chrono::DateTime::from_timestamp(now.unix_timestamp(), now.nanosecond())
        .unwrap_or_default();
    let verifier = verifier.set_time_fn(move || at);
    let nonce = Nonce::new(nonce.to_owned());
    match token.claims(&verifier, &nonce) {
        Ok(claims) => Ok(VerifiedClaims {
            subject: claims.subject().as_str().to_owned(),
            others: claims.additional_claims().0.clone(),
        }),
        Err(openidconnect::ClaimsVerificationError::SignatureVerification(e)) => Err(
            Failure::Signature(format!("the id_token signature does not verify ({e})")),
        ),
        Err(e) => Err(Failure::Claims(describe(&e))),
    }
}

/// What failed, in words that never carry a claim value we were not configured with.
fn describe(e: &openidconnect::ClaimsVerificationError) -> String {
    use openidconnect::ClaimsVerificationError as E;
    match e {
        E::Expired(_) => "the id_token has expired".to_owned(),
        E::InvalidAudience(_) => "the id_token was issued for another client (aud)".to_owned(),
        E::InvalidIssuer(_) => "the id_token comes from another issuer (iss)".to_owned(),
        E::InvalidNonce(_) => "the id_token's nonce is not this flow's".to_owned(),
        _ => "the id_token did not validate".to_owned(),
    }
}
