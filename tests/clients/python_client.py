"""Drives the official Python `kubernetes` client through chaperone, configured as
inside a pod (see in_cluster.py).

Usage: python_client.py HOST PORT TOKEN_FILE CA_FILE
Prints one JSON object describing what the client saw.
"""
import json

from kubernetes import client, watch

from in_cluster import load

load()

core = client.CoreV1Api()
out = {}
out["namespaces"] = sorted(n.metadata.name for n in core.list_namespace().items)
pods = core.list_namespaced_pod("default")
out["pods"] = sorted(p.metadata.name for p in pods.items)

cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="from-python"), data={"k": "v"})
core.create_namespaced_config_map("default", cm)
out["read_back"] = core.read_namespaced_config_map("from-python", "default").data

# A watch from the list's resourceVersion sees the next change, streamed.
rv = core.list_namespaced_config_map("default").metadata.resource_version
core.patch_namespaced_config_map("from-python", "default", {"data": {"k": "v2"}})
events = []
w = watch.Watch()
for event in w.stream(core.list_namespaced_config_map, "default",
                      resource_version=rv, timeout_seconds=10):
    events.append([event["type"], event["object"].metadata.name, event["object"].data])
    if event["object"].metadata.name == "from-python":
        w.stop()
out["watch"] = events

try:
    core.read_namespaced_pod("no-such-pod", "default")
    out["missing"] = None
except client.exceptions.ApiException as e:
    out["missing"] = {"status": e.status, "reason": json.loads(e.body).get("reason")}

print(json.dumps(out))
