{{/*
Helpers for the templates. The objects mirror crates/knit/src/install/objects.rs field for field:
change both together (`cargo test -p knit --test cli helm` compares them).
*/}}

{{/* Labels of every namespaced object: dict "ctx" $ "component" NAME. */}}
{{- define "knit.labels" -}}
app.kubernetes.io/part-of: knit
app.kubernetes.io/component: {{ .component }}
knit.dev/control-plane-ns: {{ .ctx.Values.namespace | quote }}
{{- end -}}

{{/* metadata of a namespaced object: dict "ctx" $ "name" NAME "component" NAME. */}}
{{- define "knit.metadata" -}}
name: {{ .name | quote }}
namespace: {{ .ctx.Values.namespace | quote }}
labels:
  {{- include "knit.labels" . | nindent 2 }}
{{- end -}}

{{/* metadata of a cluster-scoped object (component control-plane): dict "ctx" $ "name" NAME. */}}
{{- define "knit.clusterMetadata" -}}
name: {{ .name | quote }}
labels:
  {{- include "knit.labels" (dict "ctx" .ctx "component" "control-plane") | nindent 2 }}
{{- end -}}

{{/* The image tag of both images: imageVersion, else the chart's appVersion (knit's own version). */}}
{{- define "knit.version" -}}
{{- .Values.imageVersion | default .Chart.AppVersion | toString -}}
{{- end -}}

{{- define "knit.trustDomain" -}}
{{- .Values.identityTrustDomain | default .Values.clusterDomain -}}
{{- end -}}

{{/*
What `knit install` would refuse, refused before anything renders: every missing certificate at
once (Helm's own `required` stops at the first), an empty namespace, an unknown policy.
*/}}
{{- define "knit.validate" -}}
{{- $pems := list
  (list "identityTrustAnchorsPEM" .Values.identityTrustAnchorsPEM "ca.crt")
  (list "webhook.caPEM" .Values.webhook.caPEM "webhook-ca.crt")
  (list "webhook.crtPEM" .Values.webhook.crtPEM "webhook.crt")
  (list "webhook.keyPEM" .Values.webhook.keyPEM "webhook.key") -}}
{{- if not .Values.identity.externalIssuer -}}
{{- $pems = append $pems (list "identity.issuer.tls.crtPEM" .Values.identity.issuer.tls.crtPEM "issuer.crt") -}}
{{- $pems = append $pems (list "identity.issuer.tls.keyPEM" .Values.identity.issuer.tls.keyPEM "issuer.key") -}}
{{- end -}}
{{- $missing := list -}}
{{- range $pems -}}
{{- if not (index . 1) -}}
{{- $missing = append $missing (printf "--set-file %s=%s" (index . 0) (index . 2)) -}}
{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- required (printf "the certificates are required as PEM files: pass %s. Take them from the output of `knit install` (the ConfigMap knit-identity-trust-roots, the Secrets knit-identity-issuer and knit-proxy-injector-tls, base64-decoded), or generate them with step or openssl (see the chart's values.yaml)" (join " " $missing)) nil -}}
{{- end -}}
{{- if not .Values.namespace -}}
{{- fail "namespace must not be empty: it is the control plane's namespace (default knit)" -}}
{{- end -}}
{{- $policies := list "all-unauthenticated" "all-authenticated" "cluster-unauthenticated" "cluster-authenticated" "deny" "audit" -}}
{{- if not (has .Values.defaultInboundPolicy $policies) -}}
{{- fail (printf "defaultInboundPolicy %q is not one of %s" (toString .Values.defaultInboundPolicy) (join ", " $policies)) -}}
{{- end -}}
{{- end -}}

{{/* A certificate or key given as PEM text: list VALUE-NAME VALUE. knit.validate has checked them all. */}}
{{- define "knit.pem" -}}
{{- $name := index . 0 -}}
{{- required (printf "%s is required: pass the PEM file with --set-file %s=FILE" $name $name) (index . 1) -}}
{{- end -}}

{{/*
A string as serde_yaml 0.9 (libyaml's emitter) writes it as a block mapping's value, for the text
of the knit-config ConfigMap's values.yaml, which must equal `knit install`'s byte for byte:
dict "text" STRING "indent" N, N the column of a literal block's lines in the template.
  - with a line break: a literal block, `|` with libyaml's chomping (`-` without a final break,
    `+` with more than one) and indentation hint (`2` when it starts with a space or a break);
  - empty, or read back as null, a bool, an integer or a float: single-quoted;
  - starting or ending with a space, or with an indicator libyaml avoids in a plain scalar
    (`- `, `? `, `: `, ` #`, `---`, `#`, `&`, `*`, ...): single-quoted, `'` doubled;
  - otherwise plain.
Not copied (the text then differs from knit's though it reads back the same): control
characters, tabs, a space before a line break and a trailing space in a multi-line text, where
libyaml writes a double-quoted scalar (here JSON's); libyaml folding a plain or single-quoted
scalar with spaces past 80 columns (none of Knit's values has spaces).
*/}}
{{- define "knit.yamlString" -}}
{{- $t := toString .text -}}
{{- $special := regexMatch `[\x00-\x09\x0b-\x1f\x7f\x{85}\x{feff}]` $t -}}
{{- if contains "\n" $t -}}
{{- if or $special (hasSuffix " " $t) (contains " \n" $t) -}}
{{- toJson $t -}}
{{- else -}}
{{- $header := "|" -}}
{{- if regexMatch `^[ \n]` $t -}}{{- $header = print $header "2" -}}{{- end -}}
{{- if not (hasSuffix "\n" $t) -}}
{{- $header = print $header "-" -}}
{{- else if or (eq $t "\n") (hasSuffix "\n\n" $t) -}}
{{- $header = print $header "+" -}}
{{- end -}}
{{- $lines := splitList "\n" $t -}}
{{- if hasSuffix "\n" $t -}}{{- $lines = initial $lines -}}{{- end -}}
{{- $header -}}
{{- range $lines }}
{{ if . }}{{ repeat $.indent " " }}{{ . }}{{ end }}
{{- end -}}
{{- end -}}
{{- else if $special -}}
{{- toJson $t -}}
{{- else if regexMatch `^(|~|null|Null|NULL|true|True|TRUE|false|False|FALSE|[-+]?(0x[0-9a-fA-F]+|0o[0-7]+|0b[01]+|[0-9]+|([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|\.(inf|Inf|INF))|\.(nan|NaN|NAN))$` $t -}}
'{{ $t }}'
{{- else if regexMatch `^( |---|\.\.\.|[#,\[\]{}&*!|>'"%@\x60]|[-?:]( |$))|[ :]$|: | #` $t -}}
'{{ replace "'" "''" $t }}'
{{- else -}}
{{ $t }}
{{- end -}}
{{- end -}}
