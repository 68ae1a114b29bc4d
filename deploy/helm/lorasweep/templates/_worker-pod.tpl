{{/* The worker's pod template, shared by the Deployment and the Indexed Job. */}}
{{- define "lorasweep.workerPodTemplate" -}}
{{- $w := .Values.worker }}
{{- $job := eq $w.kind "Job" -}}
metadata:
  labels:
    {{- include "lorasweep.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/component: worker
  {{- with include "lorasweep.workerPodAnnotations" . | trim }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  {{- if $job }}
  # podFailurePolicy requires Never; the Job controller makes the retries.
  restartPolicy: Never
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $w.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "lorasweep.podSecurityContext" . | nindent 4 }}
  containers:
    - name: worker
      image: {{ include "lorasweep.workerImage" . }}
      imagePullPolicy: {{ $w.image.pullPolicy }}
      {{- with $w.extraArgs }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        - name: LORASWEEP_COORDINATOR
          value: {{ include "lorasweep.coordinatorURL" . | quote }}
        - name: LORASWEEP_TOKEN_FILE
          value: /etc/lorasweep/tokens/worker-token
        {{- if .Values.tls.enabled }}
        - name: LORASWEEP_TLS_CA
          value: /etc/lorasweep/ca/ca.crt
        {{- end }}
        # The pod name, so `lorasweep workers` and the coordinator's logs say which pod is which.
        - name: LORASWEEP_WORKER_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: LORASWEEP_DEVICE
          value: {{ include "lorasweep.workerDevice" . | quote }}
        {{- with $w.trainer }}
        - name: LORASWEEP_TRAINER
          value: {{ . | quote }}
        {{- end }}
        - name: LORASWEEP_WORKER_METRICS_LISTEN
          value: "0.0.0.0:9091"
        - name: LORASWEEP_SHUTDOWN_GRACE
          value: {{ $w.shutdownGrace | quote }}
        {{- if $job }}
        # A Job's pod must end for the Job to complete: exit 0 once the queue has been empty this long.
        - name: LORASWEEP_EXIT_WHEN_IDLE
          value: {{ $w.exitWhenIdle | quote }}
        {{- end }}
        - name: HF_HOME
          value: /cache/huggingface
      ports:
        - name: metrics
          containerPort: 9091
      # No readiness probe: nothing sends traffic to a worker; it dials out to the coordinator.
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        initialDelaySeconds: 10
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 6
      {{- $resources := deepCopy $w.resources }}
      {{- if .Values.gpu.enabled }}
      {{- $limits := $resources.limits | default dict }}
      {{- $_ := set $limits "nvidia.com/gpu" .Values.gpu.gpusPerWorker }}
      {{- $_ := set $resources "limits" $limits }}
      {{- end }}
      {{- with $resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "lorasweep.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        - name: hf-cache
          mountPath: /cache
          {{- if and .Values.hfCache.existingClaim .Values.hfCache.readOnly }}
          readOnly: true
          {{- end }}
        - name: tmp
          mountPath: /tmp
        - name: tokens
          mountPath: /etc/lorasweep/tokens
          readOnly: true
        {{- if .Values.tls.enabled }}
        - name: tls-ca
          mountPath: /etc/lorasweep/ca
          readOnly: true
        {{- end }}
  volumes:
    - name: hf-cache
      {{- if .Values.hfCache.existingClaim }}
      persistentVolumeClaim:
        claimName: {{ .Values.hfCache.existingClaim }}
        readOnly: {{ .Values.hfCache.readOnly }}
      {{- else }}
      {{- with .Values.hfCache.emptyDirSizeLimit }}
      emptyDir:
        sizeLimit: {{ . }}
      {{- else }}
      emptyDir: {}
      {{- end }}
      {{- end }}
    - name: tmp
      emptyDir: {}
    - name: tokens
      secret:
        secretName: {{ include "lorasweep.tokenSecretName" . }}
        defaultMode: 0440
        # Only the worker token: a worker has no business holding the admin token.
        items:
          - key: worker-token
            path: worker-token
    {{- with include "lorasweep.caVolume" . }}
    {{- . | nindent 4 }}
    {{- end }}
  {{- with $w.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
