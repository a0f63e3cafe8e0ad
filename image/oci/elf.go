package main

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"strings"
)

// ErrNotStatic is returned for an ELF binary that names a program
// interpreter (PT_INTERP): it needs a dynamic loader and libraries that the
// image does not have.
var ErrNotStatic = errors.New("dynamically linked (has a PT_INTERP program header); build with CGO_ENABLED=0")

// CheckStaticELF accepts a 64-bit little-endian x86-64 ELF executable for
// Linux with no program interpreter, which is what the image can run: it
// holds no loader and no libraries.
func CheckStaticELF(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return usageError{fmt.Errorf("not an ELF binary: %w", err)}
	}
	defer f.Close()
	var errs []error
	if f.Class != elf.ELFCLASS64 {
		errs = append(errs, fmt.Errorf("class %v, want ELFCLASS64", f.Class))
	}
	if f.Data != elf.ELFDATA2LSB {
		errs = append(errs, fmt.Errorf("byte order %v, want ELFDATA2LSB", f.Data))
	}
	if f.Machine != elf.EM_X86_64 {
		errs = append(errs, fmt.Errorf("machine %v, want EM_X86_64 (the image is linux/amd64)", f.Machine))
	}
	if f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
		errs = append(errs, fmt.Errorf("OS ABI %v, want ELFOSABI_NONE or ELFOSABI_LINUX", f.OSABI))
	}
	// ET_DYN without an interpreter is a static PIE, which runs as well.
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		errs = append(errs, fmt.Errorf("type %v, want an executable (ET_EXEC, or ET_DYN for a static PIE)", f.Type))
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			errs = append(errs, ErrNotStatic)
			break
		}
	}
	if len(errs) > 0 {
		return usageError{notStaticError(errs)}
	}
	return nil
}

// notStaticError lists every way a binary misses the target at once, so
// that one look says what to change in the build.
type notStaticError []error

func (e notStaticError) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return "not a static linux/amd64 executable: " + strings.Join(msgs, "; ")
}

func (e notStaticError) Unwrap() []error { return e }
