{{/*
Names and labels. Object names are fixed, as in deploy/: one release per tenant namespace (single-tenant) or one
fleet per management cluster, and the Secrets the Deployment mounts have fixed names too.
*/}}

{{- define "ccm.fleet" -}}
{{- if eq .Values.mode "fleet" }}true{{ else if eq .Values.mode "single-tenant" }}{{ else -}}
{{- fail (printf "mode must be single-tenant or fleet, not %q" .Values.mode) -}}
{{- end -}}
{{- end -}}

{{- define "ccm.name" -}}
{{- if include "ccm.fleet" . }}cloudsigma-ccm-fleet{{ else }}cloudsigma-ccm{{ end -}}
{{- end -}}

{{/* The selector (and pod template) labels: immutable on a Deployment, so nothing variable goes here. */}}
{{- define "ccm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ccm.name" . }}
app.kubernetes.io/component: cloud-controller-manager
{{- end -}}

{{/* Management-cluster objects: as deploy/base and deploy/fleet label them. */}}
{{- define "ccm.labels" -}}
{{ include "ccm.selectorLabels" . }}
app.kubernetes.io/part-of: cloudsigma-ccm
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Tenant-cluster RBAC: as deploy/tenant labels it. */}}
{{- define "ccm.tenantLabels" -}}
app.kubernetes.io/name: cloudsigma-ccm
app.kubernetes.io/component: cloud-controller-manager
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ccm.tenantSubject" -}}
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: {{ .Values.tenantUser }}
{{- end -}}

{{/* tokenBroker.targets, checked, as CLOUDSIGMA_TOKEN_BROKER takes them: namespace/secret,... (a list, or a
comma-separated string from --set). The CCM checks them the same way (ccm/config.py); failing here keeps a bad
target out of both the Deployment and the tenant RBAC. */}}
{{- define "ccm.tokenBrokerTargets" -}}
{{- $targets := .Values.tokenBroker.targets | default (list) }}
{{- if kindIs "string" $targets }}{{ $targets = splitList "," $targets }}{{ end }}
{{- $targets = compact $targets }}
{{- if not $targets }}
{{- fail "tokenBroker.targets must name at least one namespace/secret, e.g. cloudsigma-csi/cloudsigma-token" }}
{{- end }}
{{- range $targets }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" (toString .)) }}
{{- fail (printf "tokenBroker.targets must be namespace/secret names, e.g. cloudsigma-csi/cloudsigma-token, not %q" (toString .)) }}
{{- end }}
{{- end }}
{{- if ne (len $targets) (len (uniq $targets)) }}
{{- fail "tokenBroker.targets names a target twice" }}
{{- end }}
{{- join "," $targets }}
{{- end -}}
