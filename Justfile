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

# Formatting, vet and staticcheck (pinned: 2026.2.2 is module v0.8.2).
lint:
    test -z "$(gofmt -l $(git ls-files '*.go'))"
    go vet ./...
    go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# Fuzz every decoder for FUZZTIME (default 10s) each.
fuzz:
    bash reproducible/fuzz.sh

# Performance figures (quote verification vs go-tdx-guest, and the rest).
bench:
    go test -run '^$' -bench . -benchtime 2s ./...

# Two builds from clean state must give the same bytes: the binary, or with a
# profile (dev, prod) the whole image, every artifact compared.
reproducible profile="":
    if [ -z "{{profile}}" ]; then bash reproducible/binary.sh; else bash reproducible/image.sh {{profile}}; fi

# The container image for Phala/dstack, built twice and compared: build/oci
# (OCI layout, digest in build/oci/digest) and build/fleetbox-oci.tar.
oci:
    bash reproducible/oci.sh

# Predict a built image's measurements: build/image/PROFILE/measurements.json.
measure profile="dev" *args="":
    bash image/measure.sh {{profile}} {{args}}

# Build the appliance image (dev or prod; prod needs --kms-policy or --kms-key).
image profile="dev" *args="":
    bash image/build.sh {{profile}} {{args}}

# Boot a built image in QEMU (serial console on this terminal; Ctrl-a x quits).
qemu profile="dev" *args="":
    bash image/qemu.sh {{profile}} {{args}}

# The appliance end to end in QEMU: build dev, three boots against a KMS and an admin node.
e2e:
    bash image/e2e.sh

# Install mkosi, QEMU, OVMF and the rest the image needs (Debian bookworm).
image-deps:
    bash image/install-deps.sh

# Everything CI runs.
ci:
    bash .ci/run
