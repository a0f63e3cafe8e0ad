// Command fleetbox is the one binary of the fleetbox appliance: the node, the
// KMS, the quote and measurement tools, and the demo. This file only wires
// verbs to packages; each verb group lives in its own file.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleetbox/fleetbox/kms/client"
)

// Exit codes: 0 success, 1 a "no" verdict (refused quote, denied key),
// 2 bad usage or unreadable input, 3 a runtime failure.
const (
	exitOK      = 0
	exitNo      = 1
	exitUsage   = 2
	exitRuntime = 3
)

// env is what every verb gets: where to print and how to log.
type env struct {
	stdout, stderr io.Writer
	logger         *slog.Logger
}

type verb struct {
	name, summary string
	run           func(ctx context.Context, e *env, args []string) int
}

func verbs() []verb {
	return []verb{
		{"demo", "run the whole story on loopback with mock TDX", runDemo},
		{"quote", "inspect or verify a TDX quote (inspect|verify)", runQuote},
		{"kms", "the key service and its client (serve|get-key|audit)", runKMS},
		{"node", "the node daemon (init|run|self-purge)", runNode},
		{"ctl", "talk to a running node's admin API", runCtl},
		{"appliance", "the boot sequence inside the image (boot)", runAppliance},
		{"measure", "expected MRTD and RTMRs from image artifacts", runMeasure},
		{"policy", "write admission and KMS policies", runPolicy},
		{"version", "print the version", runVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{
		stdout: stdout,
		stderr: stderr,
		logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel()})),
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, v := range verbs() {
		if v.name == args[0] {
			return v.run(ctx, e, args[1:])
		}
	}
	fmt.Fprintf(stderr, "fleetbox: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: fleetbox COMMAND [ARGS]\n\ncommands:")
	for _, v := range verbs() {
		fmt.Fprintf(w, "  %-9s %s\n", v.name, v.summary)
	}
}

func logLevel() slog.Level {
	var l slog.Level
	if s := os.Getenv("FLEETBOX_LOG_LEVEL"); s != "" {
		if err := l.UnmarshalText([]byte(s)); err == nil {
			return l
		}
	}
	return slog.LevelInfo
}

// version is set at link time by the build (-X main.version=...).
var version = "dev"

func runVersion(_ context.Context, e *env, _ []string) int {
	fmt.Fprintln(e.stdout, "fleetbox", version)
	return exitOK
}

// usageErr prints a usage error and returns exitUsage.
func usageErr(e *env, format string, a ...any) int {
	fmt.Fprintf(e.stderr, "fleetbox: "+format+"\n", a...)
	return exitUsage
}

// runtimeErr prints a runtime failure (I/O, network, a service that
// stopped) and returns exitRuntime.
func runtimeErr(e *env, format string, a ...any) int {
	fmt.Fprintf(e.stderr, "fleetbox: "+format+"\n", a...)
	return exitRuntime
}

// kmsExit classifies a KMS client failure: the KMS said no (a 4xx refusal,
// or its own quote failed our policy) is 1, anything else (unreachable, 5xx,
// a cancelled wait) is a runtime failure, 3.
func kmsExit(err error) int {
	var ae *client.APIError
	if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 && ae.Status != http.StatusTooManyRequests {
		return exitNo
	}
	if errors.Is(err, client.ErrKMSNotTrusted) {
		return exitNo
	}
	return exitRuntime
}
