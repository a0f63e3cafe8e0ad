package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// fakeELF returns a minimal ELF file: a header and one program header per
// entry of progs, each covering nothing. Enough for debug/elf, which is all
// CheckStaticELF reads.
func fakeELF(t *testing.T, class elf.Class, machine elf.Machine, typ elf.Type, progs ...elf.ProgType) []byte {
	t.Helper()
	var buf bytes.Buffer
	ident := [elf.EI_NIDENT]byte{0x7f, 'E', 'L', 'F', byte(class), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)}
	switch class {
	case elf.ELFCLASS64:
		hsize, psize := binary.Size(elf.Header64{}), binary.Size(elf.Prog64{})
		h := elf.Header64{Ident: ident, Type: uint16(typ), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
			Phoff: uint64(hsize), Ehsize: uint16(hsize), Phentsize: uint16(psize), Phnum: uint16(len(progs))}
		must(t, binary.Write(&buf, binary.LittleEndian, h))
		for _, p := range progs {
			must(t, binary.Write(&buf, binary.LittleEndian, elf.Prog64{Type: uint32(p)}))
		}
	case elf.ELFCLASS32:
		hsize, psize := binary.Size(elf.Header32{}), binary.Size(elf.Prog32{})
		h := elf.Header32{Ident: ident, Type: uint16(typ), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
			Phoff: uint32(hsize), Ehsize: uint16(hsize), Phentsize: uint16(psize), Phnum: uint16(len(progs))}
		must(t, binary.Write(&buf, binary.LittleEndian, h))
		for _, p := range progs {
			must(t, binary.Write(&buf, binary.LittleEndian, elf.Prog32{Type: uint32(p)}))
		}
	}
	return buf.Bytes()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func staticBinary(t *testing.T) []byte {
	return fakeELF(t, elf.ELFCLASS64, elf.EM_X86_64, elf.ET_EXEC, elf.PT_LOAD, elf.PT_NOTE)
}

func baseInput(t *testing.T) Input {
	return Input{Binary: staticBinary(t), Epoch: 1700000000, Version: "v1.2.3", Revision: "0123abcd", Source: "https://github.com/fleetbox/fleetbox"}
}

func digest(t *testing.T, in Input) v1.Hash {
	t.Helper()
	img, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDigestPinned pins the manifest digest of a fixed input: a change of
// go-containerregistry, of the gzip stream or of the config that moves a
// published image's digest fails here, not at an operator's rebuild.
func TestDigestPinned(t *testing.T) {
	const want = "sha256:c4ae20eb5720bc91ff54b38ea3f4184a5161d4316dd83ea9535b237007140b52"
	if got := digest(t, baseInput(t)).String(); got != want {
		t.Errorf("manifest digest %s, want %s", got, want)
	}
}

func TestDigestDependsOnInputsOnly(t *testing.T) {
	base := digest(t, baseInput(t))
	tests := map[string]struct {
		change func(*Input)
		same   bool
	}{
		"same input again":               {change: func(*Input) {}, same: true},
		"binary copied to a fresh slice": {change: func(in *Input) { in.Binary = append([]byte(nil), in.Binary...) }, same: true},
		"another SOURCE_DATE_EPOCH":      {change: func(in *Input) { in.Epoch++ }},
		"another binary":                 {change: func(in *Input) { in.Binary = append(in.Binary, 0) }},
		"another version label":          {change: func(in *Input) { in.Version = "v1.2.4" }},
		"another revision label":         {change: func(in *Input) { in.Revision = "4567" }},
		"a CA bundle":                    {change: func(in *Input) { in.CABundle = []byte("-----BEGIN CERTIFICATE-----\n") }},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			in := baseInput(t)
			tc.change(&in)
			got := digest(t, in)
			if (got == base) != tc.same {
				t.Errorf("digest %s, base %s: same=%v, want same=%v", got, base, got == base, tc.same)
			}
		})
	}
}

