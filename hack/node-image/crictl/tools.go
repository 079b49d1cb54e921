//go:build tools

// Package tools pins crictl, built by scripts/node-image.sh.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
