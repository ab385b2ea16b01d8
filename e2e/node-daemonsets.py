"""Reads Warren's manifests as a kubectl JSON List on stdin and writes them back with
Warren's node DaemonSet (`warren` in the edge mode, `warren-node` in the standard mode)
split in one per e2e node:

- the DaemonSet as shipped gets a node selector for node 1;
- `<name>-<suffix>`, a copy for each other node, whose kubelet root dir and Warren state
  directory are different paths on this shared file system: every /var/lib/kubelet in
  the containers becomes that node's kubelet dir (arguments, commands, mount paths,
  probes: the kubelet hands Warren host paths), and so do the hostPath volumes, whose
  /var/lib/warren also becomes that node's state directory (the paths inside the
  container stay).

usage: node-daemonsets.py NODE1 [SUFFIX:NODE:KUBELET_DIR:STATE_DIR ...]
  e.g. node-daemonsets.py warren-node1 node2:warren-node2:/var/lib/kubelet-warren-node2:/var/lib/warren-warren-node2
"""

import copy
import json
import re
import sys

node1 = sys.argv[1]
others = [arg.split(":", 3) for arg in sys.argv[2:]]
objects = json.load(sys.stdin)
items = objects["items"] if objects.get("kind") == "List" else [objects]


NODE_DAEMONSETS = {"warren", "warren-node"}


def rewrite_strings(value, kubelet_dir):
    """Node 1's kubelet dir -> this node's, in every string inside a container spec."""
    if isinstance(value, str):
        return re.sub(r"/var/lib/kubelet(?=/|$)", kubelet_dir, value)
    if isinstance(value, list):
        return [rewrite_strings(v, kubelet_dir) for v in value]
    if isinstance(value, dict):
        return {k: rewrite_strings(v, kubelet_dir) for k, v in value.items()}
    return value


def twin_for(obj, suffix, node, kubelet_dir, state_dir):
    twin = copy.deepcopy(obj)
    twin["metadata"]["name"] = obj["metadata"]["name"] + "-" + suffix
    # The selectors of the DaemonSets must not overlap.
    component = obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] + "-" + suffix
    twin["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = component
    twin["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = component
    pod = twin["spec"]["template"]["spec"]
    pod["nodeSelector"] = {"kubernetes.io/hostname": node}
    pod["containers"] = [rewrite_strings(c, kubelet_dir) for c in pod["containers"]]
    for volume in pod["volumes"]:
        host = volume.get("hostPath")
        if host is None:
            continue
        path = rewrite_strings(host["path"], kubelet_dir)
        path = re.sub(r"^/var/lib/warren(?=/|$)", state_dir, path)
        host["path"] = path
    return twin


out = []
for obj in items:
    out.append(obj)
    if obj["kind"] != "DaemonSet" or obj["metadata"]["name"] not in NODE_DAEMONSETS:
        continue
    obj["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node1}
    for suffix, node, kubelet_dir, state_dir in others:
        out.append(twin_for(obj, suffix, node, kubelet_dir, state_dir))

json.dump({"apiVersion": "v1", "kind": "List", "items": out}, sys.stdout)
