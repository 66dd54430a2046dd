package manifests

import (
	"errors"
	"fmt"
	"strings"
)

// FieldError is one problem with one field, named by its path in the
// manifest, e.g. "spec.ports[0].port".
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// FieldErrors are all the problems found in one object. Validate returns
// one; it is never empty when returned as an error.
type FieldErrors []*FieldError

func (fe FieldErrors) Error() string {
	var parts []string
	for i, e := range fe {
		if i == maxReportedFieldErrors {
			parts = append(parts, fmt.Sprintf("and %d more", len(fe)-i))
			break
		}
		parts = append(parts, e.Error())
	}
	return strings.Join(parts, "; ")
}

// maxReportedFieldErrors bounds the text of a FieldErrors; the slice keeps
// them all.
const maxReportedFieldErrors = 50

// add appends a field error built from a format.
func (fe *FieldErrors) add(path, format string, args ...any) {
	*fe = append(*fe, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Error is a problem with one manifest document (or, when Doc is 0, with a
// whole file). Either Fields or Msg says what is wrong.
type Error struct {
	File string
	// Doc is the 1-based number of the document within File, counting
	// non-empty documents only; 0 when the error concerns the whole file.
	Doc int
	// Kind and Name identify the object when they are known; Name is
	// "<namespace>/<name>".
	Kind, Name string
	Fields     FieldErrors
	Msg        string
	// Err is the underlying cause when there is one (a file system error,
	// ErrNoManifests); Msg then holds its text.
	Err error
}

// Unwrap returns the underlying cause, if any.
func (e *Error) Unwrap() error { return e.Err }

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Doc > 0 {
		fmt.Fprintf(&b, ": document %d", e.Doc)
		switch {
		case e.Kind != "" && e.Name != "":
			fmt.Fprintf(&b, " (%s %s)", e.Kind, e.Name)
		case e.Kind != "":
			fmt.Fprintf(&b, " (%s)", e.Kind)
		}
	}
	b.WriteString(": ")
	switch {
	case len(e.Fields) > 0 && e.Msg != "":
		b.WriteString(e.Msg + "; " + e.Fields.Error())
	case len(e.Fields) > 0:
		b.WriteString(e.Fields.Error())
	default:
		b.WriteString(e.Msg)
	}
	return b.String()
}

// ErrorList is returned by Parse and Load when more than one document is
// wrong; each element is a *Error. errors.As(err, &*Error) finds the first.
type ErrorList []*Error

func (l ErrorList) Error() string {
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap exposes the individual errors to errors.Is and errors.As.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// asError returns nil for no errors, the *Error itself for one, and an
// ErrorList for more.
func asError(l []*Error) error {
	switch len(l) {
	case 0:
		return nil
	case 1:
		return l[0]
	}
	return ErrorList(l)
}

// ErrNoManifests is returned by Load for a directory without manifest files.
var ErrNoManifests = errors.New("no *.yaml, *.yml or *.json files")
