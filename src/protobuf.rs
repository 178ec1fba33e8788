//! A small decoder for Kubernetes protobuf request bodies.
//!
//! kubectl 1.32+ sends protobuf (not JSON) from its typed clients, e.g. `kubectl create
//! configmap|secret|namespace|serviceaccount|deployment|service|role|rolebinding|...`
//! and `kubectl auth can-i|whoami`, and client-go never falls back to JSON for those.
//! The sandbox decodes the objects it stores; the proxy, the self reviews it answers.
//! Responses stay JSON (kubectl accepts it). This decodes the `k8s\0` envelope (`runtime.Unknown`) and the objects
//! those commands build, following the field numbers of k8s.io/api's
//! `generated.proto`. Fields outside the schema below are skipped. Like Go's JSON
//! `omitempty`, empty strings, zero numbers, `false` and empty objects are dropped
//! (gogo-protobuf writes them all).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use base64::Engine as _;

/// `Message: number name type, ...`; types: `s` string, `b` bytes (base64 in JSON),
/// `i` integer, `bool`, `Time`, `IntOrString`, `Quantity`, a message name, `[]T`
/// repeated, `map<T>` a string-keyed map.
const SCHEMA: &str = "
Unknown: 1 typeMeta TypeMeta, 2 raw b
TypeMeta: 1 apiVersion s, 2 kind s
ObjectMeta: 1 name s, 2 generateName s, 3 namespace s, 5 uid s, 6 resourceVersion s, 7 generation i, 8 creationTimestamp Time, 11 labels map<s>, 12 annotations map<s>, 13 ownerReferences []OwnerReference, 14 finalizers []s
OwnerReference: 1 kind s, 3 name s, 4 uid s, 5 apiVersion s, 6 controller bool, 7 blockOwnerDeletion bool
LabelSelector: 1 matchLabels map<s>, 2 matchExpressions []LabelSelectorRequirement
LabelSelectorRequirement: 1 key s, 2 operator s, 3 values []s
ConfigMap: 1 metadata ObjectMeta, 2 data map<s>, 3 binaryData map<b>, 4 immutable bool
Secret: 1 metadata ObjectMeta, 2 data map<b>, 3 type s, 4 stringData map<s>, 5 immutable bool
Namespace: 1 metadata ObjectMeta, 2 spec NamespaceSpec
NamespaceSpec: 1 finalizers []s
ServiceAccount: 1 metadata ObjectMeta, 2 secrets []ObjectReference, 3 imagePullSecrets []LocalObjectReference, 4 automountServiceAccountToken bool
ObjectReference: 1 kind s, 2 namespace s, 3 name s, 4 uid s, 5 apiVersion s, 6 resourceVersion s, 7 fieldPath s
LocalObjectReference: 1 name s
Pod: 1 metadata ObjectMeta, 2 spec PodSpec
PodTemplateSpec: 1 metadata ObjectMeta, 2 spec PodSpec
PodSpec: 2 containers []Container, 3 restartPolicy s, 4 terminationGracePeriodSeconds i, 6 dnsPolicy s, 7 nodeSelector map<s>, 8 serviceAccountName s, 10 nodeName s, 11 hostNetwork bool, 15 imagePullSecrets []LocalObjectReference, 19 schedulerName s, 20 initContainers []Container
Container: 1 name s, 2 image s, 3 command []s, 4 args []s, 5 workingDir s, 6 ports []ContainerPort, 7 env []EnvVar, 8 resources ResourceRequirements, 9 volumeMounts []VolumeMount, 13 terminationMessagePath s, 14 imagePullPolicy s, 16 stdin bool, 17 stdinOnce bool, 18 tty bool, 20 terminationMessagePolicy s
ContainerPort: 1 name s, 2 hostPort i, 3 containerPort i, 4 protocol s, 5 hostIP s
EnvVar: 1 name s, 2 value s
ResourceRequirements: 1 limits map<Quantity>, 2 requests map<Quantity>
VolumeMount: 1 name s, 2 readOnly bool, 3 mountPath s, 4 subPath s
Service: 1 metadata ObjectMeta, 2 spec ServiceSpec
ServiceSpec: 1 ports []ServicePort, 2 selector map<s>, 3 clusterIP s, 4 type s, 5 externalIPs []s, 7 sessionAffinity s, 10 externalName s, 18 clusterIPs []s
ServicePort: 1 name s, 2 protocol s, 3 port i, 4 targetPort IntOrString, 5 nodePort i, 6 appProtocol s
Deployment: 1 metadata ObjectMeta, 2 spec DeploymentSpec
DeploymentSpec: 1 replicas i, 2 selector LabelSelector, 3 template PodTemplateSpec, 4 strategy DeploymentStrategy, 5 minReadySeconds i, 6 revisionHistoryLimit i, 7 paused bool, 9 progressDeadlineSeconds i
DeploymentStrategy: 1 type s, 2 rollingUpdate RollingUpdateDeployment
RollingUpdateDeployment: 1 maxUnavailable IntOrString, 2 maxSurge IntOrString
StatefulSet: 1 metadata ObjectMeta, 2 spec StatefulSetSpec
StatefulSetSpec: 1 replicas i, 2 selector LabelSelector, 3 template PodTemplateSpec, 5 serviceName s
ReplicaSet: 1 metadata ObjectMeta, 2 spec ReplicaSetSpec
ReplicaSetSpec: 1 replicas i, 2 selector LabelSelector, 3 template PodTemplateSpec, 4 minReadySeconds i
DaemonSet: 1 metadata ObjectMeta, 2 spec DaemonSetSpec
DaemonSetSpec: 1 selector LabelSelector, 2 template PodTemplateSpec
Job: 1 metadata ObjectMeta, 2 spec JobSpec
JobSpec: 1 parallelism i, 2 completions i, 3 activeDeadlineSeconds i, 4 selector LabelSelector, 5 manualSelector bool, 6 template PodTemplateSpec, 7 backoffLimit i, 8 ttlSecondsAfterFinished i
CronJob: 1 metadata ObjectMeta, 2 spec CronJobSpec
CronJobSpec: 1 schedule s, 3 concurrencyPolicy s, 4 suspend bool, 5 jobTemplate JobTemplateSpec, 8 timeZone s
JobTemplateSpec: 1 metadata ObjectMeta, 2 spec JobSpec
ReplicationController: 1 metadata ObjectMeta, 2 spec ReplicationControllerSpec
ReplicationControllerSpec: 1 replicas i, 2 selector map<s>, 3 template PodTemplateSpec, 4 minReadySeconds i
PodTemplate: 1 metadata ObjectMeta, 2 template PodTemplateSpec
Role: 1 metadata ObjectMeta, 2 rules []PolicyRule
ClusterRole: 1 metadata ObjectMeta, 2 rules []PolicyRule
PolicyRule: 1 verbs []s, 2 apiGroups []s, 3 resources []s, 4 resourceNames []s, 5 nonResourceURLs []s
RoleBinding: 1 metadata ObjectMeta, 2 subjects []Subject, 3 roleRef RoleRef
ClusterRoleBinding: 1 metadata ObjectMeta, 2 subjects []Subject, 3 roleRef RoleRef
Subject: 1 kind s, 2 apiGroup s, 3 name s, 4 namespace s
RoleRef: 1 apiGroup s, 2 kind s, 3 name s
SelfSubjectAccessReview: 1 metadata ObjectMeta, 2 spec SelfSubjectAccessReviewSpec
SelfSubjectAccessReviewSpec: 1 resourceAttributes ResourceAttributes, 2 nonResourceAttributes NonResourceAttributes
ResourceAttributes: 1 namespace s, 2 verb s, 3 group s, 4 version s, 5 resource s, 6 subresource s, 7 name s
NonResourceAttributes: 1 path s, 2 verb s
SelfSubjectRulesReview: 1 metadata ObjectMeta, 2 spec SelfSubjectRulesReviewSpec
SelfSubjectRulesReviewSpec: 1 namespace s
SelfSubjectReview: 1 metadata ObjectMeta
";

