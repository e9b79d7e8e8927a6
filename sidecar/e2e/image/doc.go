// Package image holds the end-to-end tests of what makes the project's
// image: the Dockerfile (stages, base images as build arguments, syntax every
// builder reads, the modules its build stage downloads, the user and the
// files it installs), the release build it runs (static, stripped, version
// stamped: bintest's, run here), and entrypoint.sh, which dispatches the
// image's commands to the script and the binary through exec. With podman
// (podman_*_test.go, docs/image.md), the image itself: built from the
// Dockerfile without a registry, and run as the rendered manifests run it, a
// pod's containers in one network namespace, the node-level mode, and the
// pre-1.29 variant through podman kube play. It has no code of its own
// besides the tests.
package image
