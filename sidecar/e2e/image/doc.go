// Package image holds the end-to-end tests of what makes the project's
// image: the Dockerfile (stages, base images as build arguments, syntax every
// builder reads, the modules its build stage downloads, the user and the
// files it installs), the release build it runs (static, stripped, version
// stamped: bintest's, run here), and entrypoint.sh, which dispatches the
// image's commands to the script and the binary through exec. It has no
// code of its own besides the tests.
package image