func TestCheckStaticELF(t *testing.T) {
	tests := map[string]struct {
		bin        []byte
		ok         bool
		notStatic  bool // refused for PT_INTERP
		wantInText string
	}{
		"static executable": {bin: staticBinary(t), ok: true},
		"static PIE":        {bin: fakeELF(t, elf.ELFCLASS64, elf.EM_X86_64, elf.ET_DYN, elf.PT_LOAD, elf.PT_DYNAMIC), ok: true},
		"dynamic (PT_INTERP)": {bin: fakeELF(t, elf.ELFCLASS64, elf.EM_X86_64, elf.ET_EXEC, elf.PT_PHDR, elf.PT_INTERP, elf.PT_LOAD),
			notStatic: true, wantInText: "PT_INTERP"},
		"arm64":          {bin: fakeELF(t, elf.ELFCLASS64, elf.EM_AARCH64, elf.ET_EXEC, elf.PT_LOAD), wantInText: "EM_X86_64"},
		"32-bit x86":     {bin: fakeELF(t, elf.ELFCLASS32, elf.EM_386, elf.ET_EXEC, elf.PT_LOAD), wantInText: "ELFCLASS64"},
		"object file":    {bin: fakeELF(t, elf.ELFCLASS64, elf.EM_X86_64, elf.ET_REL), wantInText: "ET_REL"},
		"a shell script": {bin: []byte("#!/bin/sh\nexec fleetbox \"$@\"\n"), wantInText: "not an ELF"},
		"empty file":     {bin: nil, wantInText: "not an ELF"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckStaticELF(tc.bin)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.As(err, new(usageError)) {
				t.Errorf("%v is not a usage error (exit 2)", err)
			}
			if errors.Is(err, ErrNotStatic) != tc.notStatic {
				t.Errorf("errors.Is(err, ErrNotStatic) = %v, want %v (%v)", !tc.notStatic, tc.notStatic, err)
			}
			if !strings.Contains(err.Error(), tc.wantInText) {
				t.Errorf("error %q does not mention %q", err, tc.wantInText)
			}
		})
	}
}

// TestCheckStaticELFRealBinaries runs the check on binaries of this
// machine: a dynamically linked system program, and a Go program built the
// way reproducible/oci.sh builds fleetbox.
func TestCheckStaticELFRealBinaries(t *testing.T) {
	for _, p := range []string{"/bin/ls", "/usr/bin/env"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil || !hasInterp(f) {
			continue // not a dynamic ELF on this system
		}
		if err := CheckStaticELF(b); !errors.Is(err, ErrNotStatic) {
			t.Errorf("%s: got %v, want ErrNotStatic", p, err)
		}
	}
	if testing.Short() {
		t.Skip("-short: not building a Go program")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hello\n\ngo 1.22\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() { println(\"hello\") }\n"), 0o644))
	cmd := exec.Command(goCmd, "build", "-trimpath", "-ldflags", "-s -w -buildid=", "-o", "hello", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "hello"))
	must(t, err)
	if err := CheckStaticELF(b); err != nil {
		t.Errorf("a CGO_ENABLED=0 Go binary was refused: %v", err)
	}
}

func hasInterp(f *elf.File) bool {
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

// tarEntry is what the tests compare of one tar member.
type tarEntry struct {
	Name         string
	Type         byte
	Mode         int64
	UID, GID     int
	Uname, Gname string
	ModTime      int64
	Size         int64
}

func readTar(t *testing.T, r io.Reader) ([]tarEntry, map[string][]byte) {
	t.Helper()
	var es []tarEntry
	data := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return es, data
		}
		must(t, err)
		if len(h.PAXRecords) > 0 || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s: PAX records %v, atime %v, ctime %v: want none", h.Name, h.PAXRecords, h.AccessTime, h.ChangeTime)
		}
		es = append(es, tarEntry{h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime.Unix(), h.Size})
		b, err := io.ReadAll(tr)
		must(t, err)
		data[h.Name] = b
	}
}

func TestLayerContent(t *testing.T) {
	in := baseInput(t)
	const e = 1700000000
	const d, r byte = tar.TypeDir, tar.TypeReg
	want := []tarEntry{
		{"data/", d, 0o755, 0, 0, "", "", e, 0},
		{"etc/", d, 0o755, 0, 0, "", "", e, 0},
		{"etc/group", r, 0o644, 0, 0, "", "", e, 26},
		{"etc/passwd", r, 0o644, 0, 0, "", "", e, 76},
		{"fleetbox", r, 0o755, 0, 0, "", "", e, int64(len(in.Binary))},
		{"tmp/", d, 0o1777, 0, 0, "", "", e, 0},
	}
	// The layer as the image carries it: gzip, read back from the layout.
	img, err := Build(in)
	must(t, err)
	layers, err := img.Layers()
	must(t, err)
	rc, err := layers[0].Compressed()
	must(t, err)
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	must(t, err)
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("gzip header carries name %q, time %v: want none", zr.Name, zr.ModTime)
	}
	got, data := readTar(t, zr)
	if len(got) != len(want) {
		t.Fatalf("layer has %d entries, want %d:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	if !bytes.Equal(data["fleetbox"], in.Binary) {
		t.Error("/fleetbox differs from the input binary")
	}
	if !strings.HasPrefix(string(data["etc/passwd"]), "root:x:0:0:") {
		t.Errorf("/etc/passwd starts %q, want root (uid 0) first", data["etc/passwd"])
	}

	in.CABundle = []byte("PEM\n")
	names, _ := readTar(t, bytes.NewReader(mustLayer(t, in)))
	var list []string
	for _, n := range names {
		list = append(list, n.Name)
	}
	if got, want := strings.Join(list, " "), "data/ etc/ etc/group etc/passwd etc/ssl/ etc/ssl/certs/ etc/ssl/certs/ca-certificates.crt fleetbox tmp/"; got != want {
		t.Errorf("with a CA bundle the layer holds %s, want %s", got, want)
	}
}

