// Package phala holds the docker-compose files that run fleetbox on Phala
// Cloud (dstack) and, in compose_test.go, the checks that keep everything
// security-relevant in them measured: the image named by digest, no host
// file mounted but the dstack agent's socket, quotes from dstack, and the
// policies inline. See README.md.
package phala