/// Kinds a request body may carry (the top-level messages above).
const TOP_LEVEL: [&str; 21] = [
    "ConfigMap",
    "Secret",
    "Namespace",
    "ServiceAccount",
    "Pod",
    "Service",
    "Deployment",
    "StatefulSet",
    "ReplicaSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicationController",
    "PodTemplate",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "SelfSubjectAccessReview",
    "SelfSubjectRulesReview",
    "SelfSubjectReview",
];

/// Nesting bound: Kubernetes objects are far shallower; this stops hostile input.
const MAX_DEPTH: usize = 32;

struct Field {
    name: &'static str,
    ty: &'static str,
    repeated: bool,
}

type Schema = HashMap<&'static str, HashMap<u32, Field>>;

fn schema() -> &'static Schema {
    static SCHEMA_MAP: OnceLock<Schema> = OnceLock::new();
    SCHEMA_MAP.get_or_init(|| {
        let mut out = HashMap::new();
        for line in SCHEMA.lines().filter(|l| !l.trim().is_empty()) {
            let Some((msg, fields)) = line.split_once(':') else {
                continue;
            };
            let mut map = HashMap::new();
            for f in fields.split(',') {
                let parts: Vec<&'static str> = f.split_whitespace().collect();
                if let [num, name, ty] = parts[..] {
                    if let Ok(n) = num.parse::<u32>() {
                        let (ty, repeated) =
                            ty.strip_prefix("[]").map_or((ty, false), |t| (t, true));
                        map.insert(n, Field { name, ty, repeated });
                    }
                }
            }
            out.insert(msg.trim(), map);
        }
        out
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.advance(8),
            2 => self.bytes().map(drop),
            5 => self.advance(4),
            w => Err(format!("unsupported wire type {w}")),
        }
    }

    /// Skips a field and says whether it held its zero value (0, or no bytes): what
    /// gogo-protobuf writes for a field left unset.
    fn skip_is_zero(&mut self, wire: u64) -> Result<bool, String> {
        let start = self.pos;
        Ok(match wire {
            0 => self.varint()? == 0,
            2 => self.bytes()?.is_empty(),
            1 | 5 => {
                self.skip(wire)?;
                self.buf[start..self.pos].iter().all(|b| *b == 0)
            }
            w => return Err(format!("unsupported wire type {w}")),
        })
    }

    fn advance(&mut self, n: usize) -> Result<(), String> {
        if self.pos + n > self.buf.len() {
            return Err("truncated field".into());
        }
        self.pos += n;
        Ok(())
    }
}

