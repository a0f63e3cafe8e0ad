// Command oci builds the fleetbox container image from a static fleetbox
// binary, without a container daemon, so that anyone who rebuilds the binary
// gets the same image digest:
//
//	go run ./image/oci --binary build/fleetbox --out build/oci \
//	    [--tar build/fleetbox-oci.tar] [--tag fleetbox:VERSION] \
//	    [--version V] [--revision COMMIT] [--source URL] [--ca-bundle FILE]
//
// The image has one layer (see layer.go) and a fixed configuration; every
// timestamp in it is SOURCE_DATE_EPOCH (from the environment; else the
// commit time of HEAD; else 0). --out receives an OCI image layout and a
// file "digest" holding the manifest digest; --tar also writes the layout as
// one tar file that skopeo reads as oci-archive: and docker load reads too
// (it carries docker's manifest.json beside the layout, as docker save
// writes since Docker 25). The manifest digest, the layer digest and the
// sizes are printed on stdout.
//
// Exit status: 0 the image was written, 2 bad usage or an input that is not
// a static linux/amd64 ELF binary, 3 a runtime failure (I/O).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

const (
	exitOK      = 0
	exitUsage   = 2
	exitRuntime = 3
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError marks a failure caused by the input, not by the machine.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("oci", flag.ContinueOnError)
	fs.SetOutput(stderr)
	binary := fs.String("binary", "", "the static linux/amd64 fleetbox `file` (required)")
	out := fs.String("out", "", "OCI image layout `dir` to write (required; replaced if it already holds a layout)")
	tarPath := fs.String("tar", "", "also write the layout as an oci-archive `file` that docker load reads too")
	tag := fs.String("tag", "", "`name:tag` recorded in the layout's index and the archive (not part of the manifest digest)")
	version := fs.String("version", "", "org.opencontainers.image.version label")
	revision := fs.String("revision", "", "org.opencontainers.image.revision label (the source commit)")
	source := fs.String("source", "https://github.com/fleetbox/fleetbox", "org.opencontainers.image.source label")
	caBundle := fs.String("ca-bundle", "", "PEM `file` installed as /etc/ssl/certs/ca-certificates.crt (none by default)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() != 0 || *binary == "" || *out == "" {
		fmt.Fprintln(stderr, "usage: oci --binary FILE --out DIR [--tar FILE] [--tag NAME:TAG] [--version V] [--revision COMMIT] [--source URL] [--ca-bundle FILE]")
		return exitUsage
	}

	epoch, err := sourceDateEpoch(os.Getenv, gitCommitTime)
	if err != nil {
		fmt.Fprintf(stderr, "oci: %v\n", err)
		return exitUsage
	}
	in := Input{
		Epoch:    epoch,
		Version:  *version,
		Revision: *revision,
		Source:   *source,
	}
	if in.Binary, err = os.ReadFile(*binary); err != nil {
		fmt.Fprintf(stderr, "oci: reading the binary: %v\n", err)
		return exitUsage
	}
	if err := CheckStaticELF(in.Binary); err != nil {
		fmt.Fprintf(stderr, "oci: %s: %v\n", *binary, err)
		return exitUsage
	}
	if *caBundle != "" {
		if in.CABundle, err = os.ReadFile(*caBundle); err != nil {
			fmt.Fprintf(stderr, "oci: reading the CA bundle: %v\n", err)
			return exitUsage
		}
	}

	img, err := Build(in)
	if err != nil {
		return fail(stderr, err)
	}
	res, err := WriteLayout(img, *out, *tag)
	if err != nil {
		return fail(stderr, err)
	}
	if *tarPath != "" {
		if err := WriteArchive(*out, res, *tarPath, *tag, epoch); err != nil {
			return fail(stderr, err)
		}
	}
	fmt.Fprintf(stdout, "manifest %s\n", res.Manifest)
	fmt.Fprintf(stdout, "layer    %s (%d bytes compressed, diff_id %s)\n", res.Layer, res.LayerSize, res.DiffID)
	fmt.Fprintf(stdout, "config   %s\n", res.Config)
	fmt.Fprintf(stdout, "created  %s (SOURCE_DATE_EPOCH %d)\n", time.Unix(epoch, 0).UTC().Format(time.RFC3339), epoch)
	fmt.Fprintf(stdout, "layout   %s (digest in %s/digest)\n", *out, *out)
	if *tarPath != "" {
		fmt.Fprintf(stdout, "archive  %s\n", *tarPath)
	}
	return exitOK
}

func fail(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "oci: %v\n", err)
	var u usageError
	if errors.As(err, &u) {
		return exitUsage
	}
	return exitRuntime
}

// sourceDateEpoch returns SOURCE_DATE_EPOCH from the environment, else the
// commit time that commitTime reports, else 0. A set but malformed variable
// is an error rather than a silent fallback: the image's digest depends on it.
func sourceDateEpoch(getenv func(string) string, commitTime func() (int64, bool)) (int64, error) {
	if s := getenv("SOURCE_DATE_EPOCH"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("SOURCE_DATE_EPOCH %q: want a non-negative integer (seconds since 1970)", s)
		}
		// tar's USTAR header holds 11 octal digits of seconds.
		if v > 077777777777 {
			return 0, fmt.Errorf("SOURCE_DATE_EPOCH %d: beyond what a tar header records", v)
		}
		return v, nil
	}
	if v, ok := commitTime(); ok {
		return v, nil
	}
	return 0, nil
}

// gitCommitTime is the committer time of HEAD in the current directory.
func gitCommitTime() (int64, bool) {
	out, err := exec.Command("git", "log", "-1", "--format=%ct").Output()
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	return v, err == nil && v >= 0
}
