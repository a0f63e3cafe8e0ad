# The recipes people type. The README's commands do not need just.

version := `git describe --always --tags 2>/dev/null || echo dev`

# Run the whole story on one machine (loopback, mock TDX).
demo:
    go run ./cmd/fleetbox demo

# Build the static, reproducible binary into out/fleetbox.
build:
    mkdir -p out
    CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w -buildid= -X main.version={{version}}" -o out/fleetbox ./cmd/fleetbox

# Every test.
test:
    go test ./...

# Formatting and vet.
lint:
    test -z "$(gofmt -l $(git ls-files '*.go'))"
    go vet ./...

# Fuzz every decoder for FUZZTIME (default 10s) each.
fuzz:
    bash reproducible/fuzz.sh

# Performance figures (quote verification vs go-tdx-guest, and the rest).
bench:
    go test -run '^$' -bench . -benchtime 2s ./...

# Two builds with empty caches must give the same bytes.
reproducible:
    bash reproducible/binary.sh

# Everything CI runs.
ci:
    bash .ci/run
