"""Reads Warren's manifests as a kubectl JSON List on stdin and writes them back with
Warren's node DaemonSet (`warren` in the edge mode, `warren-node` in the standard mode)
split in two, one per e2e node:

- the DaemonSet as shipped gets a node selector for node 1;
- `<name>-node2`, a copy for node 2, whose kubelet root dir and Warren state directory are
  different paths on this shared file system: every /var/lib/kubelet in the containers
  becomes node 2's kubelet dir (arguments, commands, mount paths, probes: the kubelet
  hands Warren host paths), and so do the hostPath volumes, whose /var/lib/warren also
  becomes node 2's state directory (the paths inside the container stay).

usage: node2-daemonset.py NODE1 NODE2 NODE2_KUBELET_DIR NODE2_STATE_DIR
"""

import copy
import json
import re
import sys

node1, node2, kubelet_dir, state_dir = sys.argv[1:5]
objects = json.load(sys.stdin)
items = objects["items"] if objects.get("kind") == "List" else [objects]


NODE_DAEMONSETS = {"warren", "warren-node"}


def kubelet_paths(text):
    return re.sub(r"/var/lib/kubelet(?=/|$)", kubelet_dir, text)


def rewrite_strings(value):
    """kubelet_paths on every string inside a container spec."""
    if isinstance(value, str):
        return kubelet_paths(value)
    if isinstance(value, list):
        return [rewrite_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: rewrite_strings(v) for k, v in value.items()}
    return value


out = []
for obj in items:
    out.append(obj)
    if obj["kind"] != "DaemonSet" or obj["metadata"]["name"] not in NODE_DAEMONSETS:
        continue
    obj["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node1}

    twin = copy.deepcopy(obj)
    twin["metadata"]["name"] = obj["metadata"]["name"] + "-node2"
    # The selectors of the two DaemonSets must not overlap.
    component = obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] + "-node2"
    twin["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = component
    twin["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = component
    pod = twin["spec"]["template"]["spec"]
    pod["nodeSelector"] = {"kubernetes.io/hostname": node2}
    pod["containers"] = [rewrite_strings(c) for c in pod["containers"]]
    for volume in pod["volumes"]:
        host = volume.get("hostPath")
        if host is None:
            continue
        path = kubelet_paths(host["path"])
        path = re.sub(r"^/var/lib/warren(?=/|$)", state_dir, path)
        host["path"] = path
    out.append(twin)

json.dump({"apiVersion": "v1", "kind": "List", "items": out}, sys.stdout)
