"""Reads the edge manifests as a kubectl JSON List on stdin and writes them back with
Warren's DaemonSet split in two, one per e2e node:

- `warren` (the manifest as shipped) gets a node selector for node 1;
- `warren-node2`, a copy for node 2, whose kubelet root dir and Warren state directory are
  different paths on this shared file system: every /var/lib/kubelet becomes node 2's
  kubelet dir (host paths, mount paths and arguments alike, since the kubelet hands Warren
  host paths), and the /var/lib/warren host paths become node 2's state directory (the
  paths inside the container stay).

usage: node2-daemonset.py NODE1 NODE2 NODE2_KUBELET_DIR NODE2_STATE_DIR
"""

import copy
import json
import re
import sys

node1, node2, kubelet_dir, state_dir = sys.argv[1:5]
objects = json.load(sys.stdin)
items = objects["items"] if objects.get("kind") == "List" else [objects]


def kubelet_paths(text):
    return re.sub(r"/var/lib/kubelet(?=/|$)", kubelet_dir, text)


out = []
for obj in items:
    out.append(obj)
    if obj["kind"] != "DaemonSet" or obj["metadata"]["name"] != "warren":
        continue
    obj["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node1}

    twin = copy.deepcopy(obj)
    twin["metadata"]["name"] = "warren-node2"
    component = "edge-node2"  # the selectors of the two DaemonSets must not overlap
    twin["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = component
    twin["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = component
    pod = twin["spec"]["template"]["spec"]
    pod["nodeSelector"] = {"kubernetes.io/hostname": node2}
    for container in pod["containers"]:
        container["args"] = [kubelet_paths(a) for a in container.get("args", [])]
        for mount in container.get("volumeMounts", []):
            mount["mountPath"] = kubelet_paths(mount["mountPath"])
    for volume in pod["volumes"]:
        host = volume.get("hostPath")
        if host is None:
            continue
        path = kubelet_paths(host["path"])
        path = re.sub(r"^/var/lib/warren(?=/|$)", state_dir, path)
        host["path"] = path
    out.append(twin)

json.dump({"apiVersion": "v1", "kind": "List", "items": out}, sys.stdout)
