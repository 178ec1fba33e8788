//! TEMPORARY STUB — replaced by the real resolver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    pub is_resource_request: bool,
    pub path: String,
    pub verb: String,
    pub api_prefix: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub parts: Vec<String>,
}
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad")]
    Bad,
}
pub fn resolve(_m: &http::Method, uri: &http::Uri) -> Result<RequestInfo, Error> {
    Ok(RequestInfo {
        path: uri.path().to_owned(),
        ..Default::default()
    })
}
impl RequestInfo {
    pub fn forward_path_and_query(&self, uri: &http::Uri) -> String {
        uri.path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default()
    }
}