/// Decodes one field value of type `ty`; `None` means "leave the field out".
fn value(
    ty: &str,
    wire: u64,
    r: &mut Reader<'_>,
    depth: usize,
    strict: bool,
) -> Result<Option<Value>, String> {
    let want = |w: u64| {
        if wire == w {
            Ok(())
        } else {
            Err(format!("field of type {ty} has wire type {wire}"))
        }
    };
    Ok(Some(match ty {
        "s" => {
            want(2)?;
            json!(String::from_utf8_lossy(r.bytes()?))
        }
        "b" => {
            want(2)?;
            json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?))
        }
        // int32 fields are sign-extended to 64 bits on the wire.
        "i" => {
            want(0)?;
            json!(r.varint()? as i64)
        }
        "bool" => {
            want(0)?;
            json!(r.varint()? != 0)
        }
        "Time" => {
            want(2)?;
            let inner = message("Time", r.bytes()?, depth + 1, strict)?;
            match inner.get("seconds").and_then(Value::as_i64) {
                Some(s) if s != 0 => json!(time::OffsetDateTime::from_unix_timestamp(s)
                    .ok()
                    .and_then(|t| t
                        .format(&time::format_description::well_known::Rfc3339)
                        .ok())
                    .unwrap_or_default()),
                _ => return Ok(None),
            }
        }
        "IntOrString" => {
            want(2)?;
            let inner = message("IntOrString", r.bytes()?, depth + 1, strict)?;
            if inner.get("type").and_then(Value::as_i64) == Some(1) {
                inner.get("strVal").cloned().unwrap_or(json!(""))
            } else {
                inner.get("intVal").cloned().unwrap_or(json!(0))
            }
        }
        "Quantity" => {
            want(2)?;
            message("Quantity", r.bytes()?, depth + 1, strict)?
                .get("string")
                .cloned()
                .unwrap_or(json!("0"))
        }
        _ => {
            want(2)?;
            json!(message(ty, r.bytes()?, depth + 1, strict)?)
        }
    }))
}

