//! TEMPORARY STUB — replaced by the real sandbox.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;
#[derive(Clone, Default)]
pub struct Sandbox;
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad")]
    Bad,
}
impl Sandbox {
    pub fn from_yaml(_t: &str) -> Result<Sandbox, Error> {
        Ok(Sandbox)
    }
    pub fn with_default_seed() -> Sandbox {
        Sandbox
    }
    pub async fn handle(&self, _req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
        http::Response::new(crate::body::full("{}"))
    }
}
