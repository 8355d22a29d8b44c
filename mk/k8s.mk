# Kubernetes manifests of the reference deployment (reference-stack/k8s/, kustomize layout) and of one GPU example
# (a spot fleet: nvidia.com/gpu, dcgm-exporter sidecar, spot tolerations). Included by the top-level Makefile
# (`-include mk/*.mk`); tests/test_k8s_manifests.py fails while the committed files differ from a fresh generation.
K8S_DIR := reference-stack/k8s
K8S_GPU_EXAMPLE := spot-fleet-8b

.PHONY: k8s

k8s: install
	$(BIN)/forge stack k8s --deploy reference-stack/deploy.yaml --out $(K8S_DIR)
	$(BIN)/forge stack k8s --deploy readiness/examples/$(K8S_GPU_EXAMPLE).yaml --out $(K8S_DIR)/examples/$(K8S_GPU_EXAMPLE)
