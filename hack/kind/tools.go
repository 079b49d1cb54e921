//go:build tools

// Package tools pins the kind CLI built by scripts/kind-build.sh.
package tools

import _ "sigs.k8s.io/kind"