/// The helper messages that are not in the schema text.
fn builtin_fields(msg: &str, n: u32) -> Option<(&'static str, &'static str)> {
    Some(match (msg, n) {
        ("Time", 1) => ("seconds", "i"),
        ("Time", 2) => ("nanos", "i"),
        ("IntOrString", 1) => ("type", "i"),
        ("IntOrString", 2) => ("intVal", "i"),
        ("IntOrString", 3) => ("strVal", "s"),
        ("Quantity", 1) => ("string", "s"),
        _ => return None,
    })
}

fn message(msg: &str, buf: &[u8], depth: usize, strict: bool) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("message nested too deeply".into());
    }
    let fields = schema().get(msg);
    let mut out = Map::new();
    // The singular fields read so far. The API server's decoder reads a field that comes
    // again into the same place: a message is merged with the first one, a scalar
    // replaced even by its zero value. No encoder writes a field twice, and decoded
    // here it would show something other than what is applied: refused.
    let mut seen: Vec<u32> = Vec::new();
    let mut r = Reader { buf, pos: 0 };
    while r.pos < buf.len() {
        let key = r.varint()?;
        let (n, wire) = (
            u32::try_from(key >> 3).map_err(|_| "bad field number")?,
            key & 7,
        );
        let (name, ty, repeated) = match (fields.and_then(|f| f.get(&n)), builtin_fields(msg, n)) {
            (Some(f), _) => (f.name, f.ty, f.repeated),
            (None, Some((name, ty))) => (name, ty, false),
            // A field set to anything but its zero value would be applied by the API
            // server and not shown: refused.
            (None, None) if strict => {
                if !r.skip_is_zero(wire)? {
                    return Err(format!(
                        "{msg} sets a field (number {n}) that chaperone does not decode"
                    ));
                }
                continue;
            }
            (None, None) => {
                r.skip(wire)?;
                continue;
            }
        };
        let map = ty.strip_prefix("map<").and_then(|t| t.strip_suffix('>'));
        if !repeated && map.is_none() {
            if seen.contains(&n) {
                return Err(format!(
                    "{msg} sets its field {name} (number {n}) twice; each field comes once"
                ));
            }
            seen.push(n);
        }
        if let Some(inner) = map {
            if wire != 2 {
                return Err(format!("map field {name} has wire type {wire}"));
            }
            let mut entry = Reader {
                buf: r.bytes()?,
                pos: 0,
            };
            let (mut k, mut v) = (String::new(), None);
            while entry.pos < entry.buf.len() {
                let ekey = entry.varint()?;
                match ekey >> 3 {
                    1 => k = String::from_utf8_lossy(entry.bytes()?).into_owned(),
                    2 => v = value(inner, ekey & 7, &mut entry, depth, strict)?,
                    // The API server's decoder reads a field number as 32 bits
                    // (2^32 + 1 is its key) and skips the rest: no encoder writes
                    // another field in an entry, and one here may be read as a key.
                    n => {
                        return Err(format!("a {name} entry has a field numbered {n}"));
                    }
                }
            }
            let map = out.entry(name).or_insert_with(|| json!({}));
            map[k] = v.unwrap_or_else(|| {
                if inner == "s" || inner == "b" {
                    json!("")
                } else {
                    Value::Null
                }
            });
            continue;
        }
        let Some(v) = value(ty, wire, &mut r, depth, strict)? else {
            continue;
        };
        if repeated {
            if let Value::Array(a) = out.entry(name).or_insert_with(|| json!([])) {
                a.push(v);
            }
        } else if !omit(name, &v) {
            out.insert(name.to_string(), v);
        }
    }
    Ok(Value::Object(out))
}

