package verify

import (
	"bufio"
	"os"
	"testing"

	"github.com/nsflow/nsflow/topology"
)

// helperEnv makes the test binary a responder process instead of running
// the tests: TestMutationProcessInWrongNamespace starts one, claiming the
// namespace named in the variable, in another namespace.
const helperEnv = "NSFLOW_VERIFY_HELPER_RESPONDER"

func TestMain(m *testing.M) {
	if claimed := os.Getenv(helperEnv); claimed != "" {
		os.Exit(helperResponder(claimed))
	}
	os.Exit(m.Run())
}

// helperResponder answers on tcp/8080 and udp/8080 until stdin closes.
func helperResponder(claimed string) int {
	r, err := StartResponder("", claimed, []topology.Port{{Proto: "tcp", Number: 8080}, {Proto: "udp", Number: 8080}})
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 1
	}
	defer r.Close()
	os.Stdout.WriteString("ready\n")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}
