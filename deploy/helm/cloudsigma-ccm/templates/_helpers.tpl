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
