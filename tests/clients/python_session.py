"""A short session of the official Python `kubernetes` client through chaperone,
configured as in a pod (see in_cluster.py): list pods, read a
Secret, try to delete a pod, create a RoleBinding (which the policy holds for a
reviewer; the call returns once approved).

Usage: python_session.py HOST PORT TOKEN_FILE CA_FILE
Prints one JSON object describing what the client saw.
"""
import json

from kubernetes import client

from in_cluster import load

load()

core = client.CoreV1Api()
rbac = client.RbacAuthorizationV1Api()
out = {}
out["pods"] = sorted(p.metadata.name for p in core.list_namespaced_pod("default").items)
out["password"] = core.read_namespaced_secret("db-credentials", "default").data["password"]
try:
    core.delete_namespaced_pod("nginx", "default")
    out["delete"] = None
except client.exceptions.ApiException as e:
    out["delete"] = {"status": e.status, "message": json.loads(e.body).get("message")}
binding = client.V1RoleBinding(
    metadata=client.V1ObjectMeta(name="agent-admin"),
    role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="admin"),
    subjects=[client.RbacV1Subject(api_group="rbac.authorization.k8s.io", kind="User", name="agent")],
)
created = rbac.create_namespaced_role_binding("default", binding, _request_timeout=60)
out["created"] = created.metadata.name
print(json.dumps(out))
