//! The proxy's `config.yaml` as the controller writes it into each labelled namespace's
//! `chaperone-proxy` ConfigMap: `manifests/config/in-cluster.yaml` with the injector's
//! ports and audience, plus where the policy is mounted and, when the injector has one,
//! the OpenTelemetry Collector. A test keeps the two in step.

use crate::config::Config;
use crate::sidecar::{POLICY_DIR, SA_MOUNT_PATH, TLS_DIR};

/// The proxy config for pods injected with `config`.
pub fn render(config: &Config) -> String {
    let port = config.proxy_port;
    let admin = config.admin_port;
    let audience = &config.audience;
    // Checked when the injector's config loaded: `http(s)://host:port`, nothing to quote.
    let otlp = match &config.otlp {
        Some(otlp) => format!(
            "  otlp:                 # spans and log records, one per request\n    endpoint: {}\n",
            otlp.endpoint
        ),
        None => String::new(),
    };
    format!(
        "\
# chaperone proxy config, written by chaperone-injector; edits are overwritten.
listen:
  - 127.0.0.1:{port}      # KUBERNETES_SERVICE_HOST/PORT of app containers point here
  - \"[::1]:{port}\"
  - 127.0.0.1:443       # clients that dial https://kubernetes.default.svc:443 regardless
tls:
  certFile: {TLS_DIR}/tls.crt   # reloaded when the Secret is rotated
  keyFile: {TLS_DIR}/tls.key
  handshakeTimeout: 10s
admin:
  listen: 0.0.0.0:{admin}  # plain HTTP /healthz and /readyz for the kubelet's probes only
upstream:
  inCluster:
    # host and port default to the proxy container's own KUBERNETES_SERVICE_HOST/PORT
    tokenFile: {SA_MOUNT_PATH}/token
    caFile: {SA_MOUNT_PATH}/ca.crt
  connectTimeout: 5s
  responseTimeout: 60s
  shutdownGrace: 10s
identity:
  issuers:
    # The pod's projected service-account token (audience `{audience}`, mounted by the
    # injector in place of the usual one). The issuer is read from the proxy's own
    # token; keys come from the API server's /openid/v1/jwks. Only tokens bound to
    # this pod (POD_UID) are taken: not a replica's, nor one that outlived its pod.
    - cluster: true
      audiences: [{audience}]
      ownPodOnly: true
policy:
  file: {POLICY_DIR}/policy.yaml
audit:
  file: \"-\"             # stdout, collected with the pod's logs
{otlp}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With default ports the config is `manifests/config/in-cluster.yaml` (the file the
    /// proxy's README documents) plus the policy and identity sections.
    #[test]
    fn default_config_is_the_documented_in_cluster_config() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/config/in-cluster.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut want: serde_yaml::Mapping = serde_yaml::from_str(&text).unwrap();
        let extra: serde_yaml::Mapping = serde_yaml::from_str(
            "policy: {file: /etc/chaperone/policy/policy.yaml}\n\
             identity: {issuers: [{cluster: true, audiences: [chaperone], ownPodOnly: true}]}\n",
        )
        .unwrap();
        want.extend(extra);
        let got: serde_yaml::Mapping = serde_yaml::from_str(&render(&Config::default())).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn the_collector_is_the_proxys_otlp_endpoint() {
        let config = Config {
            otlp: Some(crate::config::Otlp {
                endpoint: "http://otel-collector.chaperone-observability:4317".into(),
            }),
            ..Config::default()
        };
        let v: serde_yaml::Value = serde_yaml::from_str(&render(&config)).unwrap();
        assert_eq!(v["audit"]["file"].as_str(), Some("-"));
        assert_eq!(
            v["audit"]["otlp"]["endpoint"].as_str(),
            Some("http://otel-collector.chaperone-observability:4317")
        );
        let none: serde_yaml::Value = serde_yaml::from_str(&render(&Config::default())).unwrap();
        assert!(none["audit"].get("otlp").is_none());
    }

    #[test]
    fn custom_ports_and_audience_are_used() {
        let config = Config {
            proxy_port: 7443,
            admin_port: 9000,
            audience: "agents".into(),
            ..Config::default()
        };
        let v: serde_yaml::Value = serde_yaml::from_str(&render(&config)).unwrap();
        assert_eq!(v["listen"][0].as_str(), Some("127.0.0.1:7443"));
        assert_eq!(v["listen"][1].as_str(), Some("[::1]:7443"));
        assert_eq!(v["admin"]["listen"].as_str(), Some("0.0.0.0:9000"));
        assert_eq!(
            v["identity"]["issuers"][0]["audiences"][0].as_str(),
            Some("agents")
        );
    }
}
