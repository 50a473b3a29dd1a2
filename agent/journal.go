package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/nsflow/nsflow/bpf"
)

// savedDecision is a flow record's attribution as the journal keeps it.
// ID is the record's id (set by the programs when they insert it), so a
// later record with the same key is not mistaken for this one.
type savedDecision struct {
	Key       bpf.FlowKey
	ID        uint64
	Counted   bool       `json:",omitempty"`
	Pair      pairKey    `json:",omitzero"`
	Port      string     `json:",omitempty"`
	Violation *[2]string `json:",omitempty"`
}

// decisionJournal keeps the attribution of live flow records across
// restarts, so that a namespace removed while the agent is down still has
// its records counted where they were. It is a file of JSON lines beside
// the state file, one decision a line, appended to before a scrape first
// shows a record's counts: a scrape costs an append of what is new, not a
// rewrite of every decision (a full table's 65536 would be about 15 MB and
// 0.2 s). Entries of evicted records stay until the journal is compacted,
// harmless since no live record has their ids.
type decisionJournal struct {
	path    string // "" when nothing is persisted
	entries int    // lines in the file
}

func newDecisionJournal(persist bool, stateFile string) *decisionJournal {
	if !persist {
		return &decisionJournal{}
	}
	return &decisionJournal{path: stateFile + ".decisions"}
}

// load reads the decisions in the order they were made (a later line for
// a key overrides an earlier one). A last line without its newline was cut
// short by a crash while appending: it ends the journal, and the file is
// cut back to the last whole line so that the next append starts a line
// of its own. A bad line before it is an error.
func (j *decisionJournal) load() ([]savedDecision, error) {
	if j.path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(j.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("decisions journal: %w", err)
	}
	var ds []savedDecision
	whole := 0 // bytes up to the end of the last whole line
	for whole < len(data) {
		line, _, complete := bytes.Cut(data[whole:], []byte("\n"))
		if !complete {
			if err := os.Truncate(j.path, int64(whole)); err != nil {
				return nil, fmt.Errorf("decisions journal: cut a torn last line: %w", err)
			}
			break
		}
		var d savedDecision
		if err := json.Unmarshal(line, &d); err != nil {
			return nil, fmt.Errorf("decisions journal %s: line %d: %w (remove it to decide live flows afresh)", j.path, len(ds)+1, err)
		}
		ds = append(ds, d)
		whole += len(line) + 1
	}
	j.entries = len(ds)
	return ds, nil
}

// append adds decisions at the end and syncs the file. A write that
// fails part way (a full disk) is cut back off: left in place, its torn
// line would be glued to the next append's first, a corrupt line in the
// middle that the next start refuses.
func (j *decisionJournal) append(ds []savedDecision) error {
	if j.path == "" || len(ds) == 0 {
		return nil
	}
	data, err := encodeDecisions(ds)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(j.path), 0o700); err != nil {
		return fmt.Errorf("decisions journal: %w", err)
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("decisions journal: %w", err)
	}
	end, werr := f.Seek(0, io.SeekEnd)
	if werr == nil {
		if _, werr = f.Write(data); werr == nil {
			werr = f.Sync()
		} else if terr := f.Truncate(end); terr != nil {
			werr = fmt.Errorf("%w (and cutting the torn line off: %w)", werr, terr)
		}
	}
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("decisions journal: %w", err)
	}
	j.entries += len(ds)
	return nil
}

// compactDue reports whether the journal holds so many entries of evicted
// records that it should be rewritten with the live ones.
func (j *decisionJournal) compactDue(live int) bool {
	return j.path != "" && j.entries > 2*live+4096
}

// rewrite replaces the journal with ds, atomically.
func (j *decisionJournal) rewrite(ds []savedDecision) error {
	if j.path == "" {
		return nil
	}
	data, err := encodeDecisions(ds)
	if err != nil {
		return err
	}
	if err := writeAtomic(j.path, data); err != nil {
		return fmt.Errorf("decisions journal: %w", err)
	}
	j.entries = len(ds)
	return nil
}

func encodeDecisions(ds []savedDecision) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf) // an object and a newline each
	for _, d := range ds {
		if err := enc.Encode(d); err != nil {
			return nil, fmt.Errorf("decisions journal: %w", err)
		}
	}
	return buf.Bytes(), nil
}
