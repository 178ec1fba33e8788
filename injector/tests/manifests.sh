#!/usr/bin/env bash
# Renders the three kustomizations under manifests/ and validates every object offline
# against the Kubernetes OpenAPI schemas (strict: unknown fields are errors), then checks
# a sample AccessRequest against the CRD's own schema.
#
# Needs kubectl (for its built-in kustomize), and kubernetes-validate and cel-python
# from PyPI:
#   python3 -m venv .ci/cache/kv && .ci/cache/kv/bin/pip install 'kubernetes-validate==1.37.0' 'cel-python==0.5.0'
#   KUBERNETES_VALIDATE_VENV=.ci/cache/kv injector/tests/manifests.sh
# Environment: CHAPERONE_KUBECTL (default: kubectl on PATH), KUBERNETES_VALIDATE_VENV
# (default: kubernetes-validate and python3 on PATH), K8S_VERSION (default 1.33.0).
set -euo pipefail
cd "$(dirname "$0")/../.."

kubectl=${CHAPERONE_KUBECTL:-kubectl}
if [[ -n "${KUBERNETES_VALIDATE_VENV:-}" ]]; then
  validate="$KUBERNETES_VALIDATE_VENV/bin/kubernetes-validate"
  python="$KUBERNETES_VALIDATE_VENV/bin/python"
else
  validate=kubernetes-validate
  python=python3
fi
version=${K8S_VERSION:-1.33.0}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for k in base observability examples/mcp; do
  file="$out/${k//\//-}.yaml"
  echo "--- kustomize manifests/$k"
  # examples/mcp takes its policy from policies/, outside its own directory.
  "$kubectl" kustomize --load-restrictor LoadRestrictionsNone "manifests/$k" >"$file"
  echo "--- validate manifests/$k against Kubernetes $version ($(grep -c '^kind:' "$file") objects)"
  "$validate" --kubernetes-version "$version" --strict --quiet "$file"
done

echo "--- AccessRequest sample against the CRD schema"
"$python" - "$out/base.yaml" injector/tests/fixtures/accessrequest.yaml <<'PY'
import sys, yaml, jsonschema
crd = next(d for d in yaml.safe_load_all(open(sys.argv[1]))
           if d and d["kind"] == "CustomResourceDefinition")
version = next(v for v in crd["spec"]["versions"] if v["storage"])
schema = version["schema"]["openAPIV3Schema"]

def strict(s):
    # Structural schemas prune unknown fields; treat them as errors here, and drop the
    # Kubernetes extensions jsonschema does not know.
    s = {k: v for k, v in s.items() if not k.startswith("x-kubernetes-")}
    if s.get("type") == "object" and "properties" in s:
        s.setdefault("additionalProperties", False)
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
    if "items" in s:
        s["items"] = strict(s["items"])
    return s

sample = yaml.safe_load(open(sys.argv[2]))
jsonschema.validate(sample, strict(schema), format_checker=jsonschema.FormatChecker())
bad = dict(sample, status=dict(sample["status"], phase="Maybe"))
try:
    jsonschema.validate(bad, strict(schema))
    sys.exit("the CRD schema accepted phase: Maybe")
except jsonschema.ValidationError:
    pass
print("AccessRequest sample valid; a bad phase is rejected")
PY
echo "--- AccessRequest review rules (the ValidatingAdmissionPolicy's CEL) on their cases"
"$python" - "$out/base.yaml" injector/tests/fixtures/accessrequest-reviews.yaml <<'PY'
import sys, yaml, celpy
vap = next(d for d in yaml.safe_load_all(open(sys.argv[1]))
           if d and d["kind"] == "ValidatingAdmissionPolicy"
           and d["metadata"]["name"] == "chaperone-accessrequest-reviews")
assert any(d and d["kind"] == "ValidatingAdmissionPolicyBinding"
           and d["spec"]["policyName"] == vap["metadata"]["name"]
           and d["spec"]["validationActions"] == ["Deny"]
           for d in yaml.safe_load_all(open(sys.argv[1]))), "the policy is not bound to deny"
env = celpy.Environment()
def program(expr):
    return env.program(env.compile(expr))
variables = [(v["name"], program(v["expression"])) for v in vap["spec"]["variables"]]
validations = [(program(v["expression"]), v["message"]) for v in vap["spec"]["validations"]]

