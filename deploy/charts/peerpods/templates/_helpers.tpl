{{/* Common labels. */}}
{{- define "peerpods.labels" -}}
app.kubernetes.io/name: cloud-api-adaptor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels: app=cloud-api-adaptor as in the Go chart, so existing tooling finds the pods. */}}
{{- define "peerpods.selectorLabels" -}}
app: cloud-api-adaptor
{{- end -}}

{{/* The selected provider, checked: it must be set and have a providerConfigs section. */}}
{{- define "peerpods.provider" -}}
{{- $known := keys .Values.providerConfigs | sortAlpha | join ", " -}}
{{- if not .Values.provider -}}
{{- fail (printf "set provider to one of: %s" $known) -}}
{{- end -}}
{{- if not (hasKey .Values.providerConfigs .Values.provider) -}}
{{- fail (printf "unknown provider %q (known: %s); an out-of-tree provider needs a providerConfigs.%s section" .Values.provider $known .Values.provider) -}}
{{- end -}}
{{- .Values.provider -}}
{{- end -}}

{{/* Name of the Secret loaded with envFrom. */}}
{{- define "peerpods.secretName" -}}
{{- if eq .Values.secrets.mode "create" -}}
peer-pods-secret
{{- else if eq .Values.secrets.mode "reference" -}}
{{- required "secrets.existingSecretName is required with secrets.mode=reference" .Values.secrets.existingSecretName -}}
{{- else -}}
{{- fail (printf "secrets.mode must be create or reference, not %q" .Values.secrets.mode) -}}
{{- end -}}
{{- end -}}

{{/* Name of the SSH key Secret, or empty when none is configured. */}}
{{- define "peerpods.sshSecretName" -}}
{{- if and (eq .Values.secrets.mode "create") .Values.secrets.sshKey.privateKey -}}
ssh-key-secret
{{- else if eq .Values.secrets.mode "reference" -}}
{{- .Values.secrets.existingSshKeySecretName -}}
{{- end -}}
{{- end -}}

{{/* Name of the agent-channel TLS Secret, or empty when the daemon generates its own certificates. */}}
{{- define "peerpods.tlsSecretName" -}}
{{- if eq .Values.secrets.mode "create" -}}
{{- with .Values.secrets.tlsCerts -}}
{{- if or .clientCert .clientKey -}}
{{- if not (and .clientCert .clientKey) -}}
{{- fail "secrets.tlsCerts: set both clientCert and clientKey" -}}
{{- end -}}
certs-for-tls
{{- end -}}
{{- end -}}
{{- else if eq .Values.secrets.mode "reference" -}}
{{- .Values.secrets.existingTlsSecretName -}}
{{- end -}}
{{- end -}}

{{/* Whether the TLS Secret carries ca.crt (always assumed for an existing Secret). */}}
{{- define "peerpods.tlsHasCA" -}}
{{- if or (eq .Values.secrets.mode "reference") .Values.secrets.tlsCerts.caCert -}}true{{- end -}}
{{- end -}}

{{/* Non-empty entries of a map, values as strings (--set turns 30 into a number and true into a bool). */}}
{{- define "peerpods.nonEmpty" -}}
{{- $out := dict -}}
{{- range $key, $value := . -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $text := toString $value -}}
{{- if ne $text "" -}}
{{- $_ := set $out $key $text -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
