// Package depcheck holds only a test: the dependency allow-list of the
// module's packages (deps_test.go), in the style of Go's own
// go/build/deps_test.go.
package depcheck