def refusals(case, base):
    def obj(status):
        o = {"metadata": {"name": "r", "namespace": "team-a"},
             "spec": {**base, **case.get("spec", {})}}
        if status is not None:
            o["status"] = status
        return o
    user = {"username": case["user"]}
    if case.get("groups"):
        user["groups"] = case["groups"]
    activation = {"object": obj(case["after"]), "oldObject": obj(case["before"]),
                  "request": {"userInfo": user, "operation": "UPDATE"}}
    context = {k: celpy.json_to_cel(v) for k, v in activation.items()}
    # Each variable sees those before it, as CEL values (not converted again).
    values = celpy.celtypes.MapType({})
    for name, prog in variables:
        try:
            values[celpy.celtypes.StringType(name)] = prog.evaluate({**context, "variables": values})
        except celpy.CELEvalError as e:
            return [f"variables.{name}: {e}"]
    out = []
    for prog, message in validations:
        try:
            ok = prog.evaluate({**context, "variables": values})
        except celpy.CELEvalError as e:
            ok = e
        # Anything but true refuses: false, or an error (failurePolicy: Fail).
        if not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
            out.append(message if isinstance(ok, celpy.celtypes.BoolType) else f"{message} (error: {ok})")
    return out

fixture = yaml.safe_load(open(sys.argv[2]))
failed = 0
for case in fixture["cases"]:
    got = refusals(case, fixture["spec"])
    want = case.get("refused")
    if want is None and got:
        failed += 1
        print(f"FAIL {case['name']}: refused: {got}")
    elif want is not None and not any(want in m for m in got):
        failed += 1
        print(f"FAIL {case['name']}: wanted a refusal with {want!r}, got {got or 'allowed'}")
if failed:
    sys.exit(f"{failed} of {len(fixture['cases'])} review cases failed")
print(f"{len(fixture['cases'])} review cases: the allowed ones pass, the others are refused as expected")
PY
echo "--- the injector's writes (its ValidatingAdmissionPolicy's CEL) on cases"
"$python" - "$out/base.yaml" <<'PY'
import sys, yaml, celpy
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
vap = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"
           and d["metadata"]["name"] == "chaperone-injector-writes")
assert any(d["kind"] == "ValidatingAdmissionPolicyBinding"
           and d["spec"]["policyName"] == vap["metadata"]["name"]
           and d["spec"]["validationActions"] == ["Deny"] for d in docs), "not bound to deny"
injector = next(d for d in docs if d["kind"] == "ServiceAccount"
                and d["metadata"]["name"] == "chaperone-injector")
injector = f"system:serviceaccount:{injector['metadata']['namespace']}:chaperone-injector"
env = celpy.Environment()
program = lambda e: env.program(env.compile(e))
matches = [program(c["expression"]) for c in vap["spec"]["matchConditions"]]
validations = [(program(v["expression"]), v["message"]) for v in vap["spec"]["validations"]]
def refusals(user, secret):
    ctx = {k: celpy.json_to_cel(v) for k, v in
           {"object": secret, "request": {"userInfo": {"username": user}}}.items()}
    if not all(bool(m.evaluate(ctx)) for m in matches):
        return []
    out = []
    for prog, message in validations:
        try:
            ok = prog.evaluate(ctx)
        except celpy.CELEvalError as e:
            ok = e
        if not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
            out.append(message)
    return out
tls = {"metadata": {"name": "chaperone-proxy-tls"}, "type": "kubernetes.io/tls"}
token = {"metadata": {"name": "chaperone-proxy-tls",
                      "annotations": {"kubernetes.io/service-account.name": "admin"}},
         "type": "kubernetes.io/service-account-token"}
cases = [
    ("the injector writes a certificate", injector, tls, None),
    ("the injector writes a service-account token", injector, token, "only kubernetes.io/tls"),
    ("the injector writes an Opaque Secret", injector, {"metadata": {"name": "x"}, "type": "Opaque"}, "only kubernetes.io/tls"),
    ("the injector writes a Secret with no type", injector, {"metadata": {"name": "x"}}, "only kubernetes.io/tls"),
    ("the injector names a service account on a certificate", injector,
     dict(tls, metadata={"name": "x", "annotations": {"kubernetes.io/service-account.name": "admin"}}),
     "never writes a Secret that names a service account"),
    ("anyone else's Secret is not this policy's", "alice", token, None),
]
failed = 0
for name, user, secret, want in cases:
    got = refusals(user, secret)
    if (want is None and got) or (want is not None and not any(want in m for m in got)):
        failed += 1
        print(f"FAIL {name}: wanted {want or 'allowed'}, got {got or 'allowed'}")
if failed:
    sys.exit(f"{failed} of {len(cases)} injector-writes cases failed")
print(f"{len(cases)} injector-writes cases: as expected")
PY
echo "--- manifests ok"