/// Go's `omitempty`, roughly: what gogo-protobuf writes for unset non-pointer fields.
fn omit(name: &str, v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        // A 0 replica count is a real value (it is a pointer in Go).
        Value::Number(n) => n.as_i64() == Some(0) && name != "replicas",
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Decodes a `k8s\0`-prefixed protobuf body into the JSON object it stands for;
/// fields outside the schema are skipped.
pub(crate) fn decode(body: &[u8]) -> Result<Value, String> {
    decode_with(body, false)
}

/// As [`decode`], but a field outside the schema is an error: for a body shown to a
/// reviewer, which must show everything the API server would apply.
pub(crate) fn decode_strict(body: &[u8]) -> Result<Value, String> {
    decode_with(body, true)
}

fn decode_with(body: &[u8], strict: bool) -> Result<Value, String> {
    let raw = body
        .strip_prefix(b"k8s\0")
        .ok_or("the body lacks the k8s protobuf envelope")?;
    let unknown = message("Unknown", raw, 0, strict)?;
    let s = |p: &str| {
        unknown
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (api_version, kind) = (s("/typeMeta/apiVersion"), s("/typeMeta/kind"));
    if !TOP_LEVEL.contains(&kind.as_str()) {
        return Err(format!(
            "chaperone decodes protobuf only for {}; not {kind:?} (send JSON instead)",
            TOP_LEVEL.join(", ")
        ));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(s("/raw"))
        .map_err(|_| "bad raw payload")?;
    let mut obj = message(&kind, &payload, 0, strict)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn map_entry(n: u32, k: &str, v: &[u8]) -> Vec<u8> {
        field(n, &[field(1, k.as_bytes()), field(2, v)].concat())
    }

    /// The workload kinds whose pod templates chaperone screens decode as the API server
    /// reads them (`kubectl create job|cronjob` send protobuf): a template's labels and
    /// `hostNetwork` are where the screen looks for them.
    #[test]
    fn workloads_decode_down_to_their_pod_template() {
        let pod_spec = [
            field(2, &[field(1, b"c"), field(2, b"busybox")].concat()),
            vec![(11 << 3) as u8, 1], // hostNetwork: true
        ]
        .concat();
        let labels = map_entry(11, "chaperone.dev/inject", b"false");
        let template = [field(1, &labels), field(2, &pod_spec)].concat();
        let job_spec = field(6, &template);
        let cases: [(&str, &str, Vec<u8>, &str); 7] = [
            ("batch/v1", "Job", field(2, &job_spec), "/spec/template"),
            (
                "batch/v1",
                "CronJob",
                field(2, &field(5, &field(2, &job_spec))),
                "/spec/jobTemplate/spec/template",
            ),
            (
                "apps/v1",
                "StatefulSet",
                field(2, &field(3, &template)),
                "/spec/template",
            ),
            (
                "apps/v1",
                "ReplicaSet",
                field(2, &field(3, &template)),
                "/spec/template",
            ),
            (
                "apps/v1",
                "DaemonSet",
                field(2, &field(2, &template)),
                "/spec/template",
            ),
            (
                "v1",
                "ReplicationController",
                field(2, &field(3, &template)),
                "/spec/template",
            ),
            ("v1", "PodTemplate", field(2, &template), "/template"),
        ];
        for (api_version, kind, object, at) in cases {
            let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
            let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &object)].concat();
            let v = decode(&body).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let t = v.pointer(at).unwrap_or_else(|| panic!("{kind}: {v}"));
            assert_eq!(
                t["metadata"]["labels"]["chaperone.dev/inject"], "false",
                "{kind}: {v}"
            );
            assert_eq!(t["spec"]["hostNetwork"], true, "{kind}: {v}");
            assert_eq!(
                t["spec"]["containers"][0]["image"], "busybox",
                "{kind}: {v}"
            );
        }
    }

    /// The API server reads a field number as 32 bits: in a label's entry, field
    /// 2^32 + 1 is its key. An entry with any field but its key and value is refused,
    /// however it is read, and the key's bytes are found whatever follows them.
    #[test]
    fn a_map_entry_with_another_field_is_refused() {
        // Field 2^32 + 1, length-delimited: `(2^32 + 1) << 3 | 2` as a varint.
        let key_as_read = [0x8a, 0x80, 0x80, 0x80, 0x80, 0x01];
        let entry = [
            &key_as_read[..],
            &[20],
            b"chaperone.dev/inject",
            // `ed-version`, as bytes of other fields: not the injector's own key.
            b"ed-version",
            &field(2, b"false"),
        ]
        .concat();
        let meta = field(11, &entry);
        let type_meta = [field(1, b"v1"), field(2, b"Pod")].concat();
        let body = [
            b"k8s\0".to_vec(),
            field(1, &type_meta),
            field(2, &field(1, &meta)),
        ]
        .concat();
        for decoded in [decode(&body), decode_strict(&body)] {
            let err = decoded.expect_err("an entry field numbered 2^32 + 1");
            assert!(err.contains("labels entry has a field numbered"), "{err}");
        }
        assert_eq!(
            crate::policy::injection_key_in_bytes(&body),
            Some("chaperone.dev/inject")
        );
    }

    #[test]
    fn decodes_a_configmap_like_kubectl_create() {
        // ObjectMeta{name: "made", generateName: "", creationTimestamp: {}} as gogo writes it.
        let meta = [field(1, b"made"), field(2, b""), field(8, b"")].concat();
        let cm = [
            field(1, &meta),
            map_entry(2, "x", b"y"),
            map_entry(3, "bin", b"\x00\x01"),
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &cm)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "made"},
                   "data": {"x": "y"}, "binaryData": {"bin": "AAE="}})
        );
    }

    /// Shown to a reviewer, a body must hide nothing the API server would apply: a set
    /// field outside the schema (a container's securityContext, say) is refused, while
    /// the empty ones gogo-protobuf writes for every unset field are not.
    #[test]
    fn strict_decoding_refuses_a_set_field_it_does_not_know() {
        let type_meta = [field(1, b"v1"), field(2, b"Pod")].concat();
        let envelope = |pod: &[u8]| {
            // Unknown{typeMeta, raw, contentEncoding: "", contentType: ""}
            [
                b"k8s\0".to_vec(),
                field(1, &type_meta),
                field(2, pod),
                field(3, b""),
                field(4, b""),
            ]
            .concat()
        };
        // ObjectMeta{name: "p", selfLink: ""}: the empty field 4 is fine.
        let meta = [field(1, b"p"), field(4, b"")].concat();
        let container = |extra: &[u8]| [field(1, b"c"), field(2, b"img"), extra.to_vec()].concat();
        let plain = [field(1, &meta), field(2, &field(2, &container(b"")))].concat();
        let v = decode_strict(&envelope(&plain)).unwrap();
        assert_eq!(v["spec"]["containers"][0]["image"], "img");
        // securityContext (field 15 of Container) set: privileged, hidden from the schema.
        let privileged = field(15, &[0x08, 0x01]);
        let hidden = [
            field(1, &meta),
            field(2, &field(2, &container(&privileged))),
        ]
        .concat();
        let e = decode_strict(&envelope(&hidden)).unwrap_err();
        assert!(e.contains("Container sets a field (number 15)"), "{e}");
        // The sandbox's lenient decoding skips it.
        assert!(decode(&envelope(&hidden)).is_ok());
        // A map entry with another field is refused, leniently too (see
        // `a_map_entry_with_another_field_is_refused`).
        let odd_entry = field(
            2,
            &[field(1, b"k"), field(2, b"v"), field(3, b"x")].concat(),
        );
        let cm = [field(1, &meta), odd_entry].concat();
        let cm_type = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &cm_type), field(2, &cm)].concat();
        for decoded in [decode_strict(&body), decode(&body)] {
            assert!(decoded
                .unwrap_err()
                .contains("data entry has a field numbered 3"));
        }
    }

    /// The API server's decoder merges a message that comes twice and lets a later
    /// scalar replace an earlier one, even with its zero value: decoded here, the
    /// first `roleRef` would be hidden behind the second. Every repeat is refused.
    #[test]
    fn a_field_that_comes_twice_is_refused() {
        let envelope = |kind: &[u8], object: &[u8]| {
            let type_meta = [field(1, b"rbac.authorization.k8s.io/v1"), field(2, kind)].concat();
            [b"k8s\0".to_vec(), field(1, &type_meta), field(2, object)].concat()
        };
        let role_ref = |name: &[u8]| {
            [
                field(1, b"rbac.authorization.k8s.io"),
                field(2, b"ClusterRole"),
                field(3, name),
            ]
            .concat()
        };
        let meta = field(1, &field(1, b"b"));
        // One roleRef: decoded.
        let once = [meta.clone(), field(3, &role_ref(b"view"))].concat();
        let v = decode_strict(&envelope(b"RoleBinding", &once)).unwrap();
        assert_eq!(v["roleRef"]["name"], "view");
        // cluster-admin, then a second roleRef without a name: the API server applies
        // cluster-admin; a last-wins decoding would show a roleRef with no name.
        let twice = [
            meta.clone(),
            field(3, &role_ref(b"cluster-admin")),
            field(3, &field(1, b"rbac.authorization.k8s.io")),
        ]
        .concat();
        // A scalar twice inside one message: "cluster-admin", then "" (gogo's zero).
        let scalar = [
            meta.clone(),
            field(3, &[role_ref(b"cluster-admin"), field(3, b"")].concat()),
        ]
        .concat();
        // Two Pod specs: the first's containers are kept and the second's appended.
        let spec = |image: &[u8]| field(2, &field(2, &[field(1, b"c"), field(2, image)].concat()));
        let pods = [meta.clone(), spec(b"evil"), spec(b"benign")].concat();
        for (kind, body, want) in [
            (
                &b"RoleBinding"[..],
                &twice,
                "RoleBinding sets its field roleRef (number 3) twice",
            ),
            (
                b"RoleBinding",
                &scalar,
                "RoleRef sets its field name (number 3) twice",
            ),
            (b"Pod", &pods, "Pod sets its field spec (number 2) twice"),
        ] {
            for strict in [true, false] {
                let e = decode_with(&envelope(kind, body), strict).unwrap_err();
                assert!(e.contains(want), "{e}");
            }
        }
        // Repeated fields and map entries come as often as they like.
        let subjects = [
            meta,
            field(2, &[field(1, b"User"), field(3, b"a")].concat()),
            field(2, &[field(1, b"User"), field(3, b"b")].concat()),
            field(3, &role_ref(b"view")),
        ]
        .concat();
        let v = decode_strict(&envelope(b"RoleBinding", &subjects)).unwrap();
        assert_eq!(v["subjects"][1]["name"], "b");
    }

    #[test]
    fn decodes_nested_lists_and_int_or_string() {
        // Service{spec: {ports: [{port: 80, targetPort: intVal 8080}], type: "ClusterIP"}}
        let target = [vec![0x10, 0x90, 0x3f]].concat(); // field 2 varint 8080
        let port = [vec![0x18, 80], field(4, &target)].concat();
        let spec = [field(1, &port), field(4, b"ClusterIP")].concat();
        let svc = [field(1, &field(1, b"s")), field(2, &spec)].concat();
        let v = message("Service", &svc, 0, false).unwrap();
        assert_eq!(
            v["spec"]["ports"],
            json!([{"port": 80, "targetPort": 8080}])
        );
        assert_eq!(v["spec"]["type"], "ClusterIP");
        assert!(
            decode(b"k8s\0\x0a\x02\x12\x00").is_err(),
            "unknown kinds are refused"
        );
        assert!(
            message("ConfigMap", &[0x0a, 0x05, 0x01], 0, false).is_err(),
            "truncated input is an error"
        );
    }
}