func mustLayer(t *testing.T, in Input) []byte {
	b, err := LayerTar(in)
	must(t, err)
	return b
}

func TestConfig(t *testing.T) {
	img, err := Build(baseInput(t))
	must(t, err)
	m, err := img.Manifest()
	must(t, err)
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Config.MediaType != "application/vnd.oci.image.config.v1+json" ||
		len(m.Layers) != 1 || m.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Errorf("media types: manifest %s, config %s, layers %v: want OCI", m.MediaType, m.Config.MediaType, m.Layers)
	}
	cf, err := img.ConfigFile()
	must(t, err)
	at := time.Unix(1700000000, 0).UTC()
	c := cf.Config
	checks := map[string]bool{
		"architecture amd64":   cf.Architecture == "amd64",
		"os linux":             cf.OS == "linux",
		"created at the epoch": cf.Created.Time.Equal(at),
		"one history entry":    len(cf.History) == 1 && cf.History[0].Created.Time.Equal(at),
		"entrypoint /fleetbox": strings.Join(c.Entrypoint, " ") == "/fleetbox",
		"cmd --help":           strings.Join(c.Cmd, " ") == "--help",
		"env PATH=/ only":      strings.Join(c.Env, " ") == "PATH=/",
		"workdir /":            c.WorkingDir == "/",
		"user 0:0":             c.User == "0:0",
		"version label":        c.Labels["org.opencontainers.image.version"] == "v1.2.3",
		"revision label":       c.Labels["org.opencontainers.image.revision"] == "0123abcd",
		"created label":        c.Labels["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z",
		"no volumes or ports":  len(c.Volumes) == 0 && len(c.ExposedPorts) == 0,
		"one diff_id":          len(cf.RootFS.DiffIDs) == 1,
		"no container id":      cf.Container == "",
	}
	for name, ok := range checks {
		if !ok {
			t.Errorf("config: not %s: %+v", name, cf)
		}
	}
}

