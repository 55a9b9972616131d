//! TODO: adapter.

use crate::connection::ProviderName;
use crate::provider::{HttpClient, ProviderConfig, ProviderConfigError};

#[derive(Debug)]
pub struct RedditProvider;

impl RedditProvider {
    pub fn new(
        _name: ProviderName,
        _config: &ProviderConfig,
        _http: HttpClient,
    ) -> Result<Self, ProviderConfigError> {
        todo!()
    }
}
