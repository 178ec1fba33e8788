//! What the pod gets: the proxy container and the volumes it and the app containers mount.
//!
//! Plain builders over `Config`; `mutate` decides where they go.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIProjection, DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::Config;

/// The proxy container's name; its presence marks a pod as injected.
pub const CONTAINER: &str = "chaperone";
/// Where every Kubernetes client looks for its in-cluster token, CA and namespace.
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The proxy's command line; the config file is the `chaperone-proxy` ConfigMap.
pub const ARGS: [&str; 3] = ["proxy", "--config", "/etc/chaperone/config/config.yaml"];
pub const CONFIG_DIR: &str = "/etc/chaperone/config";
pub const POLICY_DIR: &str = "/etc/chaperone/policy";
pub const TLS_DIR: &str = "/etc/chaperone/tls";
/// The distroless image's `nonroot` user.
pub const UID: i64 = 65532;

/// Volumes the injector adds. All start with `chaperone-` so they cannot be mistaken.
pub const VOLUME_API_ACCESS: &str = "chaperone-api-access";
pub const VOLUME_CONFIG: &str = "chaperone-config";
pub const VOLUME_POLICY: &str = "chaperone-policy";
pub const VOLUME_TLS: &str = "chaperone-tls";
pub const VOLUME_TMP: &str = "chaperone-tmp";
/// The proxy's own API credential when the pod has no `kube-api-access-*` volume.
pub const VOLUME_UPSTREAM_TOKEN: &str = "chaperone-upstream-token";
/// The admin port's name, which the collector's Prometheus scrape selects.
pub const ADMIN_PORT_NAME: &str = "chaperone-admin";

/// The proxy container. `sa_volume` is the volume holding the real service-account
/// token, mounted here and nowhere else.
/// `policy`: the ConfigMap the proxy's policy comes from. The proxy refuses to let its
/// callers change it, nor the ConfigMaps of its config and CA and its serving
/// certificate's Secret: their names are in its environment (`CHAPERONE_POLICY_CONFIGMAP`,
/// `CHAPERONE_CONFIG_CONFIGMAP`, `CHAPERONE_CA_CONFIGMAP`, `CHAPERONE_TLS_SECRET`).
pub fn container(config: &Config, sa_volume: &str, policy: &str) -> Container {
    let mounts = [
        (sa_volume, SA_MOUNT_PATH),
        (VOLUME_CONFIG, CONFIG_DIR),
        (VOLUME_POLICY, POLICY_DIR),
        (VOLUME_TLS, TLS_DIR),
    ];
    let mut volume_mounts: Vec<VolumeMount> = mounts
        .iter()
        .map(|(name, path)| VolumeMount {
            name: (*name).into(),
            mount_path: (*path).into(),
            read_only: Some(true),
            ..Default::default()
        })
        .collect();
    volume_mounts.push(VolumeMount {
        name: VOLUME_TMP.into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    });
    Container {
        name: CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        args: Some(ARGS.iter().map(|a| a.to_string()).collect()),
        // KUBERNETES_SERVICE_HOST/PORT stay the kubelet's: the proxy dials the real API server.
        env: Some(
            downward_env()
                .into_iter()
                .chain(
                    [
                        ("CHAPERONE_POLICY_CONFIGMAP", policy),
                        ("CHAPERONE_CONFIG_CONFIGMAP", &config.names.proxy_config_map),
                        ("CHAPERONE_CA_CONFIGMAP", &config.names.ca_config_map),
                        ("CHAPERONE_TLS_SECRET", &config.names.proxy_tls_secret),
                    ]
                    .map(|(name, value)| EnvVar {
                        name: name.into(),
                        value: Some(value.into()),
                        ..Default::default()
                    }),
                )
                .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: config.admin_port.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // A native sidecar: started before every other container, stopped after them.
        restart_policy: config.native_sidecar.then(|| "Always".into()),
        startup_probe: Some(probe(config, "/readyz", 1, 120)),
        readiness_probe: Some(probe(config, "/readyz", 5, 3)),
        liveness_probe: Some(probe(config, "/healthz", 10, 3)),
        resources: Some(resources(config)),
        security_context: Some(security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(volume_mounts),
        ..Default::default()
    }
}

fn downward_env() -> Vec<EnvVar> {
    [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_UID", "metadata.uid"),
        ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ("NODE_NAME", "spec.nodeName"),
    ]
    .iter()
    .map(|(name, field)| EnvVar {
        name: (*name).into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: (*field).into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .collect()
}

fn probe(config: &Config, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(config.admin_port.into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn resources(config: &Config) -> ResourceRequirements {
    let quantities = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect()
        })
    };
    ResourceRequirements {
        requests: quantities(&config.resources.requests),
        limits: quantities(&config.resources.limits),
        ..Default::default()
    }
}

fn security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(UID),
        run_as_group: Some(UID),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        // For 127.0.0.1:443. See `Config::unprivileged_port_sysctl` for why this alone
        // is not enough for a non-root process.
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(vec!["NET_BIND_SERVICE".into()]),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The volume app containers get in place of the service-account volume, at the same
/// path and with the same file names: a token only the proxy accepts, the chaperone CA
/// as `ca.crt`, and the namespace.
pub fn api_access_volume(config: &Config) -> Volume {
    projected(
        VOLUME_API_ACCESS,
        ServiceAccountTokenProjection {
            audience: Some(config.audience.clone()),
            expiration_seconds: Some(config.token_expiration_seconds),
            path: "token".into(),
        },
        &config.names.ca_config_map,
    )
}

/// The proxy's own credential for pods without a service-account volume: what the
/// ServiceAccount admission plugin would have added (API-server audience, cluster CA).
pub fn upstream_token_volume() -> Volume {
    projected(
        VOLUME_UPSTREAM_TOKEN,
        ServiceAccountTokenProjection {
            audience: None,
            expiration_seconds: Some(3607),
            path: "token".into(),
        },
        "kube-root-ca.crt",
    )
}

fn projected(name: &str, token: ServiceAccountTokenProjection, ca_config_map: &str) -> Volume {
    let sources = vec![
        VolumeProjection {
            service_account_token: Some(token),
            ..Default::default()
        },
        VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: ca_config_map.into(),
                items: Some(vec![key("ca.crt", "ca.crt")]),
                ..Default::default()
            }),
            ..Default::default()
        },
        VolumeProjection {
            downward_api: Some(DownwardAPIProjection {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "namespace".into(),
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: "metadata.namespace".into(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        },
    ];
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(sources),
        }),
        ..Default::default()
    }
}

/// The proxy's config, policy, serving certificate and scratch space, in that order.
pub fn proxy_volumes(config: &Config, policy: &str) -> Vec<Volume> {
    vec![
        Volume {
            name: VOLUME_CONFIG.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config.names.proxy_config_map.clone(),
                items: Some(vec![key("config.yaml", "config.yaml")]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_POLICY.into(),
            // Optional: a missing policy must not keep the pod from starting; the proxy
            // then denies everything with a Status that says so (fail closed).
            config_map: Some(ConfigMapVolumeSource {
                name: policy.into(),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_TLS.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(config.names.proxy_tls_secret.clone()),
                items: Some(vec![key("tls.crt", "tls.crt"), key("tls.key", "tls.key")]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_TMP.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("16Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

fn key(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        ..Default::default()
    }
}
