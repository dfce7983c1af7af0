{{/*
The trainer's pod, for the Job and the CronJob: `dvc repro` writes data/, models/, .dvc/tmp and
mlruns under /app, which is read-only in the image's filesystem here. An init container copies /app
into an emptyDir, mounted over /app in the trainer: the same paths, writable, gone with the pod.
*/}}
{{- define "predictor.trainerPod" -}}
metadata:
  labels:
    {{- include "predictor.selectorLabels" (dict "ctx" . "component" "trainer") | nindent 4 }}
spec:
  {{- include "predictor.podCommon" . | nindent 2 }}
  restartPolicy: Never
  initContainers:
    - name: workspace
      image: {{ include "predictor.image" . }}
      imagePullPolicy: {{ include "predictor.pullPolicy" . }}
      command: ["sh", "-c", "cp -R /app/. /workspace/"]
      resources:
        requests:
          cpu: 50m
          memory: 64Mi
        limits:
          cpu: 500m
          memory: 256Mi
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: workspace
          mountPath: /workspace
  containers:
    - name: trainer
      image: {{ include "predictor.image" . }}
      imagePullPolicy: {{ include "predictor.pullPolicy" . }}
      command: ["sh", "-c", "dvc repro && python -m app.cli models publish --serve"]
      env:
        {{- include "predictor.env" . | nindent 8 }}
        # What dvc repro wrote; the image's MODEL_DIR is the API's folder.
        - name: MODEL_DIR
          value: /app/models
        # MLflow, matplotlib and DVC keep caches and config under $HOME; the image's is read-only here.
        - name: HOME
          value: /tmp
        - name: DVC_SITE_CACHE_DIR
          value: /tmp/dvc-site-cache
        {{- with .Values.trainer.env }}
        {{- include "predictor.extraEnv" . | nindent 8 }}
        {{- end }}
      resources:
        {{- toYaml .Values.trainer.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: workspace
          mountPath: /app
        - name: tmp
          mountPath: /tmp
        - name: cache
          mountPath: /cache
  volumes:
    - name: workspace
      emptyDir:
        sizeLimit: {{ .Values.trainer.workspaceSizeLimit }}
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
    - name: cache
      emptyDir:
        sizeLimit: {{ .Values.api.cacheSizeLimit }}
  {{- with .Values.trainer.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.trainer.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.trainer.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{- define "predictor.trainerJobSpec" -}}
backoffLimit: {{ .Values.trainer.backoffLimit }}
activeDeadlineSeconds: {{ .Values.trainer.activeDeadlineSeconds }}
ttlSecondsAfterFinished: {{ .Values.trainer.ttlSecondsAfterFinished }}
template:
  {{- include "predictor.trainerPod" . | nindent 2 }}
{{- end }}
