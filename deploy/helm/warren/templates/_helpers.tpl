{{/* The CSI driver name: fixed, it is part of every PV Warren makes. */}}
{{- define "warren.driverName" -}}warren.csi.dev{{- end }}

{{/* Prefix of every object's name: the release name, "warren" unless given. */}}
{{- define "warren.fullname" -}}
{{- if contains "warren" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-warren" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "warren.labels" -}}
app.kubernetes.io/name: warren
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels of one component: include with (list . "component"). */}}
{{- define "warren.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: warren
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "warren.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "warren.agentTokenSecret" -}}
{{ .Values.agentToken.existingSecret | default (printf "%s-agent-token" (include "warren.fullname" .)) }}
{{- end }}

{{/* Whether the CSIDriver advertises storage capacity (see values.yaml). */}}
{{- define "warren.storageCapacity" -}}
{{- $v := toString .Values.csiDriver.storageCapacity -}}
{{- if eq $v "auto" -}}
{{- ternary "true" "false" (eq .Values.mode "standard") -}}
{{- else if or (eq $v "true") (eq $v "false") -}}
{{- $v -}}
{{- else -}}
{{- fail "csiDriver.storageCapacity must be auto, true or false" -}}
{{- end -}}
{{- end }}

{{/* Checks the values once; every template includes it. */}}
{{- define "warren.validate" -}}
{{- if not (has .Values.mode (list "standard" "edge")) -}}
{{- fail (printf "mode must be standard or edge, not %q" .Values.mode) -}}
{{- end -}}
{{- if .Values.share.enabled -}}
{{- $port := int .Values.share.port -}}
{{- $taken := list (int .Values.metrics.edgePort) -}}
{{- if eq .Values.mode "standard" -}}
{{- $taken = list (int .Values.agentPort) (int .Values.metrics.nodePort) -}}
{{- if .Values.sidecars.livenessProbe.enabled -}}
{{- $taken = append $taken (int .Values.node.livenessProbePort) -}}
{{- end -}}
{{- end -}}
{{- if has $port $taken -}}
{{- fail (printf "share.port %d is already one of the node pod's ports (%v)" $port $taken) -}}
{{- end -}}
{{- end -}}
{{- if .Values.replication.enabled -}}
{{- $port := int .Values.replication.port -}}
{{- $taken := list (int .Values.agentPort) -}}
{{- if eq .Values.mode "standard" -}}
{{- $taken = append $taken (int .Values.metrics.nodePort) -}}
{{- if .Values.sidecars.livenessProbe.enabled -}}
{{- $taken = append $taken (int .Values.node.livenessProbePort) -}}
{{- end -}}
{{- else -}}
{{- $taken = append $taken (int .Values.metrics.edgePort) -}}
{{- end -}}
{{- if .Values.share.enabled -}}
{{- $taken = append $taken (int .Values.share.port) -}}
{{- end -}}
{{- if has $port $taken -}}
{{- fail (printf "replication.port %d is already one of the node pod's ports (%v)" $port $taken) -}}
{{- end -}}
{{- end -}}
{{- range list .Values.storageRoot .Values.stateDir .Values.kubeletDir -}}
{{- if not (hasPrefix "/" .) -}}
{{- fail (printf "storageRoot, stateDir and kubeletDir must be absolute paths (%q is not)" .) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* hostPath volumes every node-side pod has. */}}
{{- define "warren.nodeVolumes" -}}
- name: kubelet-dir
  hostPath:
    path: {{ .Values.kubeletDir }}
    type: Directory
# Where the CSI socket lives (kubelet finds it there); created if missing.
- name: plugin-dir
  hostPath:
    path: {{ .Values.kubeletDir }}/plugins/{{ include "warren.driverName" . }}
    type: DirectoryOrCreate
- name: dev
  hostPath:
    path: /dev
    type: Directory
- name: state-dir
  hostPath:
    path: {{ .Values.stateDir }}
    type: DirectoryOrCreate
- name: storage-root
  hostPath:
    path: {{ .Values.storageRoot }}
    type: DirectoryOrCreate
{{- end }}

{{/* The warren container's node-side mounts. Host and container paths are the same:
     kubelet hands Warren host paths, and /sys/block/loopN/loop/backing_file names the
     image file by the path it was attached with. Nothing else is mounted below the
     kubelet dir: with Bidirectional propagation, a nested mount would leak back to the
     host. */}}
{{- define "warren.nodeMounts" -}}
- name: kubelet-dir
  mountPath: {{ .Values.kubeletDir }}
  # Staging and publishing mounts Warren makes below the kubelet
  # dir must reach the host, and so the kubelet and the pods.
  mountPropagation: Bidirectional
- name: dev
  mountPath: /dev
- name: state-dir
  mountPath: {{ .Values.stateDir }}
- name: storage-root
  mountPath: {{ .Values.storageRoot }}
{{- end }}

{{- define "warren.commonEnv" -}}
- name: WARREN_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The built-in NFS share's environment (share.enabled): listen on every address of
     the host network, and tell other nodes this node's IP. */}}
{{- define "warren.shareEnv" -}}
# The built-in NFS share (backend: share): serve this node's shared volumes on the host
# network; other nodes mount them at the node's IP.
- name: WARREN_SHARE_LISTEN
  value: "0.0.0.0:{{ .Values.share.port }}"
- name: WARREN_SHARE_ADDRESS
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}

{{/* Replicated volumes' environment (replication.enabled): this node's replica
     service on the host network, told to other nodes at the node's IP, and the cluster
     token. */}}
{{- define "warren.replicationEnv" -}}
- name: WARREN_REPLICA_LISTEN
  value: "0.0.0.0:{{ .Values.replication.port }}"
- name: WARREN_REPLICA_ADDRESS
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- if eq .Values.mode "standard" }}
- name: WARREN_REPLICA_TOKEN_FILE
  value: /etc/warren/agent/token
{{- end }}
{{- end }}

{{- define "warren.sidecarSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}