func TestSourceDateEpoch(t *testing.T) {
	commit := func(v int64, ok bool) func() (int64, bool) { return func() (int64, bool) { return v, ok } }
	tests := map[string]struct {
		env     string
		commit  func() (int64, bool)
		want    int64
		wantErr bool
	}{
		"from the environment":        {env: "1700000000", commit: commit(5, true), want: 1700000000},
		"zero in the environment":     {env: "0", commit: commit(5, true), want: 0},
		"unset: the commit time":      {commit: commit(1234, true), want: 1234},
		"unset, no git: zero":         {commit: commit(0, false), want: 0},
		"not a number":                {env: "yesterday", commit: commit(5, true), wantErr: true},
		"negative":                    {env: "-1", commit: commit(5, true), wantErr: true},
		"beyond a tar header's range": {env: "99999999999", commit: commit(5, true), wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := sourceDateEpoch(func(string) string { return tc.env }, tc.commit)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("got %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestRun drives the command: exit codes, the layout, the digest file, and
// an archive that both ways of reading it (OCI layout, docker save) open
// to the same image.
func TestRun(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	dir := t.TempDir()
	bin := filepath.Join(dir, "fleetbox")
	must(t, os.WriteFile(bin, staticBinary(t), 0o755))
	dyn := filepath.Join(dir, "dynamic")
	must(t, os.WriteFile(dyn, fakeELF(t, elf.ELFCLASS64, elf.EM_X86_64, elf.ET_EXEC, elf.PT_INTERP), 0o755))
	notLayout := filepath.Join(dir, "precious")
	must(t, os.MkdirAll(notLayout, 0o755))
	must(t, os.WriteFile(filepath.Join(notLayout, "notes.txt"), []byte("keep"), 0o644))

	out, tarPath := filepath.Join(dir, "oci"), filepath.Join(dir, "fleetbox-oci.tar")
	tests := map[string]struct {
		args []string
		code int
	}{
		"no flags":                   {nil, exitUsage},
		"no --out":                   {[]string{"--binary", bin}, exitUsage},
		"stray argument":             {[]string{"--binary", bin, "--out", out, "extra"}, exitUsage},
		"missing binary":             {[]string{"--binary", filepath.Join(dir, "nope"), "--out", out}, exitUsage},
		"dynamic binary":             {[]string{"--binary", dyn, "--out", out}, exitUsage},
		"--out holds something else": {[]string{"--binary", bin, "--out", notLayout}, exitUsage},
		"ok":                         {[]string{"--binary", bin, "--out", out, "--tar", tarPath, "--tag", "fleetbox:v1"}, exitOK},
		"ok again, replacing":        {[]string{"--binary", bin, "--out", out, "--tar", tarPath, "--tag", "fleetbox:v1"}, exitOK},
	}
	for _, name := range []string{"no flags", "no --out", "stray argument", "missing binary", "dynamic binary", "--out holds something else", "ok", "ok again, replacing"} {
		tc := tests[name]
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != tc.code {
			t.Errorf("%s: exit %d, want %d\nstderr: %s", name, code, tc.code, stderr.String())
		}
	}
	if _, err := os.Stat(filepath.Join(notLayout, "notes.txt")); err != nil {
		t.Errorf("a directory that is not a layout was touched: %v", err)
	}

	in := Input{Binary: staticBinary(t), Epoch: 1700000000, Source: "https://github.com/fleetbox/fleetbox"}
	want := digest(t, in)
	fileDigest, err := os.ReadFile(filepath.Join(out, "digest"))
	must(t, err)
	if strings.TrimSpace(string(fileDigest)) != want.String() {
		t.Errorf("OUT/digest holds %q, want %s", fileDigest, want)
	}
	idx, err := layout.ImageIndexFromPath(out)
	must(t, err)
	im, err := idx.IndexManifest()
	must(t, err)
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != want || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v1" {
		t.Errorf("index.json lists %+v, want one manifest %s named v1", im.Manifests, want)
	}

	// The archive: sorted entries, fixed owner and time, and readable as
	// an OCI layout and as a docker save tarball.
	f, err := os.ReadFile(tarPath)
	must(t, err)
	entries, files := readTar(t, bytes.NewReader(f))
	for i, e := range entries {
		if i > 0 && entries[i-1].Name >= e.Name {
			t.Errorf("archive entries out of order: %s before %s", entries[i-1].Name, e.Name)
		}
		if e.UID != 0 || e.GID != 0 || e.Uname != "" || e.Gname != "" || e.ModTime != 1700000000 {
			t.Errorf("archive entry %+v: want 0:0, no names, mtime 1700000000", e)
		}
	}
	for _, n := range []string{"oci-layout", "index.json", "manifest.json", "blobs/sha256/" + want.Hex} {
		if _, ok := files[n]; !ok {
			t.Errorf("archive lacks %s", n)
		}
	}
	var dm []dockerManifest
	must(t, json.Unmarshal(files["manifest.json"], &dm))
	if len(dm) != 1 || len(dm[0].RepoTags) != 1 || dm[0].RepoTags[0] != "fleetbox:v1" {
		t.Errorf("manifest.json %s: want one image tagged fleetbox:v1", files["manifest.json"])
	}
	dockerImg, err := tarball.ImageFromPath(tarPath, nil)
	must(t, err)
	gotCfg, err := dockerImg.ConfigName()
	must(t, err)
	img, err := Build(in)
	must(t, err)
	wantCfg, err := img.ConfigName()
	must(t, err)
	if gotCfg != wantCfg {
		t.Errorf("docker load would see config %s, want %s", gotCfg, wantCfg)
	}
	unpacked := t.TempDir()
	for name, b := range files {
		p := filepath.Join(unpacked, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			must(t, os.MkdirAll(p, 0o755))
			continue
		}
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, b, 0o644))
	}
	fromArchive, err := layout.ImageIndexFromPath(unpacked)
	must(t, err)
	am, err := fromArchive.IndexManifest()
	must(t, err)
	if len(am.Manifests) != 1 || am.Manifests[0].Digest != want {
		t.Errorf("the archive as oci-archive lists %+v, want %s", am.Manifests, want)
	}
	second := filepath.Join(dir, "second.tar")
	must(t, WriteArchive(out, Result{Config: wantCfg, Layer: mustDigest(t, img)}, second, "fleetbox:v1", 1700000000))
	again, err := os.ReadFile(second)
	must(t, err)
	if !bytes.Equal(f, again) {
		t.Error("writing the archive twice gave different bytes")
	}
}

func mustDigest(t *testing.T, img v1.Image) v1.Hash {
	layers, err := img.Layers()
	must(t, err)
	d, err := layers[0].Digest()
	must(t, err)
	return d
}
